"""Rolling updates of ECS-controller services: UpdateService, then a wait that checks the truth.

ECS replaces tasks by itself; the circuit breaker may fail the rollout and put
the previous deployment back. A rollout is done only when the deployment this
release started is COMPLETED *and* still the PRIMARY one when described again.
"""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from prefect import get_run_logger
from prefect.runtime import task_run

from tasks.aws import ecs as ecs_ops
from tasks.aws import traffic
from tasks.aws.clients import AwsClients
from tasks.aws.retry import stage
from tasks.config.models import ServiceConfig
from tasks.core.errors import DeployError, RolledBack
from tasks.core.settings import Settings
from tasks.core.waits import poll
from tasks.release.contract import Reconciled, Release, RollbackResult, Step
from tasks.strategies import verification


@dataclass(frozen=True)
class Rollout:
    """The deployment a release started and the revision it replaces.

    ``answer``: the service as UpdateService answered it, the wait's first look (no DescribeServices
    for a state AWS just told us); None when the rollout was resumed, so the wait describes afresh.
    ``took_last``: seconds the service's previous rollout took (``last_rollout_seconds``), or None.
    """

    deployment_id: str
    task_definition: str
    previous: str | None
    started: float
    answer: dict[str, Any] | None = field(default=None, compare=False, repr=False)
    took_last: float | None = field(default=None, compare=False)


def _service(cfg: ServiceConfig, clients: AwsClients) -> dict[str, Any]:
    return ecs_ops.describe_service(clients.get("ecs"), cfg.ecs.cluster, cfg.ecs.service)


def rollout_cadence(settings: Settings) -> tuple[float, float]:
    """(first pause, longest pause) between looks at a rollout.

    A rollout takes minutes on AWS (tasks start, pass health checks, old ones drain), about a
    second and a half in a rehearsal at time scale 60. The looks come at the pace of every other
    AWS wait (``poll_cap``: 5 s on AWS, 0.5 s at scale 60), never farther apart: a completed
    rollout is seen within one pause, where a longer back-off had left a rehearsal's release
    waiting a second past its rollout's end for one DescribeServices fewer.
    """
    cap = settings.poll_cap()
    return min(cap, max(0.5, settings.scaled(30))), cap


def last_rollout_seconds(service: dict[str, Any]) -> float | None:
    """How long the service's live deployment took to complete: its ``updatedAt`` less its ``createdAt``.

    ECS's Deployment: createdAt "The Unix timestamp for the time when the service deployment was
    created", updatedAt "... was last updated" (its last change, COMPLETED, unless scaling changed it
    since: then longer than it took). None unless the PRIMARY deployment is COMPLETED with both.
    """
    primary: dict[str, Any] = next((d for d in service.get("deployments", []) if d.get("status") == "PRIMARY"), {})
    created, updated = primary.get("createdAt"), primary.get("updatedAt")
    if primary.get("rolloutState") != "COMPLETED" or not isinstance(created, datetime) \
            or not isinstance(updated, datetime):
        return None
    took = (updated - created).total_seconds()
    return took if took > 0 else None


def expected_look(rollout: Rollout, pace: float) -> float | None:
    """When (``time.monotonic()``) the wait looks once out of its pace: the previous rollout's length after
    this one started, plus a tenth of it (at most half a pause): rollouts of one service take about as long
    again, so the completion is seen then rather than up to a pause later. None without a previous one."""
    if rollout.took_last is None:
        return None
    at = rollout.started + rollout.took_last + min(rollout.took_last / 10, pace / 2)
    return time.monotonic() + (at - time.time())


def primary_deployment(service: dict[str, Any]) -> dict[str, Any]:
    for dep in service.get("deployments", []):
        if dep.get("status") == "PRIMARY":
            return dep  # type: ignore[no-any-return]
    raise DeployError(f"service {service.get('serviceName')} has no PRIMARY deployment")


def _previous(service: dict[str, Any], task_definition: str) -> str | None:
    """The newest other revision the service runs (the one a rollback goes back to)."""
    others = [d for d in service.get("deployments", []) if d.get("taskDefinition") != task_definition]
    completed = [d for d in others if d.get("rolloutState") == "COMPLETED"]
    pick = (completed or others or [{}])[0]
    value = pick.get("taskDefinition")
    return str(value) if value else None


