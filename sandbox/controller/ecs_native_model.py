"""What an ECS-native blue/green deployment is made of: revisions, hooks, service deployments.

Kept apart from the code that plays them (ecs_native.py) and the API that shows
them (ecs_native_api.py). Times are epoch seconds; the API turns them into the
timestamps botocore expects.
"""

from __future__ import annotations

import itertools
import uuid
from dataclasses import dataclass, field
from typing import Any

from moto.elbv2.models import FakeAction

from . import rolling
from .proxy import _find_listener
from .traffic import forward_weights, set_forward
from .world import ACCOUNT, REGION, elbv2, now

NATIVE = ("BLUE_GREEN", "LINEAR", "CANARY")
STAGES = ("RECONCILE_SERVICE", "PRE_SCALE_UP", "SCALE_UP", "POST_SCALE_UP", "TEST_TRAFFIC_SHIFT",
          "POST_TEST_TRAFFIC_SHIFT", "PRODUCTION_TRAFFIC_SHIFT", "POST_PRODUCTION_TRAFFIC_SHIFT",
          "BAKE_TIME", "CLEAN_UP")
HOOKABLE = frozenset(STAGES) - {"SCALE_UP", "BAKE_TIME", "CLEAN_UP"}
ENDED = frozenset({"SUCCESSFUL", "STOPPED", "ROLLBACK_SUCCESSFUL", "ROLLBACK_FAILED"})
ROLLING_BACK = frozenset({"ROLLBACK_REQUESTED", "ROLLBACK_IN_PROGRESS"})
# ECS's defaults where the request leaves a field out, as the ECS API Reference gives them:
# DeploymentLifecycleHookTimeoutConfiguration: timeoutInMinutes "Default: 1440 (24 hours)", action "Default: ROLLBACK"
# (docs.aws.amazon.com/AmazonECS/latest/APIReference/API_DeploymentLifecycleHookTimeoutConfiguration.html);
# LinearConfiguration: stepPercent "The default value is 10.0", stepBakeTimeInMinutes "The default value is 6"
# (.../API_LinearConfiguration.html); CanaryConfiguration: canaryPercent "The default value is 5.0",
# canaryBakeTimeInMinutes "The default value is 10" (.../API_CanaryConfiguration.html). DeploymentConfiguration
# documents no default for bakeTimeInMinutes ("You must provide this parameter when you use the BLUE_GREEN
# deployment strategy"): the sandbox bakes 0 minutes when it is missing.
DEFAULT_HOOK_TIMEOUT_MINUTES = 1440
DEFAULT_HOOK_TIMEOUT_ACTION = "ROLLBACK"
DEFAULT_LINEAR = {"stepPercent": 10.0, "stepBakeTimeInMinutes": 6}
DEFAULT_CANARY = {"canaryPercent": 5.0, "canaryBakeTimeInMinutes": 10}
# How long a new service deployment stays out of sight (AWS seconds, time-scaled). botocore documents
# Service.currentServiceDeployment only as "The ARN of the current service deployment." and UpdateService as
# answering the service "following the update call"; nothing says either names the deployment the call starts,
# and aws/containers-roadmap#2709 ("UpdateService call should return DeploymentArn of the created deployment")
# asks for exactly that. ecspresso waits for it (`time.Sleep(10 * time.Second) // wait for new deployment
# created`). The least convenient reading: for a while UpdateService's answer and DescribeServices still name
# the previous deployment, and ListServiceDeployments does not list the new one.
LIST_LAG_SECONDS = 20.0
_SEQ = itertools.count(1)


def strategy_of(service: Any) -> str:
    cfg = getattr(service, "deployment_configuration", None) or {}
    return str(cfg.get("strategy") or "ROLLING")


def is_native(service: Any) -> bool:
    """ECS controller with BLUE_GREEN, LINEAR or CANARY: played here, not by rolling.py."""
    ctype = (service.deployment_controller or {}).get("type", "ECS")
    return ctype == "ECS" and strategy_of(service) in NATIVE


def lambda_hooks(config: dict[str, Any]) -> list[str]:
    """Stages with AWS_LAMBDA hooks: the sandbox has no Lambda to invoke them."""
    return [",".join(h.get("lifecycleStages") or []) or "?" for h in config.get("lifecycleHooks") or []
            if h.get("targetType") == "AWS_LAMBDA"]


