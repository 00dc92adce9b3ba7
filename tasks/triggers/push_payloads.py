"""Push payloads: the body a sender posts, reduced to what decides whether and what to deploy.

Understands GitHub's payload and the look-alikes of Gitea and GitLab, sent as
JSON or, as GitHub and Gitea can, as a form field ``payload=``. Everything
here reads untrusted input: nothing raises on it but ``NotAnEvent``.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any
from urllib.parse import parse_qs

from tasks.build.source import redact_url
from tasks.config.models import ServiceConfig
from tasks.triggers.contract import NotAnEvent
from tasks.triggers.repositories import KNOWN_HOSTS, normalize_repo, service_repo

ZERO_SHA = "0" * 40
_SHA = re.compile(r"^[0-9a-f]{40}([0-9a-f]{24})?$")
_URL_KEYS = ("clone_url", "ssh_url", "html_url", "git_http_url", "git_ssh_url", "web_url", "url")


class PayloadError(NotAnEvent):
    """The body is JSON but not a push payload this module understands."""


@dataclass(frozen=True)
class PushEvent:
    """A push, reduced to what decides whether and what to deploy."""

    repo_urls: tuple[str, ...]
    repo_name: str
    ref: str
    sha: str
    deleted: bool

    @property
    def branch(self) -> str | None:
        return self.ref.removeprefix("refs/heads/") if self.ref.startswith("refs/heads/") else None

    def ignore_reason(self) -> str | None:
        """Why this push must not start a deploy, or None when it should."""
        deleted = self.deleted or self.sha == ZERO_SHA
        if self.ref.startswith("refs/tags/"):
            return f"tag deleted: {self.ref}" if deleted else f"tag push: {self.ref}"
        if self.branch is None:
            return f"ref deleted: {self.ref}" if deleted else f"not a branch: {self.ref}"
        return f"branch deleted: {self.ref}" if deleted else None


def decode_payload(body: bytes, content_type: str) -> Any:
    """The JSON payload, sent as JSON or as a form whose one ``payload`` field is JSON.

    The signature covers the raw body either way, so this runs only after it was checked.
    """
    try:
        if content_type.split(";")[0].strip().lower() == "application/x-www-form-urlencoded":
            fields = parse_qs(body.decode("ascii"), strict_parsing=True, max_num_fields=100)
            (text,) = fields.get("payload") or [""]
            return json.loads(text)
        return json.loads(body)
    except (ValueError, RecursionError):  # JSON, UTF-8, form syntax, not one payload field, nesting too deep
        raise NotAnEvent("body is not JSON (nor a form whose payload field is JSON)") from None


def _str(data: Mapping[str, Any], key: str) -> str:
    value = data.get(key)
    return value if isinstance(value, str) else ""


def parse_push(payload: Any) -> PushEvent:
    """Read a GitHub/Gitea (``repository``) or GitLab (``project``) push payload."""
    if not isinstance(payload, Mapping):
        raise PayloadError("push payload must be a JSON object")
    ref = _str(payload, "ref")
    sha = _str(payload, "after").lower()
    if not ref.startswith("refs/"):
        raise PayloadError("push payload has no 'ref' like refs/heads/<branch>")
    if not _SHA.match(sha):
        raise PayloadError("push payload has no 'after' commit SHA")
    repo = payload.get("project") or payload.get("repository")
    if not isinstance(repo, Mapping):
        raise PayloadError("push payload has no 'repository' object")
    urls = tuple(dict.fromkeys(u for u in (_str(repo, k) for k in _URL_KEYS) if u))
    if not urls:
        raise PayloadError("push payload's repository has no clone_url, ssh_url or html_url")
    name = _str(repo, "full_name") or _str(repo, "path_with_namespace") or redact_url(urls[0])  # logged, answered
    deleted = payload.get("deleted") is True or sha == ZERO_SHA
    return PushEvent(repo_urls=urls, repo_name=name, ref=ref, sha=sha, deleted=deleted)


def services_for_push(services: Iterable[ServiceConfig], push: PushEvent) -> list[ServiceConfig]:
    """The services that build from the pushed repository and branch.

    The hosts the services name count as known, so a payload may spell their URLs without a scheme.
    """
    configured = [(cfg, service_repo(cfg)) for cfg in services]
    hosts = KNOWN_HOSTS | {repo.split("/", 1)[0] for _, repo in configured if not repo.startswith("/")}
    pushed = {normalize_repo(u, hosts) for u in push.repo_urls}
    return [cfg for cfg, repo in configured if cfg.source.branch == push.branch and repo in pushed]
