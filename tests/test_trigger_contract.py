"""Every trigger keeps the one contract: it refuses an event it cannot authenticate and yields the pushed commit.

One row per implementation, from real payload bytes (the webhook senders) or a real repository (polling).
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from starlette.datastructures import Headers

from harness.git import git
from tasks.config.models import ServiceConfig, parse_service
from tasks.triggers.branch_polling import BranchPoller
from tasks.triggers.contract import NotAuthentic, Trigger, TriggeredCommit
from tasks.triggers.webhook_secrets import WebhookSecrets
from tasks.triggers.webhooks import WebhookDelivery, sign_github, webhook_senders

SHA = "6113728f27ae82c7b1a177c8d03f9e96e0adf246"
SECRETS = {"github": "github-hmac-key-1", "gitea": "gitea-hmac-key-2", "gitlab": "gitlab-token-3"}
REPO = {"full_name": "acme/shop", "clone_url": "https://git.example.com/acme/shop.git",
        "ssh_url": "git@git.example.com:acme/shop.git", "html_url": "https://git.example.com/acme/shop"}
GITLAB_PROJECT = {"path_with_namespace": "acme/shop", "git_http_url": REPO["clone_url"],
                  "git_ssh_url": REPO["ssh_url"], "web_url": REPO["html_url"]}
PAYLOADS = {  # as each sender posts a push to main, abridged to fields it always sends
    "github": {"ref": "refs/heads/main", "before": "0" * 40, "after": SHA, "repository": REPO,
               "pusher": {"name": "dev"}, "created": False, "deleted": False, "forced": False,
               "commits": [{"id": SHA, "message": "Change"}], "head_commit": {"id": SHA}},
    "gitea": {"ref": "refs/heads/main", "before": "0" * 40, "after": SHA, "compare_url": "",
              "commits": [{"id": SHA, "message": "Change\n"}], "repository": REPO, "pusher": {"login": "dev"}},
    "gitlab": {"object_kind": "push", "event_name": "push", "ref": "refs/heads/main", "before": "0" * 40,
               "after": SHA, "checkout_sha": SHA, "project": GITLAB_PROJECT, "commits": [{"id": SHA}]},
}


def headers_for(sender: str, body: bytes, secret: str) -> dict[str, str]:
    """What SENDER sends with BODY when its secret is SECRET."""
    delivery = str(uuid.uuid4())
    if sender == "github":
        signed = sign_github(secret, body)
        return {"X-GitHub-Event": "push", "X-GitHub-Delivery": delivery, "X-Hub-Signature-256": signed}
    if sender == "gitea":
        signature = sign_github(secret, body).removeprefix("sha256=")
        return {"X-Gitea-Event": "push", "X-Gitea-Delivery": delivery, "X-Gitea-Signature": signature}
    return {"X-Gitlab-Event": "Push Hook", "Idempotency-Key": delivery, "X-Gitlab-Token": secret}


def service(repo: str) -> ServiceConfig:
    data = {"name": "web", "source": {"repo": repo, "branch": "main"}, "ecr": {"repository": "web"},
            "ecs": {"cluster": "c", "service": "web", "container": "web", "container_port": 80},
            "task_definition": "taskdef.json", "strategy": {"type": "rolling"}}
    return parse_service(data, source="web.yaml")


@dataclass
class Row:
    """A trigger, a genuine event naming SHA, a forged one (None when no one can forge it), its services."""

    trigger: Any
    genuine: Any
    forged: Any
    services: list[ServiceConfig]
    sha: str


def webhook_row(sender: str, tmp_path: Path) -> Row:
    body = json.dumps(PAYLOADS[sender]).encode()
    other = next(s for s in SECRETS if s != sender)  # another sender's secret: one secret per sender
    return Row(
        webhook_senders(WebhookSecrets(SECRETS))[sender],
        WebhookDelivery(Headers(headers_for(sender, body, SECRETS[sender])), body),
        WebhookDelivery(Headers(headers_for(sender, body, SECRETS[other])), body),
        [service(REPO["clone_url"])],
        SHA,
    )


def polling_row(tmp_path: Path) -> Row:
    repo = tmp_path / "repo"
    repo.mkdir()
    git(repo, "init", "-q", "-b", "main")
    git(repo, "commit", "-q", "--allow-empty", "-m", "First")
    live = git(repo, "rev-parse", "HEAD")
    git(repo, "commit", "-q", "--allow-empty", "-m", "Second")
    services = [service(str(repo))]
    poller = BranchPoller(live_sha=lambda cfg: live)
    return Row(poller, poller.fetch(services), None, services, git(repo, "rev-parse", "HEAD"))


ROWS: dict[str, Callable[[Path], Row]] = {
    "github": lambda p: webhook_row("github", p),
    "gitea": lambda p: webhook_row("gitea", p),
    "gitlab": lambda p: webhook_row("gitlab", p),
    "polling": polling_row,
}


@pytest.mark.parametrize("name", sorted(ROWS))
def test_every_trigger_keeps_the_contract(name: str, tmp_path: Path) -> None:
    row = ROWS[name](tmp_path)
    assert isinstance(row.trigger, Trigger) and row.trigger.kind in ("push", "poll")
    if row.forged is not None:
        with pytest.raises(NotAuthentic) as refused:
            row.trigger.authenticate(row.forged)
        assert not any(secret in str(refused.value) for secret in SECRETS.values())
    row.trigger.authenticate(row.genuine)
    reading = row.trigger.read(row.genuine, row.services)
    assert reading.ignored is None
    assert [(c.service, c.sha) for c in reading.commits] == [("web", row.sha)]
    assert all(isinstance(c, TriggeredCommit) and c.config is row.services[0] for c in reading.commits)
