"""The push webhook: payload rules as tables, and the app over real HTTP against a real Prefect server."""

from __future__ import annotations

import os

os.environ.setdefault("PREFECT_API_URL", "http://127.0.0.1:4200/api")

import contextlib
import json
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlencode

import httpx
import pytest
import uvicorn
from prefect.client.orchestration import SyncPrefectClient
from prefect.client.schemas.filters import (
    DeploymentFilter,
    DeploymentFilterId,
    FlowRunFilter,
    FlowRunFilterTags,
)
from prefect.client.schemas.objects import FlowRun

from flows.webhook import create_app
from sandbox.layout import free_ports
from tasks.config.models import ServiceConfig, parse_service
from tasks.core.settings import Settings
from tasks.triggers.push_payloads import PayloadError, parse_push, services_for_push
from tasks.triggers.push_runs import PrefectRunStarter
from tasks.triggers.repositories import normalize_repo
from tasks.triggers.webhook_deliveries import DeliveryCache
from tasks.triggers.webhook_secrets import SecretUnavailable, WebhookSecrets
from tasks.triggers.webhooks import (
    sign_github,
    verify_gitea_signature,
    verify_github_signature,
    verify_gitlab_token,
)

SECRET = "It's a Secret to Everybody"
GITEA_SECRET = "gitea-hmac-key-9f2c"
GITLAB_TOKEN = "gitlab-token-41d7"
SECRETS = WebhookSecrets({"github": SECRET, "gitea": GITEA_SECRET, "gitlab": GITLAB_TOKEN})
SHA1 = "0f5d1c9a7b3e2d4c6a8b0e1f2a3b4c5d6e7f8091"
SHA2 = "a1b2c3d4e5f60718293a4b5c6d7e8f9012345678"


# -- pure rules ------------------------------------------------------------------


def test_github_signature_matches_githubs_documented_example() -> None:
    # The example from GitHub's "Validating webhook deliveries" page.
    header = "sha256=757107ea0eb2509fc211221cce984b8a37570b6d7586c22c46f4379c8b043e17"
    assert verify_github_signature(SECRET, b"Hello, World!", header)
    assert sign_github(SECRET, b"Hello, World!") == header


@pytest.mark.parametrize(
    "header",
    [None, "", "sha256=", "sha1=757107ea", "sha256=" + "0" * 64, "757107ea0eb2509fc2"],
)
def test_github_signature_rejects(header: str | None) -> None:
    assert not verify_github_signature(SECRET, b"Hello, World!", header)


def test_gitea_and_gitlab_secrets() -> None:
    hexsig = sign_github(SECRET, b"{}").removeprefix("sha256=")
    assert verify_gitea_signature(SECRET, b"{}", hexsig)
    assert not verify_gitea_signature(SECRET, b"{ }", hexsig)
    assert verify_gitlab_token(SECRET, SECRET)
    assert not verify_gitlab_token(SECRET, "guess")
    assert not verify_gitlab_token("", "")


@pytest.mark.parametrize(
    ("location", "normal"),
    [
        ("https://github.com/acme/shop.git", "github.com/acme/shop"),
        ("https://github.com/Acme/Shop/", "github.com/acme/shop"),
        ("https://user:token@GitHub.com/acme/shop.git", "github.com/acme/shop"),
        ("git@github.com:acme/shop.git", "github.com/acme/shop"),
        ("ssh://git@github.com:22/acme/shop.git", "github.com/acme/shop"),
        ("git://github.com/acme/shop", "github.com/acme/shop"),
        ("https://gitlab.example.com/group/sub/app.git", "gitlab.example.com/group/sub/app"),
    ],
)
def test_normalize_remote(location: str, normal: str) -> None:
    assert normalize_repo(location) == normal


def test_normalize_local_paths(tmp_path: Path) -> None:
    repo = tmp_path / "app"
    (repo / ".git").mkdir(parents=True)
    want = str(repo.resolve())
    for spelling in (str(repo), f"{repo}/", f"{repo}/.git", f"file://{repo}", f"{tmp_path}/./app"):
        assert normalize_repo(spelling) == want, spelling


