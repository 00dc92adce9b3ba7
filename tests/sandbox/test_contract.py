"""Contract: every AWS read the pipeline makes, through plain botocore, checked against the model and the world.

An independent client (botocore with no boto3 resource layer, no pipeline code)
reads the sandbox after an ECS-native release (UpdateService, then
ContinueServiceDeployment at the pause, as the pipeline does) and a CodeDeploy
one (CreateDeployment), both on real containers behind the sandbox's listeners.
Every answer must fit botocore's output shape: field names, enum values and
types, and for JSON services the wire types too (a timestamp is an epoch number
on the wire, never an ISO string). Then the facts: a RUNNING task has a running
container, a listener answers from the target group it forwards to, the
serving target group names its load balancer, ECR's imagePushedAt stays put.

READS is the one list of the operations; test_reads_cover_every_call_in_the_code
fails when flows/, tasks/ or README.md start using an operation it lacks.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import json
import os
import re
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import botocore.session
import docker
import pytest
from botocore import xform_name

from tests.sandbox.test_emulation_native import infrastructure_role, listener_rules

ROOT = Path(__file__).resolve().parents[2]

# The operations the pipeline (flows/, tasks/) and README.md read, per botocore service name.
READS: dict[str, tuple[str, ...]] = {
    "ecs": ("DescribeServices", "ListTasks", "DescribeTasks", "DescribeTaskDefinition", "DescribeTaskSets",
            "ListServiceDeployments", "DescribeServiceDeployments", "DescribeServiceRevisions",
            "DescribeClusters"),  # DescribeClusters: verify's cluster check
    "ecr": ("DescribeRepositories", "DescribeImages", "GetAuthorizationToken",
            "BatchGetImage"),  # BatchGetImage: the manifest ECR's retag puts back under the full SHA
    "elbv2": ("DescribeLoadBalancers", "DescribeListeners", "DescribeRules", "DescribeTargetGroups",
              "DescribeTargetHealth", "DescribeTargetGroupAttributes"),
    "cloudwatch": ("DescribeAlarms", "DescribeAlarmHistory",  # the history: what a person reads after a rollback
                   "GetMetricData"),  # canary analysis: green against blue per target group
    "logs": ("GetLogEvents",  # a migration task's output, into the run's log
             "DescribeLogGroups"),  # verify's account check: the task definition's log group exists
    "codedeploy": ("GetDeploymentGroup", "GetDeploymentConfig", "ListDeployments", "GetDeployment",
                   "ListDeploymentTargets", "GetDeploymentTarget"),
    "sts": ("GetCallerIdentity", "AssumeRole"),  # AssumeRole: a build's own short-lived keys, nothing changed
    "iam": ("GetRole",  # migrate: strategy.infrastructure_role exists
            "SimulatePrincipalPolicy"),  # a release's permission preflight (the sandbox's own, moto has none)
    "ssm": ("GetParameter",),
    "secretsmanager": ("GetSecretValue",),
}
# What the pipeline changes: played by the releases below (their answers checked where this test makes the call).
WRITES = frozenset({
    "update_service", "continue_service_deployment", "stop_service_deployment", "register_task_definition",
    "create_task_set", "delete_task_set", "update_service_primary_task_set", "modify_listener", "create_repository",
    "create_deployment", "continue_deployment", "stop_deployment", "create_deployment_config",
    "create_rule",  # migrate: a listener rule holding both target groups
    "run_task", "stop_task",  # a release's migration task (tests/test_migration.py plays both)
    "put_image",  # ECR's retag of a buildspec's image with the full commit SHA
})
# Named in `verify`'s one-line fixes (``aws elbv2 create-target-group ...``): advice to a person, never called.
FIX_HINTS = frozenset({"create_application", "create_cluster", "create_listener", "create_target_group",
                       "modify_target_group", "put_metric_alarm", "create_log_group"})
NOT_AWS = frozenset({"get_parameters"})  # Prefect's FlowRun.get_parameters, in tasks/release/outcome.py


def used_operations() -> set[str]:
    """snake_case AWS operations called in flows/, tasks/ and README.md (``aws svc op`` lines included)."""
    session = botocore.session.get_session()
    known = {xform_name(op) for svc in READS for op in session.get_service_model(svc).operation_names}
    found: set[str] = set()
    for path in [*(ROOT / "flows").rglob("*.py"), *(ROOT / "tasks").rglob("*.py"), ROOT / "README.md",
                 *(ROOT / "docs").glob("*.md")]:
        text = path.read_text()
        names = re.findall(r"\.([a-z][a-z0-9_]+)\(", text) + re.findall(r"get_paginator\(\"([a-z0-9_]+)\"", text)
        names += [op.replace("-", "_") for op in re.findall(r"\baws [a-z0-9]+ ([a-z][a-z0-9-]+)", text)]
        found |= {n for n in names if n in known}
    return found


def test_reads_cover_every_call_in_the_code() -> None:
    reads = {xform_name(op) for ops in READS.values() for op in ops}
    used = used_operations()
    assert used - reads - WRITES - NOT_AWS - FIX_HINTS == set(), "add them to READS (a read) or WRITES (a change)"
    assert reads - used <= {"describe_alarm_history"}, "READS names an operation nothing uses"


# -- answers against botocore's model ------------------------------------------------------------
def check_shape(value: Any, shape: Any, path: str, wire: bool = False) -> None:
    """Names, enums and types as botocore's shape has them; WIRE: JSON as sent (timestamps are numbers)."""
    kind = shape.type_name
    if kind == "structure":
        assert isinstance(value, dict), f"{path}: {type(value).__name__}, not a structure"
        unknown = set(value) - set(shape.members)
        assert not unknown, f"{path}: not in {shape.name}: {sorted(unknown)}"
        for key, item in value.items():
            check_shape(item, shape.members[key], f"{path}.{key}", wire)
    elif kind == "list":
        assert isinstance(value, list), f"{path}: {type(value).__name__}, not a list"
        for i, item in enumerate(value):
            check_shape(item, shape.member, f"{path}[{i}]", wire)
    elif kind == "map":
        assert isinstance(value, dict), f"{path}: {type(value).__name__}, not a map"
        for key, item in value.items():
            check_shape(key, shape.key, f"{path} key", wire)
            check_shape(item, shape.value, f"{path}[{key}]", wire)
    elif kind == "string" and shape.name == "policyDocumentType" and not wire:
        # botocore's own after-call handler (handlers.json_decode_policies) turns IAM's policy documents into dicts
        assert isinstance(value, dict), f"{path}: {value!r} is not a decoded policy document"
    elif kind == "string":
        assert isinstance(value, str), f"{path}: {value!r} is not a string"
        if getattr(shape, "enum", None):
            assert value in shape.enum, f"{path}: {value!r} not in {shape.enum}"
    elif kind in ("integer", "long"):
        assert isinstance(value, int) and not isinstance(value, bool), f"{path}: {value!r} is not an integer"
    elif kind in ("float", "double"):
        assert isinstance(value, int | float) and not isinstance(value, bool), f"{path}: {value!r} is not a number"
    elif kind == "boolean":
        assert isinstance(value, bool), f"{path}: {value!r} is not a boolean"
    elif kind == "timestamp":
        want = (int, float) if wire else (dt.datetime,)
        assert isinstance(value, want) and not isinstance(value, bool), f"{path}: {value!r} is not a timestamp"
    elif kind == "blob":
        assert isinstance(value, str if wire else bytes), f"{path}: {type(value).__name__} is not a blob"


