"""deploy-service runs: how they are created and tagged, how they are found, how they give way.

Every trigger (webhook, polling, CLI) creates runs through ``create_deploy_run``
so they all carry the tags searches rely on. A newer commit for a service
makes older waiting runs pointless: with ``queueing: supersede`` (the default)
they end Cancelled "Superseded by <run>"; with ``queueing: queue`` every run
deploys in turn.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterable, Sequence
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, Literal
from uuid import UUID

from prefect.client.orchestration import SyncPrefectClient, get_client
from prefect.client.schemas.filters import (
    FlowFilter,
    FlowFilterName,
    FlowRunFilter,
    FlowRunFilterEndTime,
    FlowRunFilterState,
    FlowRunFilterStateType,
    FlowRunFilterTags,
)
from prefect.client.schemas.objects import FlowRun, State, StateType
from prefect.context import FlowRunContext
from prefect.states import Cancelled
from prefect.types import DateTime

from tasks.build import source
from tasks.config.models import ServiceConfig
from tasks.core.errors import PipelineError
from tasks.core.settings import DEPLOY_DEPLOYMENT as DEPLOY_DEPLOYMENT  # where runs are made, too

DEPLOY_FLOW = "deploy-service"
FLEET_DEPLOYMENT = "release-fleet/release-fleet"
WAITING = [StateType.SCHEDULED, StateType.PENDING, StateType.RUNNING, StateType.PAUSED]
_FUTURE_SCHEDULE = timedelta(seconds=60)

Queueing = Literal["supersede", "queue"]
NOT_NEWER = "Not newer than live"
# (base, other) -> how commit OTHER relates to commit BASE in the service's repository
CommitOrder = Callable[[str, str], source.Ancestry]


def queueing_mode(cfg: ServiceConfig | None) -> Queueing:
    """The service's ``queueing`` setting; ``supersede`` when the config has none."""
    mode = getattr(cfg, "queueing", "supersede") if cfg is not None else "supersede"
    return "queue" if mode == "queue" else "supersede"


def run_tags(service: str, sha: str | None, origin: str) -> list[str]:
    """Tags every deploy-service run carries; superseding and polling search by them."""
    tags = [f"service:{service}", f"trigger:{origin}"]
    return [*tags, f"sha:{sha}"] if sha else tags


def run_parameters(service: str, sha: str | None) -> dict[str, Any]:
    return {"service": service, "sha": sha}


def fleet_run_name(selection: Sequence[str] | None, shas: Iterable[str | None] = (), count: int | None = None) -> str:
    """What a fleet run releases, for the runs list: ``fleet sample-app,api @a1b2c3d``, ``fleet 20 services @head``.

    SELECTION: the names or globs asked for (none: every service), shown while they fit; else COUNT services.
    SHAS: the commits released; one commit is named, several (each service's branch head) read ``head``.
    """
    picked = ",".join(selection or [])
    if picked and len(picked) <= 40:
        what = picked
    elif count is not None:
        what = f"{count} service" + ("" if count == 1 else "s")
    else:
        what = f"{len(selection)} selections" if selection else "all services"
    commits = {sha[:7] for sha in shas if sha}
    return f"fleet {what} @{commits.pop() if len(commits) == 1 else 'head'}"


def create_deploy_run(
    client: SyncPrefectClient,
    deployment_id: UUID,
    service: str,
    sha: str,
    origin: str,
    *,
    idempotency_key: str | None = None,
) -> FlowRun:
    """One Scheduled deploy-service run for SERVICE at SHA, tagged so superseding and polling find it."""
    return client.create_flow_run_from_deployment(
        deployment_id,
        parameters=run_parameters(service, sha),
        tags=run_tags(service, sha, origin),
        idempotency_key=idempotency_key,
        name=f"{service}-{sha[:7]}",
    )


