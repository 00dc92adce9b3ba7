"""The IAM policies a service's releases need, scoped to its own resources (pure: no AWS call).

Two identities, as CodePipeline/CodeBuild/CodeDeploy each run under a role of their own:

    deploy   the pipeline (worker): ECS, ELB, CodeDeploy, CloudWatch, ECR, iam:PassRole
    build    the buildspec's commands (``build.role_arn``): the session policy of
             tasks/build/build_identity.py, ECR push to the service's own repository
             and the parameters and secrets its buildspec names

Each deploy statement grants what one part of the release calls, for the chosen
strategy only; the tables below say where each action is called (tests check the
lists against the code's calls). Actions AWS cannot scope to a resource
(``UNSCOPED``, from the Service Authorization Reference) sit in statements of
their own on ``"*"``, so every other statement names ARNs.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

from tasks.aws.codedeploy import deployment_config
from tasks.build.build_identity import session_policy
from tasks.config.appspec import OWN_CONFIG_PREFIX
from tasks.config.buildspec import BuildSpec, Env
from tasks.config.models import ListenerRef, ServiceConfig
from tasks.config.taskdef import ACCOUNT_PLACEHOLDER, REGION_PLACEHOLDER

VERSION = "2012-10-17"
ROLES = ("deploy", "build")
# Actions with no resource-level permissions (Service Authorization Reference: no resource type listed).
UNSCOPED = frozenset({
    "ecs:DescribeTaskDefinition", "ecr:GetAuthorizationToken", "sts:GetCallerIdentity",
    "elasticloadbalancing:DescribeListeners", "elasticloadbalancing:DescribeLoadBalancers",
    "elasticloadbalancing:DescribeTargetGroups", "elasticloadbalancing:DescribeTargetHealth",
    "elasticloadbalancing:DescribeRules", "elasticloadbalancing:DescribeTargetGroupAttributes",
    "codedeploy:ContinueDeployment", "codedeploy:StopDeployment", "codedeploy:GetDeploymentTarget",
    "codedeploy:ListDeploymentTargets", "cloudwatch:GetMetricData",
})
# What docker push does with the token GetAuthorizationToken returned (the registry API, not boto3).
REGISTRY_PUSH = ("ecr:BatchCheckLayerAvailability", "ecr:InitiateLayerUpload", "ecr:UploadLayerPart",
                 "ecr:CompleteLayerUpload", "ecr:PutImage")


@dataclass(frozen=True)
class Scope:
    """Where the ARNs point: ``account`` "*" when unknown (the policy then matches any account)."""

    account: str
    region: str
    partition: str = "aws"

    def arn(self, service: str, resource: str, *, regional: bool = True) -> str:
        return f"arn:{self.partition}:{service}:{self.region if regional else ''}:{self.account}:{resource}"


@dataclass
class Policy:
    """One IAM policy document and what a person should know about it (printed apart from it)."""

    role: str
    document: dict[str, Any]
    notes: list[str] = field(default_factory=list)

    def actions(self) -> set[str]:
        return {a for s in self.document["Statement"] for a in _listed(s["Action"])}


def _listed(value: str | list[str]) -> list[str]:
    return [value] if isinstance(value, str) else list(value)


def _statement(sid: str, actions: Iterable[str], resources: Sequence[str],
               condition: dict[str, Any] | None = None) -> dict[str, Any]:
    unique_resources = list(dict.fromkeys(resources))
    statement: dict[str, Any] = {"Sid": sid, "Effect": "Allow", "Action": sorted(set(actions)),
                                 "Resource": unique_resources[0] if len(unique_resources) == 1 else unique_resources}
    if condition:
        statement["Condition"] = condition
    return statement


@dataclass(frozen=True)
class Arns:
    """The ARNs of one service's resources, from its config (names become ARNs or name-scoped wildcards)."""

    cfg: ServiceConfig
    scope: Scope

    @property
    def ecs_path(self) -> str:
        return f"{self.cfg.ecs.cluster}/{self.cfg.ecs.service}"

    def ecs(self, kind: str, tail: str = "") -> str:
        return self.scope.arn("ecs", f"{kind}/{self.ecs_path}{tail}")

    @property
    def cluster(self) -> str:
        return self.scope.arn("ecs", f"cluster/{self.cfg.ecs.cluster}")

    @property
    def repository(self) -> str:
        return self.scope.arn("ecr", f"repository/{self.cfg.ecr.repository}")

    def family(self, name: str) -> str:
        return self.scope.arn("ecs", f"task-definition/{name}:*")

    def listener(self, ref: ListenerRef) -> str:
        if ref.arn:
            return ref.arn
        return self.scope.arn("elasticloadbalancing", f"listener/app/{ref.load_balancer}/*/*")

    def alarm(self, name: str) -> str:
        return self.scope.arn("cloudwatch", f"alarm:{name}")

    def codedeploy(self, kind: str, name: str) -> str:
        return self.scope.arn("codedeploy", f"{kind}:{name}")

    def role(self, value: str) -> str:
        if value.startswith("arn:"):
            return value.replace(ACCOUNT_PLACEHOLDER, self.scope.account)
        return self.scope.arn("iam", f"role/{value}", regional=False)


