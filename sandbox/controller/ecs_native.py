"""ECS-native blue/green, linear and canary deployments, played stage by stage.

Since 2025 ECS does blue/green itself (``deploymentController.type: ECS`` with
``deploymentConfiguration.strategy`` BLUE_GREEN, LINEAR or CANARY). Each
UpdateService that changes the revision starts a service deployment that walks
ECS's lifecycle: the new revision scales up on the alternate target group, the
test listener rule moves to it, production moves all at once, linearly or by
canary, both revisions bake, then the old one is cleaned up. PAUSE hooks wait
for ContinueServiceDeployment (or their timeout), alarms and the circuit breaker
roll back, StopServiceDeployment rolls back or aborts.
"""

from __future__ import annotations

import uuid
from typing import TYPE_CHECKING, Any

from .ecs_native_model import (
    DEFAULT_HOOK_TIMEOUT_ACTION,
    DEFAULT_HOOK_TIMEOUT_MINUTES,
    ENDED,
    HOOKABLE,
    INVALID_NETWORKING,
    LIST_LAG_SECONDS,
    ROLLING_BACK,
    STAGES,
    Hook,
    Revision,
    ServiceDeployment,
    alarms_view,
    breaker_view,
    deployment_arn,
    is_native,
    revision_arn,
    rule_weights,
    rules_hold_both,
    set_rule_weights,
    share,
    traffic_steps,
)
from .fleets import add_event, utc
from .proxy import PROPAGATION_SECONDS
from .world import cloudwatch, log, now, scaled

if TYPE_CHECKING:
    from .ecs import EcsController


