"""Answers an independent client reads through boto3, checked against what AWS answers."""

from __future__ import annotations

import json
import uuid
from collections.abc import Callable
from typing import Any


def test_list_services_and_tasks_stay_in_their_cluster(emu_aws: Callable[[str], Any],
                                                       emu_images: dict[str, str]) -> None:
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
    task = ecs.run_task(cluster=other, taskDefinition=td, launchType="FARGATE")["tasks"][0]["taskArn"]
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
    cw.put_metric_alarm(AlarmName=name, MetricName="HTTPCode_Target_5XX_Count", Namespace="AWS/ApplicationELB",
                        Statistic="Sum", Period=60, EvaluationPeriods=1, Threshold=1.0,
                        ComparisonOperator="GreaterThanOrEqualToThreshold",
                        Dimensions=[{"Name": "LoadBalancer", "Value": f"app/{name}/0"}])
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
