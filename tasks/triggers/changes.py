"""Which services' branches moved: one ``git ls-remote`` per repository, compared with what is live.

Polling (``flows/polling.py``) starts a deploy run for every change found here;
this module only looks, so its rules are tested against real repositories
without a Prefect server.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

from tasks.build.source import redact_url
from tasks.config.models import ServiceConfig
from tasks.triggers.pushes import normalize_repo

LiveSha = Callable[[ServiceConfig], "str | None"]
ResolveHeads = Callable[[str, list[str]], dict[str, str]]


@dataclass(frozen=True)
class Change:
    service: str
    sha: str
    live: str | None
    repo: str
    branch: str


@dataclass
class PollResult:
    changes: list[Change] = field(default_factory=list)
    unchanged: list[str] = field(default_factory=list)
    errors: dict[str, str] = field(default_factory=dict)


def _default_resolver() -> ResolveHeads:
    from tasks.build.source import resolve_heads

    return resolve_heads


def group_by_repo(services: Iterable[ServiceConfig]) -> dict[str, list[ServiceConfig]]:
    """Services keyed by repository, however each config spells its URL."""
    groups: dict[str, list[ServiceConfig]] = {}
    for cfg in services:
        groups.setdefault(normalize_repo(cfg.repo_location), []).append(cfg)
    return groups


def find_changes(
    services: Sequence[ServiceConfig],
    live_sha: LiveSha,
    resolve: ResolveHeads | None = None,
    max_workers: int = 8,
) -> PollResult:
    """Services whose branch head differs from what is live: one ls-remote per repository."""
    live_of = live_sha
    resolve_fn = resolve or _default_resolver()
    groups = list(group_by_repo(services).values())

    def heads_of(group: list[ServiceConfig]) -> dict[str, str] | Exception:
        branches = sorted({cfg.source.branch for cfg in group})
        try:
            return resolve_fn(group[0].repo_location, branches)
        except Exception as exc:  # noqa: BLE001 - one bad repository must not stop the others
            return exc

    result = PollResult()
    with ThreadPoolExecutor(max_workers=max(1, min(max_workers, len(groups)))) as pool:
        for group, heads in zip(groups, pool.map(heads_of, groups), strict=True):
            for cfg in group:
                _compare(cfg, heads, live_of, result)
    return result


def _compare(
    cfg: ServiceConfig, heads: dict[str, str] | Exception, live_of: LiveSha, result: PollResult
) -> None:
    if isinstance(heads, Exception):
        result.errors[cfg.name] = redact_url(str(heads))
        return
    head = heads.get(cfg.source.branch)
    if head is None:
        repo = redact_url(cfg.repo_location)
        result.errors[cfg.name] = f"branch {cfg.source.branch} not found in {repo}"
        return
    try:
        live = live_of(cfg)
    except Exception as exc:  # noqa: BLE001 - reported per service, the others still poll
        result.errors[cfg.name] = f"cannot read the live release: {redact_url(str(exc))}"
        return
    if live == head:
        result.unchanged.append(cfg.name)
    else:
        change = Change(cfg.name, head, live, redact_url(cfg.repo_location), cfg.source.branch)
        result.changes.append(change)