def create_fleet_run(
    client: SyncPrefectClient,
    deployment_id: UUID,
    services: list[str],
    sha: str,
    origin: str,
    *,
    idempotency_key: str | None = None,
) -> FlowRun:
    """One Scheduled release-fleet run for SERVICES at SHA: one API call however many services."""
    return client.create_flow_run_from_deployment(
        deployment_id,
        parameters={"services": services, "sha": sha, "origin": origin},
        tags=["fleet", f"trigger:{origin}", f"sha:{sha}"],
        idempotency_key=idempotency_key,
        name=fleet_run_name(services, [sha], len(services)),
    )


# -- runs of deploy-service -------------------------------------------------------


def read_service_runs(
    client: SyncPrefectClient,
    service: str,
    states: list[StateType] | None = None,
    sha: str | None = None,
) -> list[FlowRun]:
    """deploy-service runs for SERVICE (optionally one SHA), oldest first.

    Runs are found by their ``service:`` tag, and unfinished ones also by their
    parameters: a deployment trigger or the UI's Run button starts runs without
    tags, and those must be superseded too.
    """
    tags = [f"service:{service}"] + ([f"sha:{sha}"] if sha else [])
    found = {r.id: r for r in _read_runs(client, states, FlowRunFilterTags(all_=tags))}
    unfinished = [s for s in (states or WAITING) if s in WAITING]
    if unfinished:
        for run in _read_runs(client, unfinished, None):
            params = run.parameters or {}
            if params.get("service") == service and sha in (None, params.get("sha")):
                found.setdefault(run.id, run)
    return sorted(found.values(), key=_age_key)


def _read_runs(
    client: SyncPrefectClient, states: list[StateType] | None, tags: FlowRunFilterTags | None,
    ended_after: DateTime | None = None,
) -> list[FlowRun]:
    run_filter = FlowRunFilter(tags=tags)
    if states is not None:
        run_filter.state = FlowRunFilterState(type=FlowRunFilterStateType(any_=states))
    if ended_after is not None:
        run_filter.end_time = FlowRunFilterEndTime(after_=ended_after)
    return client.read_flow_runs(
        flow_filter=FlowFilter(name=FlowFilterName(any_=[DEPLOY_FLOW])),
        flow_run_filter=run_filter,
        limit=200,
    )


def _age_key(run: FlowRun) -> tuple[datetime, str]:
    created = run.created or datetime.min.replace(tzinfo=UTC)
    return (created, str(run.id))


def commit_order_for(cfg: ServiceConfig | None, cache_dir: Path | None) -> CommitOrder | None:
    """Compare commits in CFG's repository (git ancestry); None when there is nothing to compare with."""
    if cfg is None or cache_dir is None:
        return None
    repo, branch = cfg.repo_location, cfg.source.branch

    def order(base: str, other: str) -> source.Ancestry:
        known = _ORDERS.get((repo, base, other))
        if known is not None:
            return known
        try:
            found = source.commit_order(repo, base, other, cache_dir=cache_dir)
            if found == "newer" and not source.in_branch(repo, branch, other, cache_dir=cache_dir):
                return "diverged"  # ahead, but off the branch (a feature commit pushed as the branch): no winner
        except PipelineError:  # git unreachable: fall back to creation order
            return "unknown"
        if found not in ("unknown", "missing"):  # how two commits relate never changes; these may (a fetch)
            with _ORDERS_LOCK:
                _ORDERS[(repo, base, other)] = found
        return found

    return order


# (repo, base, other) -> how OTHER relates to BASE, once git told: each release compares its commit with
# every run of its service (git subprocesses under the repository's lock, which a monorepo fleet shares).
_ORDERS: dict[tuple[str, str, str], source.Ancestry] = {}
_ORDERS_LOCK = threading.Lock()


