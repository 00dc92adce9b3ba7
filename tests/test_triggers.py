"""Polling and superseding against real git repositories and a real Prefect server."""

from __future__ import annotations

import os

os.environ.setdefault("PREFECT_API_URL", "http://127.0.0.1:4200/api")

import json
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from prefect.client.orchestration import SyncPrefectClient
from prefect.client.schemas.objects import FlowRun
from prefect.states import Cancelled, Completed, Scheduled

from flows.operations import run_url
from flows.polling import poll_changes
from flows.trigger_cli import POLL_SCHEMA, poll_document
from harness.git import git
from tasks.build.source import resolve_heads
from tasks.config.models import ServiceConfig, load_service
from tasks.release.runs import (
    NOT_NEWER,
    already_started,
    cancel_waiting_runs,
    commit_order_for,
    queueing_mode,
    run_tags,
    superseded_by,
)
from tasks.triggers.branch_polling import find_changes
from tasks.triggers.repositories import group_by_repo
from tests.test_status_all import schema_errors


def commit(repo: Path, text: str) -> str:
    (repo / "app.txt").write_text(text)
    git(repo, "add", "app.txt")
    git(repo, "commit", "-q", "-m", f"Write {text}")
    return git(repo, "rev-parse", "HEAD")


def make_repo(path: Path, branches: tuple[str, ...] = ()) -> dict[str, str]:
    path.mkdir(parents=True)
    git(path, "init", "-q", "-b", "main")
    heads = {"old": commit(path, "v1"), "main": commit(path, "v2")}
    for branch in branches:
        git(path, "checkout", "-q", "-b", branch)
        heads[branch] = commit(path, f"{branch} work")
        git(path, "checkout", "-q", "main")
    return heads


def write_service(directory: Path, name: str, repo: str, branch: str = "main") -> ServiceConfig:
    body = {
        "name": name,
        "source": {"repo": repo, "branch": branch},
        "ecr": {"repository": name},
        "ecs": {"cluster": "demo", "service": name, "container": "web", "container_port": 8080},
        "task_definition": "taskdef.json",
        "strategy": {"type": "rolling"},
    }
    path = directory / f"{name}.yaml"
    path.write_text(json.dumps(body))  # JSON is YAML
    taskdef = {"family": name, "containerDefinitions": [{"name": "web", "image": "<IMAGE1_NAME>"}],
               "executionRoleArn": "arn:aws:iam::<AWS_ACCOUNT_ID>:role/ecsTaskExecutionRole"}
    (directory / "taskdef.json").write_text(json.dumps(taskdef))
    return load_service(path)


class LiveFile:
    """What is live, read from a JSON file as the release module reads it from AWS."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def set(self, **shas: str | None) -> None:
        current = json.loads(self.path.read_text()) if self.path.exists() else {}
        self.path.write_text(json.dumps({**current, **shas}))

    def __call__(self, cfg: ServiceConfig) -> str | None:
        value = json.loads(self.path.read_text()).get(cfg.name)
        return str(value) if value else None


class CountingResolver:
    """The real resolve_heads, recording each repository it is asked about."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, tuple[str, ...]]] = []

    def __call__(self, repo: str, branches: list[str]) -> dict[str, str]:
        self.calls.append((repo, tuple(branches)))
        return resolve_heads(repo, branches)


@pytest.fixture
def tag() -> str:
    return uuid.uuid4().hex[:8]


def test_queueing_defaults_to_supersede(tmp_path: Path) -> None:
    cfg = write_service(tmp_path, "svc", "https://github.com/acme/shop.git")
    assert queueing_mode(cfg) == "supersede" and queueing_mode(None) == "supersede"
    assert queueing_mode(cfg.model_copy(update={"queueing": "queue"})) == "queue"


