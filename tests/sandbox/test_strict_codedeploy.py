"""The sandbox is never looser than AWS: CodeDeploy's answers, its hooks and ELB's health checks.

Each test quotes the document it follows (botocore's service model, read here
from the installed botocore, or an AWS guide) and checks the sandbox plays it.
"""

from __future__ import annotations

import json
import os
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import botocore.session
import pytest
from botocore.exceptions import ClientError

from tests.sandbox.test_emulation_codedeploy import _blue_green, _status, _task_sets


def model_doc(service: str, operation: str, member: str | None = None) -> str:
    """botocore's documentation of an operation (or one of its input members), tags removed."""
    model = botocore.session.get_session().get_service_model(service).operation_model(operation)
    doc = model.input_shape.members[member].documentation if member else model.documentation
    for tag in ("<p>", "</p>", "<code>", "</code>", "<note>", "</note>"):
        doc = doc.replace(tag, "")
    return " ".join(doc.split())


def _deploy(cd: Any, stack: Any, task_definition: str, hooks: dict[str, str] | None = None) -> str:
    appspec: dict[str, Any] = {"version": 0.0, "Resources": [{"TargetService": {
        "Type": "AWS::ECS::Service", "Properties": {
            "TaskDefinition": task_definition,
            "LoadBalancerInfo": {"ContainerName": "web", "ContainerPort": 8080}}}}]}
    if hooks:
        appspec["Hooks"] = [{event: function} for event, function in hooks.items()]
    res = cd.create_deployment(applicationName=stack.name, deploymentGroupName="dg", revision={
        "revisionType": "AppSpecContent", "appSpecContent": {"content": json.dumps(appspec)}})
    return str(res["deploymentId"])


def _events(cd: Any, stack: Any, dep_id: str) -> dict[str, str]:
    try:
        target = cd.get_deployment_target(deploymentId=dep_id, targetId=f"{stack.name}:web")["deploymentTarget"]
    except ClientError as exc:
        if exc.response["Error"]["Code"] != "DeploymentNotStartedException":
            raise
        return {}
    return {e["lifecycleEventName"]: e["status"] for e in target["ecsTarget"]["lifecycleEvents"]}


def _hooks(emu: Any, spec: dict[str, Any] | None = None) -> dict[str, Any]:
    """POST a hook function's behaviour to /_sandbox/hooks (or GET the invocations)."""
    import urllib.request

    req = urllib.request.Request(f"{emu.endpoint}/_sandbox/hooks", method="POST" if spec else "GET",
                                 data=json.dumps(spec).encode() if spec else None,
                                 headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=5) as resp:
        return dict(json.loads(resp.read()))


def test_get_deployment_answers_appspec_content_null(emu: Any, emu_aws: Callable[[str], Any],
                                                     emu_stack: Callable[..., Any],
                                                     emu_images: dict[str, str]) -> None:
    """GetDeployment's documentation: "The content property of the appSpecContent object in the returned
    revision is always null. Use GetApplicationRevision and the sha256 property of the returned
    appSpecContent object to get the content of the deployment's AppSpec file." The revision being
    installed stays readable where AWS shows it: GetDeploymentTarget's ecsTarget.taskSetsInfo names the
    replacement task set ("taskSetLabel: A label that identifies whether the ECS task set is an original
    target (BLUE) or a replacement target (GREEN)"), and DescribeTaskSets gives its taskDefinition."""
    assert "appSpecContent object in the returned revision is always null" in model_doc("codedeploy", "GetDeployment")
    stack = emu_stack("cdnull")
    env = _blue_green(stack, emu_aws, emu, emu_images, ready_wait=True, config="CodeDeployDefault.ECSAllAtOnce")
    cd = env["cd"]
    green_td = stack.task_definition(emu_images["green"])
    dep_id = _deploy(cd, stack, green_td)

    revision = cd.get_deployment(deploymentId=dep_id)["deploymentInfo"]["revision"]
    assert revision["revisionType"] == "AppSpecContent"
    assert revision["appSpecContent"].get("content") is None
    assert len(revision["appSpecContent"]["sha256"]) == 64
    batch = cd.batch_get_deployments(deploymentIds=[dep_id])["deploymentsInfo"][0]["revision"]
    assert batch["appSpecContent"].get("content") is None

    emu.wait_for(lambda: _status(cd, dep_id) == "Ready", 40, "deployment Ready")
    target = cd.get_deployment_target(deploymentId=dep_id, targetId=f"{stack.name}:web")["deploymentTarget"]
    green = [t for t in target["ecsTarget"]["taskSetsInfo"] if t["taskSetLabel"] == "Green"]
    assert len(green) == 1
    by_id = {ts["id"]: ts["taskDefinition"] for ts in _task_sets(stack)}
    assert by_id[green[0]["identifer"]] == green_td
    cd.stop_deployment(deploymentId=dep_id, autoRollbackEnabled=True)


