"""ECS-native blue/green in the sandbox: service deployments, hooks, rules, answers in botocore's shapes."""

from __future__ import annotations

import os
from collections.abc import Callable
from typing import Any

import boto3
import pytest
from botocore import xform_name
from botocore.exceptions import ClientError


def check_shape(value: Any, shape: Any, path: str = "") -> None:
    """Every key is a member of botocore's shape and every enum value is one botocore knows."""
    kind = shape.type_name
    if kind == "structure":
        assert isinstance(value, dict), path
        unknown = set(value) - set(shape.members)
        assert not unknown, f"{path}: not in {shape.name}: {unknown}"
        for key, item in value.items():
            check_shape(item, shape.members[key], f"{path}.{key}")
    elif kind == "list":
        assert isinstance(value, list), path
        for i, item in enumerate(value):
            check_shape(item, shape.member, f"{path}[{i}]")
    elif kind == "string" and getattr(shape, "enum", None):
        assert value in shape.enum, f"{path}: {value!r} not in {shape.enum}"


def answer(ecs: Any, op: str, **kwargs: Any) -> dict[str, Any]:
    """Call OP through botocore and check the parsed answer against its output shape."""
    method = getattr(ecs, xform_name(op))
    out: dict[str, Any] = method(**kwargs)
    out.pop("ResponseMetadata", None)
    check_shape(out, ecs.meta.service_model.operation_model(op).output_shape, op)
    return out


def listener_rules(stack: Any) -> dict[str, str]:
    """Production and test listener rules, all on the first target group: the rules ECS moves."""
    rules = {}
    for name, listener in (("prod", stack.prod), ("test", stack.test)):
        rules[name] = stack.elb.create_rule(
            ListenerArn=listener, Priority=1, Conditions=[{"Field": "path-pattern", "Values": ["/*"]}],
            Actions=[{"Type": "forward", "ForwardConfig": {"TargetGroups": [
                {"TargetGroupArn": stack.tgs[0], "Weight": 100},
                {"TargetGroupArn": stack.tgs[1], "Weight": 0}]}}])["Rules"][0]["RuleArn"]
    return rules


def infrastructure_role(ecs: Any) -> str:
    """The role ECS assumes to move listener rules (the sandbox, like ECS, refuses one that does not exist)."""
    iam = boto3.client("iam", endpoint_url=ecs.meta.endpoint_url, region_name="us-east-1",
                       aws_access_key_id=os.environ.get("AWS_ACCESS_KEY_ID", "testing"),
                       aws_secret_access_key=os.environ.get("AWS_SECRET_ACCESS_KEY", "testing"))
    try:
        return str(iam.get_role(RoleName="ecs-lb")["Role"]["Arn"])
    except ClientError:
        doc = ('{"Version": "2012-10-17", "Statement": [{"Effect": "Allow", "Principal": '
               '{"Service": "ecs.amazonaws.com"}, "Action": "sts:AssumeRole"}]}')
        return str(iam.create_role(RoleName="ecs-lb", AssumeRolePolicyDocument=doc)["Role"]["Arn"])


def native_service(stack: Any, td: str, config: dict[str, Any], desired: int = 1) -> dict[str, str]:
    """A BLUE_GREEN/LINEAR/CANARY service whose listener rules ECS moves between the two groups."""
    rules = listener_rules(stack)
    role = infrastructure_role(stack.ecs)
    stack.ecs.create_service(
        cluster=stack.name, serviceName="web", taskDefinition=td, desiredCount=desired,
        deploymentController={"type": "ECS"}, deploymentConfiguration=config,
        loadBalancers=[{**stack.lb(stack.tgs[0])[0], "advancedConfiguration": {
            "alternateTargetGroupArn": stack.tgs[1], "productionListenerRule": rules["prod"],
            "testListenerRule": rules["test"], "roleArn": role}}])
    return rules


def current(stack: Any) -> dict[str, Any]:
    service = stack.ecs.describe_services(cluster=stack.name, services=["web"])["services"][0]
    deps = answer(stack.ecs, "ListServiceDeployments", cluster=stack.name, service="web")["serviceDeployments"]
    # a new deployment is listed, and named current, only after a while (tests/sandbox/test_strict_ecs_native.py)
    assert service.get("currentServiceDeployment") in {d["serviceDeploymentArn"] for d in deps[:2]} | {None}
    if not deps:
        return {"status": "", "lifecycleHookDetails": []}
    full = answer(stack.ecs, "DescribeServiceDeployments", serviceDeploymentArns=[deps[0]["serviceDeploymentArn"]])
    return dict(full["serviceDeployments"][0])