class Reader:
    """Plain botocore clients on the sandbox; every answer checked against its output shape."""

    def __init__(self, endpoint: str) -> None:
        self.session = botocore.session.get_session()
        self.endpoint = endpoint
        self.clients: dict[str, Any] = {}
        self.raw: dict[str, bytes] = {}
        self.read_ops: set[tuple[str, str]] = set()

    def client(self, service: str) -> Any:
        if service not in self.clients:
            client = self.session.create_client(service, endpoint_url=self.endpoint, region_name="us-east-1",
                                                aws_access_key_id=os.environ.get("AWS_ACCESS_KEY_ID"),
                                                aws_secret_access_key=os.environ.get("AWS_SECRET_ACCESS_KEY"))

            def keep(http_response: Any, model: Any, **_: Any) -> None:
                self.raw[f"{service}.{model.name}"] = http_response.content

            client.meta.events.register("after-call", keep)
            self.clients[service] = client
        return self.clients[service]

    def __call__(self, service: str, op: str, /, **params: Any) -> dict[str, Any]:
        client = self.client(service)
        out: dict[str, Any] = getattr(client, xform_name(op))(**params)
        out.pop("ResponseMetadata", None)
        model = client.meta.service_model
        shape = model.operation_model(op).output_shape
        check_shape(out, shape, f"{service}.{op}")
        if model.protocol == "json":
            check_shape(json.loads(self.raw[f"{service}.{op}"] or b"{}"), shape, f"{service}.{op} (wire)", wire=True)
        self.read_ops.add((service, op))
        return out


