"""strategy: rolling end to end: UpdateService on an ECS-controller service with the circuit breaker.

The tests share one seeded service: each reads the revision and version it finds live first.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from flows.pipeline import deploy_service
from harness.faults import control, last_request, serving_versions
from harness.services import ServiceUnderTest, aws, make_service, seed_serving
from tasks.release.outcome import outcome_of
from tests.test_codedeploy import watching


@pytest.fixture(scope="module")
def seeded(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServiceUnderTest]:
    """One rolling service for the module (a service and its seed cost ~5 s): each test leaves one revision live."""
    sut = make_service(tmp_path_factory.mktemp("rolling"), strategy="rolling", desired_count=1)
    seed_serving(sut)
    yield sut
    sut.cleanup()


@pytest.fixture
def rolling(seeded: ServiceUnderTest, monkeypatch: pytest.MonkeyPatch) -> ServiceUnderTest:
    monkeypatch.setenv("ECS_PIPELINE_DEPLOYMENTS", str(seeded.yaml_path.parent))
    monkeypatch.setenv("ECS_PIPELINE_ARTIFACTS_DIR", str(artifacts(seeded)))
    return seeded


def artifacts(sut: ServiceUnderTest) -> Path:
    return sut.yaml_path.parent.parent / "artifacts"


def service(sut: ServiceUnderTest) -> dict[str, Any]:
    cfg = sut.cfg
    found = aws("ecs").describe_services(cluster=cfg.ecs.cluster, services=[cfg.ecs.service])
    return dict(found["services"][0])


def test_rolling_release_completes(rolling: ServiceUnderTest) -> None:
    live_td = service(rolling)["taskDefinition"]
    rolling.commit("rolled")
    seq = last_request()
    with watching(rolling) as seen:
        state = deploy_service(rolling.name, return_state=True)
    assert outcome_of(state) == "Deployed", state.message
    # Read once, passed along: one DescribeServices before UpdateService (the rollout's looks come after),
    # one DescribeTaskDefinition (the live revision is the family's latest, which register compares with).
    ops = [r["operation"] for r in control("GET", f"/_sandbox/requests?since={seq}&match={rolling.name}")["requests"]]
    assert ops.count("UpdateService") == 1, ops
    assert ops[: ops.index("UpdateService")].count("DescribeServices") == 1, ops
    assert ops.count("DescribeTaskDefinition") == 1, ops
    td = state.result()["task_definition"]
    svc = service(rolling)
    (primary,) = svc["deployments"]
    assert (primary["status"], primary["rolloutState"], primary["taskDefinition"]) == ("PRIMARY", "COMPLETED", td)
    assert svc["taskDefinition"] == td != live_td
    assert all("sample-app rolled" in rolling.get("/").text for _ in range(5))
    assert seen and all(s.startswith("200 ") for s in seen), "no failed request during the rollout"
    # CodePipeline's hand-over files for the image this run deployed.
    image = aws("ecs").describe_task_definition(taskDefinition=td)["taskDefinition"]["containerDefinitions"][0]["image"]
    out = artifacts(rolling) / rolling.name
    assert json.loads((out / "imagedefinitions.json").read_text()) == [{"name": "web", "imageUri": image}]
    assert json.loads((out / "imageDetail.json").read_text()) == {"ImageURI": image}

    again = deploy_service(rolling.name, return_state=True)
    assert outcome_of(again) == "No change"


def test_circuit_breaker_fails_the_run_and_the_previous_revision_serves(rolling: ServiceUnderTest) -> None:
    live_td = service(rolling)["taskDefinition"]
    (before,) = serving_versions(rolling)
    rolling.commit("v2-sick", broken="health")
    with watching(rolling) as seen:
        state = deploy_service(rolling.name, return_state=True)
    assert state.is_failed() and outcome_of(state) == "Rolled back", state.message
    message = state.message or ""
    assert message.startswith("Rolled back: ECS rollout failed: ECS deployment circuit breaker: tasks failed to start.")
    assert "task(s) stopped: Task failed ELB health checks" in message
    svc = service(rolling)
    primary = next(d for d in svc["deployments"] if d["status"] == "PRIMARY")
    assert (primary["taskDefinition"], primary["rolloutState"]) == (live_td, "COMPLETED")
    assert svc["taskDefinition"] == live_td
    assert seen and all(s == f"200 sample-app {before}: hello from ecs-pipeline" for s in seen)


def test_failed_production_check_rolls_back_by_update_service(rolling: ServiceUnderTest) -> None:
    live_td = service(rolling)["taskDefinition"]
    (before,) = serving_versions(rolling)
    rolling.commit("v2-500", broken="root")  # healthy for the load balancer, / answers 500
    state = deploy_service(rolling.name, return_state=True)
    assert outcome_of(state) == "Rolled back", state.message
    assert (state.message or "").startswith("Rolled back: GET / failed verification: returned 500 on ")
    svc = service(rolling)
    (primary,) = [d for d in svc["deployments"] if d["status"] == "PRIMARY"]
    assert (primary["taskDefinition"], primary["rolloutState"]) == (live_td, "COMPLETED")
    assert serving_versions(rolling, 5) == {before}
