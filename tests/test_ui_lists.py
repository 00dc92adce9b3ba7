"""What the operator sees in the Prefect UI, checked through the API with the filters the UI sends.

Prefect 3.9's UI asks for built-in state *names*: the deployment page's default
"All except scheduled" filter lists every built-in name but Scheduled, and the
Runs page's "Failed" filter asks for the name "Failed" (its state select,
``state-name-select``). A run in a custom-named state is in neither list.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from prefect.client.orchestration import get_client
from prefect.client.schemas.filters import (
    ArtifactFilter,
    ArtifactFilterKey,
    DeploymentFilter,
    DeploymentFilterId,
    FlowRunFilter,
    FlowRunFilterId,
    FlowRunFilterState,
    FlowRunFilterStateName,
    FlowRunFilterStateType,
    LogFilter,
    LogFilterFlowRunId,
)
from prefect.client.schemas.objects import StateType
from prefect.client.schemas.sorting import ArtifactSort
from prefect.deployments import run_deployment
from prefect.exceptions import ObjectNotFound

from flows.pipeline import deploy_service
from flows.runner import serving_status
from flows.serve import DEPLOY_SERVICE
from harness.browser import in_first_viewport, ui_page, ui_url
from harness.git import git
from harness.services import ROOT, ServiceUnderTest
from tasks.release.outcome import outcome_of

# The UI's state names (prefect-ui-library's list), in its order.
UI_STATE_NAMES = [
    "Scheduled", "Late", "Resuming", "AwaitingRetry", "AwaitingConcurrencySlot", "Pending", "Paused",
    "Suspended", "Running", "Retrying", "Completed", "Cached", "Cancelled", "Cancelling", "Crashed",
    "Failed", "TimedOut",
]  # fmt: skip
ALL_EXCEPT_SCHEDULED = [n for n in UI_STATE_NAMES if n != "Scheduled"]
# The V2 UI's deployment page ("Switch to V2 UI") asks for state types instead.
V2_ALL_EXCEPT_SCHEDULED = [StateType(t) for t in (
    "COMPLETED", "RUNNING", "PENDING", "FAILED", "CANCELLED", "CANCELLING", "CRASHED", "PAUSED")]


class Serve:
    """`ecs-pipeline serve` in its own process group, stopped by the test when it wants."""

    def __init__(self, sut: ServiceUnderTest, log: Path) -> None:
        env = {**os.environ, "ECS_PIPELINE_DEPLOYMENTS": str(sut.yaml_path.parent),
               "PREFECT_RUNNER_POLL_FREQUENCY": "1"}
        self.log = log
        self.proc = subprocess.Popen([sys.executable, "-m", "flows.cli", "serve"], cwd=ROOT, env=env,
                                     stdout=log.open("wb"), stderr=subprocess.STDOUT, start_new_session=True)

    def wait_registered(self) -> None:
        with get_client(sync_client=True) as client:
            deadline = time.monotonic() + 90
            while True:
                try:
                    client.read_deployment_by_name(DEPLOY_SERVICE)
                    return
                except ObjectNotFound:
                    assert time.monotonic() < deadline, self.log.read_text()
                    time.sleep(0.5)

    def stop(self) -> None:
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGTERM)
            self.proc.wait(60)


@pytest.fixture
def served(tmp_path: Path, new_service: Callable[..., ServiceUnderTest]) -> Iterator[tuple[ServiceUnderTest, Serve]]:
    sut = new_service()
    server = Serve(sut, tmp_path / "serve.log")
    try:
        server.wait_registered()
        yield sut, server
    finally:
        server.stop()


def deployment_page_runs(deployment_id: Any, v2: bool = False) -> dict[Any, Any]:
    """POST /flow_runs/filter as the deployment page's default list sends it (V2: the V2 UI's)."""
    state = (
        FlowRunFilterState(type=FlowRunFilterStateType(any_=V2_ALL_EXCEPT_SCHEDULED))
        if v2 else FlowRunFilterState(name=FlowRunFilterStateName(any_=ALL_EXCEPT_SCHEDULED))
    )
    with get_client(sync_client=True) as client:
        runs = client.read_flow_runs(
            deployment_filter=DeploymentFilter(id=DeploymentFilterId(any_=[deployment_id])),
            flow_run_filter=FlowRunFilter(state=state),
        )
    return {r.id: r for r in runs}


def runs_named(names: list[str], ids: list[Any]) -> set[Any]:
    """The Runs page with its state filter set to NAMES (restricted to this test's runs)."""
    with get_client(sync_client=True) as client:
        runs = client.read_flow_runs(
            flow_run_filter=FlowRunFilter(state=FlowRunFilterState(name=FlowRunFilterStateName(any_=names)))
        )
    return {r.id for r in runs} & set(ids)


def engine_tracebacks(run_id: Any) -> list[str]:
    with get_client(sync_client=True) as client:
        logs = client.read_logs(log_filter=LogFilter(flow_run_id=LogFilterFlowRunId(any_=[run_id])))
    return [log.message for log in logs if "Engine execution exited" in log.message or "Traceback" in log.message]


def runs_list(ids: list[Any]) -> dict[Any, tuple[str, str | None, str, str]]:
    """The Runs page's rows as the UI reads them (POST /flow_runs/filter): name, state, its message, first tag."""
    with get_client(sync_client=True) as client:
        runs = client.read_flow_runs(flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=ids)))
    return {r.id: (r.name, r.state_name, (r.state.message or "") if r.state else "", r.tags[0]) for r in runs}