def push_payload(
    ref: str = "refs/heads/main",
    after: str = SHA1,
    *,
    deleted: bool = False,
    full_name: str = "acme/shop",
) -> dict[str, Any]:
    """A push payload in GitHub's format (abridged to the fields GitHub always sends)."""
    owner, name = full_name.split("/")
    return {
        "ref": ref,
        "before": "0" * 40 if not deleted else SHA2,
        "after": "0" * 40 if deleted else after,
        "repository": {
            "id": 1296269,
            "node_id": "MDEwOlJlcG9zaXRvcnkxMjk2MjY5",
            "name": name,
            "full_name": full_name,
            "private": False,
            "owner": {"name": owner, "login": owner, "id": 1},
            "html_url": f"https://github.com/{full_name}",
            "url": f"https://github.com/{full_name}",
            "git_url": f"git://github.com/{full_name}.git",
            "ssh_url": f"git@github.com:{full_name}.git",
            "clone_url": f"https://github.com/{full_name}.git",
            "default_branch": "main",
        },
        "pusher": {"name": "dev", "email": "dev@example.com"},
        "sender": {"login": "dev", "id": 2},
        "created": False,
        "deleted": deleted,
        "forced": False,
        "base_ref": None,
        "compare": f"https://github.com/{full_name}/compare/{SHA2[:12]}...{after[:12]}",
        "commits": [] if deleted else [{"id": after, "message": "Change", "distinct": True}],
        "head_commit": None if deleted else {"id": after, "message": "Change"},
    }


def test_parse_push_reads_branch_and_urls() -> None:
    push = parse_push(push_payload())
    assert push.branch == "main" and push.sha == SHA1 and push.ignore_reason() is None
    assert "git@github.com:acme/shop.git" in push.repo_urls
    assert parse_push(push_payload("refs/tags/v1.0")).ignore_reason() == "tag push: refs/tags/v1.0"
    gone = parse_push(push_payload(deleted=True))
    assert gone.ignore_reason() == "branch deleted: refs/heads/main"


def test_parse_push_gitlab_shape() -> None:
    payload = {
        "object_kind": "push",
        "ref": "refs/heads/main",
        "after": SHA1,
        "checkout_sha": SHA1,
        "project": {
            "path_with_namespace": "acme/shop",
            "git_ssh_url": "git@gitlab.com:acme/shop.git",
            "git_http_url": "https://gitlab.com/acme/shop.git",
            "web_url": "https://gitlab.com/acme/shop",
        },
    }
    push = parse_push(payload)
    assert push.repo_name == "acme/shop" and push.branch == "main"


def test_a_repository_named_only_by_a_url_with_credentials_is_named_without_them() -> None:
    """The name goes into the log and the answer ("no service builds from ..."); a token in the URL must not."""
    payload = {"ref": "refs/heads/main", "after": SHA1,
               "repository": {"clone_url": "https://ci:glpat-s3cr3t@git.example.com/acme/shop.git"}}
    push = parse_push(payload)
    assert push.repo_name == "https://***@git.example.com/acme/shop.git"
    assert services_for_push([make_service("web", "https://git.example.com/acme/shop.git")], push) != []


@pytest.mark.parametrize(
    ("payload", "message"),
    [
        ([], "must be a JSON object"),
        ({"zen": "Keep it simple."}, "no 'ref'"),
        ({"ref": "main", "after": SHA1}, "no 'ref'"),
        ({"ref": "refs/heads/main", "after": "xyz"}, "no 'after'"),
        ({"ref": "refs/heads/main", "after": SHA1}, "no 'repository'"),
        ({"ref": "refs/heads/main", "after": SHA1, "repository": {"name": "x"}}, "no clone_url"),
    ],
)
def test_parse_push_rejects_non_push(payload: Any, message: str) -> None:
    with pytest.raises(PayloadError, match=message):
        parse_push(payload)


def make_service(name: str, repo: str, branch: str = "main") -> ServiceConfig:
    data = {
        "name": name,
        "source": {"repo": repo, "branch": branch},
        "ecr": {"repository": name},
        "ecs": {"cluster": "demo", "service": name, "container": "web", "container_port": 8080},
        "task_definition": "taskdef.json",
        "strategy": {"type": "rolling"},
    }
    return parse_service(data, source=f"{name}.yaml")


def test_services_for_push_maps_any_url_spelling() -> None:
    services = [
        make_service("web", "https://github.com/acme/shop.git"),
        make_service("worker", "git@github.com:Acme/shop"),
        make_service("admin", "https://github.com/acme/shop", branch="release"),
        make_service("other", "https://github.com/acme/other.git"),
    ]
    hit = services_for_push(services, parse_push(push_payload()))
    assert [s.name for s in hit] == ["web", "worker"]


