"""strategy: ecs-native when things go wrong: an alarm in a canary step, a run killed at the pause.

Apart from tests/test_ecs_native.py so xdist (--dist loadfile) can give these
releases to another worker. What ECS itself does on alarms, the circuit breaker
and hook timeouts is covered, in seconds, by tests/sandbox/test_emulation_native.py;
here the point is the pipeline's reaction: the run's outcome and message, and
what a rerun does with the deployment a dead run left.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from flows.pipeline import deploy_service
from harness.faults import Released, flow_runs, wait_until
from harness.services import ServiceUnderTest, aws, edit_config, make_service, seed_serving, set_checks
from tasks.release.outcome import outcome_of
from tests.test_codedeploy import watching
from tests.test_ecs_native import deployments
from tests.test_pipeline import release_artifact

STALE = "5"  # the least the settings allow: the rerun waits this long for the dead heartbeat


def native(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, traffic: dict[str, Any],
           **kwargs: Any) -> ServiceUnderTest:
    monkeypatch.setenv("ECS_PIPELINE_DEPLOYMENTS", str(tmp_path / "deployments"))
    monkeypatch.setenv("ECS_PIPELINE_ARTIFACTS_DIR", str(tmp_path / "artifacts"))
    sut = make_service(tmp_path, strategy="ecs-native", traffic=traffic, **kwargs)
    seed_serving(sut)
    return sut


def edit(sut: ServiceUnderTest, section: str, **fields: Any) -> None:
    edit_config(sut, lambda c: c[section].update(fields))


def test_alarm_during_a_canary_step_rolls_back_with_ecs_reason(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    sut = native(tmp_path, monkeypatch, {"type": "canary", "percent": 50, "interval_seconds": 3600},
                 verify_paths=("/health",))
    sut.commit("v2-500", broken="root")  # passes the checks at the pause (/health), fails users (/)
    with watching(sut) as seen:
        state = deploy_service(sut.name, return_state=True)
    assert outcome_of(state) == "Rolled back", state.message
    message = state.message or ""
    assert f"{sut.name}-5xx" in message, message
    # ECS rolls back on the alarm, or the pipeline's own watch sees it first and asks ECS to: ECS's words follow
    assert "Service deployment rolled back because alarm(s)" in message or (
        "alarm in ALARM during PRODUCTION_TRAFFIC_SHIFT" in message
        and "ECS: Service deployment rolled back by a StopServiceDeployment request" in message), message
    assert any(s.startswith("500 ") for s in seen), "the canary did take production traffic"
    newest = deployments(sut)[0]
    assert newest["status"] == "ROLLBACK_SUCCESSFUL"
    assert newest["targetServiceRevision"]["requestedProductionTrafficWeight"] == 0.0
    assert all("sample-app seed" in sut.get("/").text for _ in range(10)), "production back on blue"


def test_a_rerun_resumes_the_deployment_a_killed_run_left(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ECS_PIPELINE_LOCK_STALE_SECONDS", STALE)
    sut = native(tmp_path, monkeypatch, {"type": "all-at-once"}, verify_paths=("/health",))
    # the checks at the pause take a few seconds (a window to kill the run in) and ECS's pause outlasts the kill
    edit(sut, "strategy", pause_timeout_seconds=86400)
    set_checks(sut, consecutive=10, attempts=20, interval_seconds=0.5)
    cfg, ecs = sut.cfg, aws("ecs")
    sut.commit("v2")
    release = Released(sut, tmp_path / "killed.log", ECS_PIPELINE_LOCK_STALE_SECONDS=STALE)
    paused = wait_until(lambda: (d := deployments(sut)) and len(d) == 2 and d[0].get("lifecycleHookDetails") and d,
                        180, "the killed run's service deployment at the pause")
    release.kill()
    arn = paused[0]["serviceDeploymentArn"]
    assert paused[0]["status"] == "IN_PROGRESS" and paused[0]["lifecycleStage"] == "POST_TEST_TRAFFIC_SHIFT"
    revisions = sut.revisions()
    # Slow checks made the window to kill the run in; the rerun's checks need not take five seconds.
    set_checks(sut, consecutive=2, attempts=10, interval_seconds=0.1)
    with watching(sut) as seen:
        rerun = deploy_service(sut.name, return_state=True)
    assert outcome_of(rerun) == "Deployed", rerun.message
    listed = ecs.list_service_deployments(cluster=cfg.ecs.cluster, service=cfg.ecs.service)["serviceDeployments"]
    assert [d["serviceDeploymentArn"] for d in listed][:1] == [arn] and len(listed) == 2, "the seed's and one more"
    assert [d["status"] for d in listed] == ["SUCCESSFUL", "SUCCESSFUL"]
    assert ecs.list_task_definitions(familyPrefix=sut.name)["taskDefinitionArns"] == revisions
    assert len(revisions) == 2, "the seed's revision and one more"
    assert seen and all(s.startswith("200 ") for s in seen), "no failed production request"
    assert "sample-app v2" in sut.get("/").text
    # the deployment's id as code: the sandbox's endpoint has no AWS console to link to
    assert f"`{arn.rsplit('/', 1)[-1]}` (resumed)" in release_artifact(sut.name)
    assert flow_runs(sut.name)[-2].state.type.value == "CRASHED"
