"""Before a first release: is everything the service's strategy needs there, and usable?

Each check reads what a release would use and says ok, MISSING or WRONG with the
fix in one line, as kayac/ecspresso's ``verify`` does. A call AWS refuses for lack
of permission gives "cannot check" naming the action and the resource, never a
crash: a person runs this first under the identity they are setting up. Nothing
is created or changed. What must exist per strategy is the table in docs/strategies.md ("Per
strategy, what must exist in the account and the network").

The account-wide checks live here (cluster, service and its controller, the task
definition's roles and log groups, ECR, alarms, the build identity); the load
balancer, the strategy's own resources and the whole run in ``preflight``.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass, field
from functools import partial
from typing import Any
from urllib.parse import unquote

from botocore.exceptions import ClientError

from tasks.aws import iam as iam_ops
from tasks.aws.clients import AwsClients
from tasks.aws.ecs import controller_type, describe_service, primary_task_set
from tasks.aws.errors import iam_action, translate
from tasks.config.models import ServiceConfig
from tasks.core.errors import AccessDenied, ConfigError, NotFound
from tasks.release.stages import render

OK, MISSING, WRONG, DENIED = "ok", "MISSING", "WRONG", "cannot check"
CONTROLLER = {"task-sets": "EXTERNAL", "codedeploy": "CODE_DEPLOY", "rolling": "ECS", "ecs-native": "ECS"}
NATIVE = ("BLUE_GREEN", "LINEAR", "CANARY")
ECS_TASKS = "ecs-tasks.amazonaws.com"


@dataclass(frozen=True)
class Check:
    """One line of the report: what was checked, on which resource, what was found and the fix."""

    check: str
    status: str
    resource: str
    detail: str = ""
    fix: str = ""
    service: str = ""

    def line(self) -> str:
        if self.status == DENIED:
            return f"cannot check: {self.detail} ({self.check}); fix: {self.fix}"
        text = f"{self.status:<7} {self.check} {self.resource}" + (f": {self.detail}" if self.detail else "")
        return text + (f"; fix: {self.fix}" if self.fix else "")

    def as_json(self) -> dict[str, str]:
        return {k: v for k, v in asdict(self).items() if k in ("check", "status", "resource", "fix", "detail",
                                                                 "service")}


@dataclass
class Probe:
    """One service's checks as they are made: what was found so far, for the checks that build on it."""

    cfg: ServiceConfig
    clients: AwsClients
    checks: list[Check] = field(default_factory=list)
    service: dict[str, Any] | None = None
    taskdef: dict[str, Any] = field(default_factory=dict)
    target_groups: dict[str, dict[str, Any]] = field(default_factory=dict)  # name → DescribeTargetGroups item
    listeners: dict[str, dict[str, Any]] = field(default_factory=dict)  # production|test → DescribeListeners item

    def add(self, check: str, status: str, resource: str, detail: str = "", fix: str = "") -> None:
        self.checks.append(Check(check, status, resource, detail, fix, self.cfg.name))

    def guarded(self, check: str, resource: str, run: Callable[[], None]) -> None:
        """RUN, and a "cannot check" line instead of a crash when AWS refuses or keeps failing a call."""
        try:
            run()
        except ClientError as exc:
            typed = translate(exc, service=self.cfg.name)
            action = iam_action(exc)
            if isinstance(typed, AccessDenied):
                self.add(check, DENIED, resource, f"AWS denied {action} on {resource}",
                         f"grant {action} on {resource} to the identity that runs verify and deploy")
            else:
                self.add(check, DENIED, resource, f"{action} failed on {resource}: {typed}",
                         "run verify again; if it persists, check the endpoint and region")


def absent(read: Callable[..., Any], /, **kwargs: Any) -> Any | None:
    """READ's answer, or None when AWS answers that the resource does not exist (a not-found code)."""
    try:
        return read(**kwargs)
    except ClientError as exc:
        if isinstance(translate(exc), NotFound):
            return None
        raise


def role_name(role: str) -> str:
    return role.rsplit("/", 1)[-1] if role.startswith("arn:") else role


def trusts(document: Any, principal: str) -> bool:
    """Whether a role's trust policy lets the AWS service PRINCIPAL assume it (sts:AssumeRole, Allow)."""
    doc = json.loads(unquote(document)) if isinstance(document, str) else document or {}
    statements = doc.get("Statement") or []
    for st in statements if isinstance(statements, list) else [statements]:
        actions = st.get("Action") or []
        actions = [actions] if isinstance(actions, str) else actions
        services = (st.get("Principal") or {}).get("Service") if isinstance(st.get("Principal"), dict) else None
        services = [services] if isinstance(services, str) else services or []
        if (st.get("Effect") == "Allow" and principal in services
                and any(a in ("sts:AssumeRole", "sts:*", "*") for a in actions)):
            return True
    return False


