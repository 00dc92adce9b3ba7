"""First contact with a real account, task-sets: a brand-new EXTERNAL service and its network.

An EXTERNAL service is created without task-set fields and shows none before its first primary
task set (tests/sandbox/test_strict_task_sets.py), so the first release must bring the network
itself (``network:`` in the service YAML); later releases take the primary task set's. The
tests run in order on one service, released from nothing.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from typing import Any

import pytest

from flows.pipeline import deploy_service
from harness.faults import calls_since, control, last_request
from harness.services import ServiceUnderTest, aws, edit_config, make_service
from tasks.aws import ecs as ecs_ops
from tasks.core.errors import VerifyFailed
from tasks.release.outcome import outcome_of


@pytest.fixture(scope="module")
def fresh(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServiceUnderTest]:
    """A seeded EXTERNAL service that never had a task set, its YAML without ``network``."""
    sut = make_service(tmp_path_factory.mktemp("first-contact"), network=False)
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("ECS_PIPELINE_DEPLOYMENTS", str(sut.yaml_path.parent))
        yield sut


def deploy(name: str) -> Any:
    return deploy_service(name, return_state=True)


def service_of(sut: ServiceUnderTest) -> dict[str, Any]:
    cfg = sut.cfg
    return dict(aws("ecs").describe_services(cluster=cfg.ecs.cluster, services=[cfg.ecs.service])["services"][0])


def test_first_release_without_network_fails_before_any_change(fresh: ServiceUnderTest) -> None:
    assert not service_of(fresh).get("networkConfiguration"), "a new EXTERNAL service shows no network"
    seq = last_request()
    state = deploy(fresh.name)
    assert state.is_failed() and outcome_of(state) == "Failed", state.message
    message = state.message or ""
    assert "network: " in message and "networkMode awsvpc" in message, message
    assert "has no primary task set to take them from" in message, message
    assert "Add to the service YAML: network: {subnets: [subnet-...], security_groups: [sg-...]" in message
    changes = [r for r in control("GET", f"/_sandbox/requests?since={seq}&match={fresh.name}")["requests"]
               if r["mutating"]]
    assert changes == [], "nothing in AWS changed"
    assert fresh.task_sets() == [] and fresh.revisions() == []


def test_first_release_with_network_runs_green_there(fresh: ServiceUnderTest) -> None:
    subnets, group = fresh.seeded["subnets"], fresh.seeded["security_group"]
    edit_config(fresh, lambda c: c.__setitem__("network", {"subnets": subnets, "security_groups": [group]}))
    seq = last_request()
    state = deploy(fresh.name)
    assert outcome_of(state) == "Deployed", state.message
    assert "v1" in fresh.get("/").text
    [primary] = fresh.task_sets()
    want = {"subnets": subnets, "securityGroups": [group], "assignPublicIp": "DISABLED"}
    assert primary["networkConfiguration"]["awsvpcConfiguration"] == want
    assert primary["launchType"] == "FARGATE"
    assert service_of(fresh)["networkConfiguration"]["awsvpcConfiguration"] == want, "the primary's, on the service"
    # The green wait described the task set alone: a clean start lists no stopped task.
    calls = calls_since(seq, match=fresh.cfg.ecs.cluster)
    assert calls["DescribeTaskSets"] >= 1 and calls["ListTasks"] == 0 and calls["DescribeTasks"] == 0, calls


def test_next_release_takes_the_network_of_the_primary_task_set(fresh: ServiceUnderTest) -> None:
    blue = fresh.task_sets()[0]["networkConfiguration"]
    edit_config(fresh, lambda c: c.pop("network"))
    fresh.commit("v2")
    state = deploy(fresh.name)
    assert outcome_of(state) == "Deployed", state.message
    assert "v2" in fresh.get("/").text
    [primary] = fresh.task_sets()
    assert primary["networkConfiguration"] == blue


def test_a_failing_green_is_diagnosed_from_its_own_stopped_tasks_only(fresh: ServiceUnderTest) -> None:
    cfg, ecs = fresh.cfg, aws("ecs")
    other = f"{fresh.name}-broken"
    ecs.create_service(cluster=cfg.ecs.cluster, serviceName=other, desiredCount=1,
                       deploymentController={"type": "EXTERNAL"})
    live = ecs.describe_task_definition(taskDefinition=fresh.task_sets()[0]["taskDefinition"])["taskDefinition"]
    keep = ("family", "networkMode", "requiresCompatibilities", "cpu", "memory", "containerDefinitions")
    body = {k: live[k] for k in keep}
    body["containerDefinitions"] = [{**c, "image": f"{fresh.seeded['repository_uri']}:missing"}
                                    for c in live["containerDefinitions"]]
    broken = ecs.register_task_definition(**body)["taskDefinition"]["taskDefinitionArn"]
    spec = ecs_ops.GreenSpec(cfg.ecs.cluster, other, broken, "", cfg.ecs.container, cfg.ecs.container_port, "x")
    placement = ecs_ops.task_set_placement(None, [], fresh.task_sets()[0])
    ts = ecs.create_task_set(cluster=cfg.ecs.cluster, service=other, taskDefinition=broken, **placement)["taskSet"]
    seq, started = last_request(), time.monotonic()
    try:
        with pytest.raises(VerifyFailed, match="green tasks cannot start: CannotPullContainerError"):
            ecs_ops.wait_task_set_running(ecs, spec, ts["taskSetArn"], 60, lambda _: None)
        assert time.monotonic() - started < 30, "a fatal stop fails the wait at once"
        everything, own = calls_since(seq), calls_since(seq, match=ts["id"])
        assert everything["ListTasks"] >= 1 and everything["ListTasks"] == own["ListTasks"], (everything, own)
    finally:
        ecs.delete_service(cluster=cfg.ecs.cluster, service=other, force=True)
