"""CodeDeploy ECS blue/green deployments played against real containers."""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from botocore.exceptions import ClientError


def _blue_green(stack: Any, aws: Callable[[str], Any], emu: Any, images: dict[str, str],
                *, ready_wait: bool, config: str, alarms: list[str] | None = None,
                termination_minutes: int = 5, ready_minutes: int = 30) -> dict[str, Any]:
    """A CODE_DEPLOY service serving blue, and its deployment group."""
    blue_td = stack.task_definition(images["blue"])
    stack.ecs.create_service(cluster=stack.name, serviceName="web", desiredCount=1,
                             taskDefinition=blue_td, launchType="FARGATE",
                             deploymentController={"type": "CODE_DEPLOY"},
                             loadBalancers=stack.lb(stack.tgs[0]))
    emu.wait_for(lambda: stack.get() == (200, "blue\n"), 30, "blue serving on production")
    cd = aws("codedeploy")
    cd.create_application(applicationName=stack.name, computePlatform="ECS")
    ready = ({"actionOnTimeout": "STOP_DEPLOYMENT", "waitTimeInMinutes": ready_minutes} if ready_wait
             else {"actionOnTimeout": "CONTINUE_DEPLOYMENT"})
    group: dict[str, Any] = {
        "applicationName": stack.name, "deploymentGroupName": "dg", "deploymentConfigName": config,
        "serviceRoleArn": "arn:aws:iam::123456789012:role/codedeploy",
        "deploymentStyle": {"deploymentType": "BLUE_GREEN", "deploymentOption": "WITH_TRAFFIC_CONTROL"},
        "blueGreenDeploymentConfiguration": {
            "deploymentReadyOption": ready,
            "terminateBlueInstancesOnDeploymentSuccess": {
                "action": "TERMINATE", "terminationWaitTimeInMinutes": termination_minutes}},
        "ecsServices": [{"serviceName": "web", "clusterName": stack.name}],
        "loadBalancerInfo": {"targetGroupPairInfoList": [{
            "targetGroups": [{"name": f"{stack.name}-a"}, {"name": f"{stack.name}-b"}],
            "prodTrafficRoute": {"listenerArns": [stack.prod]},
            "testTrafficRoute": {"listenerArns": [stack.test]}}]},
        "autoRollbackConfiguration": {"enabled": True, "events": [
            "DEPLOYMENT_FAILURE", "DEPLOYMENT_STOP_ON_ALARM", "DEPLOYMENT_STOP_ON_REQUEST"]},
    }
    if alarms:
        group["alarmConfiguration"] = {"enabled": True, "alarms": [{"name": a} for a in alarms]}
    cd.create_deployment_group(**group)
    return {"cd": cd, "blue_td": blue_td}


def _deploy(cd: Any, stack: Any, image_td: str) -> str:
    appspec = {"version": 0.0, "Resources": [{"TargetService": {
        "Type": "AWS::ECS::Service", "Properties": {
            "TaskDefinition": image_td,
            "LoadBalancerInfo": {"ContainerName": "web", "ContainerPort": 8080}}}}]}
    res = cd.create_deployment(applicationName=stack.name, deploymentGroupName="dg", revision={
        "revisionType": "AppSpecContent", "appSpecContent": {"content": json.dumps(appspec)}})
    return str(res["deploymentId"])


def _status(cd: Any, dep_id: str) -> str:
    return str(cd.get_deployment(deploymentId=dep_id)["deploymentInfo"]["status"])


def _task_sets(stack: Any) -> list[dict[str, Any]]:
    return list(stack.ecs.describe_task_sets(cluster=stack.name, service="web")["taskSets"])