@dataclass
class Revision:
    """A service revision: the task definition and where its tasks register."""

    arn: str
    service_arn: str
    cluster_arn: str
    task_definition: str
    fleet_key: str
    target_group: str
    load_balancers: list[dict[str, Any]]
    launch_type: str
    created: float = field(default_factory=now)
    up: bool = False  # the fleet runs desiredCount tasks (else drains to zero)
    down_after: float = 0.0  # taken out of the rules: its tasks stay until that change has propagated

    def serving(self) -> bool:
        return self.up or now() < self.down_after

    def fleet_load_balancers(self) -> list[dict[str, Any]]:
        return [{"targetGroupArn": self.target_group, "containerName": lb.get("containerName"),
                 "containerPort": lb.get("containerPort")} for lb in self.load_balancers[:1]]


def revision_arn(cluster: str, service: str) -> str:
    return f"arn:aws:ecs:{REGION}:{ACCOUNT}:service-revision/{cluster}/{service}/{next(_SEQ)}{uuid.uuid4().int % 10**9}"


def deployment_arn(cluster: str, service: str) -> str:
    return f"arn:aws:ecs:{REGION}:{ACCOUNT}:service-deployment/{cluster}/{service}/{uuid.uuid4().hex[:22]}"


@dataclass
class Hook:
    """One lifecycle hook run at one stage."""

    hook_id: str
    target_type: str
    target_arn: str | None
    stage: str
    timeout_action: str
    timeout_seconds: float
    status: str = "AWAITING_ACTION"
    expires_at: float = 0.0

    def shape(self) -> dict[str, Any]:
        out: dict[str, Any] = {"hookId": self.hook_id, "targetType": self.target_type, "status": self.status,
                               "expiresAt": self.expires_at, "timeoutAction": self.timeout_action}
        if self.target_arn:
            out["targetArn"] = self.target_arn
        return out


@dataclass
class ServiceDeployment:
    """One UpdateService (or CreateService) of an ECS-native blue/green service, as it plays."""

    arn: str
    service_key: str
    service_arn: str
    cluster_arn: str
    target: Revision
    sources: list[Revision]
    config: dict[str, Any]
    production_rule: str | None
    test_rule: str | None
    created: float = field(default_factory=now)
    visible_at: float = 0.0  # listed and current from then on (LIST_LAG_SECONDS after created)
    started: float | None = None
    finished: float | None = None
    stopped: float | None = None
    updated: float = field(default_factory=now)
    status: str = "PENDING"
    reason: str = ""
    stage: str = "RECONCILE_SERVICE"
    entered: bool = False
    hooks: list[Hook] = field(default_factory=list)
    hooks_run: bool = False
    steps: list[tuple[int, float]] = field(default_factory=list)
    step: int = 0
    next_at: float = 0.0
    production_weight: int = 0
    test_weight: int = 0
    rollback: dict[str, Any] = field(default_factory=dict)
    breaker: dict[str, Any] = field(default_factory=dict)
    alarms: dict[str, Any] = field(default_factory=dict)

    @property
    def source(self) -> Revision | None:
        return self.sources[0] if self.sources else None

    def set_status(self, status: str, reason: str) -> None:
        self.status, self.reason, self.updated = status, reason, now()
        if status in ENDED:
            self.finished = now()
            if status == "STOPPED":
                self.stopped = now()


def traffic_steps(config: dict[str, Any]) -> list[tuple[int, float]]:
    """(green production weight, minutes to bake before the next step), ending at 100."""
    strategy = config.get("strategy")
    if strategy == "LINEAR":
        linear = {**DEFAULT_LINEAR, **(config.get("linearConfiguration") or {})}
        pct, bake = float(linear["stepPercent"]), float(linear["stepBakeTimeInMinutes"])
        weights, value = [], pct
        while value < 100 - 1e-9:
            weights.append(round(value))
            value += pct
        return [(w, bake) for w in weights] + [(100, 0.0)]
    if strategy == "CANARY":
        canary = {**DEFAULT_CANARY, **(config.get("canaryConfiguration") or {})}
        return [(round(float(canary["canaryPercent"])), float(canary["canaryBakeTimeInMinutes"])), (100, 0.0)]
    return [(100, 0.0)]