@stage("rolling update", "rolling update {cfg.name}@{sha:.7}")
def update_service(
    cfg: ServiceConfig, clients: AwsClients, task_definition: str, sha: str, seen: dict[str, Any] | None = None
) -> Rollout:
    """UpdateService to the new revision, unless the PRIMARY deployment already runs it.

    ``seen``: the service as this release described it at its start, under the service's lock; a
    retry describes afresh. Acting on it is safe: UpdateService to the revision ECS already rolls
    out starts nothing, and the wait judges the rollout only from fresh descriptions.
    """
    log = get_run_logger()
    service = seen if seen is not None and task_run.run_count <= 1 else _service(cfg, clients)
    primary = primary_deployment(service)
    if primary.get("taskDefinition") == task_definition:
        log.info("deployment %s already rolls out %s: resumed", primary["id"], task_definition)
        return Rollout(primary["id"], task_definition, _previous(service, task_definition), time.time())
    took_last = last_rollout_seconds(service)
    started = time.time()
    updated = clients.get("ecs").update_service(
        cluster=cfg.ecs.cluster,
        service=cfg.ecs.service,
        taskDefinition=task_definition,
        forceNewDeployment=False,
    )["service"]
    dep = primary_deployment(updated)
    log.info("deployment %s started: %s replaces %s", dep["id"], task_definition, primary.get("taskDefinition"))
    return Rollout(dep["id"], task_definition, primary.get("taskDefinition"), started, answer=updated,
                   took_last=took_last)


def _failure(cfg: ServiceConfig, clients: AwsClients, rollout: Rollout, why: str) -> str:
    """``why`` with the reason ECS gave most for stopping tasks of the new revision."""
    stopped = ecs_ops.stopped_task_reasons(
        clients.get("ecs"), cfg.ecs.cluster, rollout.task_definition, rollout.started
    )
    failures = Counter(r for r in stopped if not r.startswith("Scaling activity initiated by"))
    if not failures:
        return why
    reason, count = failures.most_common(1)[0]
    return f"{why} ({count} task(s) stopped: {reason})"


def rollout_state(service: dict[str, Any], rollout: Rollout) -> dict[str, Any] | None:
    """The service once the release's deployment is COMPLETED and PRIMARY; raises when ECS gave up on it.

    Both come from one description, so "stable" is checked to be "succeeded" without describing again.
    """
    ours = next((d for d in service.get("deployments", []) if d.get("id") == rollout.deployment_id), None)
    primary = primary_deployment(service)
    if ours is not None and ours.get("rolloutState") == "FAILED":
        raise RolledBack(f"ECS rollout failed: {ours.get('rolloutStateReason') or 'no reason given'}")
    if primary.get("id") != rollout.deployment_id:
        raise RolledBack(
            f"deployment {rollout.deployment_id} is no longer PRIMARY; ECS now rolls out "
            f"{primary.get('taskDefinition')}: {primary.get('rolloutStateReason') or 'no reason given'}"
        )
    return service if ours is not None and ours.get("rolloutState") == "COMPLETED" else None


@stage("wait rollout", "wait rollout {cfg.name}")
def wait_rollout(cfg: ServiceConfig, clients: AwsClients, rollout: Rollout) -> None:
    """Until the release's deployment is COMPLETED and still PRIMARY in one fresh description.

    The first look is UpdateService's own answer (a circuit breaker cannot have tripped yet, so it
    only says "in progress"); every later look describes the service, and the first conclusive
    one (completed, failed, or no longer primary) ends the wait.
    """
    log = get_run_logger()
    answered = [rollout.answer] if rollout.answer is not None and task_run.run_count <= 1 else []

    def look() -> dict[str, Any] | None:
        return rollout_state(answered.pop() if answered else _service(cfg, clients), rollout)

    first, cap = rollout_cadence(clients.settings)
    try:
        service = poll(
            look,
            timeout=cfg.timeouts.rollout_seconds,
            what=f"deployment {rollout.deployment_id} to complete",
            log=log.info,
            first=first,
            cap=cap,
            look_at=expected_look(rollout, cap),
        )
    except DeployError as exc:
        raise type(exc)(
            _failure(cfg, clients, rollout, exc.message), service=cfg.name, deployment_id=rollout.deployment_id
        ) from exc
    primary = primary_deployment(service)
    if primary.get("id") != rollout.deployment_id or primary.get("taskDefinition") != rollout.task_definition:
        raise RolledBack(
            f"deployment {rollout.deployment_id} completed but {primary.get('taskDefinition')} is serving",
            service=cfg.name,
            deployment_id=rollout.deployment_id,
        )
    log.info("deployment %s COMPLETED: %s of %s tasks run %s", rollout.deployment_id,
             primary.get("runningCount"), service.get("desiredCount"), rollout.task_definition)