def deploy_policy(cfg: ServiceConfig, task_definition: dict[str, Any], spec: BuildSpec | None,
                  scope: Scope, principal: str | None = None) -> Policy:
    """The pipeline's policy for releasing CFG with its strategy.

    TASK_DEFINITION: the rendered template (``<AWS_ACCOUNT_ID>`` may remain: SCOPE's account fills it).
    SPEC: the buildspec when the service has one (its parameters and secrets are read by the pipeline).
    PRINCIPAL: the ARN of the user or role the pipeline runs as, for the permission preflight's statement.
    """
    arns, notes = Arns(cfg, scope), list[str]()
    statements = release_statements(cfg, arns, task_definition, spec, notes)
    statements += STRATEGY_STATEMENTS[cfg.strategy.type](cfg, arns, notes)
    statements += gate_statements(cfg, arns, task_definition, notes)
    statements += self_check_statements(cfg, principal, notes)
    if cfg.load_balancer is not None and any(not ref.arn for ref in _listeners(cfg)):
        notes.append(f"{cfg.name}: load_balancer names listeners by load balancer and port, not ARN: their "
                     "statements use listener/app/<load balancer>/*/* (every listener of that load balancer); "
                     "give load_balancer.*_listener.arn to narrow them")
    unscoped = sorted(a for st in statements if st["Resource"] == "*" for a in _listed(st["Action"]))
    notes.append(f"{cfg.name}: Resource * where AWS allows no narrower one: {', '.join(unscoped)} "
                 "(ecs:ListTasks only within the cluster, by its ecs:cluster condition)")
    if scope.account == "*":
        notes.append(f"{cfg.name}: no --account given: ARNs match any account (*); pass --account to pin them")
    return Policy("deploy", {"Version": VERSION, "Statement": statements}, notes)


def _listeners(cfg: ServiceConfig) -> list[ListenerRef]:
    lb = cfg.load_balancer
    return [] if lb is None else [lb.production_listener, lb.test_listener]


