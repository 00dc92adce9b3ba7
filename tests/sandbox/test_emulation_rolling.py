"""Rolling updates (ECS controller) with the deployment circuit breaker."""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any


def _deployments(stack: Any) -> list[dict[str, Any]]:
    service = stack.ecs.describe_services(cluster=stack.name, services=["web"])["services"][0]
    return list(service["deployments"])


def _completed(stack: Any, task_definition: str) -> dict[str, Any] | None:
    deps = _deployments(stack)
    primary = next(d for d in deps if d["status"] == "PRIMARY")
    done = (primary["rolloutState"] == "COMPLETED" and primary["taskDefinition"] == task_definition
            and all(d["status"] == "INACTIVE" for d in deps if d is not primary))
    return primary if done else None


@contextmanager
def _production_client(stack: Any) -> Iterator[list[tuple[int, str]]]:
    """Requests through the production listener for as long as the block runs."""
    answers: list[tuple[int, str]] = []
    stop = threading.Event()

    def hammer() -> None:
        while not stop.is_set():
            answers.append(stack.get())

    thread = threading.Thread(target=hammer)
    thread.start()
    try:
        yield answers
    finally:
        stop.set()
        thread.join()


def test_rolling_update_then_broken_one_fails_by_circuit_breaker_while_old_tasks_serve(
        emu: Any, emu_stack: Callable[..., Any], emu_images: dict[str, str]) -> None:
    stack = emu_stack("rol")
    v1 = stack.task_definition(emu_images["v1"])
    stack.ecs.create_service(
        cluster=stack.name, serviceName="web", desiredCount=2, taskDefinition=v1,
        launchType="FARGATE", loadBalancers=stack.lb(stack.tgs[0]),
        deploymentConfiguration={"maximumPercent": 200, "minimumHealthyPercent": 100,
                                 "deploymentCircuitBreaker": {"enable": True, "rollback": True}})
    emu.wait_for(lambda: _completed(stack, v1), 30, "first deployment COMPLETED")
    assert stack.get() == (200, "v1\n")

    v2 = stack.task_definition(emu_images["v2"])
    with _production_client(stack) as answers:
        stack.ecs.update_service(cluster=stack.name, service="web", taskDefinition=v2)
        second = emu.wait_for(lambda: _completed(stack, v2), 40, "v2 deployment COMPLETED")
        emu.wait_for(lambda: stack.get() == (200, "v2\n") and stack.get() == (200, "v2\n"), 10,
                     "only v2 answering")
    assert second["runningCount"] == 2 and len(_deployments(stack)) == 1
    assert {a[0] for a in answers} == {200}, set(answers)

    with _production_client(stack) as answers:
        broken = stack.task_definition(emu_images["nohealth"])
        stack.ecs.update_service(cluster=stack.name, service="web", taskDefinition=broken)
        failed = emu.wait_for(
            lambda: next((d for d in _deployments(stack) if d["rolloutState"] == "FAILED"), None),
            60, "circuit breaker FAILED")
        assert failed["taskDefinition"] == broken
        assert "circuit breaker" in failed["rolloutStateReason"]
        primary = emu.wait_for(lambda: _completed(stack, v2), 30, "rollback COMPLETED")
        assert primary["id"] == second["id"]
    assert answers and set(answers) == {(200, "v2\n")}, set(answers)
    service = stack.ecs.describe_services(cluster=stack.name, services=["web"])["services"][0]
    assert service["taskDefinition"] == v2 and service["runningCount"] == 2
    messages = [e["message"] for e in service["events"]]
    assert any("deployment failed: tasks failed to start" in m for m in messages)
    assert any("failed ELB health checks in (target-group" in m for m in messages)
    stopped = stack.ecs.list_tasks(cluster=stack.name, serviceName="web", desiredStatus="STOPPED")
    reasons = {t["stoppedReason"] for t in stack.ecs.describe_tasks(
        cluster=stack.name, tasks=stopped["taskArns"])["tasks"]}
    assert any(r.startswith("Task failed ELB health checks") for r in reasons), reasons
