"""Provenance end to end: only the branch's history is released, and only forward unless asked.

Real releases against the sandbox; "nothing changed" is read from the sandbox's
request log (no mutating AWS call after the refusal started).
"""

from __future__ import annotations

import json
import os
import time
import uuid
from collections.abc import Callable
from typing import Any

import httpx
import pytest
from prefect.client.orchestration import SyncPrefectClient, get_client
from prefect.client.schemas.objects import StateType
from prefect.flow_engine import run_flow

from flows.cli import main
from flows.pipeline import deploy_service
from flows.webhook import create_app
from harness.faults import prefect_api_headers, serving_versions
from harness.git import git
from harness.services import HTTP, ServiceUnderTest
from tasks.core.settings import Settings
from tasks.release.outcome import outcome_of
from tasks.triggers.push_runs import PrefectRunStarter
from tasks.triggers.webhook_secrets import WebhookSecrets
from tasks.triggers.webhooks import sign_github
from tests.test_pipeline import release_artifact, wait_for_events
from tests.test_webhook import serving

SECRET = "provenance-test-secret"


def request_log_position() -> int:
    answer = HTTP.get(f"{os.environ['AWS_ENDPOINT_URL']}/_sandbox/requests", params={"since": 0}, timeout=10)
    return int(answer.json()["last"])


def mutating_calls_since(position: int) -> list[str]:
    answer = HTTP.get(f"{os.environ['AWS_ENDPOINT_URL']}/_sandbox/requests", params={"since": position}, timeout=10)
    return [f"{r['service']}:{r['operation']}" for r in answer.json()["requests"] if r["mutating"]]


def test_commits_off_the_branch_are_refused_with_nothing_changed(live: tuple[ServiceUnderTest, str]) -> None:
    live_v1, before = live
    repo = live_v1.repo
    git(repo, "config", "uploadpack.allowAnySHA1InWant", "true")  # GitHub serves unreachable commits too
    git(repo, "checkout", "-q", "-b", "feature")
    feature = live_v1.commit("feature-work")
    git(repo, "checkout", "-q", "-b", "doomed")
    doomed = live_v1.commit("never-merged")
    git(repo, "checkout", "-q", "main")
    git(repo, "branch", "-q", "-D", "doomed")

    for sha in (feature, doomed):
        position = request_log_position()
        state = deploy_service(live_v1.name, sha=sha, return_state=True)
        assert state.is_failed(), state
        assert f"{sha[:12]} is not in the history of branch main" in (state.message or "")
        assert "merge it into main" in (state.message or "")
        assert mutating_calls_since(position) == []
    assert serving_versions(live_v1) == {before}
    assert [ts["status"] for ts in live_v1.task_sets()] == ["PRIMARY"]


def test_older_commit_is_refused_unless_asked_for(
    live: tuple[ServiceUnderTest, str], capsys: pytest.CaptureFixture[str]
) -> None:
    live_v1, v1 = live
    sha1 = git(live_v1.repo, "rev-parse", "main")  # live: the test before this one released nothing on main
    live_v1.commit("v2")
    assert outcome_of(deploy_service(live_v1.name, return_state=True)) == "Deployed"

    before = request_log_position()
    refused = deploy_service(live_v1.name, sha=sha1, return_state=True)
    assert refused.type == StateType.CANCELLED and outcome_of(refused) == "Not newer than live", refused
    assert "--allow-older" in (refused.message or "")
    assert mutating_calls_since(before) == []
    assert "v2" in live_v1.get("/").text
    assert "Not newer than live" in release_artifact(live_v1.name)
    assert "refused" in wait_for_events(live_v1.name, {"refused"})

    assert main(["deploy", live_v1.name, "--sha", sha1[:10]]) == 1
    assert "Not newer than live" in capsys.readouterr().out
    assert main(["deploy", live_v1.name, "--sha", sha1[:10], "--allow-older"]) == 0
    assert serving_versions(live_v1) == {v1}
    assert "allow_older: asked to go back (older than live" in release_artifact(live_v1.name)
    assert started_with_allow_older(live_v1.name)


def started_with_allow_older(service: str) -> bool:
    body = {
        "filter": {
            "event": {"name": ["ecs-pipeline.deploy.started"]},
            "any_resource": {"id": [f"ecs-pipeline.service.{service}"]},
            "occurred": {"since": "2000-01-01T00:00:00Z"},
        },
        "limit": 20,
    }
    deadline = time.monotonic() + 20  # events arrive asynchronously
    while time.monotonic() < deadline:
        events = HTTP.post(f"{os.environ['PREFECT_API_URL']}/events/filter", json=body, timeout=10,
                            headers=prefect_api_headers()).json()["events"]
        if any(e["payload"].get("allow_older") is True for e in events):
            return True
        time.sleep(0.5)
    return False


# -- a replayed older push ---------------------------------------------------------------


def signed_push(sut: ServiceUnderTest, sha: str) -> tuple[bytes, str]:
    """A push body for SHA on main and its GitHub signature: what an attacker could record and replay."""
    body = {"ref": "refs/heads/main", "after": sha, "repository": {"full_name": "acme/app", "clone_url": str(sut.repo)}}
    raw = json.dumps(body).encode()
    return raw, sign_github(SECRET, raw)


def post(url: str, raw: bytes, signature: str) -> httpx.Response:
    headers = {"X-GitHub-Event": "push", "X-GitHub-Delivery": str(uuid.uuid4()), "X-Hub-Signature-256": signature}
    return HTTP.post(f"{url}/webhook/github", content=raw, headers=headers, timeout=10)


def deliver(url: str, raw: bytes, signature: str) -> str:
    answer = post(url, raw, signature)
    assert answer.status_code == 202, answer.text
    return str(answer.json()["started"][0]["flow_run_id"])


def execute(client: SyncPrefectClient, run_id: str) -> Any:
    """What a worker does with a Scheduled run: run the flow for it, here in this process."""
    state = run_flow(deploy_service, flow_run=client.read_flow_run(uuid.UUID(run_id)), return_type="state")
    return state


def test_replayed_older_push_never_displaces_the_newer_commit(
    new_service: Callable[..., ServiceUnderTest], deployment: tuple[str, uuid.UUID]
) -> None:
    sut = new_service()
    sha1 = git(sut.repo, "rev-parse", "HEAD")
    old_raw, old_signature = signed_push(sut, sha1)
    git_cache = Settings().cache / "git"
    starter = PrefectRunStarter(deployment[0], git_cache=git_cache)
    app = create_app([sut.cfg], WebhookSecrets({"github": SECRET}), starter)
    with serving(app) as url, get_client(sync_client=True) as client:
        first = deliver(url, old_raw, old_signature)
        assert outcome_of(execute(client, first)) == "Deployed"

        sha2 = sut.commit("v2")
        newer = deliver(url, *signed_push(sut, sha2))
        replay = post(url, old_raw, old_signature)  # the recorded v1 push, fresh delivery id: v1 is live
        assert replay.status_code == 200 and sut.name in replay.json()["nothing_to_do"], replay.text
        assert client.read_flow_run(uuid.UUID(newer)).state_type == StateType.SCHEDULED, "the newer run stays"

        released = execute(client, newer)
        assert outcome_of(released) == "Deployed", released
        again = post(url, old_raw, old_signature)  # v2 is live now: v1 was released before
        assert again.status_code == 200 and sut.name in again.json()["nothing_to_do"], again.text
        newer_run = client.read_flow_run(uuid.UUID(newer))
        assert newer_run.state is not None and outcome_of(newer_run.state) == "Deployed"
    assert "v2" in sut.get("/").text
