"""Five releases under AWS weather: 20 % throttling and 10 % HTTP 500 on every AWS call the pipeline makes.

Two task-sets releases, one CodeDeploy, two rolling; each Deployed with 0 failed
production requests, no orphaned task set and one version serving.

A throttle or a 5xx is what a busy real account answers; with the pipeline's one
retry policy (botocore standard mode, 10 attempts per call; no stage repeats an
AWS fault) none of it may become a rollback or a failure. Production is under
steady load throughout.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from flows.pipeline import deploy_service
from harness.faults import Load, serving_versions, weather, weather_hits
from harness.services import ROOT, ServiceUnderTest, aws, make_service, seed_serving
from tasks.release.outcome import outcome_of
from tests.test_codedeploy import use_appspec


def deploy(name: str) -> Any:
    return deploy_service(name, return_state=True)


def released_under_weather(sut: ServiceUnderTest, version: str, seed: int) -> tuple[Any, Load, int]:
    name = f"weather-{sut.name}-{seed}"
    with Load(sut) as load, weather(name, seed):
        state = deploy(sut.name)
        hits = weather_hits(name)
    return state, load, hits


def assert_clean(sut: ServiceUnderTest, state: Any, load: Load, version: str, hits: int) -> None:
    assert outcome_of(state) == "Deployed", state.message
    assert hits > 0, "the weather hit some of the pipeline's calls"
    assert load.ok > 0 and load.failed == [], load.failed[:5]
    assert serving_versions(sut) == {version}, "one version serving"


def test_task_sets_releases_ride_out_the_weather(new_service: Callable[..., ServiceUnderTest]) -> None:
    sut = new_service(traffic={"type": "linear", "percent": 50, "interval_seconds": 60})
    assert outcome_of(deploy(sut.name)) == "Deployed"
    for seed, version in ((11, "v2"), (12, "v3")):
        sut.commit(version)
        state, load, hits = released_under_weather(sut, version, seed)
        assert_clean(sut, state, load, version, hits)
        assert [ts["status"] for ts in sut.task_sets()] == ["PRIMARY"], "no orphaned task set"
        assert set(load.versions) <= {version, f"v{int(version[1:]) - 1}"}


def test_codedeploy_and_rolling_releases_ride_out_the_weather(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("ECS_PIPELINE_ARTIFACTS_DIR", str(tmp_path / "artifacts"))
    cd = make_service(tmp_path / "cd", strategy="codedeploy")
    use_appspec(cd, ROOT / "deployments" / "sample-app" / "appspec.yml")
    rolling = make_service(tmp_path / "rolling", strategy="rolling")
    try:
        seed_serving(cd)
        seed_serving(rolling)
        monkeypatch.setenv("ECS_PIPELINE_DEPLOYMENTS", str(cd.yaml_path.parent))
        state, load, hits = released_under_weather(cd, "v1", 21)
        assert_clean(cd, state, load, "v1", hits)
        assert len(cd.task_sets()) == 1, "CodeDeploy removed the original task set"

        monkeypatch.setenv("ECS_PIPELINE_DEPLOYMENTS", str(rolling.yaml_path.parent))
        for seed, version in ((22, "v1"), (23, "v2")):  # the fifth release: rolling is the cheapest
            if version != "v1":
                rolling.commit(version)
            state, load, hits = released_under_weather(rolling, version, seed)
            assert_clean(rolling, state, load, version, hits)
            ecs = aws("ecs")
            svc = ecs.describe_services(cluster=rolling.cfg.ecs.cluster, services=[rolling.name])["services"][0]
            assert [(d["status"], d["rolloutState"]) for d in svc["deployments"]] == [("PRIMARY", "COMPLETED")]
    finally:
        cd.cleanup()
        rolling.cleanup()
