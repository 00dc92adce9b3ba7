"""The IAM authorizations each AWS call of the pipeline needs: action, resource ARN, condition keys.

moto names no resource outside IAM, STS and SQS, so a policy scoped to one
service's cluster, family, task sets, listeners, repository, alarms or
deployment group could not be told from ``Resource: "*"``. This table names
the resource the way the Service Authorization Reference does for the calls
the pipeline makes (ECS, ECR, ELBv2, CodeDeploy, CloudWatch), from the call's
own parameters, and adds the authorizations a call implies: ``iam:PassRole``
(with ``iam:PassedToService``) for the roles a task definition names, when it is
registered and when RunTask runs it (with ``ecs:cluster``, as StopTask too), and
``ecs:TagResource`` (with ``ecs:CreateAction``) when it is registered with tags.
CloudWatch Logs reads are named by their log stream or log group.

Also named: the resources of sts:AssumeRole (the build role), IAM reads and
iam:SimulatePrincipalPolicy (the user or role simulated),
Parameter Store parameters and Secrets Manager secrets. Actions AWS cannot
scope get the resource ``"*"`` (only a ``"*"`` statement allows them). A call
not in the table gets ``None``: judged on its action only.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

from .iam_eval import Need
from .world import LOCK, ecs

UNSCOPED = frozenset({
    "ecs:DescribeTaskDefinition", "ecs:ListTaskDefinitions", "ecs:ListClusters", "ecs:ListTaskDefinitionFamilies",
    "ecr:GetAuthorizationToken",
    "elasticloadbalancing:DescribeListeners", "elasticloadbalancing:DescribeLoadBalancers",
    "elasticloadbalancing:DescribeTargetGroups", "elasticloadbalancing:DescribeTargetHealth",
    "elasticloadbalancing:DescribeRules", "elasticloadbalancing:DescribeTargetGroupAttributes",
    "elasticloadbalancing:DescribeListenerAttributes", "elasticloadbalancing:DescribeLoadBalancerAttributes",
    "elasticloadbalancing:DescribeTags",
    "codedeploy:ContinueDeployment", "codedeploy:StopDeployment", "codedeploy:GetDeploymentTarget",
    "codedeploy:ListDeploymentTargets", "codedeploy:BatchGetDeploymentTargets",
    "cloudwatch:GetMetricData", "cloudwatch:GetMetricStatistics", "cloudwatch:ListMetrics",
    "cloudwatch:PutMetricData",
})
PREFIX = {"ecs": "ecs", "ecr": "ecr", "elbv2": "elasticloadbalancing", "codedeploy": "codedeploy",
          "cloudwatch": "cloudwatch"}
ECS_TASKS = "ecs-tasks.amazonaws.com"


class Where:
    """The region and account a call's ARNs live in."""

    def __init__(self, region: str, account: str, partition: str = "aws") -> None:
        self.region, self.account, self.partition = region, account, partition

    def arn(self, service: str, resource: str, *, regional: bool = True) -> str:
        return f"arn:{self.partition}:{service}:{self.region if regional else ''}:{self.account}:{resource}"

    def ecs(self, kind: str, *path: str) -> str:
        return self.arn("ecs", f"{kind}/{'/'.join(path)}")


def _name(value: Any, marker: str) -> str:
    """A name given as a name or an ARN (``.../cluster/NAME``, ``.../service/CLUSTER/NAME``)."""
    text = str(value or "")
    return text.rsplit(marker, 1)[-1] if text.startswith("arn:") else text


def _cluster(params: Mapping[str, Any]) -> str:
    return _name(params.get("cluster") or "default", "cluster/")


def _service_arn(where: Where, cluster: str, service: Any) -> str:
    text = str(service or "")
    if text.startswith("arn:") and text.count("/") >= 2:
        return text
    return where.ecs("service", cluster, _name(text, "/"))


def _ids(where: Where, kind: str, params: Mapping[str, Any], key: str, *path: str) -> list[str]:
    """ARNs of a list parameter whose items are ARNs or IDs (IDs become KIND/PATH/ID)."""
    return [str(v) if str(v).startswith("arn:") else where.ecs(kind, *path, str(v)) for v in params.get(key) or []]