def test_ready_then_continue_shifts_production(emu: Any, emu_aws: Callable[[str], Any],
                                               emu_stack: Callable[..., Any],
                                               emu_images: dict[str, str]) -> None:
    stack = emu_stack("cdr")
    env = _blue_green(stack, emu_aws, emu, emu_images, ready_wait=True,
                      config="CodeDeployDefault.ECSAllAtOnce")
    cd = env["cd"]
    dep_id = _deploy(cd, stack, stack.task_definition(emu_images["green"]))
    emu.wait_for(lambda: _status(cd, dep_id) == "Ready", 40, "deployment Ready")
    assert stack.get() == (200, "blue\n")
    emu.eventually.answer(lambda: stack.get(stack.test_port), (200, "green\n"), "the test listener on green")
    assert stack.get() == (200, "blue\n")
    assert len(_task_sets(stack)) == 2
    with pytest.raises(ClientError) as err:
        cd.continue_deployment(deploymentId=dep_id, deploymentWaitType="TERMINATION_WAIT")
    assert err.value.response["Error"]["Code"] == "InvalidDeploymentStatusException"

    cd.continue_deployment(deploymentId=dep_id, deploymentWaitType="READY_WAIT")
    emu.wait_for(lambda: stack.get() == (200, "green\n"), 20, "production on green")

    def events() -> dict[str, str]:
        target = cd.get_deployment_target(deploymentId=dep_id, targetId=f"{stack.name}:web")["deploymentTarget"]
        return {e["lifecycleEventName"]: e["status"] for e in target["ecsTarget"]["lifecycleEvents"]}

    # AllowTraffic ends once the listener moved (production answers green a moment before it says so)
    emu.wait_for(lambda: events()["AllowTraffic"] == "Succeeded", 20, "AllowTraffic Succeeded")
    assert events()["Install"] == "Succeeded"
    emu.wait_for(lambda: _status(cd, dep_id) == "InProgress"
                 and cd.get_deployment(deploymentId=dep_id)["deploymentInfo"][
                     "instanceTerminationWaitTimeStarted"], 20, "termination wait")
    cd.continue_deployment(deploymentId=dep_id, deploymentWaitType="TERMINATION_WAIT")
    emu.wait_for(lambda: _status(cd, dep_id) == "Succeeded", 20, "deployment Succeeded")
    sets = _task_sets(stack)
    assert len(sets) == 1 and sets[0]["status"] == "PRIMARY"
    assert sets[0]["loadBalancers"][0]["targetGroupArn"] == stack.tgs[1]
    assert stack.get() == (200, "green\n")
    with pytest.raises(ClientError) as err:
        cd.continue_deployment(deploymentId=dep_id)
    assert err.value.response["Error"]["Code"] == "DeploymentAlreadyCompletedException"


def test_stop_deployment_rolls_back(emu: Any, emu_aws: Callable[[str], Any],
                                    emu_stack: Callable[..., Any], emu_images: dict[str, str]) -> None:
    stack = emu_stack("cds")
    env = _blue_green(stack, emu_aws, emu, emu_images, ready_wait=True,
                      config="CodeDeployDefault.ECSAllAtOnce")
    cd = env["cd"]
    dep_id = _deploy(cd, stack, stack.task_definition(emu_images["green"]))
    emu.wait_for(lambda: _status(cd, dep_id) == "Ready", 40, "deployment Ready")
    res = cd.stop_deployment(deploymentId=dep_id, autoRollbackEnabled=True)
    assert res["status"] in ("Pending", "Succeeded")
    info = cd.get_deployment(deploymentId=dep_id)["deploymentInfo"]
    assert info["status"] == "Stopped"
    assert info["errorInformation"]["code"]
    assert info["rollbackInfo"]["rollbackDeploymentId"]
    assert all(stack.get() == (200, "blue\n") for _ in range(10)), "production never left blue"
    # green's task set goes once the test listener's way back to blue has propagated (old routes reach it until then)
    emu.eventually(lambda: [s["loadBalancers"][0]["targetGroupArn"] for s in _task_sets(stack)] == [stack.tgs[0]],
                   "only blue's task set")
    emu.eventually.answer(lambda: stack.get(stack.test_port), (200, "blue\n"), "the test listener back on blue")
    assert all(stack.get() == (200, "blue\n") for _ in range(10))
    with pytest.raises(ClientError) as err:
        cd.stop_deployment(deploymentId=dep_id)
    assert err.value.response["Error"]["Code"] == "DeploymentAlreadyCompletedException"
    with pytest.raises(ClientError) as err:
        cd.stop_deployment(deploymentId="d-NOPE")
    assert err.value.response["Error"]["Code"] == "DeploymentDoesNotExistException"


