"""A service's infrastructure from infra/ecs-service.yaml, as a CloudFormation stack in the sandbox.

The template is the architecture as code: what the seed makes for one service, usable in a real account. The
seed renders it for a service (parameters from its config, the two policy documents from the IAM policy
generator, the single source of both) and creates the stack ``<service>-infra`` through the sandbox's
CloudFormation, minus the resource types the sandbox makes another way (``MADE_BY_API``): moto's CloudFormation
either has no handler for them or drops properties the sandbox's controller needs. The template still declares
them, so a real account gets them from it.
"""

from __future__ import annotations

import ast
import contextlib
import functools
import json
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import yaml
from botocore.exceptions import ClientError

from flows.iam_cli import policy_for, rendered
from sandbox.engine import SandboxError
from sandbox.identities import build_role_name
from sandbox.layout import REPO
from sandbox.seed_network import Clients
from tasks.aws.errors import error_code
from tasks.config.models import ServiceConfig
from tasks.release.permissions import Policy, Scope

TEMPLATE = REPO / "infra" / "ecs-service.yaml"
CODEDEPLOY_ROLE = "ecsCodeDeployRole"
INFRASTRUCTURE_ROLE = "ecsInfrastructureRoleForLoadBalancers"
# Resource types the template declares and the sandbox creates by API (sandbox/seed.py), and why.
MADE_BY_API = {
    "AWS::ECS::Service": "moto's handler keeps only cluster, name, count and task definition (no deployment "
                         "controller, load balancers, network or deployment configuration), and the controller "
                         "sets a service up (its deployments, CODE_DEPLOY's first task set) when CreateService "
                         "is called through the API",
    "AWS::CloudWatch::Alarm": "moto's CloudFormation has no handler for it",
    "AWS::CodeDeploy::Application": "moto's CloudFormation has no handler for it",
    "AWS::CodeDeploy::DeploymentGroup": "moto's CloudFormation has no handler for it",
}
# Properties moto's handler drops from a resource it does create: the seed sets them by API after the stack.
SET_BY_API = {
    ("AWS::ElasticLoadBalancingV2::TargetGroup", "TargetGroupAttributes"): "moto's handler ignores them",
}
COMPLETE = ("CREATE_COMPLETE", "UPDATE_COMPLETE")


class _CfnLoader(yaml.SafeLoader):  # type: ignore[misc]
    """YAML with CloudFormation's short forms (!Ref, !Sub, !GetAtt a.b, !If ...) read as their long forms."""


def _short_form(loader: _CfnLoader, suffix: str, node: yaml.Node) -> dict[str, Any]:
    value: Any
    if isinstance(node, yaml.ScalarNode):
        value = loader.construct_scalar(node)
    elif isinstance(node, yaml.SequenceNode):
        value = loader.construct_sequence(node, deep=True)
    else:
        value = loader.construct_mapping(node, deep=True)
    if suffix == "GetAtt" and isinstance(value, str):
        value = value.split(".", 1)
    return {suffix if suffix in ("Ref", "Condition") else f"Fn::{suffix}": value}


_CfnLoader.add_multi_constructor("!", _short_form)


def load_template(path: Path = TEMPLATE) -> dict[str, Any]:
    """The template as CloudFormation's JSON form."""
    try:
        loaded = yaml.load(path.read_text(), Loader=_CfnLoader)  # a SafeLoader: no Python objects
    except (OSError, yaml.YAMLError) as exc:
        raise SandboxError(f"{path}: cannot read the CloudFormation template ({exc})") from exc
    return dict(loaded)


def service_policies(cfg: ServiceConfig, scope: Scope, principal: str | None = None) -> dict[str, Policy]:
    """The deploy and build policies ``ecs-pipeline iam SERVICE [--principal PRINCIPAL]`` prints for CFG.

    PRINCIPAL: the ARN of the user the pipeline signs as; its policy then lets it simulate its own
    permissions, so a release checks them before it changes anything.
    """
    notes: list[str] = []
    return {role: policy_for(cfg, role, scope, None, notes, principal) for role in ("deploy", "build", "verify")}


def render_template(template: Mapping[str, Any], policies: Mapping[str, Policy]) -> dict[str, Any]:
    """TEMPLATE with the generated deploy and build policy documents in place of its placeholders."""
    out: dict[str, Any] = json.loads(json.dumps(template))
    for logical, role in (("DeployPolicy", "deploy"), ("BuildPolicy", "build"), ("VerifyPolicy", "verify")):
        out["Resources"][logical]["Properties"]["PolicyDocument"] = policies[role].document
    return out


