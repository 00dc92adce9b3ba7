"""Cancellation and a rollback that cannot finish: production ends on one version and the run says where.

The release runs as `python -m flows.cli deploy SERVICE` (a worker's process);
it is cancelled from the Prefect API as the UI or `prefect flow-run cancel` does.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

from flows.pipeline import deploy_service
from harness.faults import (
    Load,
    Released,
    add_fault,
    cancel,
    clear_faults,
    event_payloads,
    flow_runs,
    green_weight,
    run_state,
    serving_versions,
    wait_until,
)
from harness.services import ROOT, ServiceUnderTest, seed_serving, set_traffic
from tasks.release.outcome import outcome_of
from tests.test_codedeploy import use_appspec
from tests.test_kills import production_weights
from tests.test_pipeline import release_artifact

# 15 s at 20 % (time scale 60): long enough to catch the release there on a busy machine.
CANARY = {"type": "canary", "percent": 20, "interval_seconds": 900}
SHORT_CANARY = {"type": "canary", "percent": 20, "interval_seconds": 60}


def deploy(name: str) -> Any:
    return deploy_service(name, return_state=True)


def started_mid_shift(sut: ServiceUnderTest, log: Path) -> tuple[Released, Any]:
    """A v2 release in its own process, held at production 20 % on green; and its flow run."""
    release = Released(sut, log)
    wait_until(lambda: green_weight(sut) == 20, 180, "production 20% on green")
    return release, flow_runs(sut.name)[-1]


def assert_cancelled_on_blue(run_id: Any, release: Released, why: str) -> None:
    state = run_state(run_id)
    assert state.type.value == "CANCELLED", release.output()[-2000:]
    assert f"cancelled ({why})" in (state.message or "")
    assert "production on blue" in (state.message or "")


def test_cancel_mid_shift_rolls_back_to_blue(new_service: Callable[..., ServiceUnderTest], tmp_path: Path) -> None:
    sut = new_service(traffic=CANARY)
    assert outcome_of(deploy(sut.name)) == "Deployed"
    sut.commit("v2")
    with Load(sut) as load:
        release, run = started_mid_shift(sut, tmp_path / "release.log")
        cancel(run.id, "operator: wrong commit")
        release.proc.wait(120)
    assert_cancelled_on_blue(run.id, release, "operator: wrong commit")
    assert green_weight(sut) == 0 and [ts["status"] for ts in sut.task_sets()] == ["PRIMARY"]
    assert serving_versions(sut) == {"v1"}
    assert load.failed == [], load.failed[:5]
    cancelled = event_payloads(sut.name, "cancelled")
    assert "operator: wrong commit" in cancelled[0]["reason"]


def test_cancel_mid_shift_of_a_codedeploy_release_stops_it_back_on_blue(
    new_service: Callable[..., ServiceUnderTest], tmp_path: Path
) -> None:
    sut = new_service(strategy="codedeploy", traffic=CANARY)
    use_appspec(sut, ROOT / "deployments" / "sample-app" / "appspec.yml")
    seed_serving(sut)
    blue = [(ts["taskSetArn"], ts["taskDefinition"]) for ts in sut.task_sets()]
    with Load(sut) as load:
        release = Released(sut, tmp_path / "release.log")
        wait_until(lambda: production_weights(sut) == [20, 80], 180, "production 20% on green")
        run = flow_runs(sut.name)[-1]
        cancel(run.id, "operator: wrong commit")
        release.proc.wait(120)
    assert_cancelled_on_blue(run.id, release, "operator: wrong commit")
    assert green_weight(sut) == 0, "production 100% on blue's target group"
    assert [(ts["taskSetArn"], ts["taskDefinition"]) for ts in sut.task_sets()] == blue, "green removed"
    assert serving_versions(sut) == {"seed"}
    assert load.failed == [], load.failed[:5]
    cancelled = event_payloads(sut.name, "cancelled")
    assert "operator: wrong commit" in cancelled[0]["reason"]


def test_failed_rollback_names_the_split_and_the_next_run_repairs_it(
    new_service: Callable[..., ServiceUnderTest], tmp_path: Path
) -> None:
    sut = new_service(traffic=CANARY)
    assert outcome_of(deploy(sut.name)) == "Deployed"
    sut.commit("v2")
    fault = f"deny-listener-{sut.name}"
    with Load(sut) as load:
        release, run = started_mid_shift(sut, tmp_path / "release.log")
        # Someone removed the pipeline's elasticloadbalancing:ModifyListener permission mid-release.
        add_fault(name=fault, service="elbv2", operation="ModifyListener", code="AccessDenied", status=403,
                  message="not authorized to perform: elasticloadbalancing:ModifyListener", count=100,
                  match=f"{sut.name}-alb")
        cancel(run.id, "operator: stop it")
        release.proc.wait(120)
        state = run_state(run.id)
        # Prefect ends a cancelled run only as Cancelled: its name says the rollback failed.
        assert (state.type.value, outcome_of(state)) == ("CANCELLED", "Rollback failed"), release.output()[-2000:]
        message = state.message or ""
        assert message.startswith("Rollback failed: Aborted: cancelled (operator: stop it)"), message
        assert "then the rollback failed: AWS denied elasticloadbalancing:ModifyListener" in message, message
        assert "production split " in message, message
        assert f"20% {sut.name}-b" in message and f"80% {sut.name}-a" in message, message
        assert green_weight(sut) == 20, "the split is still there, as reported"
        failed = event_payloads(sut.name, "rollback-failed")
        assert failed[0]["traffic"] in message
        assert "Rollback failed" in release_artifact(sut.name)

        clear_faults(fault)
        set_traffic(sut, SHORT_CANARY)  # the repair is under test, not a 15 s step of its own canary
        rerun = deploy(sut.name)
    assert outcome_of(rerun) == "Deployed", rerun.message
    assert "production was 20% on green, never fully shifted: rolled back to blue" in release_artifact(sut.name)
    assert serving_versions(sut) == {"v2"}
    assert [ts["status"] for ts in sut.task_sets()] == ["PRIMARY"]
    assert load.failed == [], load.failed[:5]