class NativeController:
    """Service revisions and deployments of ECS-native blue/green services."""

    def __init__(self, ecs_ctl: EcsController) -> None:
        self.ecs_ctl = ecs_ctl
        self.revisions: dict[str, Revision] = {}
        self.deployments: dict[str, ServiceDeployment] = {}
        self.live: dict[str, str] = {}  # service key -> revision ARN serving production

    # -- starting deployments (called from the patched Create/UpdateService, under LOCK) --------
    def start(self, service: Any, migrated_fleet: tuple[str, str, str] | None = None) -> ServiceDeployment:
        """A service deployment to the service's current task definition."""
        key = f"{service.cluster_name}:{service.name}"
        for dep in self.for_service(key):
            if dep.status not in ENDED:
                self._supersede(service, dep)
        lbs = [dict(lb) for lb in service.load_balancers or []]
        adv = (lbs[0].get("advancedConfiguration") or {}) if lbs else {}
        current = self.revisions.get(self.live.get(key, ""))
        if current is None and migrated_fleet is not None:
            current = self._adopt(service, *migrated_fleet)
        primary = lbs[0].get("targetGroupArn", "") if lbs else ""
        alternate = adv.get("alternateTargetGroupArn", "")
        green_tg = primary if current is None else (alternate if current.target_group == primary else primary)
        dep_id = f"ecs-svc/{uuid.uuid4().int % 10**19}"
        target = Revision(revision_arn(service.cluster_name, service.name), service.arn,
                          service.cluster_arn, service.task_definition, dep_id, green_tg, lbs,
                          service.launch_type or "FARGATE")
        self.revisions[target.arn] = target
        dep = ServiceDeployment(
            deployment_arn(service.cluster_name, service.name), key, service.arn, service.cluster_arn, target,
            [current] if current else [], dict(service.deployment_configuration or {}),
            adv.get("productionListenerRule"), adv.get("testListenerRule"))
        dep.visible_at = dep.created + scaled(LIST_LAG_SECONDS)
        self.deployments[dep.arn] = dep  # currentServiceDeployment names it once it is listed (plan)
        self._deployments_field(service, dep)
        log.info("service %s: service deployment %s (%s) started", service.name, dep.arn,
                 dep.config.get("strategy"))
        return dep

    def _adopt(self, service: Any, fleet_key: str, task_definition: str, target_group: str) -> Revision:
        """A CodeDeploy task set's fleet becomes the first revision (migration keeps its tasks)."""
        dep_id = f"ecs-svc/{uuid.uuid4().int % 10**19}"
        fleet = self.ecs_ctl.fleets.pop(fleet_key, None)
        if fleet is not None:
            fleet.key, self.ecs_ctl.fleets[dep_id] = dep_id, fleet
        rev = Revision(revision_arn(service.cluster_name, service.name), service.arn, service.cluster_arn,
                       task_definition, dep_id, target_group, [dict(lb) for lb in service.load_balancers],
                       service.launch_type or "FARGATE", up=True)
        self.revisions[rev.arn] = rev
        self.live[f"{service.cluster_name}:{service.name}"] = rev.arn
        return rev

    def _supersede(self, service: Any, dep: ServiceDeployment) -> None:
        """A newer UpdateService replaces an unfinished deployment: its green goes, blue keeps serving."""
        self._restore(dep)
        dep.set_status("STOPPED", "Service deployment stopped: superseded by a newer service deployment.")
        add_event(service, f"(service {service.name}) service deployment {dep.arn} was superseded.")

    def for_service(self, key: str) -> list[ServiceDeployment]:
        return [d for d in self.deployments.values() if d.service_key == key]

    # -- the controller tick (EcsController.tick, under LOCK) ------------------------------------
    def plan(self, service: Any) -> set[str] | None:
        """Advance the service's deployment and set its fleets; None when the service is not native."""
        key = f"{service.cluster_name}:{service.name}"
        deps = self.for_service(key)
        if not is_native(service) and not any(d.status not in ENDED for d in deps):
            return None
        if not deps and service.task_definition:
            self.start(service)
            deps = self.for_service(key)
        listed = [d for d in deps if d.visible_at <= now()]
        if listed:
            service.current_service_deployment = listed[-1].arn
        for dep in deps:
            if dep.status not in ENDED:
                try:
                    self._advance(service, dep)
                except Exception as exc:  # noqa: BLE001 - a broken deployment must not stop the loop
                    log.exception("service deployment %s failed", dep.arn)
                    self._roll_back(service, dep, f"The sandbox could not play the deployment: {exc}")
        return self._fleets(service, deps)

    def _fleets(self, service: Any, deps: list[ServiceDeployment]) -> set[str]:
        keys: set[str] = set()
        revs = {r.arn: r for d in deps for r in (d.target, *d.sources)}
        for rev in revs.values():
            fleet = self.ecs_ctl.fleet_for(service, rev.fleet_key, rev.task_definition,
                                           rev.fleet_load_balancers(), rev.fleet_key)
            fleet.desired = service.desired_count if rev.serving() and service.status == "ACTIVE" else 0
            if rev.serving() or any(t.state != "stopped" for t in fleet.tasks):
                keys.add(rev.fleet_key)
        latest = deps[-1] if deps else None
        if latest is not None:
            self._deployments_field(service, latest)
        return keys

    def _deployments_field(self, service: Any, dep: ServiceDeployment) -> None:
        """``service.deployments`` as ECS shows a blue/green service: PRIMARY target, ACTIVE source."""
        out = []
        live = self.live.get(dep.service_key)
        for rev in (dep.target, *dep.sources):
            fleet = self.ecs_ctl.fleets.get(rev.fleet_key)
            primary = rev.arn == _serving(dep, live)
            if dep.status in ENDED and not primary and not rev.serving() and (fleet is None or not fleet.alive()):
                continue
            state = "COMPLETED" if dep.status in ENDED and primary else (
                "FAILED" if dep.status in ENDED else "IN_PROGRESS")
            out.append({
                "id": rev.fleet_key, "status": "PRIMARY" if primary else "ACTIVE",
                "taskDefinition": rev.task_definition,
                "desiredCount": fleet.desired if fleet else 0, "pendingCount": fleet.pending() if fleet else 0,
                "runningCount": fleet.running() if fleet else 0, "failedTasks": fleet.failed_total if fleet else 0,
                "createdAt": utc(), "updatedAt": utc(), "launchType": rev.launch_type, "platformFamily": "Linux",
                "rolloutState": state, "rolloutStateReason": dep.reason or f"ECS deployment {rev.fleet_key} {state}.",
            })
        out.sort(key=lambda d: d["status"] != "PRIMARY")
        service.deployments = out
        service.current_service_revisions = [self.summary(dep, r) for r in (dep.target, *dep.sources)
                                             if r.up or r.arn == live]

    def summary(self, dep: ServiceDeployment, rev: Revision) -> dict[str, Any]:
        """The ServiceRevisionSummary shape."""
        fleet = self.ecs_ctl.fleets.get(rev.fleet_key)
        prod, test = rule_weights(dep.production_rule), rule_weights(dep.test_rule)
        return {"arn": rev.arn, "requestedTaskCount": fleet.desired if fleet else 0,
                "runningTaskCount": fleet.running() if fleet else 0,
                "pendingTaskCount": fleet.pending() if fleet else 0,
                "requestedTestTrafficWeight": float(share(test, rev.target_group)),
                "requestedProductionTrafficWeight": float(share(prod, rev.target_group))}

    # -- the lifecycle -----------------------------------------------------------------------------
    def _advance(self, service: Any, dep: ServiceDeployment) -> None:
        if dep.status == "PENDING":
            dep.started, dep.status = now(), "IN_PROGRESS"
            dep.breaker = breaker_view(dep.config, service.desired_count)
            dep.alarms = alarms_view(dep.config)
        if dep.status in ROLLING_BACK:
            self._finish_rollback(service, dep)
            return
        if dep.stage == "RECONCILE_SERVICE" and not dep.entered and not rules_hold_both(dep):
            self._roll_back(service, dep, INVALID_NETWORKING)
            return
        if dep.status == "STOP_REQUESTED":
            dep.set_status("STOPPED", dep.reason)
            return
        if dep.stage != "CLEAN_UP" and self._monitors_trip(service, dep):
            return
        if now() < dep.next_at:
            return
        done = self._stage(service, dep)
        if not done:
            return
        if dep.stage in HOOKABLE and dep.sources and not self._hooks_done(service, dep):
            return
        if dep.stage == "CLEAN_UP":
            self._succeed(service, dep)
            return
        dep.stage = STAGES[STAGES.index(dep.stage) + 1]
        dep.entered, dep.hooks_run, dep.hooks, dep.updated = False, False, [], now()
        log.info("service deployment %s: %s", dep.arn, dep.stage)

    def _stage(self, service: Any, dep: ServiceDeployment) -> bool:
        """Act on the stage (once) and say whether its own work is done."""
        first = not dep.entered
        dep.entered = True
        green, blue = dep.target, dep.source
        stage = dep.stage
        if stage == "SCALE_UP":
            green.up = True
            fleet = self.ecs_ctl.fleets.get(green.fleet_key)
            return fleet is not None and fleet.desired > 0 and fleet.healthy() == fleet.desired == len(fleet.alive())
        if stage == "TEST_TRAFFIC_SHIFT" and first:
            self._weights(dep, dep.test_rule, 100)
            dep.test_weight = 100
        if stage == "PRODUCTION_TRAFFIC_SHIFT":
            return self._shift(dep, first)
        if stage == "BAKE_TIME" and first:
            dep.next_at = now() + (scaled(float(dep.config.get("bakeTimeInMinutes") or 0) * 60)
                                   if blue else 0.0)
            return False
        if stage == "CLEAN_UP":
            if first:
                self._clean_up(service, dep)
            return all(not _busy(self.ecs_ctl, r) for r in dep.sources)
        return True

    def _shift(self, dep: ServiceDeployment, first: bool) -> bool:
        if first:
            dep.steps, dep.step = traffic_steps(dep.config) if dep.source else [(100, 0.0)], 0
        if dep.step >= len(dep.steps):
            return True
        pct, bake = dep.steps[dep.step]
        self._weights(dep, dep.production_rule, pct)
        dep.production_weight = pct
        log.info("service deployment %s: %s%% of production on %s", dep.arn, pct, dep.target.arn)
        dep.step += 1
        dep.next_at = now() + (scaled(bake * 60) if bake and dep.step < len(dep.steps) else 0.0)
        return False

    def _weights(self, dep: ServiceDeployment, rule: str | None, green_pct: int) -> None:
        blue = dep.source
        if blue is None:  # the first revision: ECS still names both groups, the other at 0
            lb = dep.target.load_balancers[0] if dep.target.load_balancers else {}
            groups = {lb.get("targetGroupArn"), (lb.get("advancedConfiguration") or {}).get("alternateTargetGroupArn")}
            weights = {g: 0 for g in groups if g and g != dep.target.target_group}
            set_rule_weights(rule, {dep.target.target_group: 100, **weights})
            return
        set_rule_weights(rule, {blue.target_group: 100 - green_pct, dep.target.target_group: green_pct})

    def _clean_up(self, service: Any, dep: ServiceDeployment) -> None:
        for rev in dep.sources:
            rev.up, rev.down_after = False, now() + scaled(PROPAGATION_SECONDS)
        if dep.source is None:  # the first revision: production and test rules go to it
            self._weights(dep, dep.production_rule, 100)
            self._weights(dep, dep.test_rule, 100)
        self.live[dep.service_key] = dep.target.arn
        service.task_sets = []  # a migrated service's CodeDeploy task sets are gone with blue

    def _succeed(self, service: Any, dep: ServiceDeployment) -> None:
        dep.set_status("SUCCESSFUL", "Service deployment completed successfully.")
        if dep.breaker.get("status") == "MONITORING":
            dep.breaker["status"] = "MONITORING_COMPLETE"
        if dep.alarms.get("status") == "MONITORING":
            dep.alarms["status"] = "MONITORING_COMPLETE"
        add_event(service, f"(service {service.name}) service deployment {dep.arn.rsplit('/', 1)[-1]} "
                           "completed.")
        add_event(service, f"(service {service.name}) has reached a steady state.")
        log.info("service deployment %s SUCCESSFUL", dep.arn)

    # -- hooks ----------------------------------------------------------------------------------
    def _hooks_done(self, service: Any, dep: ServiceDeployment) -> bool:
        if not dep.hooks_run:
            dep.hooks_run = True
            for spec in dep.config.get("lifecycleHooks") or []:
                if dep.stage not in (spec.get("lifecycleStages") or []):
                    continue
                timeout = spec.get("timeoutConfiguration") or {}
                minutes = float(timeout.get("timeoutInMinutes") or DEFAULT_HOOK_TIMEOUT_MINUTES)
                hook = Hook(str(uuid.uuid4()), str(spec.get("targetType") or "PAUSE"), spec.get("hookTargetArn"),
                            dep.stage, str(timeout.get("action") or DEFAULT_HOOK_TIMEOUT_ACTION), scaled(minutes * 60))
                hook.expires_at = now() + hook.timeout_seconds
                dep.hooks.append(hook)
        for hook in dep.hooks:
            if hook.status == "AWAITING_ACTION" and now() >= hook.expires_at:
                hook.status = "TIMED_OUT"
                log.info("service deployment %s: %s hook %s timed out (%s)", dep.arn, dep.stage,
                         hook.hook_id, hook.timeout_action)
                if hook.timeout_action == "ROLLBACK":
                    self._roll_back(service, dep, f"Service deployment rolled back because the lifecycle hook "
                                                  f"{hook.hook_id} at {dep.stage} timed out.")
                    return False
        return all(h.status in ("SUCCEEDED", "TIMED_OUT") for h in dep.hooks)

    def continue_hook(self, service: Any, dep: ServiceDeployment, hook_id: str, action: str) -> bool:
        """ContinueServiceDeployment: False when no hook of the deployment awaits that id."""
        hook = next((h for h in dep.hooks if h.hook_id == hook_id and h.status == "AWAITING_ACTION"), None)
        if hook is None:
            return False
        if action == "ROLLBACK":
            hook.status = "FAILED"
            self._roll_back(service, dep, f"Service deployment rolled back because lifecycle hook {hook_id} "
                                          f"at {dep.stage} asked for a rollback.")
        else:
            hook.status = "SUCCEEDED"
            self._advance(service, dep)
        return True

    # -- monitors, stop and rollback ---------------------------------------------------------------
    def _monitors_trip(self, service: Any, dep: ServiceDeployment) -> bool:
        breaker = (dep.config.get("deploymentCircuitBreaker") or {})
        fleet = self.ecs_ctl.fleets.get(dep.target.fleet_key)
        if breaker.get("enable") and fleet is not None:
            dep.breaker["failureCount"] = fleet.failed_total
            if fleet.failed_total >= dep.breaker.get("threshold", 3):
                dep.breaker["status"] = "TRIGGERED"
                why = ("Service deployment rolled back because the circuit breaker threshold was exceeded"
                       f" ({fleet.failed_total} failed tasks: {fleet.last_reason or 'tasks failed to start'}).")
                self._end(service, dep, why, bool(breaker.get("rollback")))
                return True
        alarms = dep.config.get("alarms") or {}
        if alarms.get("enable"):
            known = cloudwatch().alarms
            firing = [n for n in alarms.get("alarmNames") or [] if n in known and known[n].state_value == "ALARM"]
            if firing:
                dep.alarms.update(status="TRIGGERED", triggeredAlarmNames=firing)
                why = f"Service deployment rolled back because alarm(s) {', '.join(firing)} went into ALARM."
                self._end(service, dep, why, bool(alarms.get("rollback")))
                return True
        return False

    def _end(self, service: Any, dep: ServiceDeployment, why: str, rollback: bool) -> None:
        if rollback:
            self._roll_back(service, dep, why)
        else:
            dep.set_status("STOPPED", why.replace("rolled back", "stopped"))

    def stop(self, service: Any, dep: ServiceDeployment, stop_type: str) -> None:
        """StopServiceDeployment: ROLLBACK puts blue back; ABORT leaves traffic where it is."""
        if stop_type == "ABORT":
            dep.set_status("STOP_REQUESTED", "Service deployment stopped by a StopServiceDeployment request.")
            return
        dep.set_status("ROLLBACK_REQUESTED", "")
        self._roll_back(service, dep, "Service deployment rolled back by a StopServiceDeployment request.")

    def _roll_back(self, service: Any, dep: ServiceDeployment, why: str) -> None:
        if dep.source is None:
            self._restore(dep)
            dep.set_status("ROLLBACK_FAILED", f"{why} There is no previous service revision to roll back to.")
            return
        dep.set_status("ROLLBACK_IN_PROGRESS", why)
        dep.rollback = {"reason": why, "startedAt": now(), "serviceRevisionArn": dep.source.arn}
        self._restore(dep)
        service.task_definition = dep.source.task_definition
        add_event(service, f"(service {service.name}) service deployment {dep.arn.rsplit('/', 1)[-1]} "
                           f"rolling back: {why}")
        log.info("service deployment %s ROLLBACK_IN_PROGRESS: %s", dep.arn, why)

    def _restore(self, dep: ServiceDeployment) -> None:
        """Production and test back on the source revision; the target drains."""
        if dep.source is not None:
            dep.source.up = True
            set_rule_weights(dep.production_rule, {dep.source.target_group: 100, dep.target.target_group: 0})
            set_rule_weights(dep.test_rule, {dep.source.target_group: 100, dep.target.target_group: 0})
        dep.target.up, dep.target.down_after = False, now() + scaled(PROPAGATION_SECONDS)
        dep.production_weight = dep.test_weight = 0
        for hook in dep.hooks:
            if hook.status == "AWAITING_ACTION":
                hook.status = "FAILED"

    def _finish_rollback(self, service: Any, dep: ServiceDeployment) -> None:
        source = dep.source
        blue = self.ecs_ctl.fleets.get(source.fleet_key) if source else None
        if _busy(self.ecs_ctl, dep.target) or blue is None or blue.healthy() < blue.desired:
            return
        dep.set_status("ROLLBACK_SUCCESSFUL", dep.reason)
        add_event(service, f"(service {service.name}) service deployment {dep.arn.rsplit('/', 1)[-1]} "
                           "rolled back.")


def _serving(dep: ServiceDeployment, live: str | None) -> str | None:
    """The PRIMARY revision: ECS's Deployment.status is "PRIMARY: The most recent deployment of a service"
    (docs.aws.amazon.com/AmazonECS/latest/APIReference/API_Deployment.html), so the target is PRIMARY from
    UpdateService on, before any production traffic moves; rolling back, the source is again; once ended, the live one.
    """
    if dep.status in ENDED:
        return live
    if dep.source is not None and (dep.status in ROLLING_BACK or dep.status == "STOP_REQUESTED"):
        return dep.source.arn
    return dep.target.arn


def _busy(ctl: EcsController, rev: Revision) -> bool:
    fleet = ctl.fleets.get(rev.fleet_key)
    return fleet is not None and any(t.state != "stopped" for t in fleet.tasks)