# -- the releases ------------------------------------------------------------------------------------
def native_release(stack: Any, emu: Any, images: dict[str, str], aws: Reader) -> str:
    """An ECS-native BLUE_GREEN service on v1, released to v2 as the pipeline does it; the v2 task definition."""
    rules = listener_rules(stack)
    pause = {"targetType": "PAUSE", "lifecycleStages": ["POST_TEST_TRAFFIC_SHIFT"],
             "timeoutConfiguration": {"timeoutInMinutes": 60, "action": "ROLLBACK"}}
    config = {"strategy": "BLUE_GREEN", "bakeTimeInMinutes": 1, "lifecycleHooks": [pause],
              "deploymentCircuitBreaker": {"enable": True, "rollback": True}}
    stack.ecs.create_service(
        cluster=stack.name, serviceName="web", taskDefinition=stack.task_definition(images["v1"]), desiredCount=2,
        deploymentController={"type": "ECS"}, deploymentConfiguration=config,
        loadBalancers=[{**stack.lb(stack.tgs[0])[0], "advancedConfiguration": {
            "alternateTargetGroupArn": stack.tgs[1], "productionListenerRule": rules["prod"],
            "testListenerRule": rules["test"], "roleArn": infrastructure_role(stack.ecs)}}])
    emu.wait_for(lambda: [d["status"] for d in aws("ecs", "ListServiceDeployments", cluster=stack.name,
                                                   service="web")["serviceDeployments"]][:1] == ["SUCCESSFUL"],
                 60, "the first service deployment to succeed")  # listed only after a while, as on AWS
    emu.wait_for(lambda: stack.get() == (200, "v1\n"), 60, "v1 in production")
    v2 = stack.task_definition(images["v2"])
    aws("ecs", "UpdateService", cluster=stack.name, service="web", taskDefinition=v2)

    def paused() -> Any:
        arn = aws("ecs", "ListServiceDeployments", cluster=stack.name, service="web",
                  status=["PENDING", "IN_PROGRESS"])["serviceDeployments"]
        if not arn:
            return None
        dep = aws("ecs", "DescribeServiceDeployments",
                  serviceDeploymentArns=[arn[0]["serviceDeploymentArn"]])["serviceDeployments"][0]
        hooks = [h for h in dep.get("lifecycleHookDetails") or [] if h["status"] == "AWAITING_ACTION"]
        return hooks and (dep["serviceDeploymentArn"], hooks[0]["hookId"])

    arn, hook = emu.wait_for(paused, 60, "the pause after test traffic moved")
    aws("ecs", "ContinueServiceDeployment", serviceDeploymentArn=arn, hookId=hook, action="CONTINUE")
    emu.wait_for(lambda: aws("ecs", "DescribeServiceDeployments", serviceDeploymentArns=[arn])[
        "serviceDeployments"][0]["status"] == "SUCCESSFUL", 60, "the service deployment to succeed")
    return v2


