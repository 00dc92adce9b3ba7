"""kill -9 and lost answers: the next release finds what a dead run left and converges.

The release runs as `python -m flows.cli deploy SERVICE` in its own process
group, killed with SIGKILL (no rollback, no last words) at a point read from
AWS. The rerun runs in-process with the lock's stale time at 5 s (the least
the settings allow: the rerun waits that long for the dead run's heartbeat to
age). Builds, pushes and registrations are counted through ECR's and ECS's APIs.
The task-sets tests share one service, deployed once: each starts from the one
version it serves and leaves it converged on a new one (a first deploy and a
service of its own would add ten seconds to each).
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from flows.pipeline import deploy_service
from harness.faults import (
    PIPELINE_AGENT,
    Load,
    Released,
    add_fault,
    calls_since,
    clear_faults,
    flow_runs,
    green_weight,
    image_count,
    last_request,
    production_listener,
    serving_versions,
    wait_until,
)
from harness.services import ROOT, ServiceUnderTest, seed_serving, set_traffic
from tasks.release.outcome import outcome_of
from tests.test_codedeploy import use_appspec
from tests.test_pipeline import release_artifact

STALE = "5"


@pytest.fixture(autouse=True)
def short_stale_time(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ECS_PIPELINE_LOCK_STALE_SECONDS", STALE)


def deploy(name: str) -> Any:
    return deploy_service(name, return_state=True)


def killed_run(sut: ServiceUnderTest) -> Any:
    """The killed release's flow run, as Prefect shows it after the rerun."""
    runs = flow_runs(sut.name)
    assert len(runs) >= 2
    return runs[-2]


def test_kill_mid_shift_then_rerun_rolls_back_and_finishes(live: tuple[ServiceUnderTest, str], tmp_path: Path) -> None:
    sut, before = live
    set_traffic(sut, {"type": "canary", "percent": 20, "interval_seconds": 900})
    sut.commit("shifted")
    with Load(sut) as load:
        release = Released(sut, tmp_path / "killed.log", ECS_PIPELINE_LOCK_STALE_SECONDS=STALE)
        wait_until(lambda: green_weight(sut) == 20, 180, "production 20% on green")
        release.kill()
        assert green_weight(sut) == 20, "the dead run left production split"
        images, revisions = image_count(sut), sut.revisions()
        # The killed run needed a long 20 % step to be caught in it; the rerun's own canary need not wait 15 s.
        set_traffic(sut, {"type": "canary", "percent": 20, "interval_seconds": 60})
        rerun = deploy(sut.name)
    assert outcome_of(rerun) == "Deployed", rerun.message
    assert rerun.result()["done"] == [], "build, push and register were not repeated"
    assert image_count(sut) == images and sut.revisions() == revisions
    assert load.failed == [], load.failed[:5]
    assert set(load.versions) <= {before, "shifted"}
    assert serving_versions(sut) == {"shifted"}
    assert [ts["status"] for ts in sut.task_sets()] == ["PRIMARY"]
    dead = killed_run(sut)
    assert dead.state.type.value == "CRASHED", dead.state
    assert f"no heartbeat for over {STALE} s" in (dead.state.message or "")
    assert "production was 20% on green, never fully shifted: rolled back to blue" in release_artifact(sut.name)


def test_kill_in_deploy_green_then_a_good_commit_deploys(live: tuple[ServiceUnderTest, str], tmp_path: Path) -> None:
    sut, before = live
    sut.commit("killed-broken", broken="root")
    with Load(sut) as load:
        release = Released(sut, tmp_path / "killed.log", ECS_PIPELINE_LOCK_STALE_SECONDS=STALE)
        wait_until(lambda: len(sut.task_sets()) == 2, 180, "the broken release's green task set")
        release.kill()
        sut.commit("after-kill")
        rerun = deploy(sut.name)
    assert outcome_of(rerun) == "Deployed", rerun.message
    assert load.failed == [], load.failed[:5]
    assert set(load.versions) <= {before, "after-kill"}, "production never answered the broken release"
    assert serving_versions(sut) == {"after-kill"}
    assert [ts["status"] for ts in sut.task_sets()] == ["PRIMARY"], "the dead run's green did not survive"
    assert killed_run(sut).state.type.value == "CRASHED"


