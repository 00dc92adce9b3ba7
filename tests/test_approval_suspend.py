"""Approvals that wait suspended: a run of the served deploy-service deployment frees its worker while a
person decides, and whichever runner is up when the answer comes finishes (or rolls back) the release.

One ECS-native service for the module: the release waits at the service deployment's PAUSE hook
(botocore's ECS model: a PAUSE hook "Pauses the deployment at the specified lifecycle stage until you call
ContinueServiceDeployment to continue or roll back"), so the run that comes back continues the very
service deployment the first one started.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest
from prefect.client.orchestration import get_client
from prefect.client.schemas.filters import LogFilter, LogFilterFlowRunId
from prefect.deployments import run_deployment

from harness.services import ROOT, ServiceUnderTest, aws, edit_config, make_service, seed_serving
from harness.workers import descendants
from tasks.release.locks import read_heartbeat
from tasks.release.outcome import outcome_of
from tests.test_pipeline import wait_for_events

DEPLOY = "deploy-service/deploy-service"


@pytest.fixture(scope="module")
def native(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServiceUnderTest]:
    """An ECS-native service that requires approval, seeded and serving its seed release."""
    sut = make_service(tmp_path_factory.mktemp("suspend"), strategy="ecs-native", approval="required")
    edit_config(sut, lambda c: c.update(approval_timeout_seconds=14400))  # the PAUSE hook: 240 min, 240 s here
    seed_serving(sut)
    try:
        yield sut
    finally:
        sut.cleanup()


@pytest.fixture(scope="module")
def runner(native: ServiceUnderTest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[subprocess.Popen[bytes]]:
    """The runner that is up when answers come (started by the first test once its first runner is gone)."""
    with serving(native, tmp_path_factory.mktemp("runner") / "serve.log") as proc:
        yield proc


@contextmanager
def serving(sut: ServiceUnderTest, log: Path) -> Iterator[subprocess.Popen[bytes]]:
    """`ecs-pipeline serve` (a runner: the worker of a served deployment) until the block ends, then stopped
    as a person stops it (SIGTERM)."""
    env = {**os.environ, "ECS_PIPELINE_DEPLOYMENTS": str(sut.yaml_path.parent), "PREFECT_RUNNER_POLL_FREQUENCY": "1",
           "PREFECT_LOGGING_LEVEL": "INFO"}
    with log.open("wb") as out:
        proc = subprocess.Popen([sys.executable, "-m", "flows.cli", "serve", "--limit", "2"], cwd=ROOT, env=env,
                                stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        deadline = time.monotonic() + 90
        while "deploy-service" not in log.read_text(errors="replace"):  # the start message names the deployment
            assert proc.poll() is None and time.monotonic() < deadline, log.read_text(errors="replace")
            time.sleep(0.3)
        yield proc
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(30)


def wait_run(run_id: Any, check: Callable[[Any], bool], timeout: float = 240) -> Any:
    with get_client(sync_client=True) as client:
        deadline = time.monotonic() + timeout
        while True:
            run = client.read_flow_run(run_id)
            if run.state is not None and check(run.state):
                return run
            assert time.monotonic() < deadline, f"run {run_id} still {run.state}"
            time.sleep(0.3)


def suspended(state: Any) -> bool:
    return bool(state.is_paused() and state.name == "Suspended")


def run_logs(run_id: Any) -> list[str]:
    with get_client(sync_client=True) as client:
        logs = client.read_logs(log_filter=LogFilter(flow_run_id=LogFilterFlowRunId(any_=[run_id])), limit=200)
    return [entry.message for entry in logs]


def service_deployments(sut: ServiceUnderTest) -> list[dict[str, Any]]:
    cfg, ecs = sut.cfg, aws("ecs")
    arns = [d["serviceDeploymentArn"] for d in ecs.list_service_deployments(
        cluster=cfg.ecs.cluster, service=cfg.ecs.service)["serviceDeployments"]]
    return list(ecs.describe_service_deployments(serviceDeploymentArns=arns)["serviceDeployments"])


def paused_deployment(sut: ServiceUnderTest) -> dict[str, Any]:
    """The one service deployment in progress, waiting at its PAUSE hook."""
    waiting = [d for d in service_deployments(sut) if d["status"] == "IN_PROGRESS"]
    assert len(waiting) == 1, waiting
    hooks = [h["status"] for h in waiting[0].get("lifecycleHookDetails") or []]
    assert "AWAITING_ACTION" in hooks, waiting[0]
    return waiting[0]


def worker_free(proc: subprocess.Popen[bytes], timeout: float = 30) -> None:
    """The runner has no flow-run process left: the suspended run's process exited."""
    deadline = time.monotonic() + timeout
    while descendants(proc.pid):
        assert time.monotonic() < deadline, f"the runner still runs processes {descendants(proc.pid)}"
        time.sleep(0.3)