def release_statements(cfg: ServiceConfig, arns: Arns, task_definition: dict[str, Any], spec: BuildSpec | None,
                       notes: list[str]) -> list[dict[str, Any]]:
    """What every strategy's release calls: choose, detect change, build, push, register (tasks/release)."""
    family = str(task_definition.get("family") or cfg.name)
    out = [
        # choose_strategy, detect change, the strategies' waits: DescribeServices
        _statement("ReadTheService", ["ecs:DescribeServices"], [arns.ecs("service")]),
        # stages.register: RegisterTaskDefinition with the git-sha tag (ECS checks TagResource on create)
        _statement("RegisterTaskDefinitionRevisions", ["ecs:RegisterTaskDefinition"], [arns.family(family)]),
        _statement("TagTaskDefinitionsAsRegistered", ["ecs:TagResource"], [arns.family(family)],
                   {"StringEquals": {"ecs:CreateAction": "RegisterTaskDefinition"}}),
        # ecr.ensure_repository, find_image_digest, sha_of_image; docker push with the pipeline's token
        _statement("FindCreateAndPushOwnRepository",
                   ["ecr:DescribeRepositories", "ecr:CreateRepository", "ecr:DescribeImages", *REGISTRY_PUSH],
                   [arns.repository]),
    ]
    if spec is not None:  # pushed_image.adopt_image: ecr.tag_image tags the buildspec's image with the SHA
        out.append(_statement("TagBuildspecImageWithCommit", ["ecr:BatchGetImage", "ecr:PutImage"],
                              [arns.repository]))
    out += pass_role_statements(cfg, arns, task_definition, notes)
    out += build_input_statements(cfg, arns, spec)
    unscoped = ["ecs:DescribeTaskDefinition", "ecr:GetAuthorizationToken"]
    if spec is not None or _names_account(task_definition):  # standard_env, render: <AWS_ACCOUNT_ID>
        unscoped.append("sts:GetCallerIdentity")
    out.append(_statement("NoResourceLevelPermissionsRelease", unscoped, ["*"]))
    return out


def _names_account(task_definition: dict[str, Any]) -> bool:
    return ACCOUNT_PLACEHOLDER in repr(task_definition)


def pass_role_statements(cfg: ServiceConfig, arns: Arns, task_definition: dict[str, Any],
                         notes: list[str]) -> list[dict[str, Any]]:
    """iam:PassRole for exactly the roles the task definition names, to ECS tasks only."""
    roles = [str(task_definition[k]) for k in ("taskRoleArn", "executionRoleArn") if task_definition.get(k)]
    out = []
    if roles:
        out.append(_statement("PassTaskDefinitionRolesToEcsTasks", ["iam:PassRole"],
                              [arns.role(r) for r in roles],
                              {"StringEquals": {"iam:PassedToService": "ecs-tasks.amazonaws.com"}}))
    if any(REGION_PLACEHOLDER in r for r in roles):
        notes.append(f"{cfg.name}: a role ARN in the task definition names <AWS_REGION>; it is kept as written")
    role = cfg.strategy.infrastructure_role
    if cfg.strategy.type == "ecs-native" and role:
        out.append(_statement("PassInfrastructureRoleToEcs", ["iam:PassRole"], [arns.role(role)],
                              {"StringEquals": {"iam:PassedToService": "ecs.amazonaws.com"}}))
    elif cfg.strategy.type == "ecs-native":
        notes.append(f"{cfg.name}: no strategy.infrastructure_role: the release does not pass it (the service "
                     "already names it); set it to grant iam:PassRole for `migrate --to ecs-native`")
    return out


def self_check_statements(cfg: ServiceConfig, principal: str | None, notes: list[str]) -> list[dict[str, Any]]:
    """tasks/release/permission_preflight.py: iam:SimulatePrincipalPolicy on the pipeline's own user or role.

    Only for a principal named by its ARN (``ecs-pipeline iam --principal``), never on a wildcard: the
    simulation reads the permissions of whatever principal it names (AWS's API reference warns that it
    "discloses information about the permissions granted to other users"), and the generator cannot know
    offline which identity will run the pipeline. Without it a release skips the preflight with one log
    line; a refused call is still named with its statement where it happens.
    """
    principal = principal or cfg.deploy_role_arn  # a service that names its deploy role names the principal
    if principal:
        return [_statement("SimulateOwnPermissions", ["iam:SimulatePrincipalPolicy"], [principal])]
    notes.append(f"{cfg.name}: no --principal: releases skip their permission preflight (IAM's simulation of "
                 "this policy); pass --principal with the ARN of the user or role the pipeline runs as to add "
                 "iam:SimulatePrincipalPolicy on it (a role's sessions name it arn:aws:iam::ACCOUNT:role/NAME, "
                 "without a path: a role with a path cannot be simulated from its session)")
    return []


