"""What the controller knows about ECS tasks and fleets, and the service events they cause.

A ``Fleet`` is "N copies of this task definition in these target groups" (a
task set or a rolling deployment), a ``TaskRun`` one task of it. Kept apart
from the code that starts containers so that ECS services, rolling
deployments and log shipping can read them without importing each other.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, Protocol

from .targets import target_key
from .world import elbv2


def utc() -> datetime:
    return datetime.now(UTC)


@dataclass
class TaskRun:
    """Controller-side state of one task."""

    task: Any
    fleet: Fleet
    port: int | None = None
    containers: dict[str, str] = field(default_factory=dict)  # container name -> docker id
    state: str = "starting"  # starting | running | draining | stopped
    stop_at: float | None = None
    failed: bool = False
    was_healthy: bool = False
    started: float = 0.0
    log_options: dict[str, dict[str, str]] = field(default_factory=dict)
    essential: set[str] = field(default_factory=set)
    registered: list[str] = field(default_factory=list)

    @property
    def arn(self) -> str:
        return str(self.task.task_arn)


@dataclass
class Fleet:
    """Desired copies of one task definition, registered in these target groups."""

    key: str
    cluster: str
    service: str
    task_definition: str
    load_balancers: list[dict[str, Any]]
    started_by: str
    desired: int = 0
    tasks: list[TaskRun] = field(default_factory=list)
    failures: int = 0
    failed_total: int = 0
    next_launch: float = 0.0
    last_reason: str = ""
    group: str = ""
    grace: float = 0.0  # healthCheckGracePeriodSeconds, scaled
    announced: set[str] = field(default_factory=set)  # task ARNs with a "has started" event
    reported: set[str] = field(default_factory=set)  # task ARNs with a "stopped" event

    def alive(self) -> list[TaskRun]:
        return [t for t in self.tasks if t.state in ("starting", "running")]

    def running(self) -> int:
        return sum(1 for t in self.tasks if t.state == "running")

    def pending(self) -> int:
        return sum(1 for t in self.tasks if t.state == "starting")

    def healthy(self) -> int:
        return sum(1 for t in self.tasks if t.state == "running" and is_healthy(t))


def is_healthy(run: TaskRun) -> bool:
    """Running and healthy in every target group it belongs to."""
    if run.state != "running":
        return False
    for tg_arn in run.registered:
        tg = elbv2().target_groups.get(tg_arn)
        entry = tg.targets.get(target_key("127.0.0.1", run.port)) if tg else None
        if entry is None or entry["State"] != "healthy":
            return False
    return True


def unhealthy_group(run: TaskRun) -> str | None:
    for tg_arn in run.registered:
        tg = elbv2().target_groups.get(tg_arn)
        entry = tg.targets.get(target_key("127.0.0.1", run.port)) if tg else None
        if entry is not None and entry["State"] == "unhealthy":
            return tg_arn
    return None


def awslogs_options(cdef: dict[str, Any]) -> dict[str, str] | None:
    cfg = cdef.get("logConfiguration") or {}
    if cfg.get("logDriver") != "awslogs":
        return None
    opts = dict(cfg.get("options") or {})
    return opts if opts.get("awslogs-group") else None


def add_event(service: Any, message: str) -> None:
    """Newest-first service events, as DescribeServices shows them."""
    events = service.events
    if events and events[0]["message"] == message:
        return
    events.insert(0, {"id": str(uuid.uuid4()), "createdAt": utc(), "message": message})
    del events[100:]


def short(arn: str) -> str:
    return arn.rsplit("/", 1)[-1]


class FleetSource(Protocol):
    """Whoever owns the fleets (the ECS controller), as a rolling deployment plan sees it."""

    def fleet_for(self, service: Any, key: str, task_definition: str,
                  load_balancers: list[dict[str, Any]], started_by: str) -> Fleet: ...
