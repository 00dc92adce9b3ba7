"""Git pushes: signatures, payloads, which services a push concerns, replays.

Pure functions and one small in-memory store, so the webhook app in
``flows/webhook.py`` stays a thin shell and every rule here is tested with
plain tables. Understands GitHub's payload and the look-alikes of Gitea and
GitLab. Everything here reads untrusted input: nothing raises on a malformed
header, and no message quotes a secret.
"""

from __future__ import annotations

import hashlib
import hmac
import re
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from tasks.build.source import redact_url
from tasks.config.models import ServiceConfig

ZERO_SHA = "0" * 40
_SHA = re.compile(r"^[0-9a-f]{40}([0-9a-f]{24})?$")
_SCP_LIKE = re.compile(r"^(?:[^@/]+@)?(?P<host>[^:/]+):(?P<path>(?!//).+)$")
# Hosts recognised without a scheme (``github.com/org/repo``); other hosts need one.
KNOWN_HOSTS = frozenset(
    {"github.com", "gitlab.com", "bitbucket.org", "codeberg.org", "gitea.com", "dev.azure.com"}
)


class PayloadError(ValueError):
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


# -- signatures ---------------------------------------------------------------


def _hmac_hex(secret: str, body: bytes) -> bytes:
    return hmac.new(secret.encode(), body, hashlib.sha256).hexdigest().encode()


def _header_bytes(header: str | None, encoding: str = "ascii") -> bytes | None:
    """A header as bytes, or None when absent or not in ENCODING (a forged header is just wrong)."""
    if header is None:
        return None
    try:
        return header.strip().encode(encoding)
    except UnicodeEncodeError:
        return None


def verify_github_signature(secret: str, body: bytes, header: str | None) -> bool:
    """Check ``X-Hub-Signature-256: sha256=<hex>`` in constant time."""
    given = _header_bytes(header)
    if not secret or not given or not given.startswith(b"sha256="):
        return False
    return hmac.compare_digest(given[len(b"sha256=") :].lower(), _hmac_hex(secret, body))


def verify_gitea_signature(secret: str, body: bytes, header: str | None) -> bool:
    """Check ``X-Gitea-Signature: <hex>`` (HMAC-SHA256 of the body, no prefix)."""
    given = _header_bytes(header)
    if not secret or not given:
        return False
    return hmac.compare_digest(given.lower(), _hmac_hex(secret, body))


def verify_gitlab_token(secret: str, header: str | None) -> bool:
    """GitLab sends the shared secret itself in ``X-Gitlab-Token``.

    HTTP servers hand headers over decoded as latin-1: encoding back gives the bytes sent.
    """
    given = None if header is None else _header_bytes(header, "latin-1")
    if not secret or given is None:
        return False
    return hmac.compare_digest(given, secret.encode())


def sign_github(secret: str, body: bytes) -> str:
    """The ``X-Hub-Signature-256`` value GitHub would send for BODY."""
    return "sha256=" + _hmac_hex(secret, body).decode()


# -- payloads -----------------------------------------------------------------


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
    keys = ("clone_url", "ssh_url", "html_url", "git_http_url", "git_ssh_url", "web_url", "url")
    urls = tuple(dict.fromkeys(u for u in (_str(repo, k) for k in keys) if u))
    if not urls:
        raise PayloadError("push payload's repository has no clone_url, ssh_url or html_url")
    name = _str(repo, "full_name") or _str(repo, "path_with_namespace") or redact_url(urls[0])  # logged, answered
    deleted = payload.get("deleted") is True or sha == ZERO_SHA
    return PushEvent(repo_urls=urls, repo_name=name, ref=ref, sha=sha, deleted=deleted)


# -- repositories and services --------------------------------------------------


def normalize_repo(location: str, known_hosts: frozenset[str] = KNOWN_HOSTS) -> str:
    """One spelling per repository: host/path for remotes, the real path for local ones.

    ``HTTPS://GitHub.com/Acme/Shop.git/``, ``git@github.com:acme/shop``,
    ``ssh://git@github.com:22/acme/shop.git`` and, for KNOWN_HOSTS, the scheme-less
    ``github.com/acme/shop`` all become ``github.com/acme/shop``.
    """
    loc = location.strip()
    if loc.lower().startswith("file://"):
        return _normalize_path(urlsplit(loc).path)
    if "://" in loc:
        parts = urlsplit(loc)
        host = (parts.hostname or "").lower()
        return _join_remote(host, parts.path)
    scp = _SCP_LIKE.match(loc)
    if scp and not loc.startswith(("/", ".", "~")):
        return _join_remote(scp["host"].lower(), scp["path"])
    first, _, rest = loc.partition("/")
    if first.lower() in known_hosts and rest:
        return _join_remote(first.lower(), rest)
    return _normalize_path(loc)


def _join_remote(host: str, path: str) -> str:
    path = path.strip("/").removesuffix(".git").strip("/")
    return f"{host}/{path.lower()}"


def _normalize_path(path: str) -> str:
    p = Path(path).expanduser().resolve()
    return str(p.parent if p.name == ".git" else p)


def service_repo(cfg: ServiceConfig) -> str:
    """The normalised repository of CFG: its URL as written when that is remote, else its local path."""
    written = normalize_repo(cfg.source.repo)
    return written if not written.startswith("/") else normalize_repo(cfg.repo_location)


def services_for_push(services: Iterable[ServiceConfig], push: PushEvent) -> list[ServiceConfig]:
    """The services that build from the pushed repository and branch.

    The hosts the services name count as known, so a payload may spell their URLs without a scheme.
    """
    configured = [(cfg, service_repo(cfg)) for cfg in services]
    hosts = KNOWN_HOSTS | {repo.split("/", 1)[0] for _, repo in configured if not repo.startswith("/")}
    pushed = {normalize_repo(u, hosts) for u in push.repo_urls}
    return [cfg for cfg, repo in configured if cfg.source.branch == push.branch and repo in pushed]


# -- replays --------------------------------------------------------------------


class DeliveryCache:
    """Remembers recent delivery ids so a redelivered webhook starts nothing twice.

    Bounded (oldest forgotten first) and time-limited; safe across threads.
    """

    def __init__(
        self,
        max_entries: int = 10_000,
        ttl_seconds: float = 24 * 3600,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if max_entries < 1 or ttl_seconds <= 0:
            raise ValueError("max_entries must be >= 1 and ttl_seconds > 0")
        self._max = max_entries
        self._ttl = ttl_seconds
        self._clock = clock
        self._seen: OrderedDict[str, float] = OrderedDict()
        self._lock = threading.Lock()

    def check_and_add(self, delivery_id: str) -> bool:
        """True when DELIVERY_ID was seen within the TTL; records it otherwise."""
        now = self._clock()
        with self._lock:
            self._expire(now)
            if delivery_id in self._seen:
                self._seen[delivery_id] = now
                self._seen.move_to_end(delivery_id)
                return True
            self._seen[delivery_id] = now
            while len(self._seen) > self._max:
                self._seen.popitem(last=False)
            return False

    def forget(self, delivery_id: str) -> None:
        """Let a delivery through again, e.g. when starting its runs failed."""
        with self._lock:
            self._seen.pop(delivery_id, None)

    def __len__(self) -> int:
        with self._lock:
            self._expire(self._clock())
            return len(self._seen)

    def _expire(self, now: float) -> None:
        while self._seen:
            key, added = next(iter(self._seen.items()))
            if now - added < self._ttl:
                return
            del self._seen[key]
