"""`ecs-pipeline rollback SERVICE`: under the service's lock, through the release skeleton's own rollback.

A release that holds the service (here: paused at its approval gate, green up
and verified) is waited for a bounded time, then the rollback refuses and
names it; the listeners never move under it. A release left half-way by a
killed run (green up, production split) goes back the way a failing release
does: 100 % on blue, green removed, with the rolled-back outcome, event and
live view.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from prefect.client.orchestration import get_client
from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterName

from flows.cli import main
from harness.faults import Released, event_payloads, flow_runs, green_weight, serving_versions, wait_until
from harness.services import ServiceUnderTest, aws, edit_config, seed_serving, set_traffic
from tasks.release.approval import approve_run
from tasks.release.live_view import read_live
from tasks.release.outcome import outcome_of, release_name
from tests.test_pipeline import release_artifact
from tests.test_pipeline_approval import paused_run, release_in_background

# Short, so a killed holder is found dead quickly; not shorter: a live holder heartbeats every stale/6 s
# through the Prefect server, and on a loaded machine (a full suite beside a demo) a 5 s limit once let a
# paused, live release look dead.
STALE = "10"


@pytest.fixture(autouse=True)
def short_stale_time(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ECS_PIPELINE_LOCK_STALE_SECONDS", STALE)


def rollback(capsys: pytest.CaptureFixture[str], service: str, *flags: str) -> tuple[int, str, float]:
    """Exit code, the run's outcome line the command printed, and how long it took."""
    started = time.monotonic()
    code = main(["rollback", service, *flags])
    took = time.monotonic() - started
    return code, capsys.readouterr().out.strip(), took


def listeners(sut: ServiceUnderTest) -> dict[int, Any]:
    """Every listener's forward action (production's and the test listener's), by port."""
    elbv2 = aws("elbv2")
    lb = elbv2.describe_load_balancers(Names=[f"{sut.name}-alb"])["LoadBalancers"][0]
    found = elbv2.describe_listeners(LoadBalancerArn=lb["LoadBalancerArn"])["Listeners"]
    return {x["Port"]: x["DefaultActions"] for x in found}


def task_sets(sut: ServiceUnderTest) -> list[tuple[str, str, str]]:
    return sorted((ts["taskSetArn"], ts["status"], ts["taskDefinition"]) for ts in sut.task_sets())


def refused_while_paused(sut: ServiceUnderTest, capsys: pytest.CaptureFixture[str]) -> tuple[Any, Any]:
    """The release paused at its gate holds the service: rollback waits 3 s, refuses, and nothing moved.

    Returns the paused release's thread and its output (the caller answers the gate).
    """
    thread, out = release_in_background(sut.name)
    run = paused_run(sut.name, timeout=240)
    before_listeners, before_sets = listeners(sut), task_sets(sut)
    code, printed, took = rollback(capsys, sut.name, "--wait", "3")
    assert code == 1, printed
    assert took >= 3, "it waited for the release before refusing"
    assert (f"Failed: run '{run.name}' ({run.id}) holds the deploy slot of {sut.name}; "
            "waited 3 s for it and changed nothing; run the rollback again once it ends") in printed, printed
    assert listeners(sut) == before_listeners, "no listener moved under the running release"
    assert task_sets(sut) == before_sets
    with get_client(sync_client=True) as client:
        assert client.read_flow_run(run.id).state.type.value == "PAUSED", "the release still waits at its gate"
    return thread, out


def test_rollback_refuses_while_a_task_set_release_holds_the_service(
    live: tuple[ServiceUnderTest, str], capsys: pytest.CaptureFixture[str]
) -> None:
    sut, before = live
    edit_config(sut, lambda c: c.__setitem__("approval", "required"))
    try:
        sut.commit("held")
        thread, out = refused_while_paused(sut, capsys)
        assert len(sut.task_sets()) == 2, "green stays up for the release that holds the service"
        assert serving_versions(sut) == {before}
        approve_run(paused_run(sut.name).id, approve=False, comment="rollback test")
        thread.join(180)
    finally:
        edit_config(sut, lambda c: c.__setitem__("approval", "none"))
    assert outcome_of(out["state"]) == "Rolled back", out["state"].message
    assert [ts["status"] for ts in sut.task_sets()] == ["PRIMARY"]


