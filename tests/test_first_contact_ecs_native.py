"""First contact with a real account, ECS-native: releases that would lie or fail on AWS, now right.

The sandbox plays what AWS documents (tests/sandbox/test_strict_ecs_native.py): UpdateService's answer and
DescribeServices name the previous service deployment for a while, and ListServiceDeployments lists the new one
only after a delay. One seeded service, shared by the module's releases.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
from pydantic import ValidationError

from flows.pipeline import deploy_service
from harness.services import HTTP, ServiceUnderTest, aws, edit_config, make_service, seed_serving, set_traffic
from tasks.config.models import ServiceConfig
from tasks.release.outcome import outcome_of
from tests.test_codedeploy import watching
from tests.test_ecs_native import deployments, weights


@pytest.fixture(scope="module")
def native_service(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServiceUnderTest]:
    sut = make_service(tmp_path_factory.mktemp("first-contact-native"), strategy="ecs-native",
                       traffic={"type": "all-at-once"}, bake_seconds=0)
    seed_serving(sut)
    yield sut


@pytest.fixture
def sut(native_service: ServiceUnderTest, monkeypatch: pytest.MonkeyPatch,
        tmp_path: Any) -> ServiceUnderTest:
    monkeypatch.setenv("ECS_PIPELINE_DEPLOYMENTS", str(native_service.yaml_path.parent))
    monkeypatch.setenv("ECS_PIPELINE_ARTIFACTS_DIR", str(tmp_path / "artifacts"))
    return native_service


def calls_since(since: int, match: str) -> list[str]:
    """Operations the sandbox answered after sequence number SINCE whose body names MATCH."""
    endpoint = aws("ecs").meta.endpoint_url
    found = HTTP.get(f"{endpoint}/_sandbox/requests", params={"since": since, "match": match}).json()
    return [r["operation"] for r in found["requests"]]


def last_call() -> int:
    return int(HTTP.get(f"{aws('ecs').meta.endpoint_url}/_sandbox/requests", params={"since": 0}).json()["last"])


def target_task_definition(dep: dict[str, Any]) -> str:
    revs = aws("ecs").describe_service_revisions(serviceRevisionArns=[dep["targetServiceRevision"]["arn"]])
    return str(revs["serviceRevisions"][0]["taskDefinition"])


def test_a_lagging_current_service_deployment_is_no_false_success(sut: ServiceUnderTest) -> None:
    """UpdateService's answer still names the seed's SUCCESSFUL deployment: the release must find its own,
    verify green at its pause and continue it, not report the old one's success as its own."""
    sut.commit("v2")
    since = last_call()
    with watching(sut) as seen:
        state = deploy_service(sut.name, return_state=True)
    assert outcome_of(state) == "Deployed", state.message
    newest = deployments(sut)[0]
    assert (newest["status"], newest["lifecycleStage"]) == ("SUCCESSFUL", "CLEAN_UP"), "Deployed, yet ECS is not done"
    assert target_task_definition(newest) == sut.revisions()[-1]
    assert "ContinueServiceDeployment" in calls_since(since, sut.cfg.ecs.cluster), "never continued at its pause"
    assert all("sample-app v2" in sut.get("/").text for _ in range(5))
    assert seen and all(s.startswith("200 ") for s in seen)


def test_a_linear_release_longer_than_the_rollout_timeout_completes(sut: ServiceUnderTest) -> None:
    """LINEAR 50 % every 11 minutes: 11 rehearsal-minutes of shifting (11 s at the sandbox's time scale), beyond
    timeouts.rollout_seconds (5 s here): the wait budget comes from the strategy's own steps, so a healthy release
    is not rolled back by a fixed timeout."""
    set_traffic(sut, {"type": "linear", "percent": 50, "interval_seconds": 11 * 60})
    edit_config(sut, lambda c: c.setdefault("timeouts", {}).__setitem__("rollout_seconds", 5))
    try:
        sut.commit("v3")
        with weights(sut) as moved:
            state = deploy_service(sut.name, return_state=True)
    finally:
        set_traffic(sut, {"type": "all-at-once"})
        edit_config(sut, lambda c: c["timeouts"].pop("rollout_seconds"))
    assert outcome_of(state) == "Deployed", state.message
    newest = deployments(sut)[0]
    assert (newest["status"], newest["deploymentConfiguration"]["strategy"]) == ("SUCCESSFUL", "LINEAR")
    assert [w for w in moved if w] == [50.0, 100.0]
    assert all("sample-app v3" in sut.get("/").text for _ in range(5))


def test_a_test_listener_that_does_not_hold_the_test_rule_is_refused(sut: ServiceUnderTest) -> None:
    """Swapped listeners: the checks at the pause would go through the production rule, which ECS keeps on blue."""
    before = len(deployments(sut))

    def swap(config: dict[str, Any]) -> None:
        lb = config["load_balancer"]
        lb["production_listener"], lb["test_listener"] = lb["test_listener"], lb["production_listener"]

    edit_config(sut, swap)
    try:
        state = deploy_service(sut.name, return_state=True)
    finally:
        edit_config(sut, swap)
    message = state.message or ""
    assert outcome_of(state) != "Deployed"
    assert "load_balancer.test_listener" in message and "advancedConfiguration.testListenerRule" in message, message
    assert len(deployments(sut)) == before, "refused before any UpdateService"


def native_config(traffic: dict[str, Any]) -> dict[str, Any]:
    return {"name": "svc", "source": {"repo": "r"}, "ecr": {"repository": "svc"},
            "ecs": {"cluster": "c", "service": "svc", "container": "web", "container_port": 8080},
            "task_definition": "svc/taskdef.json", "strategy": {"type": "ecs-native", "traffic": traffic},
            "load_balancer": {"production_listener": {"arn": "p"}, "test_listener": {"arn": "t"},
                              "target_groups": ["a", "b"]}}


@pytest.mark.parametrize(("traffic", "ok"), [
    ({"type": "linear", "percent": 2, "interval_seconds": 60}, False),
    ({"type": "linear", "percent": 3, "interval_seconds": 60}, True),
    ({"type": "canary", "percent": 1, "interval_seconds": 60}, True),
])
def test_traffic_percent_within_what_ecs_takes(traffic: dict[str, Any], ok: bool) -> None:
    """botocore: LinearConfiguration.stepPercent "multiples of 0.1 from 3.0 to 100.0"; canaryPercent from 0.1."""
    if ok:
        ServiceConfig.model_validate(native_config(traffic))
        return
    with pytest.raises(ValidationError, match="stepPercent"):
        ServiceConfig.model_validate(native_config(traffic))


def test_check_native_needs_the_test_rule_and_the_role() -> None:
    from tasks.core.errors import DeployError
    from tasks.strategies.ecs_native import check_native

    cfg = ServiceConfig.model_validate(native_config({"type": "all-at-once"}))
    full = {"alternateTargetGroupArn": "b", "productionListenerRule": "p", "testListenerRule": "t", "roleArn": "r"}
    for missing in ("testListenerRule", "roleArn"):
        adv = {k: v for k, v in full.items() if k != missing}
        with pytest.raises(DeployError, match=missing):
            check_native({"loadBalancers": [{"advancedConfiguration": adv}]}, cfg)
    check_native({"loadBalancers": [{"advancedConfiguration": full}]}, cfg)