def latest_live_view(service: str) -> str:
    with get_client(sync_client=True) as client:
        found = client.read_artifacts(
            artifact_filter=ArtifactFilter(key=ArtifactFilterKey(any_=[f"{service}-live"])),
            sort=ArtifactSort.CREATED_DESC,
            limit=1,
        )
    return str(found[0].data) if found else ""


def test_every_release_is_listed_and_a_rollback_shows_under_failed(
    served: tuple[ServiceUnderTest, Serve],
) -> None:
    sut, server = served
    params = {"service": sut.name}
    sha1 = git(sut.repo, "rev-parse", "HEAD")
    deployed = run_deployment(DEPLOY_SERVICE, parameters=params, timeout=300)
    broken = sut.commit("v2", broken="root")
    # sha null, as a caller may send it: the parameter's schema is typed for the UI and still takes null
    rolled_back = run_deployment(DEPLOY_SERVICE, parameters={**params, "sha": None}, timeout=300)
    unchanged = run_deployment(DEPLOY_SERVICE, parameters={**params, "sha": sha1[:12]}, timeout=300,
                               poll_interval=0.2)
    # At once: a run's process is still tracked for a second after its final state, which is when
    # Prefect's own runner cancelled it ("Runner is shutting down") on the way out.
    server.stop()
    runs = [deployed, rolled_back, unchanged]
    outcomes = ["Deployed", "Rolled back", "No change"]
    assert [outcome_of(r.state) for r in runs] == outcomes, [r.state for r in runs]
    assert rolled_back.state is not None and rolled_back.state.message is not None
    assert rolled_back.state.message.startswith("Rolled back: GET / failed verification: returned 500")
    assert deployed.name == f"deploy {sut.name}@{sha1[:7]} · deployed", "the runs list shows the verdict"
    assert unchanged.name == f"deploy {sut.name}@{sha1[:7]} · no change"
    assert rolled_back.tags[0] == "verdict:rolled-back" and deployed.tags[0] == "verdict:deployed"
    assert unchanged.tags[0] == "verdict:no-change", "stored first: the V2 UI's lists show a run's first tags"

    listed = deployment_page_runs(deployed.deployment_id)
    assert {r.id for r in runs} <= set(listed), "the deployment page's default filter lists every release"
    assert {r.id for r in runs} <= set(deployment_page_runs(deployed.deployment_id, v2=True))
    assert runs_named(["Failed"], [r.id for r in runs]) == {rolled_back.id}
    assert runs_named(["Completed"], [r.id for r in runs]) == {deployed.id, unchanged.id}
    assert engine_tracebacks(rolled_back.id) == []

    live = latest_live_view(sut.name)
    assert live.startswith(f"# {sut.name}: `{sha1[:7]}` is live"), live
    assert f"`{broken[:7]}` Rolled back" in live and "GET / failed verification" in live
    (primary,) = sut.task_sets()
    blue = primary["loadBalancers"][0]["targetGroupArn"].split("/")[1]  # targetgroup/<name>/<id>
    assert f"| Production traffic | 100% blue [{blue}] |" in live, "blue (the live release) serves it all"

    with get_client(sync_client=True) as client:
        after = [client.read_flow_run(r.id).state for r in runs]
    assert [outcome_of(s) for s in after] == outcomes, "stopping serve leaves finished runs as they ended"
    with get_client(sync_client=True) as client:
        description = client.read_deployment_by_name(DEPLOY_SERVICE).description or ""
    assert "**Not served since" in description and "a Run or a Retry waits" in description, description
    assert serving_status(DEPLOY_SERVICE).startswith(DEPLOY_SERVICE)
    assert "Who starts it: pushes" in description and "**Not Ready**" in description, description

    with get_client(sync_client=True) as client:
        schema = client.read_deployment_by_name(DEPLOY_SERVICE).parameter_openapi_schema or {}
    shown = {k: (p.get("type"), bool(p.get("description"))) for k, p in schema["properties"].items()}
    assert shown == {"service": ("string", True), "sha": ("string", True), "force": ("boolean", True),
                     "allow_older": ("boolean", True), "task_definition": ("string", True)}, (
        "the parameter table's Type column, the run form's help")

    # A failed build is red "Failed" too (a built-in state): the runs list tells it from the rollback.
    no_build = sut.commit("v3", dockerfile_extra="COPY no-such-file /no-such-file\n")
    build_failed = deploy_service(sut.name, return_state=True)  # in this process: serve has stopped
    failed_id = build_failed.state_details.flow_run_id
    rows = runs_list([rolled_back.id, failed_id])
    name, state, message, tag = rows[rolled_back.id]
    assert (name, state, tag) == (f"deploy {sut.name}@{broken[:7]} · rolled back", "Failed", "verdict:rolled-back")
    assert message.startswith("Rolled back: GET / failed verification"), message
    name, state, message, tag = rows[failed_id]
    assert (name, state, tag) == (f"deploy {sut.name}@{no_build[:7]} · build failed", "Failed",
                                  "verdict:build-failed")
    assert message.startswith("Build failed: ") and "no-such-file" in message, message
    assert outcome_of(build_failed) == "Failed"

    # The same in Chromium, as a person reads it: the runs list tells the rollback from the failed build,
    # the fleet view lists the service, and the deployment page says who starts it.
    with get_client(sync_client=True) as client:
        fleet = client.read_artifacts(artifact_filter=ArtifactFilter(key=ArtifactFilterKey(any_=["fleet-live"])),
                                      sort=ArtifactSort.CREATED_DESC, limit=1)
        deployment_id = client.read_deployment_by_name(DEPLOY_SERVICE).id
    assert fleet, "every release rewrites the fleet view"
    with ui_page() as page:
        page.goto(f"{ui_url()}/runs", wait_until="networkidle", timeout=60_000)
        for shown in (f"deploy {sut.name}@{broken[:7]} · rolled back",
                      f"deploy {sut.name}@{no_build[:7]} · build failed"):
            assert in_first_viewport(page, shown), f"the Runs page shows {shown!r} without scrolling"
        page.goto(f"{ui_url()}/artifacts/artifact/{fleet[0].id}", wait_until="networkidle", timeout=60_000)
        # The table holds every service of this Prefect server, by name: the row, not the first screen.
        row = page.get_by_role("row").filter(has_text=sut.name).first
        row.wait_for(state="visible", timeout=30_000)
        row.scroll_into_view_if_needed()
        assert row.is_visible() and sut.name in row.inner_text(), "the fleet view's table lists the service"
        page.goto(f"{ui_url()}/deployments/deployment/{deployment_id}", wait_until="networkidle", timeout=60_000)
        page.locator("[role=tab], .p-tab", has_text="Description").first.click()
        assert in_first_viewport(page, "Who starts it"), "the Description tab says who starts the deployment"