def test_rollback_refuses_while_a_codedeploy_release_holds_the_service(
    new_service: Callable[..., ServiceUnderTest], capsys: pytest.CaptureFixture[str]
) -> None:
    sut = new_service(strategy="codedeploy", approval="required")
    seed_serving(sut)
    cfg, cd = sut.cfg, aws("codedeploy")
    thread, out = refused_while_paused(sut, capsys)
    (dep_id,) = cd.list_deployments(applicationName=cfg.codedeploy_application,
                                    deploymentGroupName=cfg.codedeploy_group)["deployments"]
    assert cd.get_deployment(deploymentId=dep_id)["deploymentInfo"]["status"] in ("Ready", "InProgress"), \
        "the rollback did not stop the release's CodeDeploy deployment"
    assert all("sample-app seed" in sut.get("/").text for _ in range(5)), "production stays on blue"
    approve_run(paused_run(sut.name).id, approve=False, comment="rollback test")
    thread.join(240)
    assert outcome_of(out["state"]) == "Rolled back", out["state"].message


def rollback_runs(service: str) -> list[Any]:
    """The service's rollback runs, oldest first (a finished one's name carries its verdict after the name)."""
    name = f"rollback {service}"
    with get_client(sync_client=True) as client:
        runs = client.read_flow_runs(flow_run_filter=FlowRunFilter(name=FlowRunFilterName(like_=name)))
    return sorted((r for r in runs if release_name(r.name) == name), key=lambda r: r.created)


def test_rollback_of_a_half_way_task_set_release_ends_on_blue_under_the_lock(
    live: tuple[ServiceUnderTest, str], capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    sut, before = live
    set_traffic(sut, {"type": "canary", "percent": 20, "interval_seconds": 900})
    sha = sut.commit("half-way")
    release = Released(sut, tmp_path / "killed.log", ECS_PIPELINE_LOCK_STALE_SECONDS=STALE)
    wait_until(lambda: green_weight(sut) == 20, 180, "production 20% on green")
    release.kill()
    assert green_weight(sut) == 20 and len(sut.task_sets()) == 2, "the dead run left green up and production split"
    (blue,) = [ts for ts in sut.task_sets() if ts["status"] == "PRIMARY"]

    code, printed, _ = rollback(capsys, sut.name)

    assert code == 0, printed
    assert printed.startswith(f"Rolled back: asked for by `ecs-pipeline rollback {sut.name}` while task set(s) "), \
        printed
    assert f"ran beside the primary, production 20% {sut.name}-" in printed and f"/ 80% {sut.name}-" in printed, \
        printed
    on_blue = f"production on blue [{blue['loadBalancers'][0]['targetGroupArn'].split('/')[1]}]"  # its name
    assert printed.endswith(f"({on_blue}, live {live_sha(sut)[:7]})"), printed
    assert green_weight(sut) == 0
    assert [(ts["taskSetArn"], ts["status"]) for ts in sut.task_sets()] == [(blue["taskSetArn"], "PRIMARY")], \
        "the green task set is removed, blue is untouched"
    assert serving_versions(sut) == {before}
    # Under the lock: the rollback waited for the dead run's heartbeat to age and took its slot.
    dead = flow_runs(sut.name)[-1]
    assert dead.state.type.value == "CRASHED" and f"no heartbeat for over {STALE} s" in (dead.state.message or "")
    run = rollback_runs(sut.name)[-1]  # an earlier test's refused rollback of this service is listed too
    assert outcome_of(run.state) == "Rolled back" and f"service:{sut.name}" in run.tags, run
    # The same outcome a failing release publishes: summary, rolled-back event, live view.
    summary = release_artifact(sut.name)
    assert f"# {sut.name}@{sha[:7]}: Rolled back" in summary and "| roll back |" in summary
    assert f"| Production traffic | {on_blue} |" in summary
    wait_until(lambda: [e for e in event_payloads(sut.name, "rolled-back")
                        if e["sha"] == sha and "ecs-pipeline rollback" in e["reason"] and e["traffic"] == on_blue],
               30, "the rolled-back event, naming blue's target group")
    record = read_live(sut.name)
    assert record is not None and record.traffic == "100% of production"
    assert record.target_group == on_blue.split("[")[1].rstrip("]"), "the fleet view names blue's target group"
    assert record.last_failure is not None and record.last_failure.outcome == "Rolled back"


def live_sha(sut: ServiceUnderTest) -> str:
    record = read_live(sut.name)
    assert record is not None and record.sha
    return record.sha