def sandbox_template(template: Mapping[str, Any]) -> dict[str, Any]:
    """TEMPLATE without the resources the sandbox makes by API (nor DependsOn naming them) and outputs."""
    out: dict[str, Any] = json.loads(json.dumps(template))
    gone = {k for k, r in out["Resources"].items() if r["Type"] in MADE_BY_API}
    out["Resources"] = {k: r for k, r in out["Resources"].items() if k not in gone}
    for resource in out["Resources"].values():
        if "DependsOn" in resource:
            kept = [d for d in _listed(resource["DependsOn"]) if d not in gone]
            resource.pop("DependsOn")
            if kept:
                resource["DependsOn"] = kept
        for (kind, prop) in SET_BY_API:
            if resource["Type"] == kind:
                resource.get("Properties", {}).pop(prop, None)
    # Outputs are for people; the seed reads the stack's resources. moto evaluates outputs on every DescribeStacks,
    # which after a failed create makes their resources again (and fails): the sandbox's stack has none.
    out.pop("Outputs", None)
    return out


def _listed(value: str | list[str]) -> list[str]:
    return [value] if isinstance(value, str) else list(value)


def fits_template(cfg: ServiceConfig) -> bool:
    """Whether the template can describe CFG: one load balancer, both listeners named by it and a port."""
    lb = cfg.load_balancer
    if lb is None:
        return False
    refs = (lb.production_listener, lb.test_listener)
    return all(r.arn is None and r.load_balancer and r.port for r in refs) and (
        refs[0].load_balancer == refs[1].load_balancer)


def stack_name(cfg: ServiceConfig) -> str:
    return f"{cfg.ecs.service}-infra"


def parameters(cfg: ServiceConfig, seeded: Mapping[str, Any], net: Mapping[str, Any],
               deploy_principal: str | None, log_group: str) -> dict[str, str]:
    """The template's parameters for CFG (a CloudFormation parameter value is always a string)."""
    lb = cfg.load_balancer
    assert lb is not None and lb.production_listener.port and lb.test_listener.port
    codedeploy = cfg.strategy.type == "codedeploy"
    values: dict[str, Any] = {
        "ServiceName": cfg.ecs.service, "ClusterName": cfg.ecs.cluster, "RepositoryName": cfg.ecr.repository,
        "Strategy": cfg.strategy.type, "DesiredCount": cfg.ecs.desired_count, "ContainerName": cfg.ecs.container,
        "ContainerPort": cfg.ecs.container_port, "TaskDefinitionArn": seeded.get("task_definition_arn", ""),
        "VpcId": net["vpc_id"], "Subnets": ",".join(net["subnets"]), "SecurityGroup": net["security_group"],
        "LoadBalancerName": lb.production_listener.load_balancer, "ProductionPort": lb.production_listener.port,
        "TestPort": lb.test_listener.port, "BlueTargetGroupName": lb.target_groups[0],
        "GreenTargetGroupName": lb.target_groups[1],
        "HealthCheckPath": cfg.verify.http[0].path if cfg.verify.http else "/health",
        "AlarmName": cfg.verify.alarms[0] if cfg.verify.alarms else "", "LogGroupName": log_group,
        "CodeDeployApplicationName": cfg.codedeploy_application if codedeploy else "",
        "CodeDeployGroupName": cfg.codedeploy_group if codedeploy else "",
        "CodeDeployRoleName": CODEDEPLOY_ROLE, "InfrastructureRoleName": INFRASTRUCTURE_ROLE,
        **deploy_identity(cfg, deploy_principal),
        "BuildRoleName": build_role_name(cfg.ecs.service),
    }
    return {k: str(v) for k, v in values.items()}


def deploy_identity(cfg: ServiceConfig, deploy_user: str | None) -> dict[str, str]:
    """Who gets the deploy policy: the service's own deploy role (made by the stack) when its YAML names
    ``deploy_role_arn``, trusting DEPLOY_USER (the worker; None: the account); else DEPLOY_USER itself
    (None: nobody)."""
    if cfg.deploy_role_arn:
        account = cfg.deploy_role_arn.split(":")[4]
        return {"DeployPrincipalType": "role", "DeployPrincipalName": cfg.deploy_role_arn.rsplit("/", 1)[-1],
                "MakeDeployRole": "true",
                "DeployRoleTrustedPrincipal": f"arn:aws:iam::{account}:user/{deploy_user}" if deploy_user else ""}
    return {"DeployPrincipalType": "user", "DeployPrincipalName": deploy_user or "", "MakeDeployRole": "false",
            "DeployRoleTrustedPrincipal": ""}