def find_rule(arn: str | None) -> tuple[Any, Any] | None:
    """(listener, rule) for a listener rule ARN, the listener's default rule included."""
    if not arn:
        return None
    for lb in list(elbv2().load_balancers.values()):
        for listener in lb.listeners.values():
            for rule in listener.rules.values():
                if rule.arn == arn:
                    return listener, rule
    listener = _find_listener(arn)  # a listener ARN (network load balancers name the listener)
    return (listener, None) if listener is not None else None


def rule_weights(arn: str | None) -> dict[str, int]:
    found = find_rule(arn)
    if found is None:
        return {}
    listener, rule = found
    if rule is None or getattr(rule, "is_default", False):
        return forward_weights(listener.arn)
    for action in rule.actions:
        data = getattr(action, "data", {}) or {}
        groups = (data.get("ForwardConfig") or {}).get("TargetGroups") or []
        if data.get("Type") == "forward" and groups:
            return {g["TargetGroupArn"]: int(g.get("Weight", 1) or 0) for g in groups}
        if data.get("Type") == "forward" and data.get("TargetGroupArn"):
            return {data["TargetGroupArn"]: 1}
    return {}


def set_rule_weights(arn: str | None, weights: dict[str, int]) -> None:
    """Both target groups named with their weights, as ECS writes a rule (0 included)."""
    found = find_rule(arn)
    if found is None:
        return
    listener, rule = found
    if rule is None or getattr(rule, "is_default", False):
        set_forward(listener.arn, weights)
        return
    rule.actions = [FakeAction({"Type": "forward", "Order": 1, "ForwardConfig": {
        "TargetGroups": [{"TargetGroupArn": a, "Weight": int(w)} for a, w in weights.items()]}})]


def share(weights: dict[str, int], tg: str) -> float:
    total = sum(weights.values())
    return 100.0 * weights.get(tg, 0) / total if total else 0.0


def breaker_view(config: dict[str, Any], desired: int) -> dict[str, Any]:
    breaker = config.get("deploymentCircuitBreaker") or {}
    if not breaker.get("enable"):
        return {"status": "DISABLED", "failureCount": 0, "threshold": 0}
    return {"status": "MONITORING", "failureCount": 0, "threshold": rolling.breaker_threshold(desired)}


def alarms_view(config: dict[str, Any]) -> dict[str, Any]:
    alarms = config.get("alarms") or {}
    if not alarms.get("enable"):
        return {"status": "DISABLED", "alarmNames": list(alarms.get("alarmNames") or [])}
    return {"status": "MONITORING", "alarmNames": list(alarms.get("alarmNames") or []), "triggeredAlarmNames": []}


def check_advanced(config: dict[str, Any] | None, load_balancers: list[dict[str, Any]] | None) -> None:
    """Create/UpdateService of a BLUE_GREEN, LINEAR or CANARY service behind a load balancer: what ECS requires.

    AdvancedConfiguration: "Specify the alternate target group, listener rules, and IAM role required for
    traffic shifting during blue/green deployments" (botocore's ECS model); CloudFormation's
    AWS::ECS::Service AdvancedConfiguration: "AlternateTargetGroupArn ... Required: Yes". The role is the one
    that "grants Amazon ECS permission to call the Elastic Load Balancing APIs for you": without it (or with a
    role that does not exist) ECS cannot move a rule. A test listener rule is optional (AWS's migration guide:
    "If you are not using test listeners, both target groups (production and test) must be associated with
    production listener rules").
    """
    from moto.ecs.exceptions import InvalidParameterException

    if str((config or {}).get("strategy") or "ROLLING") not in NATIVE:
        return
    check_percent(config or {})
    check_hooks(config or {})
    for lb in load_balancers or []:
        adv = lb.get("advancedConfiguration") or {}
        missing = [k for k in ("alternateTargetGroupArn", "productionListenerRule", "roleArn") if not adv.get(k)]
        if missing:
            raise InvalidParameterException(
                f"loadBalancers[].advancedConfiguration must include {', '.join(missing)} for a service with "
                f"deployment strategy {(config or {}).get('strategy')} behind a load balancer.")
        for key in ("productionListenerRule", "testListenerRule"):
            if adv.get(key) and find_rule(adv[key]) is None:
                raise InvalidParameterException(f"advancedConfiguration.{key} {adv[key]} does not exist.")
        if not _role_exists(str(adv["roleArn"])):
            raise InvalidParameterException(
                f"advancedConfiguration.roleArn {adv['roleArn']}: Amazon ECS was unable to assume the role.")


