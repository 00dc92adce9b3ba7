"""Releases on a work pool, set up exactly as README tells a user, with two workers (two "hosts").

`prefect work-pool create`, `prefect deploy --all` from prefect.yaml and two
`prefect worker start` processes; releases started by the CLI (through the
deployments), the webhook and the poller run on whichever worker is free; two
releases of one service never overlap; a worker killed mid-release has its run
retried (as the UI's Retry does) on the other worker, which converges.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml
from prefect.client.orchestration import get_client
from prefect.client.schemas.filters import LogFilter, LogFilterFlowRunId
from prefect.client.schemas.objects import StateType
from prefect.deployments import run_deployment
from prefect.states import AwaitingRetry, Crashed

from flows.webhook import create_app
from harness.services import ServiceUnderTest, make_service
from harness.workers import ROOT, Pool, wait_final, worker_pool
from tasks.config.models import load_all_services
from tasks.release.outcome import outcome_of
from tasks.release.runs import FLEET_DEPLOYMENT, read_service_runs
from tasks.triggers.push_runs import PrefectRunStarter
from tasks.triggers.webhook_secrets import WebhookSecrets
from tasks.triggers.webhooks import sign_github
from tests.test_webhook import push_payload, serving

SECRET = "workers-test-secret"


@pytest.fixture(scope="module")
def fleet(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Pool, dict[str, ServiceUnderTest], Path]]:
    """Services a and b (b deploys every commit in turn: `queueing: queue`) in one folder, two workers."""
    base = tmp_path_factory.mktemp("workers")
    made = {key: make_service(base / key) for key in ("a", "b")}
    folder = base / "deployments"
    folder.mkdir()
    for key, sut in made.items():
        data = yaml.safe_load(sut.yaml_path.read_text())
        if key == "b":
            data["queueing"] = "queue"
        shutil.copytree(sut.yaml_path.parent / sut.name, folder / sut.name)
        sut.yaml_path = folder / sut.yaml_path.name
        sut.yaml_path.write_text(yaml.safe_dump(data, sort_keys=False))
    os.environ["ECS_PIPELINE_DEPLOYMENTS"] = str(folder)
    try:
        with worker_pool(folder, base) as pool:
            yield pool, made, folder
    finally:
        os.environ.pop("ECS_PIPELINE_DEPLOYMENTS", None)
        for sut in made.values():
            sut.cleanup()


def deploy_cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "flows.cli", "deploy", *args], cwd=ROOT, capture_output=True,
                          text=True, timeout=900, check=False)


def signed_push(url: str, payload: dict[str, Any]) -> httpx.Response:
    raw = json.dumps(payload).encode()
    headers = {"X-GitHub-Event": "push", "X-GitHub-Delivery": str(uuid.uuid4()),
               "X-Hub-Signature-256": sign_github(SECRET, raw), "Content-Type": "application/json"}
    return httpx.post(f"{url}/webhook/github", content=raw, headers=headers, timeout=10)


@pytest.mark.timeout(600)  # the module's set-up (deploy --all, two workers) counts here
def test_cli_releases_run_on_whichever_worker_is_free(fleet: Any) -> None:
    pool, suts, _ = fleet
    a, b = suts["a"], suts["b"]
    done = deploy_cli("--all", "--max-parallel", "2", "--children", "deployment")  # a fleet, children on the workers
    assert done.returncode == 0, done.stdout + done.stderr
    assert "Fleet deployed: 2 of 2 deployed or unchanged" in done.stdout
    with get_client(sync_client=True) as client:
        for sut in (a, b):
            deployed = read_service_runs(client, sut.name, [StateType.COMPLETED])
            assert [outcome_of(r.state) for r in deployed] == ["Deployed"], deployed
            assert pool.worker_of(deployed[0].id).name in ("w1", "w2")
            assert "v1" in sut.get("/").text


def test_webhook_and_poller_releases_run_on_the_workers(fleet: Any) -> None:
    pool, suts, folder = fleet
    a, b = suts["a"], suts["b"]
    sha_a, sha_b = a.commit("v2a"), b.commit("v2")
    app = create_app(load_all_services(folder), WebhookSecrets({"github": SECRET}), PrefectRunStarter())
    payload = push_payload(after=sha_a)
    payload["repository"]["clone_url"] = f"file://{a.repo}"
    with serving(app) as url:  # the webhook
        answer = signed_push(url, payload)
    assert answer.status_code == 202, answer.text
    pushed = answer.json()["started"][0]["flow_run_id"]
    poll = run_deployment("poll-changes/poll-changes", parameters={"services": [b.name]}, timeout=0)  # the poller
    assert wait_final(poll.id).state.is_completed()
    with get_client(sync_client=True) as client:
        polled = read_service_runs(client, b.name, sha=sha_b)
    assert len(polled) == 1, polled
    for run_id, sut, version in ((pushed, a, "v2a"), (polled[0].id, b, "v2")):
        final = wait_final(run_id)
        assert outcome_of(final.state) == "Deployed", final.state
        assert pool.worker_of(run_id).name in ("w1", "w2")
        assert version in sut.get("/").text
    assert pool.worker_of(poll.id).name in ("w1", "w2")


def lock_window(run_id: Any) -> tuple[Any, Any]:
    """When RUN held its service's slot: 'holding the deploy slot' .. its last task-run log."""
    logs: list[Any] = []
    with get_client(sync_client=True) as client:
        while page := client.read_logs(log_filter=LogFilter(flow_run_id=LogFilterFlowRunId(any_=[run_id])),
                                       limit=200, offset=len(logs)):  # fmt: skip
            logs.extend(page)
    held = [entry.timestamp for entry in logs if "holding the deploy slot" in entry.message]
    work = [entry.timestamp for entry in logs if entry.task_run_id is not None]
    assert held and work, f"no lock or task logs for {run_id}"
    return min(held), max(work)