def ensure_stack(aws: Clients, name: str, template: Mapping[str, Any], params: Mapping[str, str]) -> dict[str, str]:
    """The stack NAME made from TEMPLATE with PARAMS (read when it is complete); logical id -> physical id.

    moto's CreateStack does not roll back: a failed one leaves the stack in progress and what it made so far,
    so whatever would make it fail (see names_in_the_way) is checked before, and a stack that is not complete
    is reported, never made again over its remains.
    """
    stack = _describe(aws, name)
    if stack is None:
        _create(aws, name, template, params)
    elif stack["StackStatus"] not in COMPLETE:
        raise SandboxError(f"stack {name} is {stack['StackStatus']} after a failed seed ("
                           f"{stack.get('StackStatusReason') or 'no reason given'}); the sandbox keeps what it made: "
                           f"seed under another prefix, or restart the sandbox (`python -m sandbox down`, `up`)")
    else:
        had = {p["ParameterKey"]: _plain(p.get("ParameterValue", "")) for p in stack.get("Parameters", [])}
        changed = sorted(k for k, v in params.items() if had.get(k, v) != v)
        if changed:
            raise SandboxError(
                f"stack {name} exists with other parameters ({', '.join(changed)}); the sandbox does not update "
                "stacks: seed under another prefix, or restart the sandbox (`python -m sandbox down`, `up`)")
    found = aws.cloudformation.describe_stack_resources(StackName=name)["StackResources"]
    # moto lists a resource its condition left out without ids: it was never made
    return {r["LogicalResourceId"]: r["PhysicalResourceId"] for r in found if r.get("PhysicalResourceId")}


def names_in_the_way(aws: Clients, params: Mapping[str, str], account: str) -> list[str]:
    """What a new stack with PARAMS would fail on: a missing deploy principal, names already taken."""
    checks: list[tuple[str, Callable[[], Any], str]] = [
        *([(f"ECR repository {params['RepositoryName']}",
            lambda: aws.ecr.describe_repositories(repositoryNames=[params["RepositoryName"]]),
            "RepositoryNotFoundException")] if params.get("CreateRepository", "true") == "true" else []),
        (f"load balancer {params['LoadBalancerName']}",
         lambda: aws.elbv2.describe_load_balancers(Names=[params["LoadBalancerName"]]), "LoadBalancerNotFound"),
        *((f"target group {params[k]}", functools.partial(aws.elbv2.describe_target_groups, Names=[params[k]]),
           "TargetGroupNotFound") for k in ("BlueTargetGroupName", "GreenTargetGroupName")),
        (f"IAM role {params['BuildRoleName']}", lambda: aws.iam.get_role(RoleName=params["BuildRoleName"]),
         "NoSuchEntity"),
        *((f"IAM policy {params['ServiceName']}-{role}", functools.partial(
            aws.iam.get_policy, PolicyArn=f"arn:aws:iam::{account}:policy/{params['ServiceName']}-{role}"),
           "NoSuchEntity") for role in ("deploy", "build", "verify")),
    ]
    taken = [f"{what} exists outside it" for what, describe, missing in checks if _exists(describe, missing)]
    group = params["LogGroupName"]
    if group and any(g["logGroupName"] == group for g in aws.logs.describe_log_groups(
            logGroupNamePrefix=group)["logGroups"]):
        taken.append(f"log group {group} exists outside it")
    principal, kind = params["DeployPrincipalName"], params.get("DeployPrincipalType", "user")
    if principal:
        find = functools.partial(aws.iam.get_user, UserName=principal) if kind == "user" else functools.partial(
            aws.iam.get_role, RoleName=principal)
        exists = _exists(find, "NoSuchEntity")
        if params.get("MakeDeployRole") == "true" and exists:
            taken.append(f"IAM role {principal} exists outside it")
        elif params.get("MakeDeployRole") != "true" and not exists:
            taken.append(f"the deploy principal {principal} is no IAM {kind} (make it first)")
    trusted = params.get("DeployRoleTrustedPrincipal", "").rsplit("user/", 1)
    if len(trusted) == 2 and not _exists(functools.partial(aws.iam.get_user, UserName=trusted[1]), "NoSuchEntity"):
        taken.append(f"the deploy principal {trusted[1]} is no IAM user (make it first)")
    return taken


def _exists(describe: Callable[[], Any], missing: str) -> bool:
    try:
        describe()
    except ClientError as exc:
        if error_code(exc) != missing:
            raise
        return False
    return True


def _plain(value: str) -> str:
    """A parameter value as it was given: moto answers a list parameter as Python's repr of the list."""
    if value.startswith("["):
        with contextlib.suppress(ValueError, SyntaxError):
            return ",".join(str(v) for v in ast.literal_eval(value))
    return value


def _describe(aws: Clients, name: str) -> dict[str, Any] | None:
    try:
        stacks = aws.cloudformation.describe_stacks(StackName=name)["Stacks"]
    except ClientError as exc:
        if error_code(exc) != "ValidationError":  # CloudFormation's "Stack with id X does not exist"
            raise
        return None
    return dict(stacks[0]) if stacks else None