def test_alarm_on_real_5xx_rolls_back_canary(emu: Any, emu_aws: Callable[[str], Any],
                                             emu_stack: Callable[..., Any],
                                             emu_images: dict[str, str]) -> None:
    stack = emu_stack("cda")
    cw = emu_aws("cloudwatch")
    alarm = f"{stack.name}-5xx"
    green_tg_dim = stack.tgs[1][stack.tgs[1].index("targetgroup/"):]
    lb_dim = stack.lb_arn[stack.lb_arn.index("app/"):]
    cw.put_metric_alarm(AlarmName=alarm, Namespace="AWS/ApplicationELB",
                        MetricName="HTTPCode_Target_5XX_Count", Statistic="Sum", Period=300,
                        EvaluationPeriods=1, Threshold=1, ComparisonOperator="GreaterThanOrEqualToThreshold",
                        Dimensions=[{"Name": "TargetGroup", "Value": green_tg_dim},
                                    {"Name": "LoadBalancer", "Value": lb_dim}],
                        TreatMissingData="notBreaching")
    env = _blue_green(stack, emu_aws, emu, emu_images, ready_wait=False,
                      config="CodeDeployDefault.ECSCanary10Percent15Minutes", alarms=[alarm])
    cd = env["cd"]
    dep_id = _deploy(cd, stack, stack.task_definition(emu_images["error500"]))

    def canary() -> bool:
        w = stack.elb.describe_listeners(ListenerArns=[stack.prod])["Listeners"][0]["DefaultActions"][0]
        groups = w.get("ForwardConfig", {}).get("TargetGroups", [])
        return any(g["TargetGroupArn"] == stack.tgs[1] and g["Weight"] == 10 for g in groups)

    emu.wait_for(canary, 40, "10% canary on production")
    seen = set()
    deadline = time.monotonic() + 30
    while _status(cd, dep_id) not in ("Stopped", "Failed") and time.monotonic() < deadline:
        seen.add(stack.get()[0])
    assert 500 in seen and 200 in seen
    info = emu.wait_for(lambda: (i := cd.get_deployment(deploymentId=dep_id)["deploymentInfo"])
                        ["status"] in ("Stopped", "Failed") and i, 5, "deployment stopped")
    assert info["errorInformation"]["code"] == "ALARM_ACTIVE"
    assert alarm in info["errorInformation"]["message"]
    assert info["rollbackInfo"]["rollbackDeploymentId"]
    state = cw.describe_alarms(AlarmNames=[alarm])["MetricAlarms"][0]
    assert state["StateValue"] == "ALARM" and "Threshold Crossed" in state["StateReason"]
    emu.eventually.settle()  # the canary's 10% on green answers until production's way back has propagated
    assert all(stack.get() == (200, "blue\n") for _ in range(20))
    emu.eventually(lambda: [s["loadBalancers"][0]["targetGroupArn"] for s in _task_sets(stack)] == [stack.tgs[0]],
                   "only blue's task set")
    assert all(stack.get() == (200, "blue\n") for _ in range(20))
    stats = emu.wait_for(lambda: cw.get_metric_statistics(
        Namespace="AWS/ApplicationELB", MetricName="HTTPCode_Target_5XX_Count", Statistics=["Sum"],
        Dimensions=[{"Name": "TargetGroup", "Value": green_tg_dim}, {"Name": "LoadBalancer", "Value": lb_dim}],
        StartTime=datetime.now(UTC) - timedelta(hours=1),
        EndTime=datetime.now(UTC) + timedelta(minutes=5), Period=3600)["Datapoints"], 10,
        "5xx data points published")
    assert stats[0]["Sum"] >= 1


def test_custom_linear_config_shifts_in_steps_then_succeeds(
        emu: Any, emu_aws: Callable[[str], Any], emu_stack: Callable[..., Any],
        emu_images: dict[str, str]) -> None:
    stack = emu_stack("cdl")
    cd = emu_aws("codedeploy")
    config = f"{stack.name}-linear50"
    cd.create_deployment_config(deploymentConfigName=config, computePlatform="ECS", trafficRoutingConfig={
        "type": "TimeBasedLinear", "timeBasedLinear": {"linearPercentage": 50, "linearInterval": 2}})
    got = cd.get_deployment_config(deploymentConfigName=config)["deploymentConfigInfo"]
    assert got["trafficRoutingConfig"]["timeBasedLinear"]["linearPercentage"] == 50
    env = _blue_green(stack, emu_aws, emu, emu_images, ready_wait=False, config=config,
                      termination_minutes=0)
    dep_id = _deploy(env["cd"], stack, stack.task_definition(emu_images["green"]))

    def weights() -> dict[str, int]:
        action = stack.elb.describe_listeners(ListenerArns=[stack.prod])["Listeners"][0]["DefaultActions"][0]
        return {g["TargetGroupArn"]: g["Weight"] for g in action.get("ForwardConfig", {}).get("TargetGroups", [])}

    emu.wait_for(lambda: weights().get(stack.tgs[1]) == 50, 40, "half of production on green")
    emu.eventually.settle()  # the step answers once it has propagated (the next is 2 minutes, time-scaled, away)
    assert {stack.get() for _ in range(40)} == {(200, "blue\n"), (200, "green\n")}
    emu.wait_for(lambda: _status(cd, dep_id) == "Succeeded", 30, "deployment Succeeded")
    assert weights() == {stack.tgs[1]: 100}
    answers = [stack.get() for _ in range(10)]  # blue goes only once the last step propagated: no 503
    assert answers == [(200, "green\n")] * 10, answers
    # What an independent client reads afterwards: AWS's shapes, AWS's bookkeeping.
    info = cd.get_deployment(deploymentId=dep_id)["deploymentInfo"]
    assert info["createTime"] <= info["completeTime"], "times are all timestamps"
    group = cd.get_deployment_group(applicationName=stack.name, deploymentGroupName="dg")["deploymentGroupInfo"]
    assert group["lastSuccessfulDeployment"]["deploymentId"] == dep_id
    assert group["lastSuccessfulDeployment"]["status"] == "Succeeded"
    groups = stack.elb.describe_target_groups(TargetGroupArns=stack.tgs)["TargetGroups"]
    lbs = {g["TargetGroupArn"]: g["LoadBalancerArns"] for g in groups}
    assert lbs[stack.tgs[1]] == [stack.lb_arn], "green takes both listeners' traffic: its load balancer, once"


