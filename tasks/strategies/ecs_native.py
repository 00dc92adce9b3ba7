"""ECS-native blue/green, linear and canary (deploymentController ECS, strategy not ROLLING).

ECS moves the listener rules itself. The pipeline sends UpdateService with the
new revision and a deployment configuration that holds production at a PAUSE
hook after test traffic moved (POST_TEST_TRAFFIC_SHIFT); it verifies green
through the test listener there (and asks for approval), continues, follows
every lifecycle stage, and on any failure asks ECS to roll back. A rerun finds
the service deployment of its revision and resumes it instead of starting one.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

from prefect import get_run_logger

from tasks.aws import ecs as ecs_ops
from tasks.aws.clients import AwsClients
from tasks.aws.retry import stage
from tasks.config.models import ServiceConfig
from tasks.core.errors import DeployError, RolledBack
from tasks.core.waits import poll
from tasks.release.contract import LoadBalanced, Reconciled, Release, RollbackResult, Step
from tasks.strategies import verification
from tasks.strategies.verification import Green, verify_green

STAGES = ("RECONCILE_SERVICE", "PRE_SCALE_UP", "SCALE_UP", "POST_SCALE_UP", "TEST_TRAFFIC_SHIFT",
          "POST_TEST_TRAFFIC_SHIFT", "PRODUCTION_TRAFFIC_SHIFT", "POST_PRODUCTION_TRAFFIC_SHIFT",
          "BAKE_TIME", "CLEAN_UP")
NATIVE = ("BLUE_GREEN", "LINEAR", "CANARY")
ACTIVE = ["PENDING", "IN_PROGRESS"]
FAILED = ("STOPPED", "ROLLBACK_REQUESTED", "ROLLBACK_IN_PROGRESS", "ROLLBACK_SUCCESSFUL", "ROLLBACK_FAILED")
PAUSE_STAGE = "POST_TEST_TRAFFIC_SHIFT"
SHAPES = {"all-at-once": "BLUE_GREEN", "linear": "LINEAR", "canary": "CANARY"}


def deployment_configuration(cfg: ServiceConfig) -> dict[str, Any]:
    """What the release asks ECS for: the traffic shape, the bake, alarms and the verification pause."""
    t = cfg.strategy.traffic
    out: dict[str, Any] = {
        "strategy": SHAPES[t.type],
        "bakeTimeInMinutes": math.ceil(cfg.bake_seconds / 60),
        "lifecycleHooks": [{"targetType": "PAUSE", "lifecycleStages": [PAUSE_STAGE], "timeoutConfiguration": {
            "timeoutInMinutes": max(1, math.ceil(cfg.strategy.pause_timeout_seconds / 60)), "action": "ROLLBACK"}}],
        "deploymentCircuitBreaker": {"enable": True, "rollback": True},
    }
    step_minutes = math.ceil((t.interval_seconds or 0) / 60)
    if t.type == "linear":
        out["linearConfiguration"] = {"stepPercent": float(t.percent or 10), "stepBakeTimeInMinutes": step_minutes}
    elif t.type == "canary":
        out["canaryConfiguration"] = {"canaryPercent": float(t.percent or 5), "canaryBakeTimeInMinutes": step_minutes}
    if cfg.verify.alarms:
        out["alarms"] = {"alarmNames": list(cfg.verify.alarms), "enable": True, "rollback": True}
    return out


def describe(ecs: Any, arn: str) -> dict[str, Any]:
    return dict(ecs.describe_service_deployments(serviceDeploymentArns=[arn])["serviceDeployments"][0])


def target_task_definition(ecs: Any, dep: dict[str, Any]) -> str:
    rev = (dep.get("targetServiceRevision") or {}).get("arn") or dep.get("targetServiceRevisionArn")
    found = ecs.describe_service_revisions(serviceRevisionArns=[rev])["serviceRevisions"]
    return str(found[0]["taskDefinition"]) if found else ""


def in_flight(cfg: ServiceConfig, ecs: Any) -> list[dict[str, Any]]:
    listed = ecs.list_service_deployments(cluster=cfg.ecs.cluster, service=cfg.ecs.service, status=ACTIVE)
    return list(listed["serviceDeployments"])


def console_url(region: str, cfg: ServiceConfig) -> str:
    return (f"https://{region}.console.aws.amazon.com/ecs/v2/clusters/{cfg.ecs.cluster}/services/"
            f"{cfg.ecs.service}/deployments?region={region}")


@dataclass(frozen=True)
class NativeDeployment:
    arn: str
    task_definition: str
    url: str
    resumed: bool = False


def raise_if_failed(cfg: ServiceConfig, dep: dict[str, Any]) -> None:
    """ECS ended or is rolling back the deployment: the run ends with ECS's own reason."""
    if dep["status"] in FAILED:
        reason = dep.get("statusReason") or (dep.get("rollback") or {}).get("reason") or "no reason given"
        raise RolledBack(f"ECS {dep['status']} in {dep.get('lifecycleStage')}: {reason}", service=cfg.name,
                         deployment_id=dep["serviceDeploymentArn"])


