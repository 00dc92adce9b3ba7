"""Rolling updates (ECS controller) with the deployment circuit breaker."""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import Any


def _deployments(stack: Any) -> list[dict[str, Any]]:
    service = stack.ecs.describe_services(cluster=stack.name, services=["web"])["services"][0]
    return list(service["deployments"])


def test_broken_rolling_update_fails_by_circuit_breaker_while_old_tasks_serve(
        emu: Any, emu_stack: Callable[..., Any], emu_images: dict[str, str]) -> None:
    stack = emu_stack("rol")
    v1 = stack.task_definition(emu_images["v1"])
    stack.ecs.create_service(
        cluster=stack.name, serviceName="web", desiredCount=2, taskDefinition=v1,
        launchType="FARGATE", loadBalancers=stack.lb(stack.tgs[0]),
        deploymentConfiguration={"maximumPercent": 200, "minimumHealthyPercent": 100,
                                 "deploymentCircuitBreaker": {"enable": True, "rollback": True}})
    first = emu.wait_for(lambda: (d := _deployments(stack))[0]["rolloutState"] == "COMPLETED" and d[0],
                         30, "first deployment COMPLETED")
    assert first["runningCount"] == 2 and stack.get() == (200, "v1\n")

    answers: list[tuple[int, str]] = []
    stop = threading.Event()

    def hammer() -> None:
        while not stop.is_set():
            answers.append(stack.get())

    thread = threading.Thread(target=hammer)
    thread.start()
    try:
        broken = stack.task_definition(emu_images["nohealth"])
        stack.ecs.update_service(cluster=stack.name, service="web", taskDefinition=broken)
        failed = emu.wait_for(
            lambda: next((d for d in _deployments(stack) if d["rolloutState"] == "FAILED"), None),
            60, "circuit breaker FAILED")
        assert failed["taskDefinition"] == broken
        assert "circuit breaker" in failed["rolloutStateReason"]
        primary = emu.wait_for(
            lambda: next((d for d in _deployments(stack) if d["status"] == "PRIMARY"
                          and d["rolloutState"] == "COMPLETED"), None), 30, "rollback COMPLETED")
        assert primary["taskDefinition"] == v1 and primary["id"] == first["id"]
    finally:
        stop.set()
        thread.join()
    assert answers and set(answers) == {(200, "v1\n")}, set(answers)
    service = stack.ecs.describe_services(cluster=stack.name, services=["web"])["services"][0]
    assert service["taskDefinition"] == v1 and service["runningCount"] == 2
    messages = [e["message"] for e in service["events"]]
    assert any("deployment failed: tasks failed to start" in m for m in messages)
    stopped = stack.ecs.list_tasks(cluster=stack.name, serviceName="web", desiredStatus="STOPPED")
    reasons = {t["stoppedReason"] for t in stack.ecs.describe_tasks(
        cluster=stack.name, tasks=stopped["taskArns"])["tasks"]}
    assert any(r.startswith("Task failed ELB health checks") for r in reasons), reasons