def codedeploy_release(stack: Any, emu: Any, images: dict[str, str], aws: Reader) -> tuple[str, str]:
    """A CODE_DEPLOY service on blue, released to green by CodeDeploy; (deployment id, green task definition)."""
    stack.ecs.create_service(cluster=stack.name, serviceName="web", desiredCount=1, launchType="FARGATE",
                             taskDefinition=stack.task_definition(images["blue"]),
                             deploymentController={"type": "CODE_DEPLOY"}, loadBalancers=stack.lb(stack.tgs[0]))
    cd = aws.client("codedeploy")
    cd.create_application(applicationName=stack.name, computePlatform="ECS")
    cd.create_deployment_group(
        applicationName=stack.name, deploymentGroupName="dg", deploymentConfigName="CodeDeployDefault.ECSAllAtOnce",
        serviceRoleArn="arn:aws:iam::123456789012:role/codedeploy",
        deploymentStyle={"deploymentType": "BLUE_GREEN", "deploymentOption": "WITH_TRAFFIC_CONTROL"},
        blueGreenDeploymentConfiguration={
            "deploymentReadyOption": {"actionOnTimeout": "CONTINUE_DEPLOYMENT"},
            "terminateBlueInstancesOnDeploymentSuccess": {"action": "TERMINATE", "terminationWaitTimeInMinutes": 0}},
        ecsServices=[{"serviceName": "web", "clusterName": stack.name}],
        loadBalancerInfo={"targetGroupPairInfoList": [{
            "targetGroups": [{"name": f"{stack.name}-a"}, {"name": f"{stack.name}-b"}],
            "prodTrafficRoute": {"listenerArns": [stack.prod]}, "testTrafficRoute": {"listenerArns": [stack.test]}}]})
    emu.wait_for(lambda: stack.get() == (200, "blue\n"), 60, "blue in production")
    green = stack.task_definition(images["green"])
    appspec = {"version": 0.0, "Resources": [{"TargetService": {"Type": "AWS::ECS::Service", "Properties": {
        "TaskDefinition": green, "LoadBalancerInfo": {"ContainerName": "web", "ContainerPort": 8080}}}}]}
    dep_id = aws("codedeploy", "CreateDeployment", applicationName=stack.name, deploymentGroupName="dg", revision={
        "revisionType": "AppSpecContent", "appSpecContent": {"content": json.dumps(appspec)}})["deploymentId"]
    emu.wait_for(lambda: aws("codedeploy", "GetDeployment", deploymentId=dep_id)["deploymentInfo"]["status"]
                 == "Succeeded", 90, "the CodeDeploy deployment to succeed")
    return dep_id, green


# -- the facts -----------------------------------------------------------------------------------
def only_revision(aws: Reader, cluster: str, task_definition: str) -> bool:
    """Every task ECS wants running in CLUSTER runs TASK_DEFINITION (and there is one)."""
    arns = aws("ecs", "ListTasks", cluster=cluster, desiredStatus="RUNNING")["taskArns"]
    tasks = aws("ecs", "DescribeTasks", cluster=cluster, tasks=arns)["tasks"] if arns else []
    return bool(tasks) and all(t["taskDefinitionArn"] == task_definition for t in tasks)


def check_tasks(aws: Reader, cluster: str, task_definition: str, docker_host: str) -> list[dict[str, Any]]:
    """Every RUNNING task of the cluster runs the release and has a running container."""
    arns = aws("ecs", "ListTasks", cluster=cluster, desiredStatus="RUNNING")["taskArns"]
    tasks = aws("ecs", "DescribeTasks", cluster=cluster, tasks=arns)["tasks"] if arns else []
    running = [t for t in tasks if t["lastStatus"] == "RUNNING"]
    assert running, f"no RUNNING task in {cluster}"
    engine = docker.DockerClient(base_url=docker_host, timeout=10)
    try:
        for task in running:
            assert task["clusterArn"].endswith(f":cluster/{cluster}")
            assert task["taskDefinitionArn"] == task_definition
            task_id = task["taskArn"].rsplit("/", 1)[-1]
            found = [c for c in engine.containers.list(filters={"name": f"sbx-{cluster}-{task_id}"})
                     if c.status == "running"]
            assert found, f"task {task_id} is RUNNING but no container of it runs"
    finally:
        engine.close()
    aws("ecs", "DescribeTaskDefinition", taskDefinition=task_definition)
    return running


def forwarded_group(aws: Reader, listener: str) -> str:
    """The target group taking the listener's traffic: its first rule's (ECS moves that one), else the default."""
    rules = aws("elbv2", "DescribeRules", ListenerArn=listener)["Rules"]
    rule = min(rules, key=lambda r: (r["IsDefault"], r["Priority"]))
    action = rule["Actions"][0]
    groups = (action.get("ForwardConfig") or {}).get("TargetGroups") or [{"TargetGroupArn": action["TargetGroupArn"],
                                                                          "Weight": 1}]
    return str(max(groups, key=lambda g: g.get("Weight", 1))["TargetGroupArn"])