def test_find_changes_asks_each_repository_once(tmp_path: Path) -> None:
    a = make_repo(tmp_path / "repos" / "a", branches=("dev",))
    b = make_repo(tmp_path / "repos" / "b")
    conf = tmp_path / "deployments"
    conf.mkdir()
    services = [
        write_service(conf, "a-same", "../repos/a"),
        write_service(conf, "a-moved", f"{tmp_path}/repos/a/.git"),
        write_service(conf, "a-dev", f"file://{tmp_path}/repos/a", branch="dev"),
        write_service(conf, "b-new", "../repos/b/"),
        write_service(conf, "gone", "../repos/missing"),
        write_service(conf, "no-branch", "../repos/b", branch="nope"),
    ]
    assert len(group_by_repo(services)) == 3
    live = LiveFile(tmp_path / "live.json")
    live.set(**{"a-same": a["main"], "a-moved": a["old"], "b-new": b["old"], "no-branch": None})
    resolver = CountingResolver()
    found = find_changes(services, live_sha=live, resolve=resolver)
    assert sorted(sorted(branches) for _, branches in resolver.calls) == [
        ["dev", "main"],
        ["main"],
        ["main", "nope"],
    ]
    assert {(c.service, c.sha, c.live) for c in found.changes} == {
        ("a-moved", a["main"], a["old"]),
        ("a-dev", a["dev"], None),
        ("b-new", b["main"], b["old"]),
    }
    assert found.unchanged == ["a-same"]
    assert "ls-remote failed" in found.errors["gone"]
    assert found.errors["no-branch"].startswith("branch nope not found")


def poll(client: SyncPrefectClient, **kwargs: Any) -> dict[str, Any]:
    """Run the poll-changes flow in-process and remove its own flow run afterwards."""
    state = poll_changes(**kwargs, return_state=True)
    client.delete_flow_run(state.state_details.flow_run_id)
    result: dict[str, Any] = state.result()
    return result


def test_poll_changes_starts_only_changed_services_once(
    tmp_path: Path, client: SyncPrefectClient, deployment: tuple[str, uuid.UUID], tag: str
) -> None:
    a = make_repo(tmp_path / "repos" / "a")
    conf = tmp_path / "deployments"
    conf.mkdir()
    same, moved, other = f"same-{tag}", f"moved-{tag}", f"other-{tag}"
    for name in (same, moved):
        write_service(conf, name, "../repos/a")
    write_service(conf, other, "../repos/a", branch="release")  # branch does not exist
    live = LiveFile(tmp_path / "live.json")
    live.set(**{same: a["main"], moved: a["old"]})
    resolver = CountingResolver()
    kwargs: dict[str, Any] = {
        "deployment_name": deployment[0],
        "services_dir": str(conf),
        "live_sha": live,
        "resolve": resolver,
    }

    first = poll(client, **kwargs)
    assert len(resolver.calls) == 1
    assert [(s["service"], s["sha"]) for s in first["started"]] == [(moved, a["main"])]
    assert first["unchanged"] == [same] and other in first["errors"]
    run = client.read_flow_run(uuid.UUID(first["started"][0]["flow_run_id"]))
    assert run.deployment_id == deployment[1] and run.parameters == {
        "service": moved,
        "sha": a["main"],
    }
    assert {f"service:{moved}", f"sha:{a['main']}", "trigger:poll"} <= set(run.tags)
    document = poll_document(first, deployment[0], False, datetime.now(UTC), run_url)  # `poll --json`
    assert schema_errors(document, POLL_SCHEMA) == [], document
    started = [(r["service"], r["run_id"], r["url"]) for r in document["started"]]
    assert started == [(moved, str(run.id), run_url(run.id))]
    assert [e["service"] for e in document["errors"]] == [other] and document["unchanged"] == [same]

    again = poll(client, **kwargs)  # same head, run still waiting: nothing new
    assert again["started"] == [] and moved in again["skipped"]
    document = poll_document(again, deployment[0], False, datetime.now(UTC), run_url)
    assert schema_errors(document, POLL_SCHEMA) == [] and document["skipped"][0]["service"] == moved, document

    newer = commit(tmp_path / "repos" / "a", "v3")
    third = poll(client, **kwargs)
    assert {s["service"] for s in third["started"]} == {same, moved}
    newest = next(s["flow_run_id"] for s in third["started"] if s["service"] == moved)
    old = client.read_flow_run(run.id)
    assert old.state is not None and old.state.is_cancelled()
    assert old.state.message == f"Superseded by {newest}"
    assert all(s["sha"] == newer for s in third["started"])


