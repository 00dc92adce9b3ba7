"""Bad input and injected AWS faults answer the way AWS does, through plain boto3."""

from __future__ import annotations

import json
import socket
import urllib.request
from collections.abc import Callable
from typing import Any

import pytest
from botocore.exceptions import ClientError

from tests.sandbox.conftest import registry


def _stopped_task(stack: Any) -> dict[str, Any] | None:
    arns = stack.ecs.list_tasks(cluster=stack.name, desiredStatus="STOPPED")["taskArns"]
    if not arns:
        return None
    return dict(stack.ecs.describe_tasks(cluster=stack.name, tasks=arns)["tasks"][0])


def _external_service(stack: Any, image: str, log_group: str | None = None) -> None:
    stack.ecs.create_service(cluster=stack.name, serviceName="web", desiredCount=1,
                             deploymentController={"type": "EXTERNAL"})
    stack.ecs.create_task_set(cluster=stack.name, service="web", networkConfiguration=stack.network,
                              launchType="FARGATE",
                              taskDefinition=stack.task_definition(image, log_group),
                              loadBalancers=stack.lb(stack.tgs[0]))


def test_image_missing_from_registry_stops_task_with_cannot_pull(
        emu: Any, emu_stack: Callable[..., Any], emu_images: dict[str, str]) -> None:
    stack = emu_stack("pul")
    _external_service(stack, emu_images["blue"].rsplit(":", 1)[0] + ":does-not-exist")
    task = emu.wait_for(lambda: _stopped_task(stack), 30, "stopped task")
    assert task["lastStatus"] == "STOPPED"
    assert task["stoppedReason"].startswith("CannotPullContainerError: "), task["stoppedReason"]
    assert task["group"] == "service:web"

    def pull_event() -> bool:
        events = stack.ecs.describe_services(cluster=stack.name, services=["web"])["services"][0]["events"]
        return any("failed to start: CannotPullContainerError" in e["message"] for e in events)

    emu.wait_for(pull_event, 5, "service event about the failed start")
    sets = stack.ecs.describe_task_sets(cluster=stack.name, service="web")["taskSets"]
    assert sets[0]["runningCount"] == 0 and sets[0]["stabilityStatus"] == "STABILIZING"
    assert stack.get()[0] == 503


def test_container_that_exits_stops_task_with_exit_code(
        emu: Any, emu_aws: Callable[[str], Any], emu_stack: Callable[..., Any],
        emu_images: dict[str, str]) -> None:
    stack = emu_stack("ext3")
    group = f"/ecs/{stack.name}"
    _external_service(stack, emu_images["exit3"], log_group=group)
    task = emu.wait_for(lambda: _stopped_task(stack), 30, "stopped task")
    assert task["stoppedReason"] == "Essential container in task exited"
    assert task["stopCode"] == "EssentialContainerExited"
    assert task["containers"][0]["exitCode"] == 3
    stream = f"web/web/{task['taskArn'].rsplit('/', 1)[-1]}"
    logs = emu_aws("logs")
    events = emu.wait_for(lambda: _log_events(logs, group, stream), 10, "awslogs output")
    assert "config missing: DATABASE_URL" in [e["message"] for e in events]


def _log_events(logs: Any, group: str, stream: str) -> list[dict[str, Any]]:
    try:
        return list(logs.get_log_events(logGroupName=group, logStreamName=stream)["events"])
    except logs.exceptions.ResourceNotFoundException:
        return []


def test_port_clash_stops_task_with_a_clear_reason(
        emu: Any, emu_stack: Callable[..., Any], emu_images: dict[str, str]) -> None:
    stack = emu_stack("clh")
    with socket.socket() as taken:
        try:
            taken.bind(("127.0.0.1", emu.clash_port))
            taken.listen()
        except OSError:
            pass  # something else already holds it: the clash happens all the same
        _external_service(stack, emu_images["clash"])
        task = emu.wait_for(lambda: _stopped_task(stack), 30, "stopped task")
    assert task["stoppedReason"].startswith("CannotStartContainerError: container web could not bind")
    assert "Address already in use" in task["stoppedReason"]


def _fault(emu: Any, spec: dict[str, Any]) -> None:
    req = urllib.request.Request(f"{emu.endpoint}/_sandbox/faults", data=json.dumps(spec).encode(),
                                 method="POST", headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=5) as resp:
        assert resp.status == 200


