"""ECS-native blue/green in the sandbox is never looser than AWS: each behaviour quotes where AWS says so.

Where AWS is silent the sandbox plays the least convenient reading, and the test says that too.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import botocore.session
import pytest
from botocore.exceptions import ClientError

from tests.sandbox.test_emulation_native import PAUSE, infrastructure_role, listener_rules, native_service, settled


def doc(shape: str, member: str | None = None) -> str:
    """The documentation botocore's ECS model gives SHAPE (or its MEMBER)."""
    model = botocore.session.get_session().get_service_model("ecs")
    found = model.shape_for(shape)
    return str((found.members[member] if member else found).documentation)


def listed(stack: Any) -> list[str]:
    return [d["serviceDeploymentArn"] for d in stack.ecs.list_service_deployments(
        cluster=stack.name, service="web")["serviceDeployments"]]


def current_arn(stack: Any) -> str | None:
    service = stack.ecs.describe_services(cluster=stack.name, services=["web"])["services"][0]
    return service.get("currentServiceDeployment")


def test_a_new_deployment_is_named_and_listed_only_after_a_while(
        emu: Any, emu_stack: Callable[..., Any], emu_images: dict[str, str]) -> None:
    """botocore documents Service.currentServiceDeployment only as "The ARN of the current service deployment."
    and nothing says UpdateService's answer names the deployment the call starts: aws/containers-roadmap#2709,
    "[ECS] [request]: UpdateService call should return DeploymentArn of the created deployment", asks for it
    because pipelines cannot "conclusively match the deployment to the command that started it"; kayac/ecspresso
    sleeps before it lists (`time.Sleep(10 * time.Second) // wait for new deployment created`). The least
    convenient reading: the answer and DescribeServices still name the previous deployment, and
    ListServiceDeployments lists the new one, only after a while."""
    assert doc("Service", "currentServiceDeployment") == "<p>The ARN of the current service deployment.</p>"
    stack = emu_stack("sln")
    native_service(stack, stack.task_definition(emu_images["v1"]), {"strategy": "BLUE_GREEN",
                                                                    "lifecycleHooks": [PAUSE]})
    first = settled(stack, emu, "SUCCESSFUL")["serviceDeploymentArn"]
    service = stack.ecs.update_service(cluster=stack.name, service="web",
                                       taskDefinition=stack.task_definition(emu_images["v2"]))["service"]
    assert service["currentServiceDeployment"] == first, "UpdateService's answer names the previous deployment"
    assert current_arn(stack) == first and listed(stack) == [first]
    newest = emu.wait_for(lambda: (arns := listed(stack)) and arns[0] != first and arns[0], 30, "the new one listed")
    assert emu.wait_for(lambda: current_arn(stack) == newest, 10, "currentServiceDeployment to name it")


@pytest.mark.parametrize("missing", ["alternateTargetGroupArn", "productionListenerRule", "roleArn"])
def test_blue_green_behind_a_load_balancer_needs_its_advanced_configuration(
        emu_stack: Callable[..., Any], emu_images: dict[str, str], missing: str) -> None:
    """botocore's ECS model, AdvancedConfiguration: "Specify the alternate target group, listener rules, and IAM
    role required for traffic shifting during blue/green deployments." CloudFormation's AWS::ECS::Service
    AdvancedConfiguration: "AlternateTargetGroupArn ... Required: Yes". The test listener rule is optional
    (AWS's migration guide: "If you are not using test listeners, both target groups (production and test) must
    be associated with production listener rules")."""
    assert "alternate target group, listener rules, and IAM role required" in doc("AdvancedConfiguration")
    stack = emu_stack("sadv")
    rules = listener_rules(stack)
    adv = {"alternateTargetGroupArn": stack.tgs[1], "productionListenerRule": rules["prod"],
           "roleArn": infrastructure_role(stack.ecs)}
    del adv[missing]
    with pytest.raises(ClientError) as err:
        stack.ecs.create_service(
            cluster=stack.name, serviceName="web", taskDefinition=stack.task_definition(emu_images["v1"]),
            desiredCount=1, deploymentController={"type": "ECS"}, deploymentConfiguration={"strategy": "BLUE_GREEN"},
            loadBalancers=[{**stack.lb(stack.tgs[0])[0], "advancedConfiguration": adv}])
    assert err.value.response["Error"]["Code"] == "InvalidParameterException"
    assert missing in err.value.response["Error"]["Message"]