@stage("verify production", "verify production {cfg.name}")
def verify_production(cfg: ServiceConfig, clients: AwsClients, rollout: Rollout) -> list[str]:
    """Rolling has no test listener: the same HTTP checks, against production, after the rollout."""
    log = get_run_logger()
    base = None
    internal = False
    if cfg.load_balancer is not None:
        endpoint = traffic.production_endpoint(clients.get("elbv2"), cfg.load_balancer)
        base, internal = endpoint.url, endpoint.internal
    reach = verification.reach_for(cfg.verify, cfg.base_dir, internal)
    lines = []
    for check in cfg.verify.http:
        if base is None and check.base_url is None:
            continue
        res = verification.check_http(base or "", check, reach=reach)
        lines.append(f"GET {res.path}: {res.passes} passes in {res.attempts} tries, worst {res.worst_ms:.0f} ms")
        log.info(lines[-1])
    verification.raise_on_alarm(cfg, clients, "after the rollout")
    return lines or ["no HTTP checks: no load balancer and no verify.http base_url"]


@stage("roll back", "roll back {cfg.name}")
def roll_back(cfg: ServiceConfig, clients: AwsClients, rollout: Rollout) -> str:
    """Back to the previous revision (ECS may already be on its way there) and wait until it serves."""
    log = get_run_logger()
    if rollout.previous is None:
        return "no previous revision to roll back to"
    service = _service(cfg, clients)
    primary = primary_deployment(service)
    if primary.get("taskDefinition") != rollout.previous:
        clients.get("ecs").update_service(
            cluster=cfg.ecs.cluster, service=cfg.ecs.service, taskDefinition=rollout.previous,
            forceNewDeployment=False,
        )
        log.info("rolling back to %s", rollout.previous)
    else:
        log.info("ECS already rolls back to %s", rollout.previous)

    def back() -> str | None:
        dep = primary_deployment(_service(cfg, clients))
        done = dep.get("taskDefinition") == rollout.previous and dep.get("rolloutState") == "COMPLETED"
        return "previous revision serving" if done else None

    poll(back, timeout=cfg.timeouts.rollout_seconds, what=f"{rollout.previous} to serve again",
         log=log.info, cap=clients.settings.poll_cap())
    return f"{rollout.previous.rsplit('/', 1)[-1]} serving"


class RollingSteps:
    """UpdateService on an ECS-controller service; a failed rollout ends on the previous revision.

    Rolling has no green to verify before production: the approval gate (when
    required) comes before UpdateService, and the checks run on production after.
    """

    live_traffic = "100% new tasks"

    def __init__(self, release: Release) -> None:
        self.release = release
        self.cfg, self.clients = release.cfg, release.clients
        self.rollout: Rollout | None = None

    def before_production(self) -> Iterator[Step]:
        return iter(())

    def pauses_for_approval(self) -> bool:
        return True

    def to_production(self) -> Iterator[Step]:
        yield "rolling update", self._update
        yield "wait rollout", self._wait
        yield "verify", self._verify

    def _update(self) -> None:
        r = self.release
        self.rollout = update_service(self.cfg, self.clients, r.task_definition, r.sha, r.service)

    def _wait(self) -> None:
        assert self.rollout is not None
        wait_rollout(self.cfg, self.clients, self.rollout)
        self.release.on_step(100)

    def _verify(self) -> None:
        assert self.rollout is not None
        self.release.note(*verify_production(self.cfg, self.clients, self.rollout))

    def after_bake(self) -> Iterator[Step]:
        return iter(())

    def roll_back(self, reason: str) -> RollbackResult | None:
        if self.rollout is None:
            return None  # UpdateService never happened: production did not move
        return RollbackResult(roll_back(self.cfg, self.clients, self.rollout), reason)

    def where_traffic_is(self) -> str:
        service = _service(self.cfg, self.clients)
        return "production on " + ", ".join(
            f"{d.get('taskDefinition', '?').rsplit('/', 1)[-1]} ({d.get('runningCount', 0)} tasks)"
            for d in service.get("deployments", [])
        )

    def reconcile(self) -> Reconciled | None:
        """ECS finishes (or rolls back) a rollout on its own; nothing is left for a later run."""
        return None

    def adopt_in_flight(self) -> str | None:
        """A rollout in progress has no verified side to go back to: the previous commit's release supersedes it."""
        return None