def create_run(
    client: SyncPrefectClient, dep_id: uuid.UUID, service: str, sha: str, **kw: Any
) -> FlowRun:
    return client.create_flow_run_from_deployment(
        dep_id,
        parameters={"service": service, "sha": sha},
        tags=run_tags(service, sha, "test"),
        **kw,
    )


def test_newer_run_supersedes_a_waiting_one(
    client: SyncPrefectClient, deployment: tuple[str, uuid.UUID], tag: str
) -> None:
    service = f"svc-{tag}"
    older = create_run(client, deployment[1], service, "a" * 40)
    newer = create_run(client, deployment[1], service, "b" * 40)
    create_run(client, deployment[1], f"other-{tag}", "c" * 40)  # another service: no effect
    assert superseded_by(service, older.id) == str(newer.id)
    assert superseded_by(service, newer.id) is None

    cfg = ServiceConfig.model_validate(
        {
            "name": service,
            "source": {"repo": "https://github.com/acme/shop.git"},
            "ecr": {"repository": "shop"},
            "ecs": {"cluster": "c", "service": "s", "container": "web", "container_port": 80},
            "task_definition": "t.json",
            "strategy": {"type": "rolling"},
            "queueing": "queue",
        }
    )
    assert superseded_by(service, older.id, cfg=cfg) is None

    client.set_flow_run_state(newer.id, Cancelled(message="stopped by hand"), force=True)
    assert superseded_by(service, older.id) is None  # a cancelled run supersedes nothing

    done = create_run(client, deployment[1], service, "d" * 40)
    client.set_flow_run_state(done.id, Completed(), force=True)
    assert superseded_by(service, older.id) == str(done.id)  # never deploy older over newer

    # started by a deployment trigger or the UI: parameters only, no tags
    untagged = client.create_flow_run_from_deployment(
        deployment[1], parameters={"service": service, "sha": "e" * 40}
    )
    assert superseded_by(service, older.id) == str(untagged.id)


def test_cancel_waiting_runs_cancels_only_older_scheduled_ones(
    client: SyncPrefectClient, deployment: tuple[str, uuid.UUID], tag: str
) -> None:
    service = f"svc-{tag}"
    later = Scheduled(scheduled_time=datetime.now(UTC) + timedelta(hours=2))
    planned = create_run(client, deployment[1], service, "0" * 40, state=later)
    first = create_run(client, deployment[1], service, "1" * 40)
    keep = create_run(client, deployment[1], service, "2" * 40)
    after = create_run(client, deployment[1], service, "3" * 40)

    assert cancel_waiting_runs(service, keep.id) == [str(first.id)]
    state = client.read_flow_run(first.id).state
    assert state is not None and state.is_cancelled()
    assert state.message == f"Superseded by {keep.id}"
    for untouched in (planned, keep, after):
        assert client.read_flow_run(untouched.id).state_type.value == "SCHEDULED"


def test_superseding_goes_by_git_ancestry_not_creation_time(
    tmp_path: Path, client: SyncPrefectClient, deployment: tuple[str, uuid.UUID], tag: str
) -> None:
    """A replayed older push is created last, yet the run of the newer commit keeps its place."""
    heads = make_repo(tmp_path / "repo")
    service = f"svc-{tag}"
    cfg = write_service(tmp_path, service, str(tmp_path / "repo"))
    cache = tmp_path / "cache"
    newer = create_run(client, deployment[1], service, heads["main"])
    replayed = create_run(client, deployment[1], service, heads["old"])
    order = commit_order_for(cfg, cache)

    assert cancel_waiting_runs(service, replayed.id, order=order) == []
    assert client.read_flow_run(newer.id).state_type.value == "SCHEDULED"
    assert superseded_by(service, newer.id, cfg=cfg, cache_dir=cache) is None
    assert superseded_by(service, replayed.id, cfg=cfg, cache_dir=cache) == str(newer.id)
    assert cancel_waiting_runs(service, newer.id, order=order) == [str(replayed.id)]

    rollback = client.create_flow_run_from_deployment(  # an explicit step back goes by creation time
        deployment[1], parameters={"service": service, "sha": heads["old"], "allow_older": True}
    )
    assert superseded_by(service, rollback.id, cfg=cfg, cache_dir=cache) is None


