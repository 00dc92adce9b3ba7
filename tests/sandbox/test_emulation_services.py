"""EXTERNAL services: task sets run real containers behind real listener proxies."""

from __future__ import annotations

import threading
import time
from collections import Counter
from collections.abc import Callable
from typing import Any

import docker


def test_external_task_set_runs_real_containers(emu: Any, emu_stack: Callable[..., Any],
                                                emu_images: dict[str, str]) -> None:
    stack = emu_stack("ext")
    td = stack.task_definition(emu_images["blue"])
    stack.ecs.create_service(cluster=stack.name, serviceName="web", desiredCount=2,
                             deploymentController={"type": "EXTERNAL"})
    ts = stack.ecs.create_task_set(cluster=stack.name, service="web", networkConfiguration=stack.network,
                              taskDefinition=td,
                                   launchType="FARGATE", loadBalancers=stack.lb(stack.tgs[0]),
                                   scale={"value": 100, "unit": "PERCENT"})["taskSet"]
    stack.ecs.update_service_primary_task_set(cluster=stack.name, service="web",
                                              primaryTaskSet=ts["taskSetArn"])

    def steady() -> Any:
        sets = stack.ecs.describe_task_sets(cluster=stack.name, service="web")["taskSets"]
        return sets[0] if sets[0]["stabilityStatus"] == "STEADY_STATE" else None

    described = emu.wait_for(steady, 30, "task set STEADY_STATE")
    assert described["runningCount"] == 2 and described["computedDesiredCount"] == 2
    assert described["status"] == "PRIMARY"

    arns = stack.ecs.list_tasks(cluster=stack.name, serviceName="web")["taskArns"]
    tasks = stack.ecs.describe_tasks(cluster=stack.name, tasks=arns)["tasks"]
    assert len(tasks) == 2 and {t["lastStatus"] for t in tasks} == {"RUNNING"}
    client = docker.APIClient(base_url=emu.docker_host)
    # the engine's list answer alone: other tests' containers may go between a list and a per-container read
    running = client.containers(filters={"label": "ecs-pipeline.sandbox=1"})
    mine = [c for c in running if (c.get("Labels") or {}).get("ecs-pipeline.task-arn") in arns]
    assert len(mine) == 2
    assert all(c["HostConfig"]["NetworkMode"] == "host" for c in mine)

    health = stack.elb.describe_target_health(TargetGroupArn=stack.tgs[0])["TargetHealthDescriptions"]
    assert [h["TargetHealth"]["State"] for h in health] == ["healthy", "healthy"]
    assert {h["Target"]["Id"] for h in health} == {"127.0.0.1"}
    assert stack.get() == (200, "blue\n")
    service = stack.ecs.describe_services(cluster=stack.name, services=["web"])["services"][0]
    assert service["runningCount"] == 2
    messages = [e["message"] for e in service["events"]]
    assert any("has started 2 tasks" in m for m in messages)
    assert any("has reached a steady state" in m for m in messages)

    state = emu.state()
    summary = next(s for s in state["services"] if s["cluster"] == stack.name)
    assert summary["controller"] == "EXTERNAL" and summary["running"] == 2
    fleet = next(f for f in state["fleets"] if f["key"] == ts["taskSetArn"])
    assert sorted(t["lastStatus"] for t in fleet["tasks"]) == ["RUNNING", "RUNNING"]
    assert any(p["port"] == stack.prod_port and p["bound"] for p in state["listeners"])


def test_weighted_forward_splits_traffic(emu: Any, emu_stack: Callable[..., Any],
                                         emu_images: dict[str, str]) -> None:
    stack = emu_stack("wgt")
    stack.ecs.create_service(cluster=stack.name, serviceName="web", desiredCount=1,
                             deploymentController={"type": "EXTERNAL"})
    for image, tg in (("blue", stack.tgs[0]), ("green", stack.tgs[1])):
        stack.ecs.create_task_set(cluster=stack.name, service="web", networkConfiguration=stack.network,
                              launchType="FARGATE",
                                  taskDefinition=stack.task_definition(emu_images[image]),
                                  loadBalancers=stack.lb(tg), scale={"value": 100, "unit": "PERCENT"})

    def both_healthy() -> bool:
        return all(
            [h["TargetHealth"]["State"] for h in stack.elb.describe_target_health(
                TargetGroupArn=tg)["TargetHealthDescriptions"]] == ["healthy"] for tg in stack.tgs)

    emu.wait_for(both_healthy, 30, "both target groups healthy")
    stack.elb.modify_listener(ListenerArn=stack.prod, DefaultActions=[{
        "Type": "forward", "ForwardConfig": {"TargetGroups": [
            {"TargetGroupArn": stack.tgs[0], "Weight": 90},
            {"TargetGroupArn": stack.tgs[1], "Weight": 10}]}}])
    emu.wait_for(lambda: stack.get()[1].strip() == "green", 15, "the new weights to take effect")  # ELB: not at once
    counts = Counter(stack.get()[1].strip() for _ in range(500))
    assert set(counts) == {"blue", "green"}, counts
    assert 0.80 <= counts["blue"] / 500 <= 0.97, counts

    stack.elb.create_rule(ListenerArn=stack.prod, Priority=10, Conditions=[
        {"Field": "path-pattern", "Values": ["/maintenance*"]}], Actions=[
        {"Type": "fixed-response", "FixedResponseConfig": {
            "StatusCode": "503", "ContentType": "text/plain", "MessageBody": "down"}}])
    emu.wait_for(lambda: stack.get(path="/maintenance/now") == (503, "down"), 15, "the rule to take effect")
    assert stack.get()[0] == 200