def build_input_statements(cfg: ServiceConfig, arns: Arns, spec: BuildSpec | None) -> list[dict[str, Any]]:
    """The buildspec's parameters and secrets (read with the pipeline's clients) and the build role it assumes."""
    out = []
    if spec is not None:
        named = {s["Sid"]: s["Resource"] for s in build_session(cfg, spec, arns.scope)["Statement"]}
        if "NamedParameters" in named:  # buildspec_runner.resolve_env: GetParameter per variable
            out.append(_statement("ReadBuildspecParameters", ["ssm:GetParameter"], named["NamedParameters"]))
        if "NamedSecrets" in named:
            out.append(_statement("ReadBuildspecSecrets", ["secretsmanager:GetSecretValue"], named["NamedSecrets"]))
    if cfg.build.role_arn:  # build_identity.build_credentials: one AssumeRole per build
        out.append(_statement("AssumeTheBuildRole", ["sts:AssumeRole"], [cfg.build.role_arn]))
    return out


def load_balancer_statements(cfg: ServiceConfig, actions: Iterable[str]) -> list[dict[str, Any]]:
    """ELB reads (resolve_routing, get_weights, budgets, target health): Describe* has no resource types."""
    return [_statement("NoResourceLevelPermissionsLoadBalancing", actions, ["*"])]


def alarm_statements(cfg: ServiceConfig, arns: Arns) -> list[dict[str, Any]]:
    """verification.alarms_firing: DescribeAlarms of verify.alarms (none named: never called)."""
    if not cfg.verify.alarms:
        return []
    return [_statement("ReadVerifyAlarms", ["cloudwatch:DescribeAlarms"], [arns.alarm(n) for n in cfg.verify.alarms])]


def stopped_task_statements(arns: Arns) -> list[dict[str, Any]]:
    """Why tasks stopped (ecs.stopped_reasons_of / stopped_task_reasons): ListTasks, then DescribeTasks."""
    return [
        _statement("ListStoppedTasksOfTheCluster", ["ecs:ListTasks"], ["*"],
                   {"ArnEquals": {"ecs:cluster": arns.cluster}}),
        _statement("DescribeStoppedTasks", ["ecs:DescribeTasks"],
                   [arns.scope.arn("ecs", f"task/{arns.cfg.ecs.cluster}/*")]),
    ]


def gate_statements(cfg: ServiceConfig, arns: Arns, task_definition: dict[str, Any],
                    notes: list[str]) -> list[dict[str, Any]]:
    """The release gates a service's config asks for: its migration task (tasks/release/migration.py), and
    canary analysis's reads of the target groups' ALB metrics."""
    out = []
    if cfg.migrate is not None:
        family = str(task_definition.get("family") or cfg.name)
        on_cluster = {"ArnEquals": {"ecs:cluster": arns.cluster}}
        out += [
            # RunTask of the new revision on the service's cluster only (ecs:cluster, a RunTask condition key)
            _statement("RunTheMigrationTask", ["ecs:RunTask"], [arns.family(family)], on_cluster),
            # find an earlier run's migration task by its startedBy
            _statement("ListMigrationTasksOfTheCluster", ["ecs:ListTasks"], ["*"], on_cluster),
            _statement("FollowAndStopTheMigrationTask", ["ecs:DescribeTasks", "ecs:StopTask"],
                       [arns.scope.arn("ecs", f"task/{cfg.ecs.cluster}/*")]),
        ]
        container = cfg.migrate.container or cfg.ecs.container
        found = [c for c in task_definition.get("containerDefinitions") or [] if c.get("name") == container]
        options = ((found[0].get("logConfiguration") or {}).get("options") or {}) if found else {}
        if options.get("awslogs-group"):  # its lines come back with GetLogEvents on its own log group
            group = str(options["awslogs-group"])
            out.append(_statement("ReadTheMigrationLogs", ["logs:GetLogEvents"],
                                  [arns.scope.arn("logs", f"log-group:{group}:*")]))
        else:
            notes.append(f"{cfg.name}: migrate: container {container} logs without awslogs: a release refuses "
                         "to run the migration until it does (its output comes back from CloudWatch Logs)")
    if cfg.analysis is not None:  # GetMetricData has no resource-level permissions
        out.append(_statement("ReadTargetGroupMetricsForAnalysis", ["cloudwatch:GetMetricData"], ["*"]))
    return out