def settled(stack: Any, emu: Any, status: str) -> dict[str, Any]:
    return dict(emu.wait_for(lambda: (d := current(stack))["status"] == status and d, 60, status))


PAUSE = {"targetType": "PAUSE", "lifecycleStages": ["POST_TEST_TRAFFIC_SHIFT"],
         "timeoutConfiguration": {"timeoutInMinutes": 30, "action": "ROLLBACK"}}


def test_canary_pauses_for_the_test_listener_then_shifts_by_steps(
        emu: Any, emu_stack: Callable[..., Any], emu_images: dict[str, str]) -> None:
    stack = emu_stack("nat")
    config = {"strategy": "CANARY", "bakeTimeInMinutes": 1, "lifecycleHooks": [PAUSE],
              "canaryConfiguration": {"canaryPercent": 20, "canaryBakeTimeInMinutes": 1}}
    native_service(stack, stack.task_definition(emu_images["v1"]), config)
    first = settled(stack, emu, "SUCCESSFUL")
    assert first["lifecycleStage"] == "CLEAN_UP" and "sourceServiceRevisions" in first
    emu.wait_for(lambda: stack.get() == (200, "v1\n"), 30, "v1 in production")
    stack.ecs.update_service(cluster=stack.name, service="web", taskDefinition=stack.task_definition(emu_images["v2"]))
    dep = emu.wait_for(lambda: (d := current(stack)).get("lifecycleHookDetails") and d, 60, "the PAUSE hook")
    assert dep["status"] == "IN_PROGRESS" and dep["lifecycleStage"] == "POST_TEST_TRAFFIC_SHIFT"
    hook = dep["lifecycleHookDetails"][0]
    assert hook["status"] == "AWAITING_ACTION" and hook["targetType"] == "PAUSE"
    emu.eventually.answer(lambda: stack.get(stack.test_port), (200, "v2\n"), "the test listener on v2")
    assert stack.get() == (200, "v1\n")
    assert dep["targetServiceRevision"]["requestedTestTrafficWeight"] == 100.0
    assert dep["targetServiceRevision"]["requestedProductionTrafficWeight"] == 0.0
    stack.ecs.continue_service_deployment(serviceDeploymentArn=dep["serviceDeploymentArn"],
                                          hookId=hook["hookId"], action="CONTINUE")
    seen = []

    def green_weight() -> Any:
        d = current(stack)
        weight = d["targetServiceRevision"]["requestedProductionTrafficWeight"]
        if not seen or seen[-1] != weight:
            seen.append(weight)
        return d["status"] == "SUCCESSFUL" and d

    done = emu.wait_for(green_weight, 60, "SUCCESSFUL")
    assert [w for w in seen if w][:2] == [20.0, 100.0]
    assert stack.get() == (200, "v2\n")
    revisions = answer(stack.ecs, "DescribeServiceRevisions",
                       serviceRevisionArns=[done["targetServiceRevision"]["arn"]])["serviceRevisions"]
    assert revisions[0]["taskDefinition"].endswith(":2")
    assert revisions[0]["resolvedConfiguration"]["loadBalancers"][0]["targetGroupArn"] == stack.tgs[1]


def test_stop_with_rollback_puts_production_back(emu: Any, emu_stack: Callable[..., Any],
                                                 emu_images: dict[str, str]) -> None:
    stack = emu_stack("nst")
    native_service(stack, stack.task_definition(emu_images["v1"]), {"strategy": "BLUE_GREEN",
                                                                    "lifecycleHooks": [PAUSE]})
    settled(stack, emu, "SUCCESSFUL")
    stack.ecs.update_service(cluster=stack.name, service="web", taskDefinition=stack.task_definition(emu_images["v2"]))
    dep = emu.wait_for(lambda: (d := current(stack)).get("lifecycleHookDetails") and d, 60, "the PAUSE hook")
    answer(stack.ecs, "StopServiceDeployment", serviceDeploymentArn=dep["serviceDeploymentArn"], stopType="ROLLBACK")
    done = settled(stack, emu, "ROLLBACK_SUCCESSFUL")
    assert "StopServiceDeployment" in done["statusReason"] and done["rollback"]["serviceRevisionArn"]
    assert stack.get() == (200, "v1\n")
    emu.eventually.answer(lambda: stack.get(stack.test_port), (200, "v1\n"), "the test listener back on v1")
    assert stack.get() == (200, "v1\n")
    with pytest.raises(ClientError) as err:
        stack.ecs.stop_service_deployment(serviceDeploymentArn=dep["serviceDeploymentArn"])
    assert err.value.response["Error"]["Code"] == "ConflictException"


