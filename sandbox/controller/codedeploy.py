"""CodeDeploy ECS blue/green deployments, played step by step.

moto records a deployment and leaves it Created. Here each deployment walks
CodeDeploy's ECS lifecycle: replacement task set on the idle target group,
test traffic, optional Ready wait, the traffic shift of its deployment config,
the termination wait, and rollback on StopDeployment, failure or alarm. Each
appspec hook (BeforeInstall, AfterInstall, AfterAllowTestTraffic,
BeforeAllowTraffic, AfterAllowTraffic) holds its event until its function
reports through PutLifecycleEventHookExecutionStatus (codedeploy_hooks.py).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from moto.codedeploy.models import DeploymentInfo

from .codedeploy_configs import appspec_hooks, epoch, parse_appspec, routing_for, shift_steps
from .codedeploy_hooks import Hooks
from .proxy import PROPAGATION_SECONDS
from .traffic import forward_weights, set_forward
from .world import LOCK, cloudwatch, codedeploy, ecs, elbv2, log, now, scaled

if TYPE_CHECKING:
    from .ecs import EcsController

# phase -> (the hook's lifecycle event, the method that follows it once it Succeeded)
HOOK_PHASES = {
    "before_install": ("BeforeInstall", "_install"),
    "after_install": ("AfterInstall", "_allow_test_traffic"),
    "after_test_traffic": ("AfterAllowTestTraffic", "_ready_or_shift"),
    "before_traffic": ("BeforeAllowTraffic", "_allow_traffic"),
    "after_traffic": ("AfterAllowTraffic", "_termination_wait"),
}
EVENTS = ["BeforeInstall", "Install", "AfterInstall", "AllowTestTraffic", "AfterAllowTestTraffic",
          "BeforeAllowTraffic", "AllowTraffic", "AfterAllowTraffic"]
DONE = ("Succeeded", "Failed", "Stopped")
INSTALL_FAILURES = 3


@dataclass
class Play:
    """Controller state of one CodeDeploy deployment."""

    dep: Any
    phase: str = "start"
    service: Any = None
    blue_ts: str = ""
    green_ts: str = ""
    blue_tg: str = ""
    green_tg: str = ""
    prod: list[str] = field(default_factory=list)
    test: list[str] = field(default_factory=list)
    steps: list[tuple[int, float]] = field(default_factory=list)
    step: int = 0
    next_at: float = 0.0
    deadline: float = 0.0
    green_weight: int = 0
    events: dict[str, dict[str, Any]] = field(default_factory=dict)
    continued: set[str] = field(default_factory=set)
    props: dict[str, Any] = field(default_factory=dict)
    hooks: dict[str, str] = field(default_factory=dict)
    moved_at: float = 0.0  # the last listener change this deployment made

    def event(self, name: str, status: str) -> None:
        ev = self.events.setdefault(name, {"lifecycleEventName": name, "status": "Pending"})
        if status == "InProgress" and "startTime" not in ev:
            ev["startTime"] = epoch()
        if status in ("Succeeded", "Failed", "Skipped"):
            ev.setdefault("startTime", epoch())
            ev["endTime"] = epoch()
        ev["status"] = status

    def passed(self, *names: str) -> None:
        for name in names:
            self.event(name, "Succeeded")


class CodeDeployController:
    """Advances every live deployment a little on each controller tick."""

    def __init__(self, ecs_ctl: EcsController) -> None:
        self.ecs_ctl = ecs_ctl
        self.plays: dict[str, Play] = {}
        self.hooks = Hooks()
        self.doomed: list[tuple[float, str, str, str]] = []  # (when, cluster, service, task set) to remove

    def tick(self) -> None:
        with LOCK:
            self._remove_doomed()
            for dep in list(codedeploy().deployments.values()):
                if dep.status in DONE or getattr(dep, "creator", "") == "codeDeployRollback":
                    continue
                play = self.plays.setdefault(dep.deployment_id, Play(dep=dep))
                try:
                    self._advance(play)
                except Exception as exc:  # noqa: BLE001 - a broken deployment must not stop the loop
                    log.exception("deployment %s failed", dep.deployment_id)
                    self.fail(play, "INTERNAL_ERROR", f"The sandbox could not play the deployment: {exc}")

    def _remove_doomed(self) -> None:
        due = [d for d in self.doomed if d[0] <= now()]
        self.doomed = [d for d in self.doomed if d[0] > now()]
        for _, cluster, service, task_set in due:
            try:
                ecs().delete_task_set(cluster, service, task_set)
            except Exception as exc:  # noqa: BLE001 - gone already (deleted by someone else): nothing to do
                log.info("replacement task set %s not removed: %s", task_set, exc)

    def tick_one(self, play: Play) -> None:
        """Advance one deployment now (caller holds LOCK), e.g. right after ContinueDeployment."""
        if play.dep.status not in DONE:
            self._advance(play)

    # -- the lifecycle ----------------------------------------------------
    def _advance(self, play: Play) -> None:
        dep = play.dep
        if play.phase != "start" and self._alarm_stop(play):
            return
        hook = HOOK_PHASES.get(play.phase)
        if hook is not None:
            self._hook(play, *hook)
        elif play.phase == "start":
            self._start(play)
        elif play.phase == "install":
            self._wait_install(play)
        elif play.phase == "ready_wait":
            if "READY_WAIT" in play.continued:
                self._begin_shift(play)
            elif now() >= play.deadline:
                self.fail(play, "TIMEOUT", "The deployment timed out while waiting for the "
                          "ContinueDeployment call (deploymentReadyOption waitTimeInMinutes).")
        elif play.phase == "shift":
            self._shift(play)
        elif play.phase == "bake" and ("TERMINATION_WAIT" in play.continued or now() >= play.deadline):
            self._terminate_blue(play)
        dep.deployment_overview = self._overview(dep.status)

    def _hook(self, play: Play, event: str, then: str) -> None:
        """Hold EVENT until its hook reports (or times out), then go on with the method named THEN."""
        play.event(event, "InProgress")
        status = self.hooks.status(play.dep.deployment_id, play.hooks, event)
        if status is None:
            return
        if status == "Succeeded":
            play.passed(event)
            getattr(self, then)(play)
        elif status == "Failed":
            self.fail(play, "HOOK_EXECUTION_FAILURE", f"The {event} lifecycle event hook "
                      f"({play.hooks.get(event)}) reported Failed.", event=event)
        else:
            self.fail(play, "TIMEOUT", f"The {event} lifecycle event hook ({play.hooks.get(event)}) did not "
                      "report its status (PutLifecycleEventHookExecutionStatus) in time.", event=event)

    def _start(self, play: Play) -> None:
        dep = play.dep
        dep.status, dep.start_time = "InProgress", epoch()
        for name in EVENTS:
            play.event(name, "Pending")
        props = self._resolve(play)
        if props is None:
            return
        play.props = props
        play.phase = "before_install"

    def _install(self, play: Play) -> None:
        """Install: the replacement task set on the idle target group."""
        dep, props = play.dep, play.props
        play.event("Install", "InProgress")
        backend = ecs()
        lbi = props["LoadBalancerInfo"]
        ts = backend.create_task_set(
            play.service.name, play.service.cluster_name, props["TaskDefinition"],
            load_balancers=[{"targetGroupArn": play.green_tg, "containerName": lbi["ContainerName"],
                             "containerPort": int(lbi["ContainerPort"])}],
            launch_type=props.get("LaunchType") or play.service.launch_type or "FARGATE",
            external_id=dep.deployment_id)
        ts.started_by = "CodeDeploy"
        play.green_ts = ts.task_set_arn
        play.deadline = now() + scaled(3600, floor=60)
        play.phase = "install"
        log.info("deployment %s: replacement task set on %s", dep.deployment_id, play.green_tg)

    def _resolve(self, play: Play) -> dict[str, Any] | None:
        """Appspec, service, target groups and listeners; fails the deployment like CodeDeploy."""
        group = play.dep.deployment_group
        try:
            revision = play.dep.revision if isinstance(play.dep.revision, dict) else {}
            props = parse_appspec(revision)
            play.hooks = appspec_hooks(revision)
            props["TaskDefinition"] = ecs().describe_task_definition(props["TaskDefinition"]).arn
        except Exception as exc:  # noqa: BLE001 - any unreadable revision is INVALID_REVISION
            self.fail(play, "INVALID_REVISION", f"The AppSpec file is invalid: {exc}", event="BeforeInstall")
            return None
        svc_ref = (group.ecs_services or [{}])[0]
        try:
            play.service = ecs()._get_service(svc_ref.get("clusterName", ""), svc_ref.get("serviceName", ""))
        except Exception:  # noqa: BLE001 - moto raises cluster or service not found
            self.fail(play, "INVALID_ECS_SERVICE", f"The ECS service {svc_ref.get('serviceName')} in "
                      f"cluster {svc_ref.get('clusterName')} of the deployment group does not exist.",
                      event="BeforeInstall")
            return None
        pair = ((group.load_balancer_info or {}).get("targetGroupPairInfoList") or [{}])[0]
        tgs = [t["name"] for t in pair.get("targetGroups", [])]
        play.prod = list((pair.get("prodTrafficRoute") or {}).get("listenerArns") or [])
        play.test = list((pair.get("testTrafficRoute") or {}).get("listenerArns") or [])
        by_name = {tg.name: tg.arn for tg in elbv2().target_groups.values()}
        missing = [n for n in tgs if n not in by_name]
        if len(tgs) != 2 or missing or not play.prod:
            self.fail(play, "ELASTIC_LOAD_BALANCING_INVALID", "The deployment group needs two existing "
                      f"target groups and a production listener (missing: {missing or 'listener'}).",
                      event="BeforeInstall")
            return None
        arns = [by_name[n] for n in tgs]
        live = forward_weights(play.prod[0])
        play.blue_tg = next((a for a in arns if live.get(a, 0) > 0), arns[0])
        play.green_tg = next(a for a in arns if a != play.blue_tg)
        blue = next((ts for ts in play.service.task_sets if ts.status == "PRIMARY"), None)
        play.blue_ts = blue.task_set_arn if blue else ""
        return props

    def _wait_install(self, play: Play) -> None:
        fleet = self.ecs_ctl.fleets.get(play.green_ts)
        ts = self._task_set(play, play.green_ts)
        if fleet is not None and fleet.failed_total >= INSTALL_FAILURES:
            self.fail(play, "ECS_UPDATE_ERROR", "The ECS service cannot be updated: replacement "
                      f"tasks failed to start ({fleet.last_reason}).", event="Install")
            return
        if now() >= play.deadline:
            self.fail(play, "TIMEOUT", "The replacement task set did not become healthy in time.",
                      event="Install")
            return
        if ts is None or ts.stabilityStatus != "STEADY_STATE" or ts.computed_desired_count == 0:
            return
        play.passed("Install")
        play.phase = "after_install"

    def _allow_test_traffic(self, play: Play) -> None:
        for arn in play.test:
            set_forward(arn, {play.green_tg: 100})
        play.moved_at = now()
        play.passed("AllowTestTraffic")
        play.phase = "after_test_traffic"

    def _ready_or_shift(self, play: Play) -> None:
        ready = (play.dep.deployment_group.blue_green_deployment_configuration or {}).get(
            "deploymentReadyOption") or {}
        if ready.get("actionOnTimeout") == "STOP_DEPLOYMENT":
            play.phase, play.dep.status = "ready_wait", "Ready"
            play.deadline = now() + scaled(float(ready.get("waitTimeInMinutes") or 0) * 60)
            log.info("deployment %s Ready", play.dep.deployment_id)
        else:
            self._begin_shift(play)

    def _begin_shift(self, play: Play) -> None:
        play.dep.status = "InProgress"
        name = str(play.dep.deployment_config_name or "CodeDeployDefault.ECSAllAtOnce")
        play.steps = shift_steps(routing_for(name) or {"type": "AllAtOnce"})
        play.phase = "before_traffic"

    def _allow_traffic(self, play: Play) -> None:
        play.event("AllowTraffic", "InProgress")
        play.phase, play.step, play.next_at = "shift", 0, 0.0

    def _shift(self, play: Play) -> None:
        if now() < play.next_at:
            return
        if play.step >= len(play.steps):
            self._after_shift(play)
            return
        pct, wait = play.steps[play.step]
        play.green_weight = pct
        for arn in play.prod:
            set_forward(arn, {play.blue_tg: 100 - pct, play.green_tg: pct})
        play.moved_at = now()
        log.info("deployment %s: %s%% of production on green", play.dep.deployment_id, pct)
        play.step += 1
        play.next_at = now() + (scaled(wait * 60) if wait else 0.0)

    def _after_shift(self, play: Play) -> None:
        play.passed("AllowTraffic")
        play.phase = "after_traffic"

    def _termination_wait(self, play: Play) -> None:
        ecs().update_service_primary_task_set(play.service.cluster_name, play.service.name, play.green_ts)
        term = (play.dep.deployment_group.blue_green_deployment_configuration or {}).get(
            "terminateBlueInstancesOnDeploymentSuccess") or {}
        if term.get("action") == "KEEP_ALIVE":
            self._succeed(play)
            return
        play.dep.instance_termination_wait_time_started = True
        play.deadline = now() + scaled(float(term.get("terminationWaitTimeInMinutes") or 0) * 60)
        play.phase = "bake"

    def _terminate_blue(self, play: Play) -> None:
        if now() < play.moved_at + scaled(PROPAGATION_SECONDS):
            return  # old routes still reach blue until the last listener change propagated (see proxy.py)
        if play.blue_ts and self._task_set(play, play.blue_ts):
            ecs().delete_task_set(play.service.cluster_name, play.service.name, play.blue_ts)
        self._succeed(play)

    def _succeed(self, play: Play) -> None:
        play.phase, play.dep.status, play.dep.complete_time = "done", "Succeeded", epoch()
        play.dep.deployment_overview = self._overview("Succeeded")
        log.info("deployment %s Succeeded", play.dep.deployment_id)

    # -- stopping and rolling back -----------------------------------------
    def _alarm_stop(self, play: Play) -> bool:
        dep = play.dep
        cfg = dep.override_alarm_configuration or dep.deployment_group.alarm_configuration or {}
        if not isinstance(cfg, dict) or not cfg.get("enabled"):
            return False
        names = [a.get("name") for a in cfg.get("alarms") or []]
        alarms = cloudwatch().alarms
        firing = [n for n in names if n in alarms and alarms[n].state_value == "ALARM"]
        if not firing:
            return False
        message = ("One or more alarms have been activated according to the Amazon CloudWatch "
                   f"metrics you selected, and the affected deployments have been stopped. "
                   f"Activated alarms: <{', '.join(firing)}>")
        self.stop(play, "ALARM_ACTIVE", message, rollback=self._rollback_on(dep, "DEPLOYMENT_STOP_ON_ALARM"))
        return True

    @staticmethod
    def _rollback_on(dep: Any, event: str) -> bool:
        cfg = dep.auto_rollback_configuration or dep.deployment_group.auto_rollback_configuration or {}
        return bool(cfg.get("enabled")) and event in (cfg.get("events") or [])

    def stop(self, play: Play, code: str, message: str, rollback: bool) -> None:
        """Stop the deployment (status Stopped), rolling back when asked."""
        self._end(play, "Stopped", code, message, rollback)

    def fail(self, play: Play, code: str, message: str, event: str | None = None) -> None:
        if event:
            play.event(event, "Failed")
        self._end(play, "Failed", code, message, self._rollback_on(play.dep, "DEPLOYMENT_FAILURE"))

    def _end(self, play: Play, status: str, code: str, message: str, rollback: bool) -> None:
        dep = play.dep
        for ev in play.events.values():
            if ev["status"] in ("Pending", "InProgress"):
                ev["status"] = "Skipped" if ev["status"] == "Pending" else "Failed"
        dep.status, dep.complete_time = status, epoch()
        dep.error_information = {"code": code, "message": message}
        play.phase = "done"
        if rollback:
            self._rollback(play, message)
        elif status == "Failed" and play.green_weight == 0:
            self._restore(play)  # nothing reached production: do not leave a crash loop behind
        dep.deployment_overview = self._overview(status)
        log.info("deployment %s %s: %s", dep.deployment_id, status, message)

    def _rollback(self, play: Play, reason: str) -> None:
        """Production (and test) traffic back to blue, replacement task set removed."""
        self._restore(play)
        dep = play.dep
        rb: Any = DeploymentInfo(dep.application, dep.deployment_group, dep.revision,
                            dep.deployment_config_name, f"Rollback of deployment {dep.deployment_id}",
                            None, None, None, None, None, None, "codeDeployRollback")
        rb.status, rb.start_time, rb.complete_time = "Succeeded", epoch(), epoch()
        rb.deployment_overview = self._overview("Succeeded")
        rb.rollback_info = {"rollbackTriggeringDeploymentId": dep.deployment_id,
                            "rollbackMessage": f"Rollback of deployment {dep.deployment_id}."}
        codedeploy().deployments[rb.deployment_id] = rb
        dep.rollback_info = {
            "rollbackDeploymentId": rb.deployment_id,
            "rollbackMessage": f"Deployment {dep.deployment_id} was rolled back: {reason}"[:1000],
        }

    def _restore(self, play: Play) -> None:
        if play.blue_tg:
            for arn in play.prod + play.test:
                set_forward(arn, {play.blue_tg: 100})
        play.green_weight = 0
        if play.service is not None:
            if play.blue_ts and self._task_set(play, play.blue_ts):
                ecs().update_service_primary_task_set(play.service.cluster_name, play.service.name,
                                                      play.blue_ts)
            if play.green_ts and self._task_set(play, play.green_ts):
                # removed once the listeners' way back to blue has propagated (old routes still reach green)
                self.doomed.append((now() + scaled(PROPAGATION_SECONDS), play.service.cluster_name,
                                    play.service.name, play.green_ts))

    # -- helpers -------------------------------------------------------------
    @staticmethod
    def _task_set(play: Play, arn: str) -> Any:
        return next((ts for ts in play.service.task_sets if ts.task_set_arn == arn), None)

    @staticmethod
    def _overview(status: str) -> dict[str, int]:
        view = {"Pending": 0, "InProgress": 0, "Succeeded": 0, "Failed": 0, "Skipped": 0, "Ready": 0}
        key = {"Created": "Pending", "Queued": "Pending", "Stopped": "Failed"}.get(status, status)
        view[key if key in view else "InProgress"] = 1
        return view

    def target(self, play: Play) -> dict[str, Any]:
        """The ECSTarget shape of GetDeploymentTarget."""
        dep, svc = play.dep, play.service
        weights = forward_weights(play.prod[0]) if play.prod else {}
        infos = []
        for arn, label, tg in ((play.blue_ts, "Blue", play.blue_tg), (play.green_ts, "Green", play.green_tg)):
            ts = self._task_set(play, arn) if svc is not None and arn else None
            if ts is None:
                continue
            total = sum(weights.values()) or 1
            infos.append({
                "identifer": ts.id, "desiredCount": ts.computed_desired_count,
                "pendingCount": ts.pending_count, "runningCount": ts.running_count,
                "status": ts.status, "trafficWeight": 100.0 * weights.get(tg, 0) / total,
                "targetGroup": {"name": tg.split("/")[-2] if tg else ""}, "taskSetLabel": label,
            })
        status = {"Ready": "Ready", "Created": "Pending"}.get(dep.status, dep.status)
        return {
            "deploymentId": dep.deployment_id,
            "targetId": f"{svc.cluster_name}:{svc.name}" if svc is not None else "",
            "targetArn": svc.arn if svc is not None else "",
            "lastUpdatedAt": epoch(),
            "lifecycleEvents": [play.events[n] for n in EVENTS if n in play.events],
            "status": status, "taskSetsInfo": infos,
        }