ELB_READ = ("elasticloadbalancing:DescribeListeners", "elasticloadbalancing:DescribeLoadBalancers",
            "elasticloadbalancing:DescribeTargetGroups")
TARGET_HEALTH = "elasticloadbalancing:DescribeTargetHealth"


def task_sets(cfg: ServiceConfig, arns: Arns, notes: list[str]) -> list[dict[str, Any]]:
    """tasks/strategies/task_sets.py: task sets, listener weights, green's health."""
    return [
        _statement("DriveTaskSets", ["ecs:CreateTaskSet", "ecs:DescribeTaskSets", "ecs:DeleteTaskSet"],
                   [arns.ecs("task-set", "/*")]),
        _statement("MakeGreenPrimary", ["ecs:UpdateServicePrimaryTaskSet"], [arns.ecs("service")]),
        _statement("MoveListenerWeights", ["elasticloadbalancing:ModifyListener"],
                   [arns.listener(ref) for ref in _listeners(cfg)]),
        *stopped_task_statements(arns),
        *alarm_statements(cfg, arns),
        *load_balancer_statements(cfg, [*ELB_READ, TARGET_HEALTH]),  # deploy_green waits on target health
    ]


def codedeploy(cfg: ServiceConfig, arns: Arns, notes: list[str]) -> list[dict[str, Any]]:
    """tasks/strategies/codedeploy.py and tasks/aws/codedeploy.py: one deployment group, its configs."""
    group = arns.codedeploy("deploymentgroup", f"{cfg.codedeploy_application}/{cfg.codedeploy_group}")
    own_traffic = "traffic" in cfg.strategy.model_fields_set
    # tasks/aws/codedeploy.deployment_config: all-at-once is CodeDeployDefault.ECSAllAtOnce (read, never made),
    # canary and linear are the pipeline's own EcsPipeline.* configs (made once, then read)
    config_name = deployment_config(cfg.strategy.traffic)[0] if own_traffic else ""
    configs = [arns.codedeploy("deploymentconfig", "*")] if not own_traffic else [
        arns.codedeploy("deploymentconfig", config_name if not config_name.startswith(OWN_CONFIG_PREFIX)
                        else f"{OWN_CONFIG_PREFIX}*")]
    if not own_traffic:
        notes.append(f"{cfg.name}: no strategy.traffic: the group's own deployment config is read "
                     "(GetDeploymentConfig), whose name is known only in AWS: deploymentconfig:*")
    out = [
        _statement("DriveTheDeploymentGroup", ["codedeploy:GetDeploymentGroup", "codedeploy:ListDeployments",
                                               "codedeploy:CreateDeployment", "codedeploy:GetDeployment"], [group]),
        _statement("ReadDeploymentConfigs", ["codedeploy:GetDeploymentConfig"], configs),
    ]
    if own_traffic and config_name.startswith(OWN_CONFIG_PREFIX):
        out.append(_statement("CreateEcsPipelineDeploymentConfigs", ["codedeploy:CreateDeploymentConfig"], configs))
    out.append(_statement("NoResourceLevelPermissionsCodeDeploy", [
        "codedeploy:ContinueDeployment", "codedeploy:StopDeployment", "codedeploy:ListDeploymentTargets",
        "codedeploy:GetDeploymentTarget"], ["*"]))
    out += alarm_statements(cfg, arns)
    out += load_balancer_statements(cfg, [*ELB_READ, *([TARGET_HEALTH] if cfg.verify.target_health else [])])
    return out


