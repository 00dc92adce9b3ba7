"""infra/ecs-service.yaml: valid CloudFormation, and the stack the sandbox seeds a service from.

The template is linted with cfn-lint (AWS's resource specifications), as written and as rendered
with a service's generated policies. One CodeDeploy service (the strategy with the most resources:
its controller, application and deployment group are made by API beside the stack) is seeded once
for the module with a deploy user of its own as deploy principal; its stack must hold what the
seed returned, seeding again must change nothing, and the ManagedPolicy must hold exactly what the
IAM policy generator prints for that config.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from botocore.exceptions import ClientError

from flows.iam_cli import policy_for
from harness.iam import ACCOUNT, REGION
from harness.services import ServiceUnderTest, aws, make_service, seed_serving
from sandbox.engine import SandboxError
from sandbox.identities import build_role_name
from sandbox.seed import seed_service
from sandbox.seed_stack import (
    MADE_BY_API,
    SET_BY_API,
    TEMPLATE,
    load_template,
    render_template,
    sandbox_template,
    service_policies,
    stack_name,
)
from tasks.config.models import load_service
from tasks.release.permissions import Scope

ROOT = Path(__file__).resolve().parents[1]
SCOPE = Scope(ACCOUNT, REGION)


def _lint(text: str) -> list[str]:
    from cfnlint.api import lint  # here, not at the top: cfn-lint and moto's CloudFormation load in seconds

    return [f"{m.rule.id} {m.message} (line {m.linenumber})" for m in lint(text, regions=[REGION])]


def test_the_template_is_valid_cloudformation() -> None:
    assert _lint(TEMPLATE.read_text()) == []


def test_the_template_rendered_with_a_services_policies_is_valid_cloudformation() -> None:
    cfg = load_service(ROOT / "deployments" / "sample-app-cd.yaml")
    rendered = render_template(load_template(), service_policies(cfg, SCOPE))
    assert _lint(json.dumps(rendered)) == []
    deploy = rendered["Resources"]["DeployPolicy"]["Properties"]["PolicyDocument"]
    assert deploy == policy_for(cfg, "deploy", SCOPE, None, []).document


def test_the_sandbox_makes_by_api_only_what_the_template_declares_and_moto_cannot_make() -> None:
    template = load_template()
    declared = {r["Type"] for r in template["Resources"].values()}
    assert set(MADE_BY_API) <= declared
    sandboxed = sandbox_template(template)
    kept = {r["Type"] for r in sandboxed["Resources"].values()}
    assert not kept & set(MADE_BY_API)
    from moto.cloudformation.parsing import get_model_map

    assert kept <= set(get_model_map()), "moto's CloudFormation has a handler for every type the stack holds"
    for kind, prop in SET_BY_API:
        assert all(prop not in r.get("Properties", {}) for r in sandboxed["Resources"].values() if r["Type"] == kind)
    readme = (ROOT / "infra" / "README.md").read_text()
    assert all(kind in readme for kind in MADE_BY_API), "infra/README.md lists what the sandbox makes by API"


@pytest.fixture(scope="module")
def deploy_user() -> Iterator[str]:
    name = f"t{uuid.uuid4().hex[:8]}-deploy"
    iam = aws("iam")
    iam.create_user(UserName=name)
    yield name
    for policy in iam.list_attached_user_policies(UserName=name)["AttachedPolicies"]:
        iam.detach_user_policy(UserName=name, PolicyArn=policy["PolicyArn"])
    iam.delete_user(UserName=name)


@pytest.fixture(scope="module")
def seeded(tmp_path_factory: pytest.TempPathFactory, deploy_user: str) -> ServiceUnderTest:
    return make_service(tmp_path_factory.mktemp("template"), strategy="codedeploy",
                        seed=lambda cfg: seed_service(cfg, deploy_principal=deploy_user))


def _stack(sut: ServiceUnderTest) -> tuple[dict[str, Any], dict[str, dict[str, Any]]]:
    cfn = aws("cloudformation")
    name = stack_name(sut.cfg)
    stack = cfn.describe_stacks(StackName=name)["Stacks"][0]
    resources = {r["LogicalResourceId"]: r for r in cfn.describe_stack_resources(StackName=name)["StackResources"]
                 if r.get("PhysicalResourceId")}
    return stack, resources


def test_the_seeded_services_stack_holds_what_the_seed_returned(seeded: ServiceUnderTest) -> None:
    stack, resources = _stack(seeded)
    assert stack["StackName"] == f"{seeded.name}-infra" and stack["StackStatus"] == "CREATE_COMPLETE"
    physical = {k: r["PhysicalResourceId"] for k, r in resources.items()}
    out = seeded.seeded
    assert physical["Repository"] == out["repository"] == seeded.name
    assert physical["Cluster"] == out["cluster"] and out["cluster_arn"].endswith(f":cluster/{out['cluster']}")
    assert physical["LoadBalancer"] == out["load_balancer_arn"]
    assert [physical["BlueTargetGroup"], physical["GreenTargetGroup"]] == out["target_group_arns"]
    assert {"production": physical["ProductionListener"], "test": physical["TestListener"]} == out["listener_arns"]
    assert physical["BuildRole"] == build_role_name(seeded.name)
    assert not {r["ResourceType"] for r in resources.values()} & set(MADE_BY_API)
    elbv2 = aws("elbv2")
    for arn in out["target_group_arns"]:  # the attribute moto's handler drops, set by API
        attributes = {a["Key"]: a["Value"] for a in elbv2.describe_target_group_attributes(
            TargetGroupArn=arn)["Attributes"]}
        assert attributes["deregistration_delay.timeout_seconds"] == "30"
    cfg = seeded.cfg
    service = aws("ecs").describe_services(cluster=cfg.ecs.cluster, services=[cfg.ecs.service])["services"][0]
    assert service["serviceArn"] == out["service_arn"]
    assert service["deploymentController"]["type"] == "CODE_DEPLOY"
    assert service["loadBalancers"][0]["targetGroupArn"] == physical["BlueTargetGroup"]
    group = aws("codedeploy").get_deployment_group(applicationName=out["codedeploy_application"],
                                                   deploymentGroupName=out["codedeploy_group"])
    route = group["deploymentGroupInfo"]["loadBalancerInfo"]["targetGroupPairInfoList"][0]
    assert route["prodTrafficRoute"]["listenerArns"] == [physical["ProductionListener"]]
    seed_serving(seeded)  # the controller serves the stack's listeners with the API-made service's tasks


def test_seeding_the_service_again_changes_nothing(seeded: ServiceUnderTest, deploy_user: str) -> None:
    before = _stack(seeded)
    again = seed_service(load_service(seeded.yaml_path), deploy_principal=deploy_user)
    assert again == seeded.seeded
    assert _stack(seeded) == before
    pages = aws("cloudformation").get_paginator("describe_stacks").paginate()  # a page holds 100 stacks at most
    names = [s["StackName"] for page in pages for s in page["Stacks"]]
    assert names.count(f"{seeded.name}-infra") == 1


def test_the_deploy_policy_is_the_generators_and_the_deploy_user_holds_it(
        seeded: ServiceUnderTest, deploy_user: str) -> None:
    _, resources = _stack(seeded)
    iam = aws("iam")
    cfg = load_service(seeded.yaml_path)
    for logical, role in (("DeployPolicy", "deploy"), ("BuildPolicy", "build"), ("VerifyPolicy", "verify")):
        arn = resources[logical]["PhysicalResourceId"]
        version = iam.get_policy(PolicyArn=arn)["Policy"]["DefaultVersionId"]
        document = iam.get_policy_version(PolicyArn=arn, VersionId=version)["PolicyVersion"]["Document"]
        principal = f"arn:aws:iam::{ACCOUNT}:user/{deploy_user}"  # its policy lets it simulate its own permissions
        assert document == policy_for(cfg, role, SCOPE, None, [], principal).document
    attached = iam.list_attached_user_policies(UserName=deploy_user)["AttachedPolicies"]
    assert sorted(p["PolicyArn"] for p in attached) == sorted(
        resources[k]["PhysicalResourceId"] for k in ("DeployPolicy", "VerifyPolicy"))
    build_role = build_role_name(seeded.name)
    on_role = iam.list_attached_role_policies(RoleName=build_role)["AttachedPolicies"]
    assert [p["PolicyArn"] for p in on_role] == [resources["BuildPolicy"]["PhysicalResourceId"]]
    trust = iam.get_role(RoleName=build_role)["Role"]["AssumeRolePolicyDocument"]
    assert [s["Principal"] for s in trust["Statement"]] == [{"AWS": f"arn:aws:iam::{ACCOUNT}:user/{deploy_user}"}]


def test_a_stack_that_would_fail_is_never_tried() -> None:
    """The sandbox cannot roll a failed stack back (moto keeps what it made): a missing deploy principal or
    a name already taken is refused before CreateStack, and no stack is left behind."""
    cfg = load_service(ROOT / "deployments" / "sample-app.yaml")  # task-sets: no image to build
    prefix = f"t{uuid.uuid4().hex[:6]}-"
    with pytest.raises(SandboxError, match=f"the deploy principal {prefix}nobody is no IAM user"):
        seed_service(cfg, prefix=prefix, deploy_principal=f"{prefix}nobody")
    elbv2 = aws("elbv2")
    vpc = aws("ec2").describe_vpcs()["Vpcs"][0]["VpcId"]
    taken = elbv2.create_target_group(Name=f"{prefix}sample-app-b", Protocol="HTTP", Port=8080, VpcId=vpc,
                                      TargetType="ip")["TargetGroups"][0]["TargetGroupArn"]
    try:
        with pytest.raises(SandboxError, match=f"target group {prefix}sample-app-b exists outside it"):
            seed_service(cfg, prefix=prefix)
    finally:
        elbv2.delete_target_group(TargetGroupArn=taken)
    with pytest.raises(ClientError, match="does not exist"):
        aws("cloudformation").describe_stacks(StackName=f"{prefix}sample-app-infra")