def test_hooks_hold_their_event_until_the_function_reports(emu: Any, emu_aws: Callable[[str], Any],
                                                           emu_stack: Callable[..., Any],
                                                           emu_images: dict[str, str]) -> None:
    """PutLifecycleEventHookExecutionStatus: "Sets the result of a Lambda validation function. ... For
    Amazon ECS deployments, the available lifecycle hooks are BeforeInstall, AfterInstall,
    AfterAllowTestTraffic, BeforeAllowTraffic, and AfterAllowTraffic. Lambda validation functions return
    Succeeded or Failed." Its status: "only Succeeded and Failed can be passed successfully in your API
    call." The AppSpec 'hooks' guide (docs.aws.amazon.com/codedeploy/latest/userguide/
    reference-appspec-file-structure-hooks.html): BeforeAllowTraffic - "The results of a hook function at
    this lifecycle event can trigger a rollback." So an event with a hook waits for its function's
    report, however long it takes (the deployment is not Ready before AfterAllowTestTraffic reports),
    and a Failed report fails the deployment and rolls it back."""
    assert "Lambda validation functions return Succeeded or Failed" in model_doc(
        "codedeploy", "PutLifecycleEventHookExecutionStatus")
    assert "only Succeeded and Failed can be passed successfully" in model_doc(
        "codedeploy", "PutLifecycleEventHookExecutionStatus", "status")
    stack = emu_stack("cdhook")
    env = _blue_green(stack, emu_aws, emu, emu_images, ready_wait=True, config="CodeDeployDefault.ECSAllAtOnce")
    cd = env["cd"]
    hold, refuse = f"hold-{uuid.uuid4().hex[:6]}", f"refuse-{uuid.uuid4().hex[:6]}"
    _hooks(emu, {"function": hold, "status": None})  # never reports by itself: this test reports for it
    _hooks(emu, {"function": refuse, "status": "Failed"})
    dep_id = _deploy(cd, stack, stack.task_definition(emu_images["green"]),
                     {"AfterAllowTestTraffic": f"arn:aws:lambda:us-east-1:123456789012:function:{hold}",
                      "BeforeAllowTraffic": refuse})

    emu.wait_for(lambda: _events(cd, stack, dep_id).get("AfterAllowTestTraffic") == "InProgress", 40,
                 "AfterAllowTestTraffic's hook invoked")
    time.sleep(1.5)  # far longer than the sandbox takes to reach Ready without a hook
    assert _status(cd, dep_id) == "InProgress"
    assert stack.get(stack.test_port) == (200, "green\n"), "test traffic is already on green"
    invocation = next(i for i in _hooks(emu)["invocations"] if i["DeploymentId"] == dep_id)
    assert invocation["lifecycleEvent"] == "AfterAllowTestTraffic"
    exec_id = invocation["LifecycleEventHookExecutionId"]
    with pytest.raises(ClientError) as err:
        cd.put_lifecycle_event_hook_execution_status(deploymentId=dep_id, lifecycleEventHookExecutionId=exec_id,
                                                     status="InProgress")
    assert err.value.response["Error"]["Code"] == "InvalidLifecycleEventHookExecutionStatusException"
    answer = cd.put_lifecycle_event_hook_execution_status(
        deploymentId=dep_id, lifecycleEventHookExecutionId=exec_id, status="Succeeded")
    assert answer["lifecycleEventHookExecutionId"] == exec_id
    emu.wait_for(lambda: _status(cd, dep_id) == "Ready", 20, "deployment Ready once the hook reported")
    with pytest.raises(ClientError) as err:
        cd.put_lifecycle_event_hook_execution_status(deploymentId=dep_id, lifecycleEventHookExecutionId=exec_id,
                                                     status="Succeeded")
    assert err.value.response["Error"]["Code"] == "LifecycleEventAlreadyCompletedException"

    cd.continue_deployment(deploymentId=dep_id, deploymentWaitType="READY_WAIT")
    emu.wait_for(lambda: _status(cd, dep_id) == "Failed", 20, "deployment Failed on BeforeAllowTraffic's hook")
    info = cd.get_deployment(deploymentId=dep_id)["deploymentInfo"]
    assert info["errorInformation"]["code"] == "HOOK_EXECUTION_FAILURE"
    assert info["rollbackInfo"]["rollbackDeploymentId"]
    assert _events(cd, stack, dep_id)["BeforeAllowTraffic"] == "Failed"
    assert all(stack.get()[1] == "blue\n" for _ in range(5))