def check_listeners(aws: Reader, emu: Any, lb_name: str, body: str) -> None:
    """Through each listener the answer is what the targets of the group it forwards to answer."""
    lb = aws("elbv2", "DescribeLoadBalancers", Names=[lb_name])["LoadBalancers"][0]
    listeners = aws("elbv2", "DescribeListeners", LoadBalancerArn=lb["LoadBalancerArn"])["Listeners"]
    for listener in listeners:
        tg = forwarded_group(aws, listener["ListenerArn"])
        health = aws("elbv2", "DescribeTargetHealth", TargetGroupArn=tg)["TargetHealthDescriptions"]
        healthy = [h["Target"] for h in health if h["TargetHealth"]["State"] == "healthy"]
        assert healthy, f"listener {listener['Port']} forwards to {tg}, which has no healthy target"
        direct = {emu.http_get(f"http://{t['Id']}:{t['Port']}/") for t in healthy}
        assert direct == {(200, body)}, direct
        assert emu.http_get(f"http://{lb['DNSName']}:{listener['Port']}/") == (200, body)
        group = aws("elbv2", "DescribeTargetGroups", TargetGroupArns=[tg])["TargetGroups"][0]
        attrs = aws("elbv2", "DescribeTargetGroupAttributes", TargetGroupArn=tg)["Attributes"]
        assert "deregistration_delay.timeout_seconds" in {a["Key"] for a in attrs}  # ecs-native's clean-up budget
        assert group["LoadBalancerArns"] == [lb["LoadBalancerArn"]], "the serving group names its load balancer once"
        check_metrics(aws, lb["LoadBalancerArn"], tg)


def check_metrics(aws: Reader, lb_arn: str, tg: str) -> None:
    """The request just sent through the group is counted in its ALB metrics, with a response time, read as a
    canary analysis reads them (both dimensions; a minute is readable once it has ended)."""
    dims = [{"Name": "TargetGroup", "Value": "targetgroup/" + tg.split(":targetgroup/", 1)[1]},
            {"Name": "LoadBalancer", "Value": "app/" + lb_arn.split(":loadbalancer/app/", 1)[1]}]

    def query(qid: str, metric: str, stat: str) -> dict[str, Any]:
        return {"Id": qid, "MetricStat": {"Metric": {"Namespace": "AWS/ApplicationELB", "MetricName": metric,
                                                     "Dimensions": dims}, "Period": 86400, "Stat": stat}}

    now = dt.datetime.now(dt.UTC)
    deadline = time.monotonic() + 10
    while True:
        answer = aws("cloudwatch", "GetMetricData", StartTime=now - dt.timedelta(minutes=10),
                     EndTime=now + dt.timedelta(minutes=10),
                     MetricDataQueries=[query("n", "RequestCount", "Sum"), query("p", "TargetResponseTime", "p95")])
        found = {r["Id"]: r["Values"] for r in answer["MetricDataResults"]}
        if sum(found["n"]) >= 1 or time.monotonic() > deadline:
            break
        time.sleep(0.5)
    assert sum(found["n"]) >= 1, f"{tg}: no RequestCount after a request through its listener: {answer}"
    assert found["p"] and all(v > 0 for v in found["p"]), f"{tg}: no p95 TargetResponseTime: {answer}"


def check_native(aws: Reader, cluster: str, v2: str) -> None:
    service = aws("ecs", "DescribeServices", cluster=cluster, services=["web"])["services"][0]
    assert service["taskDefinition"] == v2
    listed = aws("ecs", "ListServiceDeployments", cluster=cluster, service="web")["serviceDeployments"]
    assert listed[0]["serviceDeploymentArn"] == service["currentServiceDeployment"] and len(listed) == 2
    dep = aws("ecs", "DescribeServiceDeployments",
              serviceDeploymentArns=[listed[0]["serviceDeploymentArn"]])["serviceDeployments"][0]
    assert (dep["status"], dep["lifecycleStage"]) == ("SUCCESSFUL", "CLEAN_UP")
    revs = aws("ecs", "DescribeServiceRevisions", serviceRevisionArns=[dep["targetServiceRevision"]["arn"]])
    assert revs["serviceRevisions"][0]["taskDefinition"] == v2 and revs["failures"] == []
    primary = [d for d in service["deployments"] if d["status"] == "PRIMARY"]
    assert [d["taskDefinition"] for d in primary] == [v2]
    running = [t for t in aws("ecs", "DescribeTasks", cluster=cluster, tasks=aws(
        "ecs", "ListTasks", cluster=cluster, desiredStatus="RUNNING")["taskArns"])["tasks"]]
    assert service["runningCount"] == primary[0]["runningCount"] == len(running) == 2