def _ecs(op: str, p: Mapping[str, Any], w: Where) -> list[str] | None:
    cluster = _cluster(p)
    service = _service_arn(w, cluster, p.get("service")) if p.get("service") else ""
    service_name = _name(service, "/")
    task_sets = w.ecs("task-set", cluster, service_name, "*")
    if op == "DescribeServices":
        return [_service_arn(w, cluster, s) for s in p.get("services") or []]
    if op == "DescribeTaskSets":
        return _ids(w, "task-set", p, "taskSets", cluster, service_name) or [task_sets]
    if op == "DeleteTaskSet":
        return _ids(w, "task-set", {"one": [p.get("taskSet")]}, "one", cluster, service_name)
    if op == "DescribeTasks":
        return _ids(w, "task", p, "tasks", cluster)
    if op == "DescribeClusters":
        return [w.ecs("cluster", _name(c, "cluster/")) for c in p.get("clusters") or ["default"]]
    if op in ("DescribeServiceDeployments", "DescribeServiceRevisions"):
        key = "serviceDeploymentArns" if op == "DescribeServiceDeployments" else "serviceRevisionArns"
        return [str(x) for x in p.get(key) or []]
    if op == "CreateTaskSet":
        return [task_sets]
    if op == "CreateService":
        return [w.ecs("service", cluster, str(p.get("serviceName")))]
    if op in ("UpdateService", "UpdateServicePrimaryTaskSet", "ListServiceDeployments", "DeleteService"):
        return [service] if service else None
    for key in ("serviceDeploymentArn", "resourceArn"):
        if p.get(key):
            return [str(p[key])]
    return None


def _register_task_definition(p: Mapping[str, Any], w: Where) -> list[Need]:
    """The revision it creates, its tags on create, and every role it passes to ECS tasks."""
    family = str(p.get("family") or "")
    with LOCK:
        revisions = ecs().task_definitions.get(family) or {}
        revision = max(revisions, default=0) + 1
    arn = w.ecs("task-definition", f"{family}:{revision}")
    out = [Need("ecs:RegisterTaskDefinition", arn)]
    if p.get("tags"):
        out.append(Need("ecs:TagResource", arn, {"ecs:CreateAction": "RegisterTaskDefinition"}))
    for key in ("taskRoleArn", "executionRoleArn"):
        role = str(p.get(key) or "")
        if role:
            role_arn = role if role.startswith("arn:") else w.arn("iam", f"role/{role}", regional=False)
            out.append(Need("iam:PassRole", role_arn, {"iam:PassedToService": ECS_TASKS}))
    return out


def _run_task(p: Mapping[str, Any], w: Where) -> list[Need]:
    """RunTask: the task definition revision it runs (ecs:cluster as a condition key), and every role the
    revision (or an override) passes to ECS tasks (iam:PassRole, as for RegisterTaskDefinition)."""
    text = str(p.get("taskDefinition") or "")
    name = text.rsplit("/", 1)[-1]
    with LOCK:
        family, _, number = name.partition(":")
        revisions = ecs().task_definitions.get(family) or {}
        td = revisions.get(int(number)) if number.isdigit() else revisions.get(max(revisions, default=0))
        roles = [str(getattr(td, k, None) or "") for k in ("task_role_arn", "execution_role_arn")] if td else []
        revision = f"{family}:{td.revision}" if td is not None else name
    overrides = p.get("overrides") or {}
    roles += [str(overrides.get(k) or "") for k in ("taskRoleArn", "executionRoleArn")]
    cluster = w.ecs("cluster", _cluster(p))
    out = [Need("ecs:RunTask", text if text.startswith("arn:") and td is None else w.ecs("task-definition", revision),
                {"ecs:cluster": cluster})]
    for role in dict.fromkeys(r for r in roles if r):
        role_arn = role if role.startswith("arn:") else w.arn("iam", f"role/{role}", regional=False)
        out.append(Need("iam:PassRole", role_arn, {"iam:PassedToService": ECS_TASKS}))
    return out


def _logs(op: str, p: Mapping[str, Any], w: Where) -> list[str] | None:
    """A log stream's events (the migration's lines) are authorized on the stream, ``log-group:G:log-stream:S``
    (a policy's ``log-group:G:*`` covers it); other Logs calls are judged on their action."""
    group, stream = str(p.get("logGroupName") or ""), str(p.get("logStreamName") or "")
    if op != "GetLogEvents" or not group or not stream:
        return None
    return [w.arn("logs", f"log-group:{group}:log-stream:{stream}")]


def _ecr(op: str, p: Mapping[str, Any], w: Where) -> list[str] | None:
    where = Where(w.region, str(p.get("registryId") or w.account), w.partition)
    if op == "DescribeRepositories" and p.get("repositoryNames"):
        return [where.arn("ecr", f"repository/{n}") for n in p["repositoryNames"]]
    if p.get("repositoryName"):
        return [where.arn("ecr", f"repository/{p['repositoryName']}")]
    return None


def _elbv2(op: str, p: Mapping[str, Any], w: Where) -> list[str] | None:
    for key in ("ListenerArn", "RuleArn", "TargetGroupArn", "LoadBalancerArn"):
        if p.get(key):
            return [str(p[key])]
    arns = [str(v) for k, v in sorted(p.items()) if k.startswith("ResourceArns.member.")]
    return arns or None