class _Health(BaseHTTPRequestHandler):
    def do_GET(self) -> None:
        self.send_response(200)
        self.send_header("Content-Length", "3")
        self.end_headers()
        self.wfile.write(b"ok\n")

    def log_message(self, *args: Any) -> None:
        pass


@pytest.fixture
def healthy_port() -> Iterator[int]:
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Health)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield int(server.server_address[1])
    server.shutdown()
    server.server_close()


def test_a_new_target_needs_interval_times_healthy_threshold(emu: Any, emu_aws: Callable[[str], Any],
                                                             emu_net: dict[str, Any], healthy_port: int) -> None:
    """ELBv2 CreateTargetGroup: HealthCheckIntervalSeconds is "The approximate amount of time, in seconds,
    between health checks of an individual target ... the default is 30 seconds"; HealthyThresholdCount is
    "The number of consecutive health check successes required before considering a target healthy ...
    the default is 5." A target that answers at once is therefore healthy only after about interval x
    threshold (time-scaled here), never at its first check."""
    assert "consecutive health check successes required before considering a target healthy" in model_doc(
        "elbv2", "CreateTargetGroup", "HealthyThresholdCount")
    assert "between health checks of an individual target" in model_doc(
        "elbv2", "CreateTargetGroup", "HealthCheckIntervalSeconds")
    elb = emu_aws("elbv2")
    tg = elb.create_target_group(
        Name=f"hc-{uuid.uuid4().hex[:6]}", Protocol="HTTP", Port=80, VpcId=emu_net["vpc"], TargetType="ip",
        HealthCheckPath="/health", HealthCheckIntervalSeconds=30, HealthCheckTimeoutSeconds=5,
        HealthyThresholdCount=5, UnhealthyThresholdCount=2)["TargetGroups"][0]["TargetGroupArn"]
    scale = float(os.environ.get("SANDBOX_TIME_SCALE") or 60)
    expected = 30 * 5 / scale
    try:
        start = time.monotonic()
        elb.register_targets(TargetGroupArn=tg, Targets=[{"Id": "127.0.0.1", "Port": healthy_port}])

        def state() -> str:
            return str(elb.describe_target_health(TargetGroupArn=tg)["TargetHealthDescriptions"][0]
                       ["TargetHealth"]["State"])

        assert state() == "initial"
        emu.wait_for(lambda: state() == "healthy", expected + 15, "the target healthy", interval=0.05)
        took = time.monotonic() - start
        assert took >= expected * 0.9, f"healthy after {took:.2f}s, before {expected:.2f}s (30s x 5 time-scaled)"
    finally:
        elb.delete_target_group(TargetGroupArn=tg)