def check_codedeploy(aws: Reader, stack: Any, dep_id: str, green: str) -> None:
    group = aws("codedeploy", "GetDeploymentGroup", applicationName=stack.name,
                deploymentGroupName="dg")["deploymentGroupInfo"]
    assert group["lastSuccessfulDeployment"]["deploymentId"] == dep_id
    assert isinstance(group["lastSuccessfulDeployment"]["createTime"], dt.datetime)
    aws("codedeploy", "GetDeploymentConfig", deploymentConfigName=group["deploymentConfigName"])
    assert dep_id in aws("codedeploy", "ListDeployments", applicationName=stack.name,
                         deploymentGroupName="dg")["deployments"]
    targets = aws("codedeploy", "ListDeploymentTargets", deploymentId=dep_id)["targetIds"]
    target = aws("codedeploy", "GetDeploymentTarget", deploymentId=dep_id, targetId=targets[0])["deploymentTarget"]
    assert target["ecsTarget"]["status"] == "Succeeded"
    sets = aws("ecs", "DescribeTaskSets", cluster=stack.name, service="web")["taskSets"]
    assert [(s["status"], s["taskDefinition"]) for s in sets] == [("PRIMARY", green)]


def check_ecr(aws: Reader, image: str) -> None:
    name, tag = image.split("/", 1)[1].rsplit(":", 1)
    with contextlib.suppress(aws.client("ecr").exceptions.RepositoryAlreadyExistsException):
        aws.client("ecr").create_repository(repositoryName=name)  # the registry has it; ECR learns the repository
    repo = aws("ecr", "DescribeRepositories", repositoryNames=[name])["repositories"][0]
    first = aws("ecr", "DescribeImages", repositoryName=name, imageIds=[{"imageTag": tag}])["imageDetails"][0]
    time.sleep(1.1)
    again = aws("ecr", "DescribeImages", repositoryName=name, imageIds=[{"imageTag": tag}])["imageDetails"][0]
    assert first["imagePushedAt"] == again["imagePushedAt"] < dt.datetime.now(dt.UTC)
    assert repo["repositoryUri"].endswith(f"/{name}")
    auth = aws("ecr", "GetAuthorizationToken")["authorizationData"]
    assert auth and auth[0]["proxyEndpoint"], "an endpoint to log in to"
    # ECR's retag: BatchGetImage's manifest put back under a new tag keeps the digest, byte for byte;
    # putting it again under the same tag is ImageAlreadyExistsException (ECR API reference, PutImage).
    got = aws("ecr", "BatchGetImage", repositoryName=name, imageIds=[{"imageDigest": first["imageDigest"]}],
              acceptedMediaTypes=["application/vnd.docker.distribution.manifest.v2+json",
                                  "application/vnd.oci.image.manifest.v1+json"])["images"][0]
    ecr = aws.client("ecr")
    retag = f"contract-retag-{uuid.uuid4().hex[:6]}"  # its own tag: a second run on the same sandbox passes too
    put = ecr.put_image(repositoryName=name, imageManifest=got["imageManifest"], imageTag=retag,
                        imageManifestMediaType=got["imageManifestMediaType"])
    try:
        assert put["image"]["imageId"]["imageDigest"] == first["imageDigest"]
        with pytest.raises(ecr.exceptions.ImageAlreadyExistsException):
            ecr.put_image(repositoryName=name, imageManifest=got["imageManifest"], imageTag=retag,
                          imageManifestMediaType=got["imageManifestMediaType"])
    finally:
        ecr.batch_delete_image(repositoryName=name, imageIds=[{"imageTag": retag}])