def rolling(cfg: ServiceConfig, arns: Arns, notes: list[str]) -> list[dict[str, Any]]:
    """tasks/strategies/rolling.py: UpdateService (and back), stopped tasks, checks on production."""
    out = [
        _statement("UpdateTheService", ["ecs:UpdateService"], [arns.ecs("service")]),
        *stopped_task_statements(arns),
        *alarm_statements(cfg, arns),
    ]
    if cfg.load_balancer is not None and cfg.verify.http:  # traffic.production_endpoint
        out += load_balancer_statements(cfg, ELB_READ[:2])
    return out


def ecs_native(cfg: ServiceConfig, arns: Arns, notes: list[str]) -> list[dict[str, Any]]:
    """tasks/strategies/ecs_native.py: UpdateService, then the service deployment ECS drives."""
    service = arns.ecs("service")
    return [
        _statement("StartAndListServiceDeployments", ["ecs:UpdateService", "ecs:ListServiceDeployments"], [service]),
        _statement("FollowContinueOrStopServiceDeployments", [
            "ecs:DescribeServiceDeployments", "ecs:ContinueServiceDeployment", "ecs:StopServiceDeployment"],
            [service, arns.ecs("service-deployment", "/*")]),
        _statement("ReadServiceRevisions", ["ecs:DescribeServiceRevisions"],
                   [service, arns.ecs("service-revision", "/*")]),
        *alarm_statements(cfg, arns),
        *load_balancer_statements(cfg, [
            *ELB_READ, "elasticloadbalancing:DescribeRules", "elasticloadbalancing:DescribeTargetGroupAttributes",
            *([TARGET_HEALTH] if cfg.verify.target_health else [])]),
    ]


STRATEGY_STATEMENTS = {"task-sets": task_sets, "codedeploy": codedeploy, "rolling": rolling,
                       "ecs-native": ecs_native}


def build_session(cfg: ServiceConfig, spec: BuildSpec | None, scope: Scope) -> dict[str, Any]:
    """build_identity.session_policy for SPEC (a service without a buildspec names no parameters or secrets)."""
    return session_policy(cfg, spec or BuildSpec(env=Env(), phases=()), scope.account, scope.region, scope.partition)


def build_policy(cfg: ServiceConfig, spec: BuildSpec | None, scope: Scope) -> Policy:
    """The build role's policy: what each build's session is narrowed to, attached to the role itself."""
    notes: list[str] = []
    if not cfg.build.role_arn:
        notes.append(f"{cfg.name}: no build.role_arn: builds get no AWS credentials; attach this policy to the "
                     "role you name there")
    return Policy("build", build_session(cfg, spec, scope), notes)


def merge(policies: Sequence[Policy]) -> Policy:
    """One policy for a fleet: statements with the same Sid, actions and condition share their resources."""
    merged: dict[tuple[str, tuple[str, ...], str], dict[str, Any]] = {}
    for policy in policies:
        for s in policy.document["Statement"]:
            unscoped = s["Resource"] == "*" and "Condition" not in s  # one statement: its actions add up
            actions = () if unscoped else tuple(_listed(s["Action"]))
            key = (s["Sid"], actions, repr(s.get("Condition")))
            if key in merged:
                was = merged[key]
                merged[key] = _statement(s["Sid"], _listed(was["Action"]) + _listed(s["Action"]),
                                         _listed(was["Resource"]) + _listed(s["Resource"]), s.get("Condition"))
            else:
                merged[key] = dict(s)
    statements = list(merged.values())
    seen: dict[str, int] = {}
    for s in statements:  # Sids are unique in a policy: the same Sid with other actions gets a number
        seen[s["Sid"]] = seen.get(s["Sid"], 0) + 1
        if seen[s["Sid"]] > 1:
            s["Sid"] = f"{s['Sid']}{seen[s['Sid']]}"
    notes = list(dict.fromkeys(n for p in policies for n in p.notes))
    return Policy(policies[0].role, {"Version": VERSION, "Statement": statements}, notes)