@stage("update service", "update service {cfg.name}@{sha:.7}")
def start(cfg: ServiceConfig, clients: AwsClients, task_definition: str, sha: str) -> NativeDeployment:
    """UpdateService to the new revision, unless a service deployment of it is already in flight."""
    log, ecs = get_run_logger(), clients.get("ecs")
    url = console_url(clients.settings.region, cfg)
    for brief in in_flight(cfg, ecs):
        if target_task_definition(ecs, brief) == task_definition:
            arn = brief["serviceDeploymentArn"]
            log.info("service deployment %s of %s is %s: resumed; %s", arn, task_definition, brief["status"], url)
            return NativeDeployment(arn, task_definition, url, resumed=True)
        log.warning("service deployment %s of another revision is in flight: this release supersedes it",
                    brief["serviceDeploymentArn"])
    service = ecs.update_service(cluster=cfg.ecs.cluster, service=cfg.ecs.service, taskDefinition=task_definition,
                                 deploymentConfiguration=deployment_configuration(cfg))["service"]
    arn = service.get("currentServiceDeployment") or in_flight(cfg, ecs)[0]["serviceDeploymentArn"]
    log.info("service deployment %s started (%s): %s", arn, deployment_configuration(cfg)["strategy"], url)
    return NativeDeployment(str(arn), task_definition, url)


def _follow(cfg: ServiceConfig, clients: AwsClients, dep: NativeDeployment, until: Callable[[dict[str, Any]], bool],
            what: str, on_look: Callable[[dict[str, Any]], None] | None = None) -> dict[str, Any]:
    """Poll the deployment, logging each stage, until ``until``; alarms and ECS's rollback fail it."""
    log, ecs, seen = get_run_logger(), clients.get("ecs"), [""]

    def look() -> dict[str, Any] | None:
        info = describe(ecs, dep.arn)
        if info.get("lifecycleStage") != seen[0]:
            seen[0] = str(info.get("lifecycleStage"))
            log.info("service deployment %s: %s %s", dep.arn.rsplit("/", 1)[-1], info["status"], seen[0])
        raise_if_failed(cfg, info)
        if on_look is not None:
            on_look(info)
        return info if until(info) else None

    found = verification.watch(cfg, clients, lambda: seen[0], look, timeout=cfg.timeouts.rollout_seconds,
                               until=what, deployment_id=dep.arn)
    assert found is not None
    return found


def at_or_after(info: dict[str, Any], stage_name: str) -> bool:
    return info["status"] == "SUCCESSFUL" or STAGES.index(info.get("lifecycleStage") or STAGES[0]) >= STAGES.index(
        stage_name)


def awaiting_hook(info: dict[str, Any]) -> str | None:
    hooks = [h for h in info.get("lifecycleHookDetails") or [] if h.get("status") == "AWAITING_ACTION"]
    return str(hooks[0]["hookId"]) if hooks and info.get("lifecycleStage") == PAUSE_STAGE else None


@stage("scale up", "scale up {cfg.name}")
def wait_paused(cfg: ServiceConfig, clients: AwsClients, dep: NativeDeployment) -> dict[str, Any]:
    """Green up on the alternate target group and test traffic on it; production held at the pause."""
    return _follow(cfg, clients, dep, lambda i: bool(awaiting_hook(i)) or at_or_after(i, "PRODUCTION_TRAFFIC_SHIFT"),
                   f"service deployment {dep.arn} to reach {PAUSE_STAGE}")


@stage("continue to production", "continue to production {cfg.name}")
def continue_to_production(cfg: ServiceConfig, clients: AwsClients, dep: NativeDeployment) -> None:
    ecs = clients.get("ecs")
    info = describe(ecs, dep.arn)
    raise_if_failed(cfg, info)
    hook = awaiting_hook(info)
    if hook is None:
        get_run_logger().info("service deployment %s already past the pause (%s)", dep.arn, info["lifecycleStage"])
        return
    ecs.continue_service_deployment(serviceDeploymentArn=dep.arn, hookId=hook, action="CONTINUE")
    get_run_logger().info("service deployment %s continued to production", dep.arn)