def check_role(probe: Probe, check: str, role: str, principal: str | None, create: str) -> None:
    """ROLE exists (IAM GetRole) and, with PRINCIPAL, its trust policy lets that AWS service assume it."""
    iam = probe.clients.get("iam")
    name = role_name(role)

    def run() -> None:
        if iam_ops.role_arn(iam, role) is None:
            probe.add(check, MISSING, name, "IAM has no such role", create)
            return
        if principal is None:
            probe.add(check, OK, name)
            return
        document = iam.get_role(RoleName=name)["Role"].get("AssumeRolePolicyDocument")
        if trusts(document, principal):
            probe.add(check, OK, name, f"trusts {principal}")
        else:
            probe.add(check, WRONG, name, f"its trust policy does not let {principal} assume it",
                      f"add a trust statement: Allow, Principal Service {principal}, Action sts:AssumeRole")

    probe.guarded(check, name, run)


def check_cluster(probe: Probe) -> bool:
    cluster = probe.cfg.ecs.cluster
    ok: list[bool] = []

    def run() -> None:
        found = probe.clients.get("ecs").describe_clusters(clusters=[cluster]).get("clusters") or []
        status = str(found[0].get("status")) if found else "absent"
        if status == "ACTIVE":
            probe.add("cluster", OK, cluster, "ACTIVE")
            ok.append(True)
        elif not found or status == "INACTIVE":
            probe.add("cluster", MISSING, cluster, "not found" if not found else "INACTIVE (deleted)",
                      f"create it: aws ecs create-cluster --cluster-name {cluster}, or fix ecs.cluster")
        else:
            probe.add("cluster", WRONG, cluster, f"status {status}, not ACTIVE",
                      "wait until the cluster is ACTIVE, or fix ecs.cluster")

    probe.guarded("cluster", cluster, run)
    return bool(ok)


def live_strategy_type(service: dict[str, Any]) -> str:
    """The strategy.type a live service can release with (its controller, and ECS's deployment strategy)."""
    controller = controller_type(service)
    if controller != "ECS":
        return {"EXTERNAL": "task-sets", "CODE_DEPLOY": "codedeploy"}.get(controller, controller)
    strategy = (service.get("deploymentConfiguration") or {}).get("strategy") or "ROLLING"
    return "ecs-native" if strategy in NATIVE else "rolling" if strategy == "ROLLING" else f"ECS/{strategy}"


def check_service(probe: Probe) -> None:
    cfg = probe.cfg
    name, want = cfg.ecs.service, CONTROLLER[cfg.strategy.type]

    def run() -> None:
        try:
            probe.service = describe_service(probe.clients.get("ecs"), cfg.ecs.cluster, name)
        except ConfigError:
            probe.add("service", MISSING, name, f"not in cluster {cfg.ecs.cluster}",
                      f"create it with deploymentController {want} (see docs/strategies.md), or fix ecs.service")
            return
        probe.add("service", OK, name, str(probe.service.get("status") or "ACTIVE"))
        fits = live_strategy_type(probe.service)
        how = controller_type(probe.service)
        if how == "ECS":
            how += f" with strategy {(probe.service.get('deploymentConfiguration') or {}).get('strategy') or 'ROLLING'}"
        if fits == cfg.strategy.type:
            probe.add("deployment controller", OK, name, how)
            return
        need = want + (" with deploymentConfiguration.strategy BLUE_GREEN, LINEAR or CANARY"
                       if cfg.strategy.type == "ecs-native" else " (strategy ROLLING)" if want == "ECS" else "")
        fix = f"set strategy.type: {fits} in the YAML, or create the service with deploymentController {need}"
        if fits == "codedeploy" and cfg.strategy.type == "ecs-native":
            fix = f"run `ecs-pipeline migrate {cfg.name} --to ecs-native`, or set strategy.type: codedeploy"
        probe.add("deployment controller", WRONG, name,
                  f"{how}, but strategy.type {cfg.strategy.type} needs {need}", fix)

    probe.guarded("service", name, run)
    if (probe.service is not None and cfg.strategy.type == "task-sets" and cfg.network is None
            and live_strategy_type(probe.service) == "task-sets" and primary_task_set(probe.service) is None):
        probe.add("network", MISSING, cfg.name, "no network in the YAML and no primary task set to take it from",
                  "add network: {subnets: [...], security_groups: [...]} (the tasks' awsvpc network)")