@pytest.mark.timeout(420)
def test_suspended_approval_survives_its_worker_and_a_new_one_continues_the_service_deployment(
    native: ServiceUnderTest, tmp_path: Path, capsys: pytest.CaptureFixture[str], request: pytest.FixtureRequest
) -> None:
    from flows.cli import main

    with serving(native, tmp_path / "serve-1.log") as first:
        run = run_deployment(DEPLOY, parameters={"service": native.name}, timeout=0)
        wait_run(run.id, suspended)
        worker_free(first)
    # The first runner stopped as people stop it; the suspended run is not its to cancel.
    assert suspended(wait_run(run.id, lambda s: True).state)
    at_pause = paused_deployment(native)
    before = {d["serviceDeploymentArn"] for d in service_deployments(native)}
    assert all("sample-app seed" in native.get("/").text for _ in range(5)), "production has not moved"
    with get_client(sync_client=True) as client:
        reserved = read_heartbeat(client, native.name)
    assert reserved is not None and reserved.get("suspended") and reserved["run"] == str(run.id), reserved
    assert "approval-requested" in wait_for_events(native.name, {"approval-requested"}), "automations can notify"

    capsys.readouterr()
    assert main(["approve", str(run.id), "--comment", "ship it"]) == 0
    assert f"Approved run {run.id}" in capsys.readouterr().out
    assert wait_run(run.id, lambda s: s.is_scheduled()).state.is_scheduled(), "waits for a runner"

    request.getfixturevalue("runner")  # a new runner, on another "host"
    final = wait_run(run.id, lambda s: s.is_final(), 300)
    assert outcome_of(final.state) == "Deployed", final.state
    assert "v1" in native.get("/").text
    done = {d["serviceDeploymentArn"]: d for d in service_deployments(native)}
    assert done[at_pause["serviceDeploymentArn"]]["status"] == "SUCCESSFUL", "the paused deployment was continued"
    assert set(done) == before, "no other service deployment was started"
    logs = run_logs(run.id)
    assert any("Suspending for approval" in m for m in logs), logs
    assert "Answered while suspended; the release goes on from the approval gate" in logs
    assert any(f"{at_pause['serviceDeploymentArn']}" in m and "resumed" in m for m in logs), logs
    assert "Approved (ship it)" in logs
    with get_client(sync_client=True) as client:
        assert read_heartbeat(client, native.name) is None, "the slot is free once the release is done"


@pytest.mark.timeout(300)
def test_newer_commit_supersedes_a_suspended_run_and_unanswered_approval_rolls_back(
    native: ServiceUnderTest, runner: Any
) -> None:
    """v2 waits suspended; v3 comes: v2 ends Superseded and v3 takes the service; nobody answers v3, whose
    approval runs out: serve answers no, and v3 rolls back. Production stays on v1 throughout."""
    v2 = native.commit("v2")
    older = run_deployment(DEPLOY, parameters={"service": native.name}, timeout=0)
    assert wait_run(older.id, suspended).parameters["sha"] == v2, "the commit asked about is pinned for the answer"
    edit_config(native, lambda c: c.update(approval_timeout_seconds=2))
    native.commit("v3")
    newer = run_deployment(DEPLOY, parameters={"service": native.name}, timeout=0)
    superseded = wait_run(older.id, lambda s: s.is_final())
    assert superseded.state.is_cancelled(), superseded.state
    assert f"Superseded by {newer.id} while waiting for approval" in (superseded.state.message or "")
    wait_run(newer.id, suspended)
    at_pause = paused_deployment(native)
    final = wait_run(newer.id, lambda s: s.is_final(), 240)  # serve answers "no" once the 2 s are up
    assert outcome_of(final.state) == "Rolled back", final.state
    assert "no approval within 2 s" in (final.state.message or ""), final.state.message
    assert all("v1" in native.get("/").text for _ in range(5)), "production stayed on blue"
    done = {d["serviceDeploymentArn"]: d for d in service_deployments(native)}
    assert done[at_pause["serviceDeploymentArn"]]["status"] == "ROLLBACK_SUCCESSFUL", done
    assert [d["status"] for d in done.values() if d["status"] == "IN_PROGRESS"] == []
    with get_client(sync_client=True) as client:
        assert read_heartbeat(client, native.name) is None, "the slot is free once the release is over"


def test_ecs_refuses_a_pause_hook_longer_than_14_days(native: ServiceUnderTest) -> None:
    """botocore's ECS model: timeoutInMinutes is a DeploymentLifecycleHookDuration, "min": 1, "max": 20160; botocore
    checks the minimum only, so the longest approval (14 days) is the longest PAUSE hook ECS takes."""
    from botocore.exceptions import ClientError

    from tasks.strategies.ecs_native import deployment_configuration

    cfg = native.cfg.model_copy(update={"approval_timeout_seconds": 1209600})
    config = deployment_configuration(cfg)
    assert config["lifecycleHooks"][0]["timeoutConfiguration"]["timeoutInMinutes"] == 20160
    config["lifecycleHooks"][0]["timeoutConfiguration"]["timeoutInMinutes"] = 20161
    with pytest.raises(ClientError) as refused:
        aws("ecs").update_service(cluster=cfg.ecs.cluster, service=cfg.ecs.service, deploymentConfiguration=config)
    assert refused.value.response["Error"]["Code"] == "InvalidParameterException"
    assert "timeoutInMinutes 20161 is invalid" in refused.value.response["Error"]["Message"]