def test_hook_timeout_with_rollback(emu: Any, emu_stack: Callable[..., Any], emu_images: dict[str, str]) -> None:
    stack = emu_stack("nto")
    hook = {**PAUSE, "timeoutConfiguration": {"timeoutInMinutes": 1, "action": "ROLLBACK"}}
    native_service(stack, stack.task_definition(emu_images["v1"]), {"strategy": "LINEAR", "lifecycleHooks": [hook]})
    settled(stack, emu, "SUCCESSFUL")
    stack.ecs.update_service(cluster=stack.name, service="web", taskDefinition=stack.task_definition(emu_images["v2"]))
    done = settled(stack, emu, "ROLLBACK_SUCCESSFUL")
    assert "timed out" in done["statusReason"]
    assert done["lifecycleHookDetails"][0]["status"] == "TIMED_OUT"
    assert stack.get() == (200, "v1\n")


def test_lambda_hooks_are_refused_with_the_reason(emu: Any, emu_stack: Callable[..., Any],
                                                  emu_images: dict[str, str]) -> None:
    stack = emu_stack("nla")
    hook = {"targetType": "AWS_LAMBDA", "hookTargetArn": "arn:aws:lambda:us-east-1:123456789012:function:check",
            "roleArn": "arn:aws:iam::123456789012:role/hook", "lifecycleStages": ["POST_SCALE_UP"]}
    with pytest.raises(ClientError) as err:
        native_service(stack, stack.task_definition(emu_images["v1"]), {"strategy": "BLUE_GREEN",
                                                                        "lifecycleHooks": [hook]})
    assert err.value.response["Error"]["Code"] == "UnsupportedFeatureException"
    assert "cannot run AWS Lambda" in err.value.response["Error"]["Message"]
    pause = {"targetType": "PAUSE", "lifecycleStages": ["PRE_PRODUCTION_TRAFFIC_SHIFT"]}
    other = emu_stack("npp")
    with pytest.raises(ClientError) as err:
        native_service(other, other.task_definition(emu_images["v1"]), {"strategy": "CANARY",
                                                                        "lifecycleHooks": [pause]})
    assert err.value.response["Error"]["Code"] == "UnsupportedFeatureException"
    assert "does not play lifecycle stage(s) PRE_PRODUCTION_TRAFFIC_SHIFT" in err.value.response["Error"]["Message"]
    missing = answer(stack.ecs, "DescribeServiceDeployments", serviceDeploymentArns=["arn:nope"])
    assert missing == {"serviceDeployments": [], "failures": [
        {"arn": "arn:nope", "reason": "MISSING", "detail": "The service deployment does not exist."}]}


def production_weight(stack: Any, weight: float) -> Any:
    dep = current(stack)
    return dep["status"] == "IN_PROGRESS" and dep["targetServiceRevision"][
        "requestedProductionTrafficWeight"] == weight and dep


def test_alarm_during_a_canary_step_rolls_back(emu: Any, emu_stack: Callable[..., Any],
                                               emu_images: dict[str, str], emu_aws: Callable[[str], Any]) -> None:
    stack, cw = emu_stack("nal"), emu_aws("cloudwatch")
    alarm = f"{stack.name}-errors"  # not an AWS/ApplicationELB metric: the sandbox's evaluator leaves it alone
    cw.put_metric_alarm(AlarmName=alarm, Namespace="Test/Native", MetricName="Errors", Statistic="Sum",
                        Period=60, EvaluationPeriods=1, Threshold=1.0,
                        ComparisonOperator="GreaterThanOrEqualToThreshold")
    try:
        native_service(stack, stack.task_definition(emu_images["v1"]), {
            "strategy": "CANARY", "bakeTimeInMinutes": 1,
            "canaryConfiguration": {"canaryPercent": 20, "canaryBakeTimeInMinutes": 1440},
            "alarms": {"alarmNames": [alarm], "enable": True, "rollback": True}})
        settled(stack, emu, "SUCCESSFUL")
        stack.ecs.update_service(cluster=stack.name, service="web",
                                 taskDefinition=stack.task_definition(emu_images["v2"]))
        step = emu.wait_for(lambda: production_weight(stack, 20.0), 60, "the canary step")
        assert step["alarms"] == {"status": "MONITORING", "alarmNames": [alarm], "triggeredAlarmNames": []}
        cw.set_alarm_state(AlarmName=alarm, StateValue="ALARM", StateReason="test: errors")
        done = settled(stack, emu, "ROLLBACK_SUCCESSFUL")
    finally:
        cw.delete_alarms(AlarmNames=[alarm])
    assert done["statusReason"] == f"Service deployment rolled back because alarm(s) {alarm} went into ALARM."
    assert done["alarms"] == {"status": "TRIGGERED", "alarmNames": [alarm], "triggeredAlarmNames": [alarm]}
    assert done["rollback"]["serviceRevisionArn"] == done["sourceServiceRevisions"][0]["arn"]
    assert done["targetServiceRevision"]["requestedProductionTrafficWeight"] == 0.0
    emu.eventually.settle()  # the canary's 20% on v2 answers until production's way back has propagated
    assert {stack.get() for _ in range(20)} == {(200, "v1\n")}, "production back on blue"