def test_injected_faults_answer_aws_errors(emu: Any, emu_aws: Callable[[str], Any],
                                           emu_stack: Callable[..., Any]) -> None:
    stack = emu_stack("flt")
    stack.ecs.create_service(cluster=stack.name, serviceName="web", desiredCount=0,
                             deploymentController={"type": "EXTERNAL"})
    td = stack.task_definition(f"{registry()}/emu-web:blue")
    # retried by botocore: the second attempt succeeds
    # "match" keeps other users of a shared sandbox from consuming these faults
    _fault(emu, {"service": "ecs", "operation": "CreateTaskSet", "code": "ThrottlingException",
                 "status": 400, "message": "Rate exceeded", "count": 1, "match": stack.name})
    stack.ecs.create_task_set(cluster=stack.name, service="web", networkConfiguration=stack.network,
                              taskDefinition=td, launchType="FARGATE")
    # permanent: fails at once with the configured code
    _fault(emu, {"service": "ecs", "operation": "CreateTaskSet", "code": "AccessDeniedException",
                 "status": 400, "message": "not allowed", "count": 1, "match": stack.name})
    with pytest.raises(ClientError) as err:
        stack.ecs.create_task_set(cluster=stack.name, service="web", networkConfiguration=stack.network,
                              taskDefinition=td)
    assert err.value.response["Error"]["Code"] == "AccessDeniedException"
    assert err.value.response["Error"]["Message"] == "not allowed"
    # query/XML protocol (elbv2)
    _fault(emu, {"service": "elbv2", "operation": "ModifyListener", "code": "ValidationError",
                 "status": 400, "message": "bad weights", "count": 1, "match": stack.name})
    with pytest.raises(ClientError) as err:
        stack.elb.modify_listener(ListenerArn=stack.prod, DefaultActions=[
            {"Type": "forward", "TargetGroupArn": stack.tgs[1]}])
    assert err.value.response["Error"]["Code"] == "ValidationError"
    # a burst of server-side throttling is ridden out by a client sized for real AWS (10 attempts)
    cd = emu_aws("codedeploy")
    cd.create_application(applicationName=stack.name, computePlatform="ECS")
    _fault(emu, {"service": "codedeploy", "operation": "GetApplication", "code": "ThrottlingException",
                 "status": 400, "message": "Rate exceeded", "count": 3, "match": stack.name})
    got = cd.get_application(applicationName=stack.name)
    assert got["application"]["applicationName"] == stack.name
    assert got["ResponseMetadata"]["RetryAttempts"] == 3
    # DELETE clears faults that were never consumed
    _fault(emu, {"service": "ecs", "operation": "DescribeClusters", "code": "AccessDeniedException",
                 "count": 5, "match": stack.name})
    req = urllib.request.Request(f"{emu.endpoint}/_sandbox/faults?match={stack.name}", method="DELETE")
    with urllib.request.urlopen(req, timeout=5) as resp:
        assert json.loads(resp.read())["cleared"] == 1
    stack.ecs.describe_clusters(clusters=[stack.name])


def test_ecr_tells_the_registry_truth(emu_aws: Callable[[str], Any], emu_images: dict[str, str]) -> None:
    ecr = emu_aws("ecr")
    try:
        repo = ecr.create_repository(repositoryName="emu-web")["repository"]
    except ecr.exceptions.RepositoryAlreadyExistsException:  # a reused sandbox keeps it
        repo = ecr.describe_repositories(repositoryNames=["emu-web"])["repositories"][0]
    assert repo["repositoryUri"] == f"{registry()}/emu-web"
    auth = ecr.get_authorization_token()["authorizationData"][0]
    assert auth["proxyEndpoint"] == f"http://{registry()}"
    images = ecr.describe_images(repositoryName="emu-web", imageIds=[{"imageTag": "blue"}])
    assert images["imageDetails"][0]["imageDigest"].startswith("sha256:")
    assert "blue" in images["imageDetails"][0]["imageTags"]
    with pytest.raises(ClientError) as err:
        ecr.describe_images(repositoryName="emu-web", imageIds=[{"imageTag": "nope"}])
    assert err.value.response["Error"]["Code"] == "ImageNotFoundException"
