"""Answers an independent client reads through boto3, checked against what AWS answers."""

from __future__ import annotations

import contextlib
import json
import time
import uuid
from collections.abc import Callable
from typing import Any


def test_list_services_and_tasks_stay_in_their_cluster(emu_aws: Callable[[str], Any],
                                                       emu_images: dict[str, str], emu_net: dict[str, Any]) -> None:
    ecs = emu_aws("ecs")
    name = f"fid-{uuid.uuid4().hex[:6]}"
    other = f"pre-{name}"  # its name contains the first one's
    for cluster in (name, other):
        ecs.create_cluster(clusterName=cluster)
        ecs.create_service(cluster=cluster, serviceName="web", desiredCount=0,
                           deploymentController={"type": "EXTERNAL"})
    td = ecs.register_task_definition(
        family=f"{name}-once", networkMode="awsvpc", requiresCompatibilities=["FARGATE"], cpu="256",
        memory="512", containerDefinitions=[{"name": "web", "image": emu_images["blue"], "essential": True}],
    )["taskDefinition"]["taskDefinitionArn"]
    # botocore's RunTask.networkConfiguration: "This parameter is required for task definitions that use the
    # awsvpc network mode to receive their own elastic network interface".
    network = {"awsvpcConfiguration": {"subnets": emu_net["subnets"]}}
    task = ecs.run_task(cluster=other, taskDefinition=td, launchType="FARGATE",
                        networkConfiguration=network)["tasks"][0]["taskArn"]
    try:
        services = ecs.list_services(cluster=name)["serviceArns"]
        assert services == [ecs.describe_services(cluster=name, services=["web"])["services"][0]["serviceArn"]]
        assert all(f"/{name}/" in arn for arn in services)
        assert ecs.list_tasks(cluster=name)["taskArns"] == []
        assert ecs.list_tasks(cluster=other)["taskArns"] == [task]
    finally:
        ecs.stop_task(cluster=other, task=task, reason="test done")
        for cluster in (name, other):
            ecs.delete_service(cluster=cluster, service="web", force=True)


def test_alarm_history_lists_state_transitions(emu_aws: Callable[[str], Any]) -> None:
    cw = emu_aws("cloudwatch")
    name = f"fid-{uuid.uuid4().hex[:6]}"
    # not an AWS/ApplicationELB metric: the sandbox's evaluator would put a set ALARM back to OK between calls
    cw.put_metric_alarm(AlarmName=name, MetricName="Errors", Namespace="Test/Fidelity",
                        Statistic="Sum", Period=60, EvaluationPeriods=1, Threshold=1.0,
                        ComparisonOperator="GreaterThanOrEqualToThreshold")
    try:
        assert cw.describe_alarm_history(AlarmName=name)["AlarmHistoryItems"] == []
        cw.set_alarm_state(AlarmName=name, StateValue="ALARM", StateReason="test: 5xx")
        cw.set_alarm_state(AlarmName=name, StateValue="OK", StateReason="test: quiet")
        items = cw.describe_alarm_history(AlarmName=name, HistoryItemType="StateUpdate")["AlarmHistoryItems"]
        assert [i["HistorySummary"] for i in items] == ["Alarm updated from ALARM to OK",
                                                        "Alarm updated from OK to ALARM"]
        assert items[0]["Timestamp"] >= items[1]["Timestamp"]
        assert json.loads(items[1]["HistoryData"])["newState"]["stateReason"] == "test: 5xx"
        assert cw.describe_alarm_history(AlarmName=name, HistoryItemType="Action")["AlarmHistoryItems"] == []
    finally:
        cw.delete_alarms(AlarmNames=[name])


def test_image_pushed_at_is_the_push_time_and_stays_put(emu_aws: Callable[[str], Any],
                                                        emu_images: dict[str, str]) -> None:
    ecr = emu_aws("ecr")
    name = emu_images["blue"].split("/", 1)[1].rsplit(":", 1)[0]
    tag = emu_images["blue"].rsplit(":", 1)[1]
    with contextlib.suppress(ecr.exceptions.RepositoryAlreadyExistsException):
        ecr.create_repository(repositoryName=name)  # the registry has the image; ECR learns the repository
    first = ecr.describe_images(repositoryName=name, imageIds=[{"imageTag": tag}])["imageDetails"][0]
    time.sleep(1.1)
    again = ecr.describe_images(repositoryName=name, imageIds=[{"imageTag": tag}])["imageDetails"][0]
    assert first["imagePushedAt"] == again["imagePushedAt"]
    assert again["imagePushedAt"].timestamp() < time.time() - 1


def test_target_groups_list_the_load_balancers_that_forward_to_them(emu_stack: Callable[..., Any]) -> None:
    stack = emu_stack("fidtg")
    def lbs() -> dict[str, list[str]]:
        groups = stack.elb.describe_target_groups(TargetGroupArns=stack.tgs)["TargetGroups"]
        return {g["TargetGroupArn"]: g["LoadBalancerArns"] for g in groups}

    assert lbs() == {stack.tgs[0]: [stack.lb_arn], stack.tgs[1]: []}, "two listeners, one load balancer, once"
    stack.elb.modify_listener(ListenerArn=stack.prod, DefaultActions=[{"Type": "forward", "ForwardConfig": {
        "TargetGroups": [{"TargetGroupArn": stack.tgs[1], "Weight": 100}]}}])
    stack.elb.modify_listener(ListenerArn=stack.test, DefaultActions=[{"Type": "forward", "ForwardConfig": {
        "TargetGroups": [{"TargetGroupArn": stack.tgs[1], "Weight": 100}]}}])
    assert lbs() == {stack.tgs[0]: [], stack.tgs[1]: [stack.lb_arn]}