@stage("watch shift", "watch shift {cfg.name}")
def watch_shift(cfg: ServiceConfig, clients: AwsClients, dep: NativeDeployment, on_step: Callable[[int], None]) -> None:
    """Follow ECS's production shift (all at once, linear or canary) as green's weight moves."""
    seen = [0]

    def look(info: dict[str, Any]) -> None:
        weight = round((info.get("targetServiceRevision") or {}).get("requestedProductionTrafficWeight") or 0)
        if weight != seen[0] and weight > 0:
            seen[0] = weight
            on_step(weight)

    _follow(cfg, clients, dep, lambda i: at_or_after(i, "POST_PRODUCTION_TRAFFIC_SHIFT"),
            f"service deployment {dep.arn} to move production", look)
    if seen[0] != 100:
        on_step(100)


@stage("bake", "bake {cfg.name}")
def bake(cfg: ServiceConfig, clients: AwsClients, dep: NativeDeployment) -> None:
    """ECS's bake with both revisions up; alarms still roll back."""
    _follow(cfg, clients, dep, lambda i: at_or_after(i, "CLEAN_UP"), f"service deployment {dep.arn} to bake")


@stage("clean up", "clean up {cfg.name}")
def clean_up(cfg: ServiceConfig, clients: AwsClients, dep: NativeDeployment) -> None:
    """ECS scales blue to zero; done when the service deployment is SUCCESSFUL."""
    _follow(cfg, clients, dep, lambda i: i["status"] == "SUCCESSFUL", f"service deployment {dep.arn} to clean up")


@stage("roll back", "roll back {cfg.name}")
def roll_back(cfg: ServiceConfig, clients: AwsClients, dep: NativeDeployment) -> dict[str, Any]:
    """ContinueServiceDeployment(ROLLBACK) at the pause, else StopServiceDeployment(ROLLBACK); wait."""
    ecs, log = clients.get("ecs"), get_run_logger()
    info = describe(ecs, dep.arn)
    if info["status"] in ACTIVE and ecs_ops.roll_back_service_deployment(ecs, dep.arn, awaiting_hook(info)):
        log.info("service deployment %s: rollback requested", dep.arn)
    ended = ("SUCCESSFUL", "STOPPED", "ROLLBACK_SUCCESSFUL", "ROLLBACK_FAILED")

    def over() -> dict[str, Any] | None:
        now = describe(ecs, dep.arn)
        return now if now["status"] in ended else None

    done: dict[str, Any] = poll(over,
                                timeout=cfg.timeouts.rollout_seconds, what=f"service deployment {dep.arn} to roll back",
                                log=log.info, cap=clients.settings.poll_cap())
    return done