def _role_exists(arn: str) -> bool:
    from moto.iam.models import iam_backends

    try:
        iam_backends[ACCOUNT]["global"].get_role_by_arn(arn)
    except Exception:  # noqa: BLE001 - moto's IAMNotFoundException: no such role
        return False
    return True


def rules_hold_both(dep: ServiceDeployment) -> bool:
    """Both target groups forwarded to by the production or the test listener rule (a weight of 0 counts).

    AWS's migration guide (docs.aws.amazon.com/AmazonECS/latest/developerguide/migrate-code-deploy-to-ecs-blue-
    green.html): "Ensure that your Application Load Balancer target groups are properly associated with listener
    rules ... If this requirement is not met, the service deployment will fail with the following error: Service
    deployment rolled back because of invalid networking configuration. Both targetGroup and alternateTargetGroup
    must be associated with the productionListenerRule or testListenerRule."
    """
    lb = dep.target.load_balancers[0] if dep.target.load_balancers else {}
    adv = lb.get("advancedConfiguration") or {}
    wanted = {lb.get("targetGroupArn"), adv.get("alternateTargetGroupArn")} - {None, ""}
    held = set(rule_weights(dep.production_rule)) | set(rule_weights(dep.test_rule))
    return not wanted or wanted <= held


INVALID_NETWORKING = ("Service deployment rolled back because of invalid networking configuration. Both "
                      "targetGroup and alternateTargetGroup must be associated with the productionListenerRule or "
                      "testListenerRule.")


# botocore's ECS model: LinearConfiguration.stepPercent "Valid values are multiples of 0.1 from 3.0 to 100.0";
# CanaryConfiguration.canaryPercent "Valid values are multiples of 0.1 from 0.1 to 100.0".
PERCENT_BOUNDS = {"linearConfiguration": ("stepPercent", 3.0), "canaryConfiguration": ("canaryPercent", 0.1)}


def check_percent(config: dict[str, Any]) -> None:
    from moto.ecs.exceptions import InvalidParameterException

    for section, (key, low) in PERCENT_BOUNDS.items():
        value = (config.get(section) or {}).get(key)
        if value is None:
            continue
        if not low <= float(value) <= 100.0 or abs(round(float(value) * 10) - float(value) * 10) > 1e-6:
            raise InvalidParameterException(f"{section}.{key} {value} is invalid: valid values are multiples of "
                                            f"0.1 from {low} to 100.0.")


# botocore's ECS model: DeploymentLifecycleHookTimeoutConfiguration.timeoutInMinutes is a
# DeploymentLifecycleHookDuration, "min": 1, "max": 20160 (14 days); its action is CONTINUE or ROLLBACK.
# botocore checks only the minimum before sending: ECS refuses the rest.
HOOK_MINUTES = (1, 20160)


def check_hooks(config: dict[str, Any]) -> None:
    from moto.ecs.exceptions import InvalidParameterException

    for hook in config.get("lifecycleHooks") or []:
        timeout = hook.get("timeoutConfiguration") or {}
        minutes = timeout.get("timeoutInMinutes")
        if minutes is not None and not HOOK_MINUTES[0] <= int(minutes) <= HOOK_MINUTES[1]:
            raise InvalidParameterException(
                f"lifecycleHooks[].timeoutConfiguration.timeoutInMinutes {minutes} is invalid: valid values are "
                f"{HOOK_MINUTES[0]} to {HOOK_MINUTES[1]} minutes.")
        action = timeout.get("action")
        if action is not None and action not in ("CONTINUE", "ROLLBACK"):
            raise InvalidParameterException(
                f"lifecycleHooks[].timeoutConfiguration.action {action} is invalid: valid values are CONTINUE or "
                "ROLLBACK.")