def test_two_workers_never_run_two_releases_of_one_service_at_once(fleet: Any) -> None:
    pool, suts, _ = fleet
    b = suts["b"]
    ids = [
        run_deployment("deploy-service/deploy-service", parameters={"service": b.name, "force": True}, timeout=0).id
        for _ in range(2)
    ]
    finals = [wait_final(i) for i in ids]
    assert [outcome_of(f.state) for f in finals] == ["Deployed", "Deployed"], [f.state for f in finals]
    (start1, end1), (start2, end2) = sorted(lock_window(i) for i in ids)
    assert end1 <= start2, f"releases overlapped: {start1}..{end1} and {start2}..{end2}"
    print("workers:", [pool.worker_of(i).name for i in ids])


def test_a_worker_killed_mid_release_is_retried_on_the_other_and_converges(fleet: Any) -> None:
    pool, suts, _ = fleet
    a = suts["a"]
    sha = a.commit("v3")
    run = run_deployment("deploy-service/deploy-service", parameters={"service": a.name}, timeout=0)
    victim = pool.logging(f"Task run 'deploy green {a.name}@{sha[:7]}'")
    victim.kill()  # the host is gone mid-release: its run stays Running
    with get_client(sync_client=True) as client:  # what the lock marks, then the UI's Retry
        client.set_flow_run_state(run.id, Crashed(message="its worker was killed"), force=True)
        client.set_flow_run_state(run.id, AwaitingRetry(message="Retry from the UI"), force=True)
    final = wait_final(run.id)
    assert outcome_of(final.state) == "Deployed", final.state
    survivor = next(w for w in pool.workers if w is not victim)
    assert survivor.ran(run.id)
    assert "v3" in a.get("/").text
    assert len(a.task_sets()) == 1, a.task_sets()


def test_fleet_deployment_is_deployed_from_prefect_yaml(fleet: Any) -> None:
    with get_client(sync_client=True) as client:
        fleet_dep = client.read_deployment_by_name(FLEET_DEPLOYMENT)
    assert fleet_dep.work_pool_name == "ecs-pipeline"