def test_replacement_that_cannot_start_fails_and_rolls_back(
        emu: Any, emu_aws: Callable[[str], Any], emu_stack: Callable[..., Any],
        emu_images: dict[str, str]) -> None:
    stack = emu_stack("cdf")
    env = _blue_green(stack, emu_aws, emu, emu_images, ready_wait=True,
                      config="CodeDeployDefault.ECSAllAtOnce")
    cd = env["cd"]
    missing = emu_images["blue"].rsplit(":", 1)[0] + ":never-pushed"
    dep_id = _deploy(cd, stack, stack.task_definition(missing))
    with pytest.raises(ClientError) as err:
        cd.create_deployment(applicationName=stack.name, deploymentGroupName="dg", revision={
            "revisionType": "AppSpecContent", "appSpecContent": {"content": "{}"}})
    assert err.value.response["Error"]["Code"] == "DeploymentLimitExceededException"
    emu.wait_for(lambda: _status(cd, dep_id) == "Failed", 40, "deployment Failed")
    info = cd.get_deployment(deploymentId=dep_id)["deploymentInfo"]
    assert info["errorInformation"]["code"] == "ECS_UPDATE_ERROR"
    assert "CannotPullContainerError" in info["errorInformation"]["message"]
    assert info["rollbackInfo"]["rollbackDeploymentId"]
    assert stack.get() == (200, "blue\n")
    emu.eventually(lambda: [s["loadBalancers"][0]["targetGroupArn"] for s in _task_sets(stack)] == [stack.tgs[0]],
                   "only blue's task set")
    assert stack.get() == (200, "blue\n")
    bad = cd.create_deployment(applicationName=stack.name, deploymentGroupName="dg", revision={
        "revisionType": "AppSpecContent", "appSpecContent": {"content": "version: 0.0\nResources: []\n"}})
    emu.wait_for(lambda: _status(cd, bad["deploymentId"]) == "Failed", 10, "invalid appspec Failed")
    info = cd.get_deployment(deploymentId=bad["deploymentId"])["deploymentInfo"]
    assert info["errorInformation"]["code"] == "INVALID_REVISION"


def test_ready_wait_times_out_and_rolls_back(emu: Any, emu_aws: Callable[[str], Any],
                                             emu_stack: Callable[..., Any],
                                             emu_images: dict[str, str]) -> None:
    stack = emu_stack("cdt")
    env = _blue_green(stack, emu_aws, emu, emu_images, ready_wait=True, ready_minutes=2,
                      config="CodeDeployDefault.ECSAllAtOnce")
    cd = env["cd"]
    dep_id = _deploy(cd, stack, stack.task_definition(emu_images["green"]))
    emu.wait_for(lambda: _status(cd, dep_id) in ("Ready", "Failed"), 40, "deployment Ready")
    emu.wait_for(lambda: _status(cd, dep_id) == "Failed", 20, "ready wait timed out")
    info = cd.get_deployment(deploymentId=dep_id)["deploymentInfo"]
    assert info["errorInformation"]["code"] == "TIMEOUT"
    assert info["rollbackInfo"]["rollbackDeploymentId"]
    assert stack.get() == (200, "blue\n")
    emu.eventually.answer(lambda: stack.get(stack.test_port), (200, "blue\n"), "the test listener back on blue")
    assert stack.get() == (200, "blue\n")
    with pytest.raises(ClientError) as err:
        cd.continue_deployment(deploymentId=dep_id, deploymentWaitType="READY_WAIT")
    assert err.value.response["Error"]["Code"] == "DeploymentAlreadyCompletedException"