def test_delivery_cache_bounds_and_expiry() -> None:
    now = [0.0]
    cache = DeliveryCache(max_entries=2, ttl_seconds=10, clock=lambda: now[0])
    assert not cache.check_and_add("a")
    assert cache.check_and_add("a")
    assert not cache.check_and_add("b") and not cache.check_and_add("c")
    assert len(cache) == 2 and not cache.check_and_add("a")  # "a" was the oldest: evicted
    now[0] = 11.0
    assert len(cache) == 0 and not cache.check_and_add("b")
    cache.forget("b")
    assert not cache.check_and_add("b")


def test_delivery_cache_is_thread_safe() -> None:
    cache = DeliveryCache(max_entries=100_000)
    firsts: list[bool] = []
    lock = threading.Lock()

    def hammer() -> None:
        mine = [not cache.check_and_add(f"d{i}") for i in range(2000)]
        with lock:
            firsts.extend(mine)

    threads = [threading.Thread(target=hammer) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sum(firsts) == 2000  # every id counted as new exactly once


# -- the app over HTTP against Prefect ----------------------------------------------


@pytest.fixture(scope="module")
def names() -> dict[str, str]:
    tag = uuid.uuid4().hex[:8]
    return {k: f"{k}-{tag}" for k in ("web", "worker", "admin", "other")}


@pytest.fixture(scope="module")
def app_url(deployment: tuple[str, uuid.UUID], names: dict[str, str]) -> Iterator[str]:
    services = [
        make_service(names["web"], "https://github.com/acme/shop.git"),
        make_service(names["worker"], "git@github.com:acme/shop.git"),
        make_service(names["admin"], "https://github.com/acme/shop.git", branch="release"),
        make_service(names["other"], "https://github.com/acme/other.git"),
    ]
    starter = PrefectRunStarter(deployment_name=deployment[0])
    app = create_app(services, SECRETS, starter, max_body_bytes=64 * 1024)
    with serving(app) as url:
        yield url


@contextlib.contextmanager
def serving(app: Any) -> Iterator[str]:
    """APP under uvicorn on a free loopback port, for real HTTP requests."""
    (port,) = free_ports(1)
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 10
    while not server.started and time.monotonic() < deadline:
        time.sleep(0.02)
    assert server.started, "webhook app did not start"
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(timeout=10)


def post(
    url: str,
    body: bytes | dict[str, Any],
    *,
    event: str = "push",
    delivery: str | None = None,
    signature: str | None = "sign",
) -> httpx.Response:
    raw = body if isinstance(body, bytes) else json.dumps(body).encode()
    headers = {
        "Content-Type": "application/json",
        "User-Agent": "GitHub-Hookshot/abc123",
        "X-GitHub-Event": event,
        "X-GitHub-Delivery": delivery or str(uuid.uuid4()),
        "X-GitHub-Hook-ID": "42",
    }
    if signature == "sign":
        headers["X-Hub-Signature-256"] = sign_github(SECRET, raw)
    elif signature is not None:
        headers["X-Hub-Signature-256"] = signature
    return httpx.post(f"{url}/webhook/github", content=raw, headers=headers, timeout=10)


def runs_for(client: SyncPrefectClient, dep_id: uuid.UUID, service: str) -> list[FlowRun]:
    return client.read_flow_runs(
        deployment_filter=DeploymentFilter(id=DeploymentFilterId(any_=[dep_id])),
        flow_run_filter=FlowRunFilter(tags=FlowRunFilterTags(all_=[f"service:{service}"])),
    )


def all_runs(client: SyncPrefectClient, dep_id: uuid.UUID) -> list[FlowRun]:
    return client.read_flow_runs(
        deployment_filter=DeploymentFilter(id=DeploymentFilterId(any_=[dep_id]))
    )


def test_healthz(app_url: str) -> None:
    answer = httpx.get(f"{app_url}/healthz")
    assert answer.status_code == 200 and answer.json() == {"ok": True, "services": 4}


def test_signed_push_starts_one_run_per_mapped_service_and_replay_starts_none(
    app_url: str,
    client: SyncPrefectClient,
    deployment: tuple[str, uuid.UUID],
    names: dict[str, str],
) -> None:
    dep_id = deployment[1]
    delivery = str(uuid.uuid4())
    answer = post(app_url, push_payload(), delivery=delivery)
    assert answer.status_code == 202, answer.text
    started = {s["service"]: s["flow_run_id"] for s in answer.json()["started"]}
    assert set(started) == {names["web"], names["worker"]}
    for service, run_id in started.items():
        runs = runs_for(client, dep_id, service)
        assert [str(r.id) for r in runs] == [run_id]
        assert runs[0].parameters == {"service": service, "sha": SHA1}
        assert f"sha:{SHA1}" in runs[0].tags and runs[0].state_type.value == "SCHEDULED"
    assert runs_for(client, dep_id, names["admin"]) == []
    assert runs_for(client, dep_id, names["other"]) == []

    again = post(app_url, push_payload(), delivery=delivery)
    assert again.status_code == 200 and again.json()["duplicate"] is True
    assert len(all_runs(client, dep_id)) == 2


def test_push_event_reaches_prefect_for_automations(
    app_url: str, client: SyncPrefectClient, names: dict[str, str]
) -> None:
    answer = post(app_url, push_payload(after=SHA2, full_name="acme/other"))
    assert answer.status_code == 202
    run_id = answer.json()["started"][0]["flow_run_id"]
    query = {
        "filter": {
            "event": {"name": ["ecs-pipeline.git.push"]},
            "resource": {"id": [f"ecs-pipeline.service.{names['other']}"]},
            "occurred": {"since": "2000-01-01T00:00:00Z"},
        },
        "limit": 5,
    }
    deadline = time.monotonic() + 10
    events: list[dict[str, Any]] = []
    while not events and time.monotonic() < deadline:
        events = client.request("POST", "/events/filter", json=query).json()["events"]
        time.sleep(0.2)
    assert events, "no ecs-pipeline.git.push event arrived"
    event = events[0]
    assert event["payload"]["sha"] == SHA2 and event["payload"]["branch"] == "main"
    assert event["resource"]["prefect.resource.name"] == names["other"]
    assert event["related"][0]["prefect.resource.id"] == f"prefect.flow-run.{run_id}"


def test_newer_push_cancels_the_older_waiting_run(
    app_url: str,
    client: SyncPrefectClient,
    deployment: tuple[str, uuid.UUID],
    names: dict[str, str],
) -> None:
    first = post(app_url, push_payload(ref="refs/heads/release", after=SHA1))
    second = post(app_url, push_payload(ref="refs/heads/release", after=SHA2))
    assert first.status_code == second.status_code == 202
    old_id = first.json()["started"][0]["flow_run_id"]
    new_id = second.json()["started"][0]["flow_run_id"]
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        old = client.read_flow_run(uuid.UUID(old_id))
        if old.state_type and old.state_type.value == "CANCELLED":
            break
        time.sleep(0.1)
    assert old.state is not None and old.state.message == f"Superseded by {new_id}"
    assert client.read_flow_run(uuid.UUID(new_id)).state_type.value == "SCHEDULED"


@pytest.mark.parametrize(
    ("payload", "reason"),
    [
        (push_payload(ref="refs/heads/feature/x"), "no service builds from acme/shop branch"),
        (push_payload(ref="refs/tags/v1.2.0"), "tag push: refs/tags/v1.2.0"),
        (push_payload(deleted=True), "branch deleted: refs/heads/main"),
        (push_payload(ref="refs/tags/v1.2.0", deleted=True), "tag deleted: refs/tags/v1.2.0"),
        (push_payload(full_name="acme/unknown"), "no service builds from acme/unknown"),
    ],
)
def test_pushes_that_start_nothing(
    app_url: str,
    client: SyncPrefectClient,
    deployment: tuple[str, uuid.UUID],
    payload: dict[str, Any],
    reason: str,
) -> None:
    before = len(all_runs(client, deployment[1]))
    answer = post(app_url, payload)
    assert answer.status_code == 200 and answer.json()["ignored"].startswith(reason)
    assert len(all_runs(client, deployment[1])) == before


def test_refusals(
    app_url: str, client: SyncPrefectClient, deployment: tuple[str, uuid.UUID]
) -> None:
    before = len(all_runs(client, deployment[1]))
    body = json.dumps(push_payload()).encode()
    assert post(app_url, body, signature=None).status_code == 401
    assert post(app_url, body, signature=sign_github("wrong", body)).status_code == 401
    tampered = body.replace(SHA1.encode(), SHA2.encode())
    assert post(app_url, tampered, signature=sign_github(SECRET, body)).status_code == 401
    assert post(app_url, b"{not json").status_code == 400
    assert post(app_url, b'{"zen": "Keep it simple."}').status_code == 400
    too_big = b'{"pad": "' + b"x" * (65 * 1024) + b'"}'
    assert post(app_url, too_big).status_code == 413

    def chunks() -> Iterator[bytes]:  # no Content-Length: the cap applies while reading
        for _ in range(100):
            yield b"x" * 1024

    streamed = httpx.post(
        f"{app_url}/webhook/github", content=chunks(), headers={"X-GitHub-Event": "push"}
    )
    assert streamed.status_code == 413
    assert post(app_url, {"zen": "hi", "hook_id": 42}, event="ping").json()["ping"] is True
    issues = post(app_url, {"action": "opened"}, event="issues")
    assert issues.status_code == 200 and "not a push" in issues.json()["ignored"]
    assert len(all_runs(client, deployment[1])) == before


def test_secret_never_in_answers(app_url: str) -> None:
    answers = [
        post(app_url, b"{}", signature="sha256=" + "1" * 64),
        post(app_url, b"x" * (70 * 1024)),
        post(app_url, b"[1,"),
    ]
    assert all(SECRET not in a.text for a in answers)


def test_gitea_and_gitlab_senders(app_url: str) -> None:
    body = json.dumps(push_payload(full_name="acme/unknown")).encode()
    gitea = {"X-Gitea-Event": "push", "X-Gitea-Delivery": str(uuid.uuid4())}
    signed = {**gitea, "X-Gitea-Signature": sign_github(GITEA_SECRET, body).removeprefix("sha256=")}
    answer = httpx.post(f"{app_url}/webhook/gitea", content=body, headers=signed)
    assert answer.status_code == 200 and "acme/unknown" in answer.json()["ignored"]
    assert httpx.post(f"{app_url}/webhook/gitea", content=body, headers=gitea).status_code == 401
    gitlab = {"X-Gitlab-Event": "Push Hook", "X-Gitlab-Token": GITLAB_TOKEN}
    answer = httpx.post(f"{app_url}/webhook/gitlab", content=body, headers=gitlab)
    assert answer.status_code == 200 and "acme/unknown" in answer.json()["ignored"]
    wrong = {**gitlab, "X-Gitlab-Token": "guess"}
    assert httpx.post(f"{app_url}/webhook/gitlab", content=body, headers=wrong).status_code == 401
    assert httpx.post(f"{app_url}/webhook/bitbucket", content=body).status_code == 404


def test_secret_from_a_prefect_secret_block(client: SyncPrefectClient) -> None:
    from prefect.blocks.system import Secret

    name = f"webhook-test-{uuid.uuid4().hex[:8]}"
    Secret(value="from-the-block").save(name)
    try:
        from_block = Settings(github_webhook_secret_block=name, gitlab_webhook_secret_block=name)
        secrets = WebhookSecrets.from_settings(from_block)
        assert secrets.get("github").get_secret_value() == "from-the-block"
        with pytest.raises(SecretUnavailable) as shared:  # one value for GitHub and GitLab
            secrets.get("gitlab")
        assert "from-the" not in str(shared.value)
        both = Settings(github_webhook_secret="from-the-environment", github_webhook_secret_block=name)
        assert WebhookSecrets.from_settings(both).get("github").get_secret_value() == "from-the-environment"
        with pytest.raises(SecretUnavailable) as missing:
            WebhookSecrets.from_settings(Settings(github_webhook_secret_block="no-such-block")).get("github")
        assert "no-such-block" in str(missing.value) and "from-the" not in str(missing.value)
        with pytest.raises(SecretUnavailable, match="ECS_PIPELINE_GITHUB_WEBHOOK_SECRET"):
            WebhookSecrets().check()
    finally:
        client.delete_block_document(Secret.load(name)._block_document_id)


# -- untrusted input: per-sender secrets, replays, malformed headers, URL spellings --------


def test_each_sender_has_its_own_secret(app_url: str) -> None:
    body = json.dumps(push_payload(full_name="acme/unknown")).encode()
    github_signed = sign_github(SECRET, body)
    gitea = {"X-Gitea-Event": "push", "X-Gitea-Signature": github_signed.removeprefix("sha256=")}
    assert httpx.post(f"{app_url}/webhook/gitea", content=body, headers=gitea).status_code == 401
    gitlab = {"X-Gitlab-Event": "Push Hook", "X-Gitlab-Token": SECRET}
    assert httpx.post(f"{app_url}/webhook/gitlab", content=body, headers=gitlab).status_code == 401
    wrong = {"X-GitHub-Event": "push", "X-Hub-Signature-256": sign_github(GITEA_SECRET, body)}
    assert httpx.post(f"{app_url}/webhook/github", content=body, headers=wrong).status_code == 401


def test_a_sender_without_a_secret_is_off(deployment: tuple[str, uuid.UUID]) -> None:
    app = create_app([], WebhookSecrets({"github": SECRET}), PrefectRunStarter(deployment[0]))
    body = json.dumps(push_payload()).encode()
    with serving(app) as url:
        for sender, variable in (("gitea", "GITEA"), ("gitlab", "GITLAB")):
            answer = httpx.post(f"{url}/webhook/{sender}", content=body)
            assert answer.status_code == 404
            assert f"ECS_PIPELINE_{variable}_WEBHOOK_SECRET" in answer.json()["error"]
        github = post(url, body)
        assert github.status_code == 200 and "no service builds" in github.json()["ignored"]


def test_a_gitlab_token_equal_to_an_hmac_key_is_refused(
    deployment: tuple[str, uuid.UUID], caplog: pytest.LogCaptureFixture
) -> None:
    """GitLab sends its token in clear: sharing it would publish the GitHub signing key."""
    secrets = WebhookSecrets({"github": SECRET, "gitlab": SECRET})
    with pytest.raises(SecretUnavailable) as refused:
        secrets.check()
    assert "ECS_PIPELINE_GITLAB_WEBHOOK_SECRET" in str(refused.value)
    assert SECRET not in str(refused.value)
    body = json.dumps(push_payload(full_name="acme/unknown")).encode()
    with serving(create_app([], secrets, PrefectRunStarter(deployment[0]))) as url:
        headers = {"X-Gitlab-Event": "Push Hook", "X-Gitlab-Token": SECRET}
        answer = httpx.post(f"{url}/webhook/gitlab", content=body, headers=headers)
        assert answer.status_code == 503 and SECRET not in answer.text
        assert post(url, body).status_code == 200  # GitHub deliveries still work
    assert SECRET not in caplog.text


def test_a_refused_request_does_not_use_up_its_delivery_id(
    app_url: str, client: SyncPrefectClient, deployment: tuple[str, uuid.UUID], names: dict[str, str]
) -> None:
    sha = "3" * 40
    payload = push_payload(after=sha, full_name="acme/other")
    delivery = str(uuid.uuid4())
    forged = post(app_url, payload, delivery=delivery, signature=sign_github("guess", b"x"))
    assert forged.status_code == 401
    assert post(app_url, b'{"zen": "no push"}', delivery=delivery).status_code == 400
    assert post(app_url, b"{not json", delivery=delivery).status_code == 400
    accepted = post(app_url, payload, delivery=delivery)
    assert accepted.status_code == 202, accepted.text
    assert post(app_url, payload, delivery=delivery).json()["duplicate"] is True

    body = json.dumps(payload).encode()  # the same id from another sender is another delivery
    gitea = {
        "X-Gitea-Event": "push",
        "X-Gitea-Delivery": delivery,
        "X-Gitea-Signature": sign_github(GITEA_SECRET, body).removeprefix("sha256="),
    }
    other = httpx.post(f"{app_url}/webhook/gitea", content=body, headers=gitea)
    assert other.status_code == 202, other.text
    runs = [r for r in runs_for(client, deployment[1], names["other"]) if f"sha:{sha}" in r.tags]
    assert len(runs) == 2


@pytest.mark.parametrize(
    ("sender", "header"),
    [
        ("github", "X-Hub-Signature-256"),
        ("gitea", "X-Gitea-Signature"),
        ("gitlab", "X-Gitlab-Token"),
    ],
)
def test_non_ascii_signature_headers_are_401_not_500(app_url: str, sender: str, header: str) -> None:
    body = json.dumps(push_payload()).encode()
    for value in ("sha256=é" + "0" * 63, "\u00ff" * 64, "sha256=\u00e9\u00e9"):
        headers = {header: value.encode("latin-1"), "X-GitHub-Event": "push"}
        answer = httpx.post(f"{app_url}/webhook/{sender}", content=body, headers=headers)
        assert answer.status_code == 401, (value, answer.text)


def test_a_malformed_delivery_id_is_400_not_500(app_url: str) -> None:
    body = json.dumps(push_payload(full_name="acme/unknown")).encode()
    headers = {
        "X-GitHub-Event": "push",
        "X-GitHub-Delivery": "caf\u00e9 \u00ff".encode("latin-1"),
        "X-Hub-Signature-256": sign_github(SECRET, body),
    }
    answer = httpx.post(f"{app_url}/webhook/github", content=body, headers=headers)
    assert answer.status_code == 400 and "X-GitHub-Delivery" in answer.json()["error"].replace(
        "x-github-delivery", "X-GitHub-Delivery"
    )


def test_signatures_never_raise_on_odd_headers() -> None:
    for header in ("sha256=\u00e9", "\u00ff", " sha256=", "sha256=" + "z" * 64):
        assert not verify_github_signature(SECRET, b"{}", header)
        assert not verify_gitea_signature(SECRET, b"{}", header)
        assert not verify_gitlab_token(SECRET, header)
    assert verify_gitlab_token("t\u00e9st", "t\u00e9st".encode().decode("latin-1"))  # as HTTP hands it over


@pytest.mark.parametrize(
    ("ref", "deleted", "reason"),
    [
        ("refs/tags/v1", True, "tag deleted: refs/tags/v1"),
        ("refs/tags/v1", False, "tag push: refs/tags/v1"),
        ("refs/heads/main", True, "branch deleted: refs/heads/main"),
        ("refs/notes/commits", True, "ref deleted: refs/notes/commits"),
        ("refs/merge-requests/1/head", False, "not a branch: refs/merge-requests/1/head"),
        ("refs/heads/main", False, None),
    ],
)
def test_ignore_reasons_say_what_happened(ref: str, deleted: bool, reason: str | None) -> None:
    assert parse_push(push_payload(ref=ref, deleted=deleted)).ignore_reason() == reason


@pytest.mark.parametrize(
    "spelling",
    [
        "https://github.com/org/repo",
        "HTTPS://GitHub.com/org/repo",
        "github.com/org/repo",
        "GitHub.com/Org/Repo.git",
        "git@github.com:org/repo.git",
        "ssh://git@GITHUB.COM/org/repo",
    ],
)
def test_repository_spellings_match_both_ways(spelling: str) -> None:
    assert normalize_repo(spelling) == "github.com/org/repo"
    configured = make_service("web", "https://github.com/org/repo")
    push = parse_push({**push_payload(full_name="org/repo"), "repository": {"clone_url": spelling}})
    assert services_for_push([configured], push) == [configured]
    spelled = make_service("web", spelling)
    assert services_for_push([spelled], parse_push(push_payload(full_name="org/repo"))) == [spelled]


def test_scheme_less_hosts_the_services_name_are_known() -> None:
    configured = make_service("web", "https://git.example.com/org/repo.git")
    payload = {**push_payload(), "repository": {"clone_url": "git.example.com/org/repo"}}
    assert services_for_push([configured], parse_push(payload)) == [configured]
    assert normalize_repo("git.example.com/org/repo").startswith("/")  # elsewhere: a local path


def test_secrets_never_in_settings_logs_or_answers(
    deployment: tuple[str, uuid.UUID], caplog: pytest.LogCaptureFixture
) -> None:
    settings = Settings(github_webhook_secret=SECRET, gitlab_webhook_secret=GITLAB_TOKEN)
    assert SECRET not in repr(settings) and GITLAB_TOKEN not in str(settings.model_dump())
    caplog.set_level("DEBUG")
    secrets = WebhookSecrets({"github": SECRET}, {"gitea": "no-such-block"})
    body = json.dumps(push_payload()).encode()
    with serving(create_app([], secrets, PrefectRunStarter(deployment[0]))) as url:
        answers = [
            post(url, body, signature="sha256=" + "1" * 64),
            post(url, body),
            httpx.post(f"{url}/webhook/gitea", content=body, headers={"X-Gitea-Signature": "00"}),
            httpx.post(f"{url}/webhook/gitlab", content=body, headers={"X-Gitlab-Token": SECRET}),
        ]
    assert [a.status_code for a in answers] == [401, 200, 503, 404]
    assert all(SECRET not in a.text for a in answers)
    assert SECRET not in caplog.text and "no-such-block" in caplog.text


def test_form_encoded_payloads_are_read_like_json(app_url: str) -> None:
    """GitHub and Gitea can send ``payload=<json>`` as a form; the signature covers the raw form body."""
    payload = json.dumps(push_payload(full_name="acme/unknown"))
    form = urlencode({"payload": payload}).encode()
    headers = {"Content-Type": "application/x-www-form-urlencoded", "X-GitHub-Event": "push"}
    signed = {**headers, "X-Hub-Signature-256": sign_github(SECRET, form)}
    answer = httpx.post(f"{app_url}/webhook/github", content=form, headers=signed)
    assert answer.status_code == 200 and answer.json()["ignored"].startswith("no service builds from acme/unknown")
    gitea = {**headers, "X-Gitea-Event": "push", "X-Gitea-Signature": sign_github(GITEA_SECRET, form)[7:]}
    assert httpx.post(f"{app_url}/webhook/gitea", content=form, headers=gitea).status_code == 200
    signed_json = {**headers, "X-Hub-Signature-256": sign_github(SECRET, payload.encode())}
    assert httpx.post(f"{app_url}/webhook/github", content=form, headers=signed_json).status_code == 401
    for body in (b"payload=%7Bnot+json", b"zen=hi", urlencode([("payload", "{}"), ("payload", "{}")]).encode()):
        refused = {**headers, "X-Hub-Signature-256": sign_github(SECRET, body)}
        assert httpx.post(f"{app_url}/webhook/github", content=body, headers=refused).status_code == 400


def test_json_nested_too_deep_is_400_not_500(app_url: str) -> None:
    for body in (b"[" * 20_000 + b"]" * 20_000, b"{\"a\":" * 6_000 + b"1" + b"}" * 6_000):  # under the 64 KiB cap
        answer = post(app_url, body)
        assert answer.status_code == 400, answer.text
        assert answer.json()["error"].startswith("body is not JSON")


def test_gitlab_redeliveries_are_known_by_their_idempotency_key(
    app_url: str, client: SyncPrefectClient, deployment: tuple[str, uuid.UUID], names: dict[str, str]
) -> None:
    """GitLab 17.4+ keeps Idempotency-Key across retries (X-Gitlab-Event-UUID is per event, not per delivery)."""
    sha = "4" * 40
    project = {"path_with_namespace": "acme/other", "web_url": "https://github.com/acme/other",
               "git_http_url": "https://github.com/acme/other.git", "git_ssh_url": "git@github.com:acme/other.git"}
    body = json.dumps({"object_kind": "push", "ref": "refs/heads/main", "after": sha, "project": project}).encode()
    key = str(uuid.uuid4())

    def deliver() -> httpx.Response:
        headers = {"X-Gitlab-Event": "Push Hook", "X-Gitlab-Token": GITLAB_TOKEN, "Idempotency-Key": key,
                   "X-Gitlab-Event-UUID": str(uuid.uuid4())}
        return httpx.post(f"{app_url}/webhook/gitlab", content=body, headers=headers)

    assert deliver().status_code == 202
    again = deliver()
    assert again.status_code == 200 and again.json() == {"duplicate": True, "delivery": key}
    runs = [r for r in runs_for(client, deployment[1], names["other"]) if f"sha:{sha}" in r.tags]
    assert len(runs) == 1


def test_gitlab_system_hook_pushes_are_pushes(app_url: str) -> None:
    """GitLab's system hooks send every event as "System Hook"; event_name says which (push, tag_push, ...)."""
    project = {"path_with_namespace": "acme/unknown", "git_http_url": "https://github.com/acme/unknown.git"}
    headers = {"X-Gitlab-Event": "System Hook", "X-Gitlab-Token": GITLAB_TOKEN}
    for event_name, ref, ignored in (
        ("push", "refs/heads/main", "no service builds from acme/unknown branch main"),
        ("tag_push", "refs/tags/v1", "tag push: refs/tags/v1"),
        ("project_create", "refs/heads/main", "event System Hook is not a push"),
    ):
        body = {"event_name": event_name, "ref": ref, "after": SHA1, "project": project}
        answer = httpx.post(f"{app_url}/webhook/gitlab", content=json.dumps(body).encode(), headers=headers)
        assert answer.status_code == 200 and answer.json() == {"ignored": ignored}, answer.text
