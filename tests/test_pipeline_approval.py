"""approval: required on a real release: the run pauses after verify, before production moves."""

from __future__ import annotations

import threading
import time
from typing import Any

import pytest
from prefect.client.orchestration import get_client
from prefect.client.schemas.filters import (
    FlowRunFilter,
    FlowRunFilterId,
    FlowRunFilterState,
    FlowRunFilterStateType,
    FlowRunFilterTags,
    LogFilter,
    LogFilterFlowRunId,
)
from prefect.client.schemas.objects import StateType

from flows.pipeline import deploy_service
from harness.services import ServiceUnderTest, edit_config
from tasks.release.approval import IN_PROCESS, approve_run
from tasks.release.outcome import outcome_of


def paused_run(service: str, timeout: float = 120) -> Any:
    """The deploy run of SERVICE once it waits for approval."""
    deadline = time.monotonic() + timeout
    with get_client(sync_client=True) as client:
        while time.monotonic() < deadline:
            runs = client.read_flow_runs(
                flow_run_filter=FlowRunFilter(
                    tags=FlowRunFilterTags(all_=[f"service:{service}"]),
                    state=FlowRunFilterState(type=FlowRunFilterStateType(any_=[StateType.PAUSED])),
                )
            )
            if runs:
                return runs[0]
            time.sleep(0.5)
    raise AssertionError(f"no paused deploy run for {service}")


def release_in_background(service: str) -> tuple[threading.Thread, dict[str, Any]]:
    out: dict[str, Any] = {}
    thread = threading.Thread(target=lambda: out.update(state=deploy_service(service, return_state=True)))
    thread.start()
    return thread, out


@pytest.fixture
def gated(released_service: ServiceUnderTest, monkeypatch: pytest.MonkeyPatch) -> ServiceUnderTest:
    """The module's released service (v1 live), its releases from now on requiring approval."""
    monkeypatch.setenv("ECS_PIPELINE_DEPLOYMENTS", str(released_service.yaml_path.parent))
    edit_config(released_service, lambda c: c.__setitem__("approval", "required"))
    return released_service


def test_approved_release_waits_then_goes_live(gated: ServiceUnderTest) -> None:
    sut = gated
    sut.commit("v2")
    second, out = release_in_background(sut.name)
    run = paused_run(sut.name)
    assert len(sut.task_sets()) == 2, "green is up and verified while the release waits"
    assert all("v1" in sut.get("/").text for _ in range(10)), "production has not moved"
    approve_run(run.id, approve=True)
    second.join(180)
    assert outcome_of(out["state"]) == "Deployed", out["state"]
    assert "v2" in sut.get("/").text
    with get_client(sync_client=True) as client:
        tasks = client.read_task_runs(flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=[run.id])))
    assert f"approval {sut.name}" in [t.name for t in tasks], "the approval gate is a node of the release graph"
    assert IN_PROCESS in logged(run.id), "a CLI run says why it waits in its own process"


def test_rejected_release_rolls_back(gated: ServiceUnderTest) -> None:
    sut = gated
    live = "v2" if "v2" in sut.get("/").text else "v1"  # the test above may have been deselected
    sut.commit("v3")
    release, out = release_in_background(sut.name)
    approve_run(paused_run(sut.name).id, approve=False, comment="not on a Friday")
    release.join(180)
    assert outcome_of(out["state"]) == "Rolled back", out["state"]
    assert "Release rejected: not on a Friday" in (out["state"].message or "")
    assert live in sut.get("/").text
    assert [ts["status"] for ts in sut.task_sets()] == ["PRIMARY"]


def logged(run_id: Any, timeout: float = 10) -> list[str]:
    """RUN_ID's log messages, once its last lines have reached the API (they are sent in batches)."""
    deadline = time.monotonic() + timeout
    with get_client(sync_client=True) as client:
        while True:
            logs = client.read_logs(log_filter=LogFilter(flow_run_id=LogFilterFlowRunId(any_=[run_id])), limit=200)
            messages = [entry.message for entry in logs]
            if IN_PROCESS in messages or time.monotonic() > deadline:
                return messages
            time.sleep(0.3)
