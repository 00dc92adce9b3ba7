"""Retry from the Prefect UI: a failed deploy-service flow run, set back to AwaitingRetry, resumes.

The release runs as a flow run of the served ``deploy-service`` deployment (the
way schedules, webhooks and people start it); the retry is the same state change
the UI's Retry button makes. Build, push and register are not repeated.
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
from prefect.deployments import run_deployment
from prefect.exceptions import ObjectNotFound
from prefect.states import AwaitingRetry

from harness.services import ROOT, ServiceUnderTest, refuse_next_call
from tasks.release.outcome import outcome_of


@pytest.fixture
def served(tmp_path: Path, new_service: Callable[..., ServiceUnderTest]) -> Iterator[ServiceUnderTest]:
    sut = new_service()
    env = {**os.environ, "ECS_PIPELINE_DEPLOYMENTS": str(sut.yaml_path.parent),
           "PREFECT_RUNNER_POLL_FREQUENCY": "1"}
    log = (tmp_path / "serve.log").open("wb")
    proc = subprocess.Popen([sys.executable, "-m", "flows.cli", "serve"], cwd=ROOT, env=env,
                            stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        with get_client(sync_client=True) as client:
            deadline = time.monotonic() + 90
            while True:
                try:
                    client.read_deployment_by_name("deploy-service/deploy-service")
                    break
                except ObjectNotFound:
                    assert time.monotonic() < deadline, (tmp_path / "serve.log").read_text()
                    time.sleep(0.5)
        yield sut
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(30)


def wait_final(run_id: Any, timeout: float = 300) -> Any:
    with get_client(sync_client=True) as client:
        deadline = time.monotonic() + timeout
        while True:
            run = client.read_flow_run(run_id)
            if run.state is not None and run.state.is_final():
                return run
            assert time.monotonic() < deadline, f"run {run_id} still {run.state}"
            time.sleep(0.5)


def test_retry_of_a_failed_run_resumes_where_it_failed(served: ServiceUnderTest) -> None:
    params = {"service": served.name}
    first = run_deployment("deploy-service/deploy-service", parameters=params, timeout=300)
    assert first.state is not None and outcome_of(first.state) == "Deployed", first.state

    served.commit("v2")
    refuse_next_call("CreateTaskSet", "AccessDeniedException", match=served.name)
    failed = run_deployment("deploy-service/deploy-service", parameters=params, timeout=300)
    assert failed.state is not None and failed.state.is_failed(), failed.state
    assert "AccessDeniedException" in (failed.state.message or "")
    revisions = served.revisions()

    with get_client(sync_client=True) as client:  # what the UI's Retry button does
        client.set_flow_run_state(failed.id, AwaitingRetry(message="Retry from the UI"), force=True)
    retried = wait_final(failed.id)
    assert outcome_of(retried.state) == "Deployed", retried.state
    assert retried.run_count >= 2
    assert retried.state.result()["done"] == [], "build, push and register were found done"
    assert served.revisions() == revisions
    assert "v2" in served.get("/").text
