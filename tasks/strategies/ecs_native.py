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
from datetime import UTC, datetime, timedelta
from typing import Any

from prefect import get_run_logger

from tasks.aws import ecs as ecs_ops
from tasks.aws import traffic
from tasks.aws.clients import AwsClients
from tasks.aws.codedeploy import aws_console, console_link
from tasks.aws.metrics import Pair
from tasks.aws.retry import stage
from tasks.aws.traffic import Routing
from tasks.config.models import ServiceConfig
from tasks.core.errors import ConfigError, DeployError, RolledBack
from tasks.core.settings import Settings
from tasks.core.waits import poll
from tasks.release import analysis
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
# How long ECS may take to list the deployment an UpdateService started (AWS seconds, time-scaled in a rehearsal),
# and how far the worker's clock may be ahead of AWS's when it filters ListServiceDeployments by createdAt.
APPEAR_SECONDS = 180
MARGIN_SECONDS = 60.0  # polling and API latency, wall time
CLOCK_SKEW = timedelta(minutes=5)


# DeploymentLifecycleHookTimeoutConfiguration.timeoutInMinutes, botocore's ECS model: "The number of minutes
# Amazon ECS waits for the lifecycle hook to complete before taking the timeout action", min 1, max 20160 (14 days).
PAUSE_MAX_MINUTES = 20160


def pause_minutes(cfg: ServiceConfig) -> int:
    """The PAUSE hook's timeout: the verification pause, or the approval wait when the release asks for one
    (the hook holds production while a person decides; ECS rolls back when it runs out)."""
    seconds = cfg.strategy.pause_timeout_seconds
    if cfg.approval == "required":
        seconds = max(seconds, cfg.approval_timeout_seconds)
    return min(PAUSE_MAX_MINUTES, max(1, math.ceil(seconds / 60)))


