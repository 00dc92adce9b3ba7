"""ECS services brought to life: task sets and deployments backed by fleets.

EXTERNAL and CODE_DEPLOY services run one fleet per task set
(``ceil(scale% x desiredCount)`` tasks); ECS-controller services run one fleet
per deployment, planned by ``rolling.py``. Counts, stability and service
events are written back into moto's models after every pass.
"""

from __future__ import annotations

import math
from typing import Any

from . import ecs_task_sets, rolling
from .containers import TaskRunner
from .fleets import Fleet, add_event, short, utc
from .world import LOCK, ecs, log, now, scaled


class EcsController:
    """Keeps every service's fleets at their desired counts and reports the truth."""

    def __init__(self, runner: TaskRunner) -> None:
        self.runner = runner
        self.fleets: dict[str, Fleet] = {}
        self.steady: dict[str, bool] = {}
        self.native: Any = None  # ecs_native.NativeController, set by the Controller

    def fleet_for(self, service: Any, key: str, task_definition: str,
                  load_balancers: list[dict[str, Any]], started_by: str) -> Fleet:
        fleet = self.fleets.get(key)
        if fleet is None:
            fleet = Fleet(key=key, cluster=service.cluster_name, service=service.name,
                          task_definition=task_definition, load_balancers=list(load_balancers or []),
                          started_by=started_by)
            self.fleets[key] = fleet
        grace = getattr(service, "health_check_grace_period_seconds", None) or 0
        fleet.grace = scaled(float(grace), floor=0.0)
        return fleet

    def tick(self) -> None:
        with LOCK:
            seen: set[str] = set()
            services = list(ecs().services.values())
            for service in services:
                ctype = (service.deployment_controller or {}).get("type", "ECS")
                if service.status != "ACTIVE":
                    continue  # deleted: its fleets drain to zero and go away
                planned = self.native.plan(service) if self.native is not None else None
                if planned is not None:
                    seen.update(planned)  # ECS-native blue/green, linear or canary
                elif ctype == "ECS":
                    seen.update(rolling.plan(self, service))
                else:
                    seen.update(self._plan_task_sets(service))
            for key, fleet in list(self.fleets.items()):
                if key not in seen:
                    fleet.desired = 0
                try:
                    self._reconcile(fleet)
                except Exception as exc:  # noqa: BLE001 - one broken fleet must not stall the others
                    if fleet.last_reason != str(exc):
                        log.exception("fleet %s cannot launch", key)
                    fleet.last_reason, fleet.next_launch = str(exc), now() + 5.0
                if key not in seen and not any(t.state != "stopped" for t in fleet.tasks):
                    del self.fleets[key]
            for service in services:
                self._report(service)

    def _plan_task_sets(self, service: Any) -> set[str]:
        keys: set[str] = set()
        active = service.status == "ACTIVE"
        for ts in service.task_sets:
            fleet = self.fleet_for(service, ts.task_set_arn, ts.task_definition,
                                   ts.load_balancers, ts.id)
            value = float((ts.scale or {}).get("value", 100.0))
            fleet.desired = math.ceil(value / 100.0 * service.desired_count) if active else 0
            if fleet.desired and ecs_task_sets.unplaceable(ecs(), service, ts):
                fleet.desired = 0  # launch type EC2 and no container instance: nothing to place
                if not fleet.last_reason:
                    fleet.last_reason = "no container instance"
                    add_event(service, f"(service {service.name}) was unable to place a task because no "
                                       "container instance met all of its requirements. Reason: No Container "
                                       "Instances were found in your cluster.")
            keys.add(ts.task_set_arn)
        return keys

    def _reconcile(self, fleet: Fleet) -> None:
        self.runner.reconcile(fleet)
        service = ecs().services.get(f"{fleet.cluster}:{fleet.service}")
        if service is None:
            return
        name = service.name
        started = [r for r in fleet.tasks if r.arn not in fleet.announced]
        if started:
            ids = " ".join(f"(task {short(r.arn)})" for r in started)
            add_event(service, f"(service {name}) has started {len(started)} tasks: {ids}.")
        ended = [r for r in fleet.tasks if r.state in ("draining", "stopped") and r.arn not in fleet.reported]
        ran = [r for r in ended if r.started]
        if ran:
            ids = " ".join(f"(task {short(r.arn)})" for r in ran)
            add_event(service, f"(service {name}) has stopped {len(ran)} running tasks: {ids}.")
        for r in ended:
            reason = r.task.stopped_reason or ""
            if "ELB health checks" in reason:
                add_event(service, f"(service {name}) (task {short(r.arn)}) failed ELB health checks "
                                   f"in {reason.split(' in ', 1)[-1]}.")
            elif not r.started and r.failed:
                add_event(service, f"(service {name}) (task {short(r.arn)}) failed to start: {reason}")
        arns = {r.arn for r in fleet.tasks}
        fleet.announced = (fleet.announced | {r.arn for r in started}) & arns
        fleet.reported = (fleet.reported | {r.arn for r in ended}) & arns

    def _report(self, service: Any) -> None:
        running = pending = 0
        stable = service.status == "ACTIVE"
        for ts in service.task_sets:
            fleet = self.fleets.get(ts.task_set_arn)
            if fleet is None:
                continue
            ts.computed_desired_count = fleet.desired
            ts.running_count, ts.pending_count = fleet.running(), fleet.pending()
            ts_stable = (fleet.healthy() == fleet.desired and len(fleet.alive()) == fleet.desired
                         and not any(t.state == "draining" for t in fleet.tasks))
            status = "STEADY_STATE" if ts_stable else "STABILIZING"
            if ts.stabilityStatus != status:
                ts.stabilityStatus, ts.stabilityStatusAt = status, utc()
            ts.updatedAt = utc()
            running += ts.running_count
            pending += ts.pending_count
            stable = stable and ts_stable
        for dep in service.deployments:
            fleet = self.fleets.get(dep["id"])
            if fleet is None:
                continue
            running += fleet.running()
            pending += fleet.pending()
            stable = stable and dep.get("rolloutState") in ("COMPLETED", None) and fleet.healthy() == fleet.desired
        service.running_count, service.pending_count = running, pending
        stable = stable and running == service.desired_count
        key = f"{service.cluster_name}:{service.name}"
        if stable and not self.steady.get(key):
            add_event(service, f"(service {service.name}) has reached a steady state.")
            log.info("service %s steady", service.name)
        self.steady[key] = stable

    def snapshot(self) -> list[dict[str, Any]]:
        out = []
        for fleet in self.fleets.values():
            out.append({
                "key": fleet.key, "cluster": fleet.cluster, "service": fleet.service,
                "taskDefinition": fleet.task_definition, "desired": fleet.desired,
                "failedTasks": fleet.failed_total, "lastFailure": fleet.last_reason,
                "tasks": [{"taskArn": r.arn, "state": r.state, "lastStatus": r.task.last_status,
                           "port": r.port, "containers": r.containers,
                           "stoppedReason": r.task.stopped_reason} for r in fleet.tasks],
            })
        return out