class EcsNativeSteps(LoadBalanced):
    """ECS-native blue/green, linear or canary: ECS moves traffic; the pipeline verifies at the pause."""

    live_traffic = "100% green"

    def __init__(self, release: Release) -> None:
        super().__init__(release)
        self.dep: NativeDeployment | None = None
        self.info: dict[str, Any] = {}

    def before_production(self) -> Iterator[Step]:
        yield "update service", self._start
        yield "scale up", self._scale_up
        if awaiting_hook(self.info):
            yield "verify", self._verify

    def _start(self) -> None:
        r = self.release
        self.dep = dep = start(self.cfg, self.clients, r.task_definition, r.sha)
        r.note(f"ECS service deployment [{dep.arn.rsplit('/', 1)[-1]}]({dep.url})"
               f"{' (resumed)' if dep.resumed else ''}")

    def _scale_up(self) -> None:
        assert self.dep is not None
        self.info = wait_paused(self.cfg, self.clients, self.dep)

    def _verify(self) -> None:
        assert self.dep is not None
        tg = self.routing.target_groups[0]
        green = Green(None, tg, self.dep.task_definition, None, None)
        cfg = self.cfg.model_copy(update={"verify": self.cfg.verify.model_copy(update={"target_health": False})})
        self.release.note(*verify_green(cfg, self.clients, self.routing, green))

    def pauses_for_approval(self) -> bool:
        return bool(awaiting_hook(self.info))

    def to_production(self) -> Iterator[Step]:
        dep = self.dep
        assert dep is not None
        yield "continue to production", lambda: continue_to_production(self.cfg, self.clients, dep)
        yield "watch shift", lambda: watch_shift(self.cfg, self.clients, dep,
                                                 lambda w: self.release.on_step(w, deployment_id=dep.arn))
        if self.cfg.strategy.wait_until == "done":
            yield "bake", lambda: bake(self.cfg, self.clients, dep)

    def after_bake(self) -> Iterator[Step]:
        dep = self.dep
        assert dep is not None
        if self.cfg.strategy.wait_until == "done":
            yield "clean up", lambda: clean_up(self.cfg, self.clients, dep)
            return
        info = describe(self.clients.get("ecs"), dep.arn)
        self.release.note(f"stopped waiting (wait_until: traffic-shifted): service deployment "
                          f"{dep.arn.rsplit('/', 1)[-1]} is {info['status']} in {info.get('lifecycleStage')}; "
                          "ECS finishes the bake and clean-up, the next run picks it up")

    def roll_back(self, reason: str) -> RollbackResult | None:
        if self.dep is None:
            return None  # UpdateService never happened: nothing moved
        done = roll_back(self.cfg, self.clients, self.dep)
        if done["status"] == "SUCCESSFUL":
            return RollbackResult("production on green", f"{reason}; service deployment had already succeeded")
        ecs_words = done.get("statusReason") or ""
        text = reason if not ecs_words or ecs_words in reason else f"{reason}; ECS: {ecs_words}"
        return RollbackResult("production on blue", text)

    def reconcile(self) -> Reconciled | None:
        """A run that stopped waiting (or died) after production moved: follow ECS to the end."""
        ecs = self.clients.get("ecs")
        for brief in in_flight(self.cfg, ecs):
            info = describe(ecs, brief["serviceDeploymentArn"])
            if info["status"] == "IN_PROGRESS" and at_or_after(info, "POST_PRODUCTION_TRAFFIC_SHIFT"):
                td = target_task_definition(ecs, info)
                dep = NativeDeployment(info["serviceDeploymentArn"], td, console_url(self.clients.settings.region,
                                                                                     self.cfg), True)
                get_run_logger().warning("following service deployment %s (%s), in flight when this run started",
                                         dep.arn, info["lifecycleStage"])
                clean_up(self.cfg, self.clients, dep)
                return Reconciled("forward", td, f"followed service deployment {dep.arn.rsplit('/', 1)[-1]} "
                                                 f"from {info['lifecycleStage']} to SUCCESSFUL")
        return None

    def adopt_in_flight(self) -> str | None:
        """A service deployment still in progress: roll_back asks ECS to roll it back."""
        ecs = self.clients.get("ecs")
        for brief in in_flight(self.cfg, ecs):
            td = target_task_definition(ecs, brief)
            url = console_url(self.clients.settings.region, self.cfg)
            self.dep = NativeDeployment(brief["serviceDeploymentArn"], td, url, resumed=True)
            self.release.task_definition = td
            return (f"ECS service deployment {self.dep.arn.rsplit('/', 1)[-1]} of {td.rsplit('/', 1)[-1]} "
                    f"was {brief['status']}")
        return None

    def where_traffic_is(self) -> str:
        """Production's weights as the current service deployment gives them (DescribeServices' revision
        summaries carry no weights)."""
        ecs = self.clients.get("ecs")
        svc = ecs_ops.describe_service(ecs, self.cfg.ecs.cluster, self.cfg.ecs.service)
        arn = svc.get("currentServiceDeployment")
        dep = describe(ecs, arn) if arn else {}
        revs = [r for r in [dep.get("targetServiceRevision"), *(dep.get("sourceServiceRevisions") or [])] if r]
        return "production " + " / ".join(f"{r.get('requestedProductionTrafficWeight', 0):.0f}% "
                                          f"{r.get('arn', '?').rsplit('/', 1)[-1]}" for r in revs)


def live_strategy(service: dict[str, Any]) -> str:
    return str((service.get("deploymentConfiguration") or {}).get("strategy") or "ROLLING")


def check_native(service: dict[str, Any], cfg: ServiceConfig) -> None:
    """The service must have the alternate target group and listener rules ECS moves."""
    lbs = service.get("loadBalancers") or []
    adv = (lbs[0].get("advancedConfiguration") or {}) if lbs else {}
    if not adv.get("alternateTargetGroupArn") or not adv.get("productionListenerRule"):
        raise DeployError(f"service {cfg.ecs.service} has no loadBalancers[].advancedConfiguration "
                          "(alternateTargetGroupArn, productionListenerRule): ECS blue/green cannot move traffic; "
                          f"run `ecs-pipeline migrate {cfg.name} --to ecs-native` or add it", service=cfg.name)