def check_the_rest(aws: Reader) -> None:
    """CloudWatch alarms and their history, the caller and the roles, SSM and Secrets Manager reads of the
    buildspec's env."""
    name = f"contract-{uuid.uuid4().hex[:6]}"
    cw, ssm, sm = aws.client("cloudwatch"), aws.client("ssm"), aws.client("secretsmanager")
    cw.put_metric_alarm(AlarmName=name, Namespace="Test/Contract", MetricName="Errors", Statistic="Sum",
                        Period=60, EvaluationPeriods=1, Threshold=1.0,
                        ComparisonOperator="GreaterThanOrEqualToThreshold")
    try:
        cw.set_alarm_state(AlarmName=name, StateValue="ALARM", StateReason="contract")
        alarm = aws("cloudwatch", "DescribeAlarms", AlarmNames=[name])["MetricAlarms"][0]
        assert alarm["StateValue"] == "ALARM"
        history = aws("cloudwatch", "DescribeAlarmHistory", AlarmName=name)["AlarmHistoryItems"]
        assert history[0]["HistorySummary"] == "Alarm updated from OK to ALARM"
    finally:
        cw.delete_alarms(AlarmNames=[name])
    logs = aws.client("logs")
    logs.create_log_group(logGroupName=f"/ecs/{name}")
    try:
        groups = aws("logs", "DescribeLogGroups", logGroupNamePrefix=f"/ecs/{name}")["logGroups"]
        assert [g["logGroupName"] for g in groups] == [f"/ecs/{name}"]
        logs.create_log_stream(logGroupName=f"/ecs/{name}", logStreamName="web/web/task")
        logs.put_log_events(logGroupName=f"/ecs/{name}", logStreamName="web/web/task", logEvents=[
            {"timestamp": int(time.time() * 1000), "message": "migrated"}])
        events = aws("logs", "GetLogEvents", logGroupName=f"/ecs/{name}", logStreamName="web/web/task",
                     startFromHead=True)
        assert [e["message"] for e in events["events"]] == ["migrated"] and events["nextForwardToken"]
    finally:
        logs.delete_log_group(logGroupName=f"/ecs/{name}")
    assert aws("sts", "GetCallerIdentity")["Account"] == "123456789012"
    clusters = aws.client("ecs").list_clusters()["clusterArns"]
    assert aws("ecs", "DescribeClusters", clusters=clusters[:1])["clusters"][0]["status"] == "ACTIVE"
    role = aws("iam", "GetRole", RoleName=infrastructure_role(aws.client("ecs")).rsplit("/", 1)[-1])["Role"]
    simulated = aws("iam", "SimulatePrincipalPolicy", PolicySourceArn=role["Arn"], ActionNames=["iam:PassRole"],
                    ResourceArns=[role["Arn"]], ContextEntries=[{"ContextKeyName": "iam:PassedToService",
                                                                 "ContextKeyValues": ["ecs.amazonaws.com"],
                                                                 "ContextKeyType": "string"}])
    assert simulated["EvaluationResults"][0]["ResourceSpecificResults"][0]["EvalResourceName"] == role["Arn"]
    session = aws("sts", "AssumeRole", RoleArn=role["Arn"], RoleSessionName=name, DurationSeconds=900,
                  Policy=json.dumps({"Version": "2012-10-17", "Statement": [
                      {"Effect": "Allow", "Action": "ecr:GetAuthorizationToken", "Resource": "*"}]}))
    assert session["Credentials"]["AccessKeyId"] and session["AssumedRoleUser"]["Arn"]
    ssm.put_parameter(Name=f"/{name}/region", Value="us-east-1", Type="String")
    assert aws("ssm", "GetParameter", Name=f"/{name}/region")["Parameter"]["Value"] == "us-east-1"
    sm.create_secret(Name=name, SecretString="not-a-real-secret")
    try:
        assert aws("secretsmanager", "GetSecretValue", SecretId=name)["Name"] == name
    finally:
        sm.delete_secret(SecretId=name, ForceDeleteWithoutRecovery=True)


def test_every_read_after_a_release_fits_the_model_and_the_world(
        emu: Any, emu_stack: Callable[..., Any], emu_images: dict[str, str]) -> None:
    aws = Reader(emu.endpoint)
    native, classic = emu_stack("cnat"), emu_stack("ccd")
    v2 = native_release(native, emu, emu_images, aws)
    check_native(aws, native.name, v2)
    check_tasks(aws, native.name, v2, emu.docker_host)
    check_listeners(aws, emu, native.name, "v2\n")
    dep_id, green = codedeploy_release(classic, emu, emu_images, aws)
    check_codedeploy(aws, classic, dep_id, green)
    # Succeeded once blue's task set is deleted; ECS then stops its tasks (as on AWS, a moment later)
    emu.wait_for(lambda: only_revision(aws, classic.name, green), 30, "blue's tasks to stop")
    check_tasks(aws, classic.name, green, emu.docker_host)
    check_listeners(aws, emu, classic.name, "green\n")
    check_ecr(aws, emu_images["v2"])
    check_the_rest(aws)
    missing = {(svc, op) for svc, ops in READS.items() for op in ops} - aws.read_ops
    assert not missing, f"operations in READS this test never read: {sorted(missing)}"