def wins_over(run: FlowRun, other: FlowRun, order: CommitOrder | None) -> bool:
    """Whether RUN's release should go rather than OTHER's.

    By git ancestry when both commits are known: a descendant wins, an ancestor
    gives way, so a replayed older push never displaces a newer commit, and of
    two diverged commits (a push from before a force-push, replayed) neither
    displaces the other: each release checks its own commit against the branch
    and the live one. A commit the repository does not have never wins. By
    creation time otherwise (same commit, only OTHER's commit unknown, or an
    explicit ``allow_older`` release on either side).
    """
    mine, theirs = run.parameters or {}, other.parameters or {}
    sha, other_sha = mine.get("sha"), theirs.get("sha")
    explicit = mine.get("allow_older") or theirs.get("allow_older")
    if order is not None and sha and other_sha and sha != other_sha and not explicit:
        relation = order(str(other_sha), str(sha))
        if relation in ("newer", "older", "diverged", "missing"):
            return relation == "newer"
    return _age_key(run) > _age_key(other)


def superseded_by(
    service: str,
    my_flow_run_id: UUID | str,
    *,
    cfg: ServiceConfig | None = None,
    client: SyncPrefectClient | None = None,
    cache_dir: Path | None = None,
) -> str | None:
    """The id of another deploy-service run for SERVICE that makes this one pointless.

    The pipeline calls this right after it holds the service's concurrency slot
    and ends itself Cancelled "Superseded by <id>" when it gets one. The other
    run wins by ``wins_over`` (its commit descends from this one's; with
    CACHE_DIR for git, else by creation time); it counts while not finished,
    and also once Completed after this run was made, because slots are not
    handed out in arrival order and an older commit must never be deployed over
    a newer one (a run that completed before this one existed never waited
    beside it: the live commit it left is what the release itself checks
    against). Always None
    with ``queueing: queue``. Without CFG: the default queueing, by creation time.
    """
    if queueing_mode(cfg) == "queue":
        return None
    order = commit_order_for(cfg, cache_dir)
    if client is None:
        with get_client(sync_client=True) as own:
            return _winner(own, service, my_flow_run_id, order)
    return _winner(client, service, my_flow_run_id, order)


def _winner(
    client: SyncPrefectClient, service: str, my_flow_run_id: UUID | str, order: CommitOrder | None
) -> str | None:
    me = this_run() if _is_this_run(my_flow_run_id) else None
    me = me or client.read_flow_run(UUID(str(my_flow_run_id)))
    runs = {r.id: r for r in _read_runs(client, WAITING, None)  # every waiting run, tagged or not
            if (r.parameters or {}).get("service") == service}
    # Finished ones only when they finished after this run was made: they waited beside it. (Every
    # Completed run of the service, read at each release, grew with its history: 200 runs cost the
    # server and this process about 0.1 s each release.)
    tags = FlowRunFilterTags(all_=[f"service:{service}"])
    for run in _read_runs(client, [StateType.COMPLETED], tags, ended_after=me.created):
        runs.setdefault(run.id, run)
    winners = [r for r in sorted(runs.values(), key=_age_key) if r.id != me.id and wins_over(r, me, order)]
    return str(winners[-1].id) if winners else None


def cancel_waiting_runs(
    service: str,
    except_id: UUID | str,
    *,
    client: SyncPrefectClient | None = None,
    order: CommitOrder | None = None,
) -> list[str]:
    """Cancel SCHEDULED runs for SERVICE that EXCEPT_ID wins over (``wins_over``); returns their ids.

    Runs scheduled deliberately for later (more than a minute ahead) are left alone.
    """
    if client is None:
        with get_client(sync_client=True) as own:
            return cancel_waiting_runs(service, except_id, client=own, order=order)
    keep = client.read_flow_run(UUID(str(except_id)))
    horizon = datetime.now(UTC) + _FUTURE_SCHEDULE
    cancelled: list[str] = []
    for run in read_service_runs(client, service, [StateType.SCHEDULED]):
        if run.id == keep.id or not wins_over(keep, run, order):
            continue
        if run.expected_start_time and run.expected_start_time > horizon:
            continue
        state: State[Any] = Cancelled(message=f"Superseded by {keep.id}")
        result = client.set_flow_run_state(run.id, state)
        if result.state is not None and result.state.is_cancelled():
            cancelled.append(str(run.id))
    return cancelled