def check_task_definition(probe: Probe) -> None:
    """The roles and log groups the rendered task definition names (rendered offline, as `render` does)."""
    cfg = probe.cfg
    probe.taskdef = render(cfg, "<IMAGE>", None)
    execution, task_role = probe.taskdef.get("executionRoleArn"), probe.taskdef.get("taskRoleArn")
    if execution:
        check_role(probe, "execution role", execution, ECS_TASKS,
                   f"create it trusting {ECS_TASKS} with the policy AmazonECSTaskExecutionRolePolicy, "
                   f"or fix executionRoleArn in {cfg.task_definition}")
    if task_role:
        check_role(probe, "task role", task_role, ECS_TASKS,
                   f"create it trusting {ECS_TASKS}, or fix taskRoleArn in {cfg.task_definition}")
    for group, create_group in log_groups(probe.taskdef):
        probe.guarded("log group", group, partial(check_log_group, probe, group, create_group))


def log_groups(taskdef: dict[str, Any]) -> list[tuple[str, bool]]:
    """(awslogs-group, awslogs-create-group) of every container that logs with awslogs, each group once."""
    out: dict[str, bool] = {}
    for container in taskdef.get("containerDefinitions") or []:
        logging = container.get("logConfiguration") or {}
        options = logging.get("options") or {}
        if logging.get("logDriver") == "awslogs" and options.get("awslogs-group"):
            group = str(options["awslogs-group"])
            out[group] = out.get(group, False) or str(options.get("awslogs-create-group", "")).lower() == "true"
    return list(out.items())


def check_log_group(probe: Probe, group: str, created_by_tasks: bool) -> None:
    # The pipeline has no CloudWatch Logs read of its own: DescribeLogGroups by prefix, exact name matched.
    pages = probe.clients.get("logs").get_paginator("describe_log_groups").paginate(logGroupNamePrefix=group)
    if any(g.get("logGroupName") == group for page in pages for g in page.get("logGroups") or []):
        probe.add("log group", OK, group)
    elif created_by_tasks:
        probe.add("log group", OK, group, "not yet; awslogs-create-group makes it at the first task "
                  "(the execution role needs logs:CreateLogGroup)")
    else:
        probe.add("log group", MISSING, group, "CloudWatch Logs has no such group (tasks fail to start)",
                  f"aws logs create-log-group --log-group-name {group}, or set awslogs-create-group \"true\"")


def check_repository(probe: Probe) -> None:
    name = probe.cfg.ecr.repository

    def run() -> None:
        found = absent(probe.clients.get("ecr").describe_repositories, repositoryNames=[name])
        if found is None:
            probe.add("ECR repository", MISSING, name, "not found",
                      f"aws ecr create-repository --repository-name {name} --image-scanning-configuration "
                      "scanOnPush=true (a release's push creates it when its identity may call ecr:CreateRepository)")
        else:
            probe.add("ECR repository", OK, name)

    probe.guarded("ECR repository", name, run)


def check_alarms(probe: Probe, names: Iterable[str]) -> None:
    wanted = list(dict.fromkeys(names))
    if not wanted:
        return

    def run() -> None:
        cloudwatch = probe.clients.get("cloudwatch")
        found: set[str] = set()
        for start in range(0, len(wanted), 100):
            answer = cloudwatch.describe_alarms(AlarmNames=wanted[start:start + 100])
            found |= {a["AlarmName"] for a in [*answer.get("MetricAlarms", []), *answer.get("CompositeAlarms", [])]}
        for name in wanted:
            if name in found:
                probe.add("alarm", OK, name)
            else:
                probe.add("alarm", MISSING, name, "CloudWatch has no such alarm",
                          "create it (aws cloudwatch put-metric-alarm), or remove it from verify.alarms")

    probe.guarded("alarm", ", ".join(wanted), run)


def check_build_role(probe: Probe) -> None:
    role = probe.cfg.build.role_arn
    if role:
        check_role(probe, "build role", role, None,
                   "create it (its trust policy lets the pipeline's identity assume it), or remove build.role_arn")


def verify_checks(probe: Probe) -> None:
    """The account-wide checks, in the order a person would fix them (what others build on comes first)."""
    if check_cluster(probe):
        check_service(probe)
    check_task_definition(probe)
    check_repository(probe)
    check_alarms(probe, probe.cfg.verify.alarms)
    check_build_role(probe)
