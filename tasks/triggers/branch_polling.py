"""Branch polling as a trigger: which services' branches moved, one ``git ls-remote`` per repository.

For repositories that cannot send webhooks. Its event is the branch heads git
reported (``BranchHeads``); reading it compares each service's head with what
is live. The ``poll-changes`` flow (``flows/polling.py``) starts the runs
(``poll_runs.py``); this module only looks, so its rules are tested against
real repositories without a Prefect server.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

from tasks.build.source import redact_url
from tasks.config.models import ServiceConfig
from tasks.triggers.contract import RunTrigger, TriggeredCommit
from tasks.triggers.repositories import group_by_repo

LiveSha = Callable[[ServiceConfig], "str | None"]
ResolveHeads = Callable[[str, list[str]], dict[str, str]]


@dataclass(frozen=True)
class Change(TriggeredCommit):
    """A service whose branch head (``sha``) is not what is live."""

    live: str | None
    repo: str
    branch: str


@dataclass
class PollResult:
    """One poll's reading: the changes to release, the services up to date, the ones it could not judge."""

    changes: list[Change] = field(default_factory=list)
    unchanged: list[str] = field(default_factory=list)
    errors: dict[str, str] = field(default_factory=dict)

    @property
    def commits(self) -> list[Change]:
        return self.changes

    @property
    def ignored(self) -> str | None:
        return None if self.changes else "no service's branch moved"


@dataclass(frozen=True)
class BranchHeads:
    """One poll's event: each repository's heads as git reported them, or why it could not say."""

    by_repo: dict[str, dict[str, str] | Exception]


def _default_resolver() -> ResolveHeads:
    from tasks.build.source import resolve_heads

    return resolve_heads


class BranchPoller:
    """Polling as a trigger: LIVE_SHA says what a service runs, RESOLVE asks a repository for its heads."""

    kind: RunTrigger = "poll"

    def __init__(self, live_sha: LiveSha, resolve: ResolveHeads | None = None, max_workers: int = 8) -> None:
        self.live_sha = live_sha
        self.resolve = resolve or _default_resolver()
        self.max_workers = max_workers

    def fetch(self, services: Sequence[ServiceConfig]) -> BranchHeads:
        """Ask each repository once, in parallel, for the branches its services build from."""
        groups = list(group_by_repo(services).items())

        def heads_of(group: list[ServiceConfig]) -> dict[str, str] | Exception:
            branches = sorted({cfg.source.branch for cfg in group})
            try:
                return self.resolve(group[0].repo_location, branches)
            except Exception as exc:  # noqa: BLE001 - one bad repository must not stop the others
                return exc

        with ThreadPoolExecutor(max_workers=max(1, min(self.max_workers, len(groups)))) as pool:
            found = pool.map(heads_of, [group for _, group in groups])
            return BranchHeads({repo: heads for (repo, _), heads in zip(groups, found, strict=True)})

    def authenticate(self, event: BranchHeads) -> None:
        """Nothing to check here: git fetched the heads over the repository's own transport (TLS, SSH host keys)."""

    def read(self, event: BranchHeads, services: Sequence[ServiceConfig]) -> PollResult:
        """Services whose branch head differs from what is live; errors per service, the others still read."""
        result = PollResult()
        for repo, group in group_by_repo(services).items():
            heads = event.by_repo.get(repo, LookupError(f"{repo} was not polled"))
            for cfg in group:
                self._compare(cfg, heads, result)
        return result

    def _compare(self, cfg: ServiceConfig, heads: dict[str, str] | Exception, result: PollResult) -> None:
        if isinstance(heads, Exception):
            result.errors[cfg.name] = redact_url(str(heads))
            return
        head = heads.get(cfg.source.branch)
        if head is None:
            repo = redact_url(cfg.repo_location)
            result.errors[cfg.name] = f"branch {cfg.source.branch} not found in {repo}"
            return
        try:
            live = self.live_sha(cfg)
        except Exception as exc:  # noqa: BLE001 - reported per service, the others still poll
            result.errors[cfg.name] = f"cannot read the live release: {redact_url(str(exc))}"
            return
        if live == head:
            result.unchanged.append(cfg.name)
        else:
            result.changes.append(Change(cfg, head, live, redact_url(cfg.repo_location), cfg.source.branch))


def find_changes(
    services: Sequence[ServiceConfig],
    live_sha: LiveSha,
    resolve: ResolveHeads | None = None,
    max_workers: int = 8,
) -> PollResult:
    """Services whose branch head differs from what is live: one ls-remote per repository."""
    poller = BranchPoller(live_sha, resolve, max_workers)
    heads = poller.fetch(services)
    poller.authenticate(heads)
    return poller.read(heads, services)