def _codedeploy(op: str, p: Mapping[str, Any], w: Where) -> list[str] | None:
    if p.get("deploymentConfigName") and op in ("GetDeploymentConfig", "CreateDeploymentConfig",
                                                "DeleteDeploymentConfig"):
        return [w.arn("codedeploy", f"deploymentconfig:{p['deploymentConfigName']}")]
    if op == "GetDeployment" and p.get("deploymentId"):
        group = _group_of_deployment(str(p["deploymentId"]))
        return [w.arn("codedeploy", f"deploymentgroup:{group}")] if group else None
    if p.get("applicationName") and p.get("deploymentGroupName"):
        return [w.arn("codedeploy", f"deploymentgroup:{p['applicationName']}/{p['deploymentGroupName']}")]
    if p.get("applicationName"):
        return [w.arn("codedeploy", f"application:{p['applicationName']}")]
    return None


def _group_of_deployment(deployment_id: str) -> str | None:
    """APP/GROUP of a deployment (GetDeployment is authorized on its deployment group)."""
    from .world import codedeploy

    with LOCK:
        dep = codedeploy().deployments.get(deployment_id)
    if dep is None:
        return None
    return f"{dep.application_name}/{dep.deployment_group_name}"


def _cloudwatch(op: str, p: Mapping[str, Any], w: Where) -> list[str] | None:
    names = [str(n) for n in p.get("AlarmNames") or []] or ([str(p["AlarmName"])] if p.get("AlarmName") else [])
    return [w.arn("cloudwatch", f"alarm:{n}") for n in names] or None


def _iam_sts(op: str, p: Mapping[str, Any], w: Where) -> list[str] | None:
    """sts:AssumeRole on its role; IAM reads (verify) on the role or user they name; a simulation
    (iam:SimulatePrincipalPolicy) on the principal whose policies it reads."""
    for key in ("RoleArn", "PolicySourceArn"):
        if p.get(key):
            return [str(p[key])]
    for key, kind in (("RoleName", "role"), ("UserName", "user")):
        if p.get(key):
            return [w.arn("iam", f"{kind}/{p[key]}", regional=False)]
    return None


def _ssm(op: str, p: Mapping[str, Any], w: Where) -> list[str] | None:
    names = [str(n) for n in p.get("Names") or []] or ([str(p["Name"])] if p.get("Name") else [])
    return [n if n.startswith("arn:") else w.arn("ssm", f"parameter/{n.lstrip('/')}") for n in names] or None


def _secretsmanager(op: str, p: Mapping[str, Any], w: Where) -> list[str] | None:
    """The secret's full ARN (its name plus the six characters AWS adds), as moto made it."""
    secret_id = str(p.get("SecretId") or "")
    if not secret_id or secret_id.startswith("arn:"):
        return [secret_id] if secret_id else None
    from moto.secretsmanager.models import secretsmanager_backends

    with LOCK:
        found = secretsmanager_backends[w.account][w.region].secrets.get(secret_id)
    return [str(found.arn)] if found is not None else [w.arn("secretsmanager", f"secret:{secret_id}")]


TABLES: dict[str, Callable[[str, Mapping[str, Any], Where], list[str] | None]] = {
    "ecr": _ecr, "elbv2": _elbv2, "codedeploy": _codedeploy, "cloudwatch": _cloudwatch, "iam": _iam_sts,
    "logs": _logs,
    "sts": _iam_sts, "ssm": _ssm, "secretsmanager": _secretsmanager}


def needs(service: str, operation: str, params: Mapping[str, Any], where: Where) -> list[Need]:
    """What SERVICE.OPERATION with PARAMS must be allowed to do (``sts:GetCallerIdentity``: nothing)."""
    prefix = PREFIX.get(service, service)
    action = f"{prefix}:{operation}"
    if action == "sts:GetCallerIdentity":
        return []  # AWS: no permission is required to call it
    if action in UNSCOPED:
        return [Need(action, "*")]
    if action == "ecs:RegisterTaskDefinition":
        return _register_task_definition(params, where)
    if action == "ecs:RunTask":
        return _run_task(params, where)
    if action == "ecs:StopTask":  # the task, with its cluster as a condition key
        cluster = _cluster(params)
        return [Need(action, arn, {"ecs:cluster": where.ecs("cluster", cluster)})
                for arn in _ids(where, "task", {"one": [params.get("task")]}, "one", cluster)]
    if action == "ecs:ListTasks":  # no resource of its own: the cluster is a condition key
        return [Need(action, "*", {"ecs:cluster": where.ecs("cluster", _cluster(params))})]
    if service == "ecs":
        arns = _ecs(operation, params, where)
        return [Need(action, arn) for arn in arns] if arns else [Need(action, None)]
    table = TABLES.get(service)
    arns = table(operation, params, where) if table else None
    return [Need(action, arn) for arn in arns] if arns else [Need(action, None)]
