"""One spelling per repository, so a push's URLs, a service's ``source.repo`` and polling's groups meet.

Every trigger compares repositories: a push names its repository in up to
seven URL spellings, a service config in one more, and polling asks each
repository once however many services spell it.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from pathlib import Path
from urllib.parse import urlsplit

from tasks.config.models import ServiceConfig

_SCP_LIKE = re.compile(r"^(?:[^@/]+@)?(?P<host>[^:/]+):(?P<path>(?!//).+)$")
# Hosts recognised without a scheme (``github.com/org/repo``); other hosts need one.
KNOWN_HOSTS = frozenset(
    {"github.com", "gitlab.com", "bitbucket.org", "codeberg.org", "gitea.com", "dev.azure.com"}
)


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


def group_by_repo(services: Iterable[ServiceConfig]) -> dict[str, list[ServiceConfig]]:
    """Services keyed by repository, however each config spells its URL."""
    groups: dict[str, list[ServiceConfig]] = {}
    for cfg in services:
        groups.setdefault(normalize_repo(cfg.repo_location), []).append(cfg)
    return groups