def deployment_configuration(cfg: ServiceConfig) -> dict[str, Any]:
    """What the release asks ECS for: the traffic shape, the bake, alarms and the verification pause."""
    t = cfg.strategy.traffic
    out: dict[str, Any] = {
        "strategy": SHAPES[t.type],
        "bakeTimeInMinutes": math.ceil(cfg.bake_seconds / 60),
        "lifecycleHooks": [{"targetType": "PAUSE", "lifecycleStages": [PAUSE_STAGE], "timeoutConfiguration": {
            "timeoutInMinutes": pause_minutes(cfg), "action": "ROLLBACK"}}],
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


@dataclass(frozen=True)
class Budgets:
    """Wall seconds each wait may last: the deployment's own time from the release's settings (time-scaled in a
    rehearsal), green's start (``timeouts.green_healthy_seconds``) where tasks start, and MARGIN_SECONDS."""

    appear: float
    scale_up: float
    shift: float
    bake: float
    clean_up: float
    roll_back: float


def shift_seconds(config: dict[str, Any]) -> float:
    """How long ECS takes to move production, from the deployment configuration the release sends.

    LINEAR: a step of stepPercent every stepBakeTimeInMinutes, the bake "not applied after reaching 100
    percent traffic"; CANARY: canaryBakeTimeInMinutes once; BLUE_GREEN: at once.
    """
    if config["strategy"] == "LINEAR":
        linear = config["linearConfiguration"]
        steps = math.ceil(100 / float(linear["stepPercent"]) - 1e-9)
        return (steps - 1) * float(linear["stepBakeTimeInMinutes"]) * 60
    if config["strategy"] == "CANARY":
        return float(config["canaryConfiguration"]["canaryBakeTimeInMinutes"]) * 60
    return 0.0


def budgets(cfg: ServiceConfig, settings: Settings, health_seconds: float, drain_seconds: float) -> Budgets:
    """HEALTH_SECONDS: a new target's way to healthy; DRAIN_SECONDS: the target groups' deregistration delay."""
    config = deployment_configuration(cfg)
    start = float(cfg.timeouts.green_healthy_seconds)

    def wall(seconds: float, tasks_start: bool = False) -> float:
        return settings.scaled(seconds) + (start if tasks_start else 0.0) + MARGIN_SECONDS

    return Budgets(appear=settings.scaled(APPEAR_SECONDS) + 5, scale_up=wall(health_seconds, tasks_start=True),
                   shift=wall(shift_seconds(config) + health_seconds),
                   bake=wall(float(config["bakeTimeInMinutes"]) * 60), clean_up=wall(drain_seconds),
                   roll_back=wall(health_seconds + drain_seconds, tasks_start=True))


def target_group_times(elbv2: Any, target_groups: tuple[str, ...]) -> tuple[float, float]:
    """(health-check time, deregistration delay) of the slowest of the target groups, as ELB is set up."""
    groups = elbv2.describe_target_groups(TargetGroupArns=list(target_groups))["TargetGroups"]
    health = max((float(g.get("HealthCheckIntervalSeconds") or 30) * float(g.get("HealthyThresholdCount") or 5)
                  for g in groups), default=150.0)
    drain = 0.0
    for arn in target_groups:
        attrs = elbv2.describe_target_group_attributes(TargetGroupArn=arn)["Attributes"]
        delay = next((a["Value"] for a in attrs if a["Key"] == "deregistration_delay.timeout_seconds"), "300")
        drain = max(drain, float(delay))
    return health, drain


def describe(ecs: Any, arn: str) -> dict[str, Any]:
    return dict(ecs.describe_service_deployments(serviceDeploymentArns=[arn])["serviceDeployments"][0])


def target_task_definition(ecs: Any, dep: dict[str, Any]) -> str:
    rev = (dep.get("targetServiceRevision") or {}).get("arn") or dep.get("targetServiceRevisionArn")
    found = ecs.describe_service_revisions(serviceRevisionArns=[rev])["serviceRevisions"]
    return str(found[0]["taskDefinition"]) if found else ""


def in_flight(cfg: ServiceConfig, ecs: Any) -> list[dict[str, Any]]:
    listed = ecs.list_service_deployments(cluster=cfg.ecs.cluster, service=cfg.ecs.service, status=ACTIVE)
    return list(listed["serviceDeployments"])


def console_url(settings: Settings, cfg: ServiceConfig) -> str:
    """The service's deployments in the AWS console; "" when the endpoint has none (the sandbox)."""
    console = aws_console(settings)
    return (f"{console}/ecs/v2/clusters/{cfg.ecs.cluster}/services/{cfg.ecs.service}/deployments"
            f"?region={settings.region}") if console else ""


@dataclass(frozen=True)
class NativeDeployment:
    arn: str
    task_definition: str
    url: str
    resumed: bool = False
    since: datetime | None = None  # a fresh release: when it asked for the deployment (createdAt filter)
    known: frozenset[str] = frozenset()


def raise_if_failed(cfg: ServiceConfig, dep: dict[str, Any]) -> None:
    """ECS ended or is rolling back the deployment: the run ends with ECS's own reason."""
    if dep["status"] in FAILED:
        reason = dep.get("statusReason") or (dep.get("rollback") or {}).get("reason") or "no reason given"
        raise RolledBack(f"ECS {dep['status']} in {dep.get('lifecycleStage')}: {reason}", service=cfg.name,
                         deployment_id=dep["serviceDeploymentArn"])


@stage("update service", "update service {cfg.name}@{sha:.7}")
def start(cfg: ServiceConfig, clients: AwsClients, task_definition: str, sha: str,
          appear_seconds: float) -> NativeDeployment:
    """UpdateService to the new revision, unless a service deployment of it is already in flight.

    The deployment UpdateService started is looked up (ecs_ops.find_service_deployment), never read from its
    answer: for a while ECS may still name the previous one there. If ECS lists none within APPEAR_SECONDS the
    release fails loudly; the rollback looks for it once more.
    """
    log, ecs = get_run_logger(), clients.get("ecs")
    url = console_url(clients.settings, cfg)
    for brief in in_flight(cfg, ecs):
        if target_task_definition(ecs, brief) == task_definition:
            arn = brief["serviceDeploymentArn"]
            log.info("service deployment %s of %s is %s: resumed %s", arn, task_definition, brief["status"], url)
            return NativeDeployment(arn, task_definition, url, resumed=True)
        log.warning("service deployment %s of another revision is in flight: this release supersedes it",
                    brief["serviceDeploymentArn"])
    since = datetime.now(UTC) - CLOCK_SKEW
    known = frozenset(b["serviceDeploymentArn"] for b in ecs_ops.service_deployments_since(
        ecs, cfg.ecs.cluster, cfg.ecs.service, since))
    config = deployment_configuration(cfg)
    ecs.update_service(cluster=cfg.ecs.cluster, service=cfg.ecs.service, taskDefinition=task_definition,
                       deploymentConfiguration=config)
    dep = find_started(cfg, clients, task_definition, since, known, appear_seconds)
    arn = str(dep["serviceDeploymentArn"])
    log.info("service deployment %s started (%s) %s", arn, config["strategy"], url)
    return NativeDeployment(arn, task_definition, url, since=since, known=known)


def find_started(cfg: ServiceConfig, clients: AwsClients, task_definition: str, since: datetime,
                 known: frozenset[str], seconds: float) -> dict[str, Any]:
    """The service deployment of TASK_DEFINITION created after SINCE; DeployError after SECONDS without one."""
    ecs = clients.get("ecs")

    def look() -> dict[str, Any] | None:
        return ecs_ops.find_service_deployment(ecs, cfg.ecs.cluster, cfg.ecs.service, task_definition, since, known)

    try:
        found: dict[str, Any] = poll(look, timeout=seconds, what="the service deployment to appear",
                                     log=get_run_logger().info, cap=clients.settings.poll_cap())
    except DeployError as exc:
        raise DeployError(
            f"UpdateService to {task_definition.rsplit('/', 1)[-1]} was accepted, but ECS listed no service "
            f"deployment of it (ListServiceDeployments, created after {since:%H:%M:%S} UTC) within {seconds:.0f}s; "
            f"the release cannot follow or verify a deployment it cannot see. Check the service's events "
            f"(DescribeServices) {console_url(clients.settings, cfg)}".rstrip(), service=cfg.name) from exc
    return found


def _follow(cfg: ServiceConfig, clients: AwsClients, dep: NativeDeployment, until: Callable[[dict[str, Any]], bool],
            what: str, timeout: float, on_look: Callable[[dict[str, Any]], None] | None = None) -> dict[str, Any]:
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

    found = verification.watch(cfg, clients, lambda: seen[0], look, timeout=timeout, until=what,
                               deployment_id=dep.arn)
    assert found is not None
    return found


def at_or_after(info: dict[str, Any], stage_name: str) -> bool:
    return info["status"] == "SUCCESSFUL" or STAGES.index(info.get("lifecycleStage") or STAGES[0]) >= STAGES.index(
        stage_name)


def awaiting_hook(info: dict[str, Any]) -> str | None:
    hooks = [h for h in info.get("lifecycleHookDetails") or [] if h.get("status") == "AWAITING_ACTION"]
    return str(hooks[0]["hookId"]) if hooks and info.get("lifecycleStage") == PAUSE_STAGE else None


@stage("scale up", "scale up {cfg.name}")
def wait_paused(cfg: ServiceConfig, clients: AwsClients, dep: NativeDeployment, timeout: float) -> dict[str, Any]:
    """Green up on the alternate target group and test traffic on it; production held at the pause.

    A fresh deployment that gets past the pause without holding at it was never verified: a DeployError
    (the release rolls it back) instead of a release that says Deployed without having looked at green.
    """
    info = _follow(cfg, clients, dep, lambda i: bool(awaiting_hook(i)) or at_or_after(i, "PRODUCTION_TRAFFIC_SHIFT"),
                   f"service deployment {dep.arn} to reach {PAUSE_STAGE}", timeout)
    if not awaiting_hook(info) and not dep.resumed:
        hooks = ", ".join(f"{h.get('hookId')} {h.get('status')}" for h in info.get("lifecycleHookDetails") or [])
        raise DeployError(
            f"service deployment {dep.arn.rsplit('/', 1)[-1]} is {info['status']} in {info.get('lifecycleStage')} "
            f"without having held at the {PAUSE_STAGE} PAUSE hook this release asked for (hooks seen: "
            f"{hooks or 'none'}): green was never verified through the test listener, so the release does not "
            "count it", service=cfg.name, deployment_id=dep.arn)
    return info


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
def watch_shift(cfg: ServiceConfig, clients: AwsClients, dep: NativeDeployment, on_step: Callable[[int], None],
                timeout: float, routing: Routing | None = None) -> None:
    """Follow ECS's production shift (all at once, linear or canary) as green's weight moves. With
    ``analysis`` (and ROUTING) each canary/linear step is judged as it goes (analysis.ShiftAnalysis); a fail
    asks ECS to roll back."""
    seen = [0]
    steps = analysis.ShiftAnalysis(cfg, clients, lambda: analysis_pair(cfg, clients, routing),
                                   deployment_id=dep.arn) if routing is not None else None

    def look(info: dict[str, Any]) -> None:
        weight = round((info.get("targetServiceRevision") or {}).get("requestedProductionTrafficWeight") or 0)
        if weight != seen[0] and weight > 0:
            seen[0] = weight
            on_step(weight)
        if steps is not None:
            steps.see(weight)

    _follow(cfg, clients, dep, lambda i: at_or_after(i, "POST_PRODUCTION_TRAFFIC_SHIFT"),
            f"service deployment {dep.arn} to move production", timeout, look)
    if steps is not None:
        steps.close()
    if seen[0] != 100:
        on_step(100)


def analysis_pair(cfg: ServiceConfig, clients: AwsClients, routing: Routing | None) -> Pair:
    """Green's and blue's target groups during the shift: ECS points the test listener rule wholly at green
    (TEST_TRAFFIC_SHIFT) and keeps it there while production moves; blue is the other of the two."""
    assert routing is not None
    ecs, elbv2 = clients.get("ecs"), clients.get("elbv2")
    service = ecs_ops.describe_service(ecs, cfg.ecs.cluster, cfg.ecs.service)
    rule = ((service.get("loadBalancers") or [{}])[0].get("advancedConfiguration") or {}).get("testListenerRule")
    if rule and ":listener-rule/" in rule:
        found = elbv2.describe_rules(RuleArns=[rule])["Rules"][0]
        weights = traffic.weights_of({"DefaultActions": found.get("Actions") or []})
    else:
        weights = traffic.get_weights(elbv2, routing.test_listener)
    green = max(routing.target_groups, key=lambda arn: weights.get(arn, 0))
    blue = next(arn for arn in routing.target_groups if arn != green)
    return Pair(routing.production_listener, green, blue)


@stage("bake", "bake {cfg.name}")
def bake(cfg: ServiceConfig, clients: AwsClients, dep: NativeDeployment, timeout: float) -> None:
    """ECS's bake with both revisions up; alarms still roll back."""
    _follow(cfg, clients, dep, lambda i: at_or_after(i, "CLEAN_UP"), f"service deployment {dep.arn} to bake", timeout)


@stage("clean up", "clean up {cfg.name}")
def clean_up(cfg: ServiceConfig, clients: AwsClients, dep: NativeDeployment, timeout: float) -> None:
    """ECS scales blue to zero; done when the service deployment is SUCCESSFUL."""
    _follow(cfg, clients, dep, lambda i: i["status"] == "SUCCESSFUL", f"service deployment {dep.arn} to clean up",
            timeout)


@stage("roll back", "roll back {cfg.name}")
def roll_back(cfg: ServiceConfig, clients: AwsClients, dep: NativeDeployment, timeout: float) -> dict[str, Any]:
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
                                timeout=timeout, what=f"service deployment {dep.arn} to roll back",
                                log=log.info, cap=clients.settings.poll_cap())
    return done