def test_request_in_flight_completes_while_its_target_drains(
        emu: Any, emu_stack: Callable[..., Any], emu_images: dict[str, str]) -> None:
    stack = emu_stack("drn")
    stack.ecs.create_service(cluster=stack.name, serviceName="web", desiredCount=1,
                             deploymentController={"type": "EXTERNAL"})
    ts = stack.ecs.create_task_set(cluster=stack.name, service="web", networkConfiguration=stack.network,
                              launchType="FARGATE",
                                   taskDefinition=stack.task_definition(emu_images["slow"]),
                                   loadBalancers=stack.lb(stack.tgs[0]))["taskSet"]
    emu.wait_for(lambda: stack.get() == (200, "slow\n"), 30, "slow app serving")
    result: list[tuple[int, str]] = []
    slow = threading.Thread(target=lambda: result.append(stack.get(path="/cgi-bin/slow.cgi")))
    slow.start()
    time.sleep(0.5)  # the request is now waiting on the container
    stack.ecs.delete_task_set(cluster=stack.name, service="web", taskSet=ts["taskSetArn"])
    emu.wait_for(lambda: [h["TargetHealth"]["State"] for h in stack.elb.describe_target_health(
        TargetGroupArn=stack.tgs[0])["TargetHealthDescriptions"]] == ["draining"], 5, "draining")
    assert stack.get()[0] == 503, "a draining target gets no new requests"
    slow.join(timeout=10)
    assert result == [(200, "slow done\n")]
    emu.wait_for(lambda: not stack.elb.describe_target_health(
        TargetGroupArn=stack.tgs[0])["TargetHealthDescriptions"], 10, "target gone after draining")


def test_run_task_runs_once_with_overrides(emu: Any, emu_aws: Callable[[str], Any],
                                           emu_stack: Callable[..., Any],
                                           emu_images: dict[str, str]) -> None:
    stack = emu_stack("one")
    group = f"/ecs/{stack.name}"
    td = stack.task_definition(emu_images["blue"], log_group=group)
    task = stack.ecs.run_task(cluster=stack.name, taskDefinition=td, launchType="FARGATE",
                             networkConfiguration=stack.network, overrides={
        "containerOverrides": [{"name": "web", "environment": [{"name": "STEP", "value": "migrate"}],
                                "command": ["/bin/busybox", "sh", "-c", "echo ran $STEP; exit 0"]}]})["tasks"][0]
    assert task["lastStatus"] == "PROVISIONING" and task["group"] == f"family:{stack.name}-app"

    def stopped() -> dict[str, Any] | None:
        t = stack.ecs.describe_tasks(cluster=stack.name, tasks=[task["taskArn"]])["tasks"][0]
        return t if t["lastStatus"] == "STOPPED" else None

    done = emu.wait_for(stopped, 30, "one-off task STOPPED")
    assert done["containers"][0]["exitCode"] == 0
    stream = f"web/web/{task['taskArn'].rsplit('/', 1)[-1]}"
    logs = emu_aws("logs")

    def events_so_far() -> list[dict[str, Any]]:
        try:
            return list(logs.get_log_events(logGroupName=group, logStreamName=stream)["events"])
        except logs.exceptions.ResourceNotFoundException:
            return []

    events = emu.wait_for(events_so_far, 10, "task output in CloudWatch Logs")
    assert [e["message"] for e in events] == ["ran migrate"]
    time.sleep(1)
    assert stack.ecs.list_tasks(cluster=stack.name)["taskArns"] == [], "a one-off task is not restarted"