def test_circuit_breaker_rolls_back(emu: Any, emu_stack: Callable[..., Any], emu_images: dict[str, str]) -> None:
    stack = emu_stack("ncb")
    native_service(stack, stack.task_definition(emu_images["v1"]), {
        "strategy": "BLUE_GREEN", "bakeTimeInMinutes": 1, "lifecycleHooks": [PAUSE],
        "deploymentCircuitBreaker": {"enable": True, "rollback": True}})
    settled(stack, emu, "SUCCESSFUL")
    broken = stack.task_definition(emu_images["exit3"])  # exits 3 at start: tasks fail over and over
    stack.ecs.update_service(cluster=stack.name, service="web", taskDefinition=broken)
    done = settled(stack, emu, "ROLLBACK_SUCCESSFUL")
    assert done["statusReason"].startswith("Service deployment rolled back because the circuit breaker threshold "
                                           "was exceeded"), done["statusReason"]
    breaker = done["deploymentCircuitBreaker"]
    assert breaker["status"] == "TRIGGERED" and breaker["failureCount"] >= breaker["threshold"] > 0
    assert done["lifecycleStage"] == "SCALE_UP", "green never got healthy, so it never took test traffic"
    assert "lifecycleHookDetails" not in done, "the pause after test traffic was never reached"
    assert stack.get() == (200, "v1\n") and stack.get(stack.test_port) == (200, "v1\n")


def test_hook_timeout_with_continue_goes_on(emu: Any, emu_stack: Callable[..., Any],
                                            emu_images: dict[str, str]) -> None:
    stack = emu_stack("ntc")
    hook = {**PAUSE, "timeoutConfiguration": {"timeoutInMinutes": 1, "action": "CONTINUE"}}
    native_service(stack, stack.task_definition(emu_images["v1"]), {"strategy": "BLUE_GREEN",
                                                                    "bakeTimeInMinutes": 1, "lifecycleHooks": [hook]})
    settled(stack, emu, "SUCCESSFUL")
    stack.ecs.update_service(cluster=stack.name, service="web", taskDefinition=stack.task_definition(emu_images["v2"]))
    dep = emu.wait_for(lambda: (d := current(stack)).get("lifecycleHookDetails") and d, 60, "the PAUSE hook")
    (detail,) = dep["lifecycleHookDetails"]
    assert (detail["status"], detail["timeoutAction"]) == ("AWAITING_ACTION", "CONTINUE")
    assert stack.get() == (200, "v1\n"), "production held while the hook waits"
    service = stack.ecs.describe_services(cluster=stack.name, services=["web"])["services"][0]
    # ECS's Deployment.status: "PRIMARY: The most recent deployment of a service", production moved or not
    assert [(d["status"], d["taskDefinition"].rsplit(":", 1)[-1]) for d in service["deployments"]] == [
        ("PRIMARY", "2"), ("ACTIVE", "1")]
    done = settled(stack, emu, "SUCCESSFUL")  # nobody calls ContinueServiceDeployment: the timeout does
    assert done["targetServiceRevision"]["arn"] == dep["targetServiceRevision"]["arn"]
    assert done["finishedAt"] >= detail["expiresAt"], "it went on when the hook expired, not before"
    assert {stack.get() for _ in range(5)} == {(200, "v2\n")}