def cloudformation(policies: Sequence[Policy], name: str) -> dict[str, Any]:
    """A template fragment: one AWS::IAM::ManagedPolicy per role (attach them to the deploy and build roles)."""
    resources = {}
    for policy in policies:
        logical = "".join(part.capitalize() for part in f"{name}-{policy.role}".replace("_", "-").split("-"))
        resources[f"{logical}Policy"] = {
            "Type": "AWS::IAM::ManagedPolicy",
            "Properties": {"Description": f"ecs-pipeline {policy.role} identity for {name}",
                           "PolicyDocument": policy.document},
        }
    return {"AWSTemplateFormatVersion": "2010-09-09", "Resources": resources}


def verify_policy(cfg: ServiceConfig, task_definition: dict[str, Any], scope: Scope) -> Policy:
    """What ``ecs-pipeline verify SERVICE`` reads beyond the deploy policy (tasks/release/preflight*.py).

    verify runs as the service's deploy role, so both policies go on it: a release never calls these, and
    the deploy policy stays exactly what releases call.
    """
    arns, notes = Arns(cfg, scope), list[str]()
    roles = [arns.role(str(task_definition[k])) for k in ("taskRoleArn", "executionRoleArn") if task_definition.get(k)]
    if cfg.build.role_arn:
        roles.append(cfg.build.role_arn)
    if cfg.strategy.type == "ecs-native" and cfg.strategy.infrastructure_role:
        roles.append(arns.role(cfg.strategy.infrastructure_role))
    statements = [_statement("ReadTheCluster", ["ecs:DescribeClusters"], [arns.cluster])]
    if roles:
        statements.append(_statement("ReadTheRolesItNames", ["iam:GetRole"], sorted(set(roles))))
    # Roles only AWS names: the deployment group's service role, the service's infrastructure role.
    named_by_aws = {"codedeploy": "the CodeDeploy deployment group's service role",
                    "ecs-native": "the service's infrastructure role (set strategy.infrastructure_role to name it)"}
    named = cfg.strategy.type == "ecs-native" and cfg.strategy.infrastructure_role
    if cfg.strategy.type in named_by_aws and not named:
        statements.append(_statement("ReadTheRoleAwsNames", ["iam:GetRole"], [arns.role("*")]))
        notes.append(f"{cfg.name}: verify reads {named_by_aws[cfg.strategy.type]}, which only AWS names: iam:GetRole "
                     "on every role of the account (read-only); narrow ReadTheRoleAwsNames to it once known")
    if cfg.strategy.type == "codedeploy":
        statements.append(_statement("ReadTheCodeDeployApplication", ["codedeploy:GetApplication"],
                                     [arns.codedeploy("application", str(cfg.codedeploy_application))]))
    unscoped = ["logs:DescribeLogGroups"]  # lists the account's groups: AWS scopes it by no resource
    if cfg.load_balancer is not None:  # the listeners, their rules and the target groups, which AWS cannot scope
        unscoped += ["elasticloadbalancing:DescribeListeners", "elasticloadbalancing:DescribeLoadBalancers",
                     "elasticloadbalancing:DescribeRules", "elasticloadbalancing:DescribeTargetGroups"]
    statements.append(_statement("NoResourceLevelPermissionsVerify", unscoped, ["*"]))
    return Policy("verify", {"Version": VERSION, "Statement": statements}, notes)