def test_lost_create_task_set_answer_leaves_no_twin(live: tuple[ServiceUnderTest, str]) -> None:
    """CreateTaskSet takes effect, then its answer is a 500: the retry (same clientToken) gets the same set."""
    sut, before = live
    sut.commit("lost-broken", broken="root")
    add_fault(service="ecs", operation="CreateTaskSet", code="InternalFailure", status=500, message="lost",
              count=1, after=True, match=sut.name)
    seq = last_request()
    with Load(sut) as load:
        broken = deploy(sut.name)
        assert outcome_of(broken) == "Rolled back", broken.message
        assert calls_since(seq, sut.name)["CreateTaskSet"] == 2, "answered 500 once, then retried"
        assert [ts["status"] for ts in sut.task_sets()] == ["PRIMARY"], "no task set of the broken release left"
        sut.commit("after-lost")
        good = deploy(sut.name)
    assert outcome_of(good) == "Deployed", good.message
    assert load.failed == [], load.failed[:5]
    assert set(load.versions) <= {before, "after-lost"}
    assert serving_versions(sut) == {"after-lost"}
    assert [ts["status"] for ts in sut.task_sets()] == ["PRIMARY"]


def production_weights(sut: ServiceUnderTest) -> list[int]:
    """The production listener's weights, smallest first (CodeDeploy moves them; no task-set view needed)."""
    groups = production_listener(sut)["DefaultActions"][0].get("ForwardConfig", {}).get("TargetGroups", [])
    return sorted(int(g.get("Weight", 0)) for g in groups)


def test_codedeploy_killed_mid_shift_then_rerun_finishes_the_verified_release(
    new_service: Callable[..., ServiceUnderTest], tmp_path: Path
) -> None:
    """Green was verified on the test listener before CodeDeploy moved production: the rerun resumes it."""
    sut = new_service(strategy="codedeploy", traffic={"type": "canary", "percent": 20, "interval_seconds": 900})
    use_appspec(sut, ROOT / "deployments" / "sample-app" / "appspec.yml")
    seed_serving(sut)
    with Load(sut) as load:
        release = Released(sut, tmp_path / "killed.log", ECS_PIPELINE_LOCK_STALE_SECONDS=STALE)
        wait_until(lambda: production_weights(sut) == [20, 80], 180, "production 20% on green")
        release.kill()
        images, revisions = image_count(sut), sut.revisions()
        seq = last_request()
        rerun = deploy(sut.name)
    assert outcome_of(rerun) == "Deployed", rerun.message
    assert rerun.result()["done"] == [], "build, push and register were not repeated"
    assert image_count(sut) == images and sut.revisions() == revisions
    assert calls_since(seq, sut.name)["CreateDeployment"] == 0, "the dead run's deployment was resumed"
    assert load.failed == [], load.failed[:5]
    assert set(load.versions) <= {"seed", "v1"}
    assert serving_versions(sut) == {"v1"}
    assert len(sut.task_sets()) == 1, "CodeDeploy removed blue"
    assert killed_run(sut).state.type.value == "CRASHED"
    # Where CodeDeploy had got to decides how the rerun goes on: it resumes the shift, finishes the
    # termination wait, or (CodeDeploy done by then) says the dead run's release is done.
    summary = release_artifact(sut.name)
    went_on = (", resumed)", "found in flight", "of this commit stopped after production moved")
    assert any(text in summary for text in went_on), summary


def test_rolling_killed_mid_rollout_then_rerun_verifies_production(
    new_service: Callable[..., ServiceUnderTest], tmp_path: Path
) -> None:
    """ECS finishes the dead run's rollout by itself; nobody verified it, so the rerun checks production."""
    sut = new_service(strategy="rolling")
    seed_serving(sut)
    seq = last_request()
    # Every DescribeServices of the release answers a second late: the kill lands inside the rollout wait.
    slow = f"slow-rollout-{sut.name}"
    add_fault(name=slow, rate=1.0, codes=["slow"], slow_seconds=1.0, service="ecs", operation="DescribeServices",
              match=sut.name, agent=PIPELINE_AGENT)
    with Load(sut) as load:
        release = Released(sut, tmp_path / "killed.log", ECS_PIPELINE_LOCK_STALE_SECONDS=STALE)
        wait_until(lambda: calls_since(seq, sut.name)["UpdateService"] == 1, 180, "the rolling update")
        release.kill()
        clear_faults(slow)
        images, revisions = image_count(sut), sut.revisions()
        rerun = deploy(sut.name)
    assert outcome_of(rerun) == "Deployed", rerun.message
    assert rerun.result()["done"] == [], "build, push and register were not repeated"
    assert image_count(sut) == images and sut.revisions() == revisions
    assert calls_since(seq, sut.name)["UpdateService"] == 1, "the dead run's rollout was resumed, not redone"
    assert load.failed == [], load.failed[:5]
    assert serving_versions(sut) == {"v1"}
    assert "of this commit stopped before production was verified: checked again" in release_artifact(sut.name)
    assert "GET /: " in release_artifact(sut.name), "production checked by the rerun"
    assert killed_run(sut).state.type.value == "CRASHED"