class EcsNativeSteps(LoadBalanced):
    """ECS-native blue/green, linear or canary: ECS moves traffic; the pipeline verifies at the pause."""

    def __init__(self, release: Release) -> None:
        super().__init__(release)
        self.dep: NativeDeployment | None = None
        self.info: dict[str, Any] = {}
        self.sent: tuple[datetime, frozenset[str]] | None = None  # UpdateService sent, deployment not yet seen
        if release.service is not None:
            check_rules_owned(self.clients.get("elbv2"), release.service, self.cfg, self.routing.production_listener,
                              self.routing.test_listener)
        health, drain = target_group_times(self.clients.get("elbv2"), self.routing.target_groups)
        self.budgets = budgets(self.cfg, self.clients.settings, health, drain)

    def before_production(self) -> Iterator[Step]:
        yield "update service", self._start
        yield "scale up", self._scale_up
        if awaiting_hook(self.info):
            yield "verify", self._verify

    def _start(self) -> None:
        r = self.release
        self.sent = (datetime.now(UTC) - CLOCK_SKEW, frozenset())
        self.dep = dep = start(self.cfg, self.clients, r.task_definition, r.sha, self.budgets.appear)
        r.note(f"ECS service deployment {console_link(dep.arn.rsplit('/', 1)[-1], dep.url)}"
               f"{' (resumed)' if dep.resumed else ''}")

    def _scale_up(self) -> None:
        assert self.dep is not None
        self.info = wait_paused(self.cfg, self.clients, self.dep, self.budgets.scale_up)
        if not awaiting_hook(self.info):  # a resumed deployment an earlier run continued after verifying
            self.release.note(f"verification not repeated: service deployment {self.dep.arn.rsplit('/', 1)[-1]} "
                              f"is already in {self.info.get('lifecycleStage')}, past the {PAUSE_STAGE} pause an "
                              "earlier run of this release verified and continued")

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
                                                 lambda w: self.release.on_step(w, deployment_id=dep.arn),
                                                 self.budgets.shift, self.routing)
        if self.cfg.strategy.wait_until == "done":
            yield "bake", lambda: bake(self.cfg, self.clients, dep, self.budgets.bake)

    def after_bake(self) -> Iterator[Step]:
        dep = self.dep
        assert dep is not None
        if self.cfg.strategy.wait_until == "done":
            yield "clean up", lambda: clean_up(self.cfg, self.clients, dep, self.budgets.clean_up)
            return
        info = describe(self.clients.get("ecs"), dep.arn)
        self.release.note(f"stopped waiting (wait_until: traffic-shifted): service deployment "
                          f"{dep.arn.rsplit('/', 1)[-1]} is {info['status']} in {info.get('lifecycleStage')}; "
                          "ECS finishes the bake and clean-up, the next run picks it up")

    def roll_back(self, reason: str) -> RollbackResult | None:
        if self.dep is None and self.sent is not None:
            self.dep = self._sent_deployment()
        if self.dep is None:
            return None  # UpdateService never happened, or ECS started nothing: nothing moved
        done = roll_back(self.cfg, self.clients, self.dep, self.budgets.roll_back)
        if done["status"] == "SUCCESSFUL":
            where = self.on_group("production on green")
            return RollbackResult(where, f"{reason}; service deployment had already succeeded")
        ecs_words = done.get("statusReason") or ""
        text = reason if not ecs_words or ecs_words in reason else f"{reason}; ECS: {ecs_words}"
        return RollbackResult(self.on_group("production on blue"), text)

    def _sent_deployment(self) -> NativeDeployment | None:
        """The deployment an UpdateService this run sent started, if ECS lists it by now (once more, bounded)."""
        assert self.sent is not None
        since, known = self.sent
        td = self.release.task_definition
        try:
            found = find_started(self.cfg, self.clients, td, since, known, self.budgets.appear)
        except DeployError:
            get_run_logger().warning("UpdateService to %s was sent but ECS lists no service deployment of it", td)
            return None
        return NativeDeployment(str(found["serviceDeploymentArn"]), td, console_url(self.clients.settings,
                                                                                    self.cfg))

    def reconcile(self) -> Reconciled | None:
        """A run that stopped waiting (or died) after production moved: follow ECS to the end."""
        ecs = self.clients.get("ecs")
        for brief in in_flight(self.cfg, ecs):
            info = describe(ecs, brief["serviceDeploymentArn"])
            if info["status"] == "IN_PROGRESS" and at_or_after(info, "POST_PRODUCTION_TRAFFIC_SHIFT"):
                td = target_task_definition(ecs, info)
                dep = NativeDeployment(info["serviceDeploymentArn"], td, console_url(self.clients.settings,
                                                                                     self.cfg), True)
                get_run_logger().warning("following service deployment %s (%s), in flight when this run started",
                                         dep.arn, info["lifecycleStage"])
                clean_up(self.cfg, self.clients, dep, self.budgets.clean_up)
                return Reconciled("forward", td, f"followed service deployment {dep.arn.rsplit('/', 1)[-1]} "
                                                 f"from {info['lifecycleStage']} to SUCCESSFUL")
        return None

    def adopt_in_flight(self) -> str | None:
        """A service deployment still in progress: roll_back asks ECS to roll it back."""
        ecs = self.clients.get("ecs")
        for brief in in_flight(self.cfg, ecs):
            td = target_task_definition(ecs, brief)
            url = console_url(self.clients.settings, self.cfg)
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
    """The service must name what ECS needs to move traffic and what the release needs to verify green.

    ECS: the alternate target group, the production listener rule and the infrastructure role ECS assumes to
    move the rules (AdvancedConfiguration: "Specify the alternate target group, listener rules, and IAM role
    required for traffic shifting"). The release: a test listener rule, which ECS points at green before
    production moves; without one the checks at the pause would reach blue.
    """
    lbs = service.get("loadBalancers") or []
    adv = (lbs[0].get("advancedConfiguration") or {}) if lbs else {}
    missing = [k for k in ("alternateTargetGroupArn", "productionListenerRule", "testListenerRule", "roleArn")
               if not adv.get(k)]
    if missing:
        raise DeployError(f"service {cfg.ecs.service}: loadBalancers[].advancedConfiguration lacks "
                          f"{', '.join(missing)}: ECS blue/green needs the alternate target group, the production "
                          "listener rule and the infrastructure role to move traffic, and the release needs the "
                          "test listener rule to verify green before production moves; run "
                          f"`ecs-pipeline migrate {cfg.name} --to ecs-native` or add them", service=cfg.name)


def check_rules_owned(elbv2: Any, service: dict[str, Any], cfg: ServiceConfig, production_listener: str,
                      test_listener: str) -> None:
    """load_balancer.test_listener (production_listener) holds the test (production) listener rule ECS moves:
    otherwise the checks at the pause go through a listener ECS never points at green, and reach blue."""
    adv = ((service.get("loadBalancers") or [{}])[0].get("advancedConfiguration") or {})
    for key, listener, field in (("testListenerRule", test_listener, "test_listener"),
                                 ("productionListenerRule", production_listener, "production_listener")):
        rule = adv.get(key)
        if not rule or rule == listener:  # a Network Load Balancer names the listener itself
            continue
        rules = {r["RuleArn"] for r in elbv2.describe_rules(ListenerArn=listener)["Rules"]}
        if rule not in rules:
            raise ConfigError(f"load_balancer.{field}: listener {listener} does not hold the service's "
                              f"advancedConfiguration.{key} {rule}: ECS moves that rule, so checks through "
                              f"load_balancer.{field} would not reach green; point load_balancer.{field} at the "
                              "listener that holds it", service=cfg.name)