def test_an_infrastructure_role_that_does_not_exist_is_refused(
        emu_stack: Callable[..., Any], emu_images: dict[str, str]) -> None:
    """AdvancedConfiguration.roleArn: "The Amazon Resource Name (ARN) of the IAM role that grants Amazon ECS
    permission to call the Elastic Load Balancing APIs for you." ECS cannot assume a role that does not exist."""
    assert "grants Amazon ECS permission to call the Elastic Load Balancing APIs" in doc(
        "AdvancedConfiguration", "roleArn")
    stack = emu_stack("srole")
    rules = listener_rules(stack)
    with pytest.raises(ClientError) as err:
        stack.ecs.create_service(
            cluster=stack.name, serviceName="web", taskDefinition=stack.task_definition(emu_images["v1"]),
            desiredCount=1, deploymentController={"type": "ECS"}, deploymentConfiguration={"strategy": "BLUE_GREEN"},
            loadBalancers=[{**stack.lb(stack.tgs[0])[0], "advancedConfiguration": {
                "alternateTargetGroupArn": stack.tgs[1], "productionListenerRule": rules["prod"],
                "testListenerRule": rules["test"], "roleArn": "arn:aws:iam::123456789012:role/no-such-role"}}])
    assert err.value.response["Error"]["Code"] == "InvalidParameterException"
    assert "unable to assume the role" in err.value.response["Error"]["Message"]


@pytest.mark.parametrize(("section", "value"), [("linearConfiguration", 2.0), ("linearConfiguration", 10.05),
                                                ("canaryConfiguration", 0.0)])
def test_traffic_percent_bounds(emu_stack: Callable[..., Any], emu_images: dict[str, str], section: str,
                                value: float) -> None:
    """LinearConfiguration.stepPercent: "Valid values are multiples of 0.1 from 3.0 to 100.0";
    CanaryConfiguration.canaryPercent: "Valid values are multiples of 0.1 from 0.1 to 100.0" (botocore)."""
    assert "multiples of 0.1 from 3.0 to 100.0" in doc("LinearConfiguration", "stepPercent")
    assert "multiples of 0.1 from 0.1 to 100.0" in doc("CanaryConfiguration", "canaryPercent")
    stack = emu_stack("spct")
    key = "stepPercent" if section == "linearConfiguration" else "canaryPercent"
    strategy = "LINEAR" if section == "linearConfiguration" else "CANARY"
    with pytest.raises(ClientError) as err:
        native_service(stack, stack.task_definition(emu_images["v1"]),
                       {"strategy": strategy, section: {key: value}})
    assert err.value.response["Error"]["Code"] == "InvalidParameterException"
    assert key in err.value.response["Error"]["Message"]


def test_rules_that_do_not_hold_both_target_groups_roll_the_deployment_back(
        emu: Any, emu_stack: Callable[..., Any], emu_images: dict[str, str]) -> None:
    """AWS's migration guide (Migrating from a CodeDeploy blue/green to an Amazon ECS blue/green service
    deployment): "Ensure that your Application Load Balancer target groups are properly associated with listener
    rules ... If this requirement is not met, the service deployment will fail with the following error: Service
    deployment rolled back because of invalid networking configuration. Both targetGroup and alternateTargetGroup
    must be associated with the productionListenerRule or testListenerRule." The listeners' default rules, each
    forwarding to the first group only (what a CodeDeploy deployment leaves), do not."""
    stack = emu_stack("snet")
    default = {name: next(r["RuleArn"] for r in stack.elb.describe_rules(ListenerArn=listener)["Rules"]
                          if r["IsDefault"]) for name, listener in (("prod", stack.prod), ("test", stack.test))}
    stack.ecs.create_service(
        cluster=stack.name, serviceName="web", taskDefinition=stack.task_definition(emu_images["v1"]),
        desiredCount=1, deploymentController={"type": "ECS"}, deploymentConfiguration={"strategy": "BLUE_GREEN"},
        loadBalancers=[{**stack.lb(stack.tgs[0])[0], "advancedConfiguration": {
            "alternateTargetGroupArn": stack.tgs[1], "productionListenerRule": default["prod"],
            "testListenerRule": default["test"], "roleArn": infrastructure_role(stack.ecs)}}])
    deadline = time.monotonic() + 30
    while not listed(stack):
        assert time.monotonic() < deadline, "the deployment was never listed"
        time.sleep(0.1)
    arn = listed(stack)[0]

    def ended() -> Any:
        dep = stack.ecs.describe_service_deployments(serviceDeploymentArns=[arn])["serviceDeployments"][0]
        return dep["status"].startswith("ROLLBACK_") and dep["status"] != "ROLLBACK_IN_PROGRESS" and dep

    dep = emu.wait_for(ended, 30, "the deployment to be rolled back")
    assert dep["statusReason"].startswith(
        "Service deployment rolled back because of invalid networking configuration. Both targetGroup and "
        "alternateTargetGroup must be associated with the productionListenerRule or testListenerRule.")