def _create(aws: Clients, name: str, template: Mapping[str, Any], params: Mapping[str, str]) -> None:
    try:
        aws.cloudformation.create_stack(
            StackName=name, TemplateBody=json.dumps(template), Capabilities=["CAPABILITY_NAMED_IAM"],
            Parameters=[{"ParameterKey": k, "ParameterValue": v} for k, v in params.items()],
            Tags=[{"Key": "ecs-pipeline:template", "Value": str(TEMPLATE.relative_to(REPO))}],
        )
    except ClientError as exc:
        raise SandboxError(f"stack {name} from {TEMPLATE.relative_to(REPO)}: {exc}") from exc
    stack = _describe(aws, name)
    status = stack["StackStatus"] if stack else "missing"
    if status not in COMPLETE:
        raise SandboxError(f"stack {name} from {TEMPLATE.relative_to(REPO)} ended {status}: "
                           f"{(stack or {}).get('StackStatusReason', 'no reason given')}")


def seed_from_template(aws: Clients, cfg: ServiceConfig, seeded: Mapping[str, Any], net: Mapping[str, Any],
                       deploy_principal: str | None) -> dict[str, Any]:
    """The stack for CFG, made or read, with what moto's handlers drop set by API; the seed's keys for it."""
    scope = Scope(str(aws.sts.get_caller_identity()["Account"]), aws.ecs.meta.region_name)
    principal = (cfg.deploy_role_arn or
                 (f"arn:{scope.partition}:iam::{scope.account}:user/{deploy_principal}" if deploy_principal else None))
    full = render_template(load_template(), service_policies(cfg, scope, principal))
    params = parameters(cfg, seeded, net, deploy_principal, own_log_group(cfg, scope))
    params.update(shared_resources(aws, cfg))
    name = stack_name(cfg)
    if _describe(aws, name) is None and (in_the_way := names_in_the_way(aws, params, scope.account)):
        raise SandboxError(f"stack {name} cannot be made: {'; '.join(in_the_way)}; nothing was tried (the sandbox "
                           "cannot roll a failed stack back): seed under another prefix, or restart the sandbox")
    made = ensure_stack(aws, name, sandbox_template(full), params)
    set_dropped_properties(aws, full, made)
    assert cfg.load_balancer is not None
    return {
        "target_groups": list(cfg.load_balancer.target_groups),
        "target_group_arns": [made["BlueTargetGroup"], made["GreenTargetGroup"]],
        "load_balancers": [cfg.load_balancer.production_listener.load_balancer],
        "load_balancer_arn": made["LoadBalancer"],
        "listener_arns": {"production": made["ProductionListener"], "test": made["TestListener"]},
    }


def shared_resources(aws: Clients, cfg: ServiceConfig) -> dict[str, str]:
    """CreateRepository / CreateCluster: false when another stack (another service) made them already.

    The stack's own choice stands once made, so seeding again asks for the same parameters.
    """
    stack = _describe(aws, stack_name(cfg))
    if stack is not None and stack["StackStatus"] in COMPLETE:
        had = {p["ParameterKey"]: p.get("ParameterValue", "") for p in stack.get("Parameters", [])}
        if "CreateRepository" in had and "CreateCluster" in had:
            return {"CreateRepository": had["CreateRepository"], "CreateCluster": had["CreateCluster"]}
    try:
        aws.ecr.describe_repositories(repositoryNames=[cfg.ecr.repository])
        repository = "false"
    except ClientError as exc:
        if error_code(exc) != "RepositoryNotFoundException":
            raise
        repository = "true"
    clusters = aws.ecs.describe_clusters(clusters=[cfg.ecs.cluster])["clusters"]
    cluster = "false" if any(c.get("status") == "ACTIVE" for c in clusters) else "true"
    return {"CreateRepository": repository, "CreateCluster": cluster}


def own_log_group(cfg: ServiceConfig, scope: Scope) -> str:
    """The task definition's awslogs group when it is the service's own (``/ecs/<service>``), else ""."""
    wanted = f"/ecs/{cfg.ecs.service}"
    for container in rendered(cfg, scope).get("containerDefinitions", []):
        options = (container.get("logConfiguration") or {}).get("options") or {}
        if options.get("awslogs-group") == wanted:
            return wanted
    return ""


def set_dropped_properties(aws: Clients, template: Mapping[str, Any], made: Mapping[str, str]) -> None:
    """SET_BY_API: what TEMPLATE says that moto's handlers did not apply to the resources MADE."""
    for logical, resource in template["Resources"].items():
        attributes = resource.get("Properties", {}).get("TargetGroupAttributes")
        if resource["Type"] == "AWS::ElasticLoadBalancingV2::TargetGroup" and attributes and logical in made:
            aws.elbv2.modify_target_group_attributes(TargetGroupArn=made[logical], Attributes=attributes)
