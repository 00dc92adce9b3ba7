"""Rolling deployments of ECS-controller services, with the circuit breaker.

Each deployment in ``service.deployments`` is a fleet. The PRIMARY one grows
within maximumPercent while older ones shrink only as new tasks turn healthy
(never below minimumHealthyPercent); the circuit breaker fails a deployment
whose tasks keep failing and, with rollback, makes the previous one PRIMARY.
"""

from __future__ import annotations

import math
import os
from typing import Any

from .fleets import FleetSource, add_event, utc
from .world import log, now, scaled

INACTIVE_SINCE: dict[str, float] = {}
DEFAULT_CONFIG = {"maximumPercent": 200, "minimumHealthyPercent": 100,
                  "deploymentCircuitBreaker": {"enable": False, "rollback": False}}


def breaker_threshold(desired: int) -> int:
    """ECS uses min(max(0.5 x desired, 10), 200); the sandbox scales the floor down."""
    floor = int(os.environ.get("SANDBOX_CIRCUIT_BREAKER_THRESHOLD", "3"))
    return min(max(math.ceil(0.5 * desired), floor), 200)


def config(service: Any) -> dict[str, Any]:
    cfg = dict(DEFAULT_CONFIG)
    cfg.update(getattr(service, "deployment_configuration", None) or {})
    return cfg


def plan(ctl: FleetSource, service: Any) -> set[str]:
    """Set every deployment fleet's desired count; returns the fleet keys in use."""
    deps = service.deployments
    primary = next((d for d in deps if d["status"] == "PRIMARY"), None)
    if primary is None or not primary.get("taskDefinition"):
        return set()
    desired = service.desired_count if service.status == "ACTIVE" else 0
    fleets = {d["id"]: ctl.fleet_for(service, d["id"], d["taskDefinition"], service.load_balancers,
                                     d["id"]) for d in deps}
    new = fleets[primary["id"]]
    olds = [d for d in deps if d is not primary]
    cfg = config(service)
    max_total = max(math.floor(desired * int(cfg["maximumPercent"]) / 100), desired and 1)
    min_healthy = math.ceil(desired * int(cfg["minimumHealthyPercent"]) / 100)
    old_alive = sum(len(fleets[d["id"]].alive()) for d in olds)
    if primary.get("rolloutState") == "FAILED":
        new.desired = min(new.healthy(), desired)
    else:
        new.desired = max(0, min(desired, max_total - old_alive))
    healthy_new = new.healthy()
    keep_old = max(0, desired - healthy_new)
    if new.desired < desired and old_alive + len(new.alive()) >= max_total:
        keep_old = max(0, min(keep_old, min_healthy - healthy_new))
    for dep in olds:
        fleet = fleets[dep["id"]]
        fleet.desired = min(len(fleet.alive()), keep_old) if dep.get("rolloutState") != "FAILED" else 0
        keep_old -= fleet.desired
    _breaker(service, primary, olds, new, desired, cfg)
    _complete(service, primary, olds, fleets, desired)
    for dep in service.deployments:
        current = fleets.get(dep["id"])
        if current is not None:
            dep.update(desiredCount=current.desired, runningCount=current.running(),
                       pendingCount=current.pending(), failedTasks=current.failed_total)
    return set(fleets)


def _breaker(service: Any, primary: dict[str, Any], olds: list[dict[str, Any]], new: Any,
             desired: int, cfg: dict[str, Any]) -> None:
    breaker = cfg.get("deploymentCircuitBreaker") or {}
    if not breaker.get("enable") or primary.get("rolloutState") != "IN_PROGRESS":
        return
    if new.failed_total < breaker_threshold(desired):
        return
    primary["rolloutState"] = "FAILED"
    primary["rolloutStateReason"] = "ECS deployment circuit breaker: tasks failed to start."
    primary["updatedAt"] = utc()
    add_event(service, f"(service {service.name}) (deployment {primary['id']}) deployment failed: "
                       f"tasks failed to start.")
    log.info("service %s deployment %s FAILED by circuit breaker (%s)", service.name,
             primary["id"], new.last_reason)
    if not breaker.get("rollback") or not olds:
        return
    previous = next((d for d in olds if d.get("rolloutState") == "COMPLETED"), olds[0])
    primary["status"] = "ACTIVE"
    previous["status"] = "PRIMARY"
    previous["rolloutState"] = "IN_PROGRESS"
    previous["rolloutStateReason"] = (
        f"ECS deployment circuit breaker: rolling back to deploymentId {previous['id']}.")
    previous["updatedAt"] = utc()
    service.deployments.remove(previous)
    service.deployments.insert(0, previous)
    service.task_definition = previous["taskDefinition"]
    add_event(service, f"(service {service.name}) rolling back to deployment {previous['id']}.")


def _complete(service: Any, primary: dict[str, Any], olds: list[dict[str, Any]],
              fleets: dict[str, Any], desired: int) -> None:
    primary = next(d for d in service.deployments if d["status"] == "PRIMARY")
    new = fleets[primary["id"]]

    def busy(dep: dict[str, Any]) -> bool:
        return any(t.state != "stopped" for t in fleets[dep["id"]].tasks)

    for dep in list(service.deployments):
        if dep is not primary and dep.get("rolloutState") == "FAILED" and not busy(dep):
            if dep["status"] != "INACTIVE":
                dep["status"], dep["updatedAt"] = "INACTIVE", utc()  # visible a while, then gone
                INACTIVE_SINCE[dep["id"]] = now()
            elif now() - INACTIVE_SINCE.get(dep["id"], now()) > scaled(300, floor=3.0):
                service.deployments.remove(dep)  # like ECS, so services-stable waiters finish
                INACTIVE_SINCE.pop(dep["id"], None)
    if primary.get("rolloutState") != "IN_PROGRESS":
        return
    if new.healthy() != desired or len(new.alive()) != desired:
        return
    others = [d for d in service.deployments if d is not primary and d["status"] != "INACTIVE"]
    if any(busy(d) for d in others):
        return
    for dep in others:
        service.deployments.remove(dep)
    primary["rolloutState"] = "COMPLETED"
    primary["rolloutStateReason"] = f"ECS deployment {primary['id']} completed."
    primary["updatedAt"] = utc()
    add_event(service, f"(service {service.name}) (deployment {primary['id']}) deployment completed.")
    log.info("service %s deployment %s COMPLETED", service.name, primary["id"])