def already_started(client: SyncPrefectClient, service: str, sha: str) -> FlowRun | None:
    """A run for SERVICE at SHA that is waiting, running, finished, or refused as not newer than live.

    Cancelled runs do not count (superseded ones may be wanted again), except
    refused ones: an older branch head would be refused again at every poll.
    """
    states = [*WAITING, StateType.COMPLETED, StateType.FAILED, StateType.CRASHED, StateType.CANCELLED]
    runs = read_service_runs(client, service, states, sha=sha)
    counted = [r for r in runs if r.state_type != StateType.CANCELLED or _refused(r)]
    return counted[-1] if counted else None


def _refused(run: FlowRun) -> bool:
    """Refused as not newer than live: the outcome leads the state message (older runs: the state name)."""
    message = run.state.message if run.state else None
    return run.state_name == NOT_NEWER or (message or "").startswith(NOT_NEWER + ":")


def ensure_run_tags(
    flow_run_id: UUID | str, service: str, sha: str | None, origin: str | None = None, *, name: str | None = None
) -> None:
    """Give a run started without tags (UI Run button, event trigger) the ones searches rely on.

    ORIGIN: also its ``trigger:`` tag (the CLI's run as it starts, a fleet run's children once they are over).
    NAME: also rename the run, in the same update.
    """
    with get_client(sync_client=True) as client:
        tags, current = run_labels(flow_run_id, client)
        wanted = [t for t in run_tags(service, sha, origin or "") if origin or not t.startswith("trigger:")]
        missing = [t for t in wanted if t not in tags]
        if missing or (name and name != current):
            relabel_run(client, flow_run_id, [*tags, *missing], name)


# A run's tags and name as this process last wrote them, or as its engine read them when the run
# started: the run's own writes (its service and commit tags, its name, its verdict) need no read
# before each. Keyed by run id and by the engine's FlowRun object, so a retry or a resumed run
# starts again from what its engine read; a run written from outside its own context (a fleet
# tagging its children) is read first, as before.
_LABELS: dict[str, tuple[int, list[str], str]] = {}
_LABELS_KEPT = 1000


def this_run() -> FlowRun | None:
    """The flow run this code runs in, as its engine holds it (None outside a run)."""
    context = FlowRunContext.get()
    return context.flow_run if context is not None else None


def _is_this_run(run_id: UUID | str) -> bool:
    run = this_run()
    return run is not None and str(run.id) == str(run_id)


def run_labels(run_id: UUID | str, client: SyncPrefectClient | None = None) -> tuple[list[str], str]:
    """RUN_ID's tags and name: known in this process (its own run) or read from the API (CLIENT's, or one
    opened for it)."""
    key, run = str(run_id), this_run()
    marker = id(run) if run is not None and str(run.id) == key else 0
    known = _LABELS.get(key)
    if known is not None and marker and known[0] == marker:
        return list(known[1]), known[2]
    if marker and run is not None:
        tags, name = list(run.tags), run.name
    elif client is None:
        with get_client(sync_client=True) as own:
            return run_labels(run_id, own)
    else:
        read = client.read_flow_run(UUID(key))
        tags, name = list(read.tags), read.name
    _remember(key, marker, tags, name)
    return list(tags), name


def relabel_run(client: SyncPrefectClient, run_id: UUID | str, tags: list[str], name: str | None = None) -> None:
    """Set RUN_ID's tags (and NAME, when given) in one update, and remember them for the run's next write."""
    client.update_flow_run(UUID(str(run_id)), tags=tags, name=name)
    key, run = str(run_id), this_run()
    marker = id(run) if run is not None and str(run.id) == key else 0
    known = _LABELS.get(key)
    _remember(key, marker, tags, name or (known[2] if known else ""))


def _remember(key: str, marker: int, tags: list[str], name: str) -> None:
    if not marker:
        _LABELS.pop(key, None)
        return
    if len(_LABELS) >= _LABELS_KEPT:
        _LABELS.clear()
    _LABELS[key] = (marker, list(tags), name)