def test_a_diverged_or_vanished_replay_displaces_nothing(
    tmp_path: Path, client: SyncPrefectClient, deployment: tuple[str, uuid.UUID], tag: str
) -> None:
    """A signed push from before a force-push, replayed later: created last, it still cancels no run of the branch.

    Whether the server still has the rewritten commit (diverged) or has garbage-collected it (missing).
    """
    repo = tmp_path / "repo"
    heads = make_repo(repo)
    git(repo, "checkout", "-q", "-b", "before-force-push", heads["old"])
    replayed_sha = commit(repo, "rewritten away")
    git(repo, "checkout", "-q", "main")
    service = f"svc-{tag}"
    cfg = write_service(tmp_path, service, str(repo))
    cache = tmp_path / "cache"
    genuine = create_run(client, deployment[1], service, heads["main"])
    replayed = create_run(client, deployment[1], service, replayed_sha)
    assert cancel_waiting_runs(service, replayed.id, order=commit_order_for(cfg, cache)) == []
    assert client.read_flow_run(genuine.id).state_type.value == "SCHEDULED"
    assert superseded_by(service, genuine.id, cfg=cfg, cache_dir=cache) is None
    assert superseded_by(service, replayed.id, cfg=cfg, cache_dir=cache) is None  # its release refuses it itself
    vanished = create_run(client, deployment[1], service, "1" * 40)
    assert cancel_waiting_runs(service, vanished.id, order=commit_order_for(cfg, cache)) == []
    assert superseded_by(service, genuine.id, cfg=cfg, cache_dir=cache) is None
    assert superseded_by(service, vanished.id, cfg=cfg, cache_dir=cache) is None  # refused at its resolve



def test_a_commit_off_the_branch_displaces_nothing(
    tmp_path: Path, client: SyncPrefectClient, deployment: tuple[str, uuid.UUID], tag: str
) -> None:
    """A feature commit ahead of main, pushed as main by whoever holds a sender's secret (GitLab's travels in clear)."""
    repo = tmp_path / "repo"
    heads = make_repo(repo, ("feature",))  # feature descends from main's head
    service = f"svc-{tag}"
    cfg = write_service(tmp_path, service, str(repo))
    cache = tmp_path / "cache"
    genuine = create_run(client, deployment[1], service, heads["main"])
    forged = create_run(client, deployment[1], service, heads["feature"])
    assert cancel_waiting_runs(service, forged.id, order=commit_order_for(cfg, cache)) == []
    assert superseded_by(service, genuine.id, cfg=cfg, cache_dir=cache) is None
    git(repo, "merge", "-q", "--ff-only", "feature")  # once merged, it is the branch's newer commit
    assert superseded_by(service, genuine.id, cfg=cfg, cache_dir=cache) == str(forged.id)


def test_a_run_refused_as_not_newer_is_not_started_again(
    client: SyncPrefectClient, deployment: tuple[str, uuid.UUID], tag: str
) -> None:
    service = f"svc-{tag}"
    refused = create_run(client, deployment[1], service, "4" * 40)
    state = Cancelled(name=NOT_NEWER, message="older than live")
    client.set_flow_run_state(refused.id, state, force=True)
    found = already_started(client, service, "4" * 40)
    assert found is not None and found.id == refused.id
    superseded = create_run(client, deployment[1], service, "5" * 40)
    client.set_flow_run_state(superseded.id, Cancelled(message="Superseded by x"), force=True)
    assert already_started(client, service, "5" * 40) is None
