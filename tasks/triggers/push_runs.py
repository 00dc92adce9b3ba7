"""From an accepted push to deploy-service runs: create them (or leave that to an automation), then supersede.

The webhook app answers within milliseconds, so run creation goes through one
long-lived Prefect client and older runs are cancelled later, once pushes have
been quiet for a moment. A push whose commit is already live, or was released
or refused as older before, starts nothing (``settled``).
"""

from __future__ import annotations

import asyncio
import logging
import time
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import httpx
from prefect.client.orchestration import SyncPrefectClient, get_client
from prefect.client.schemas.filters import (
    ArtifactCollectionFilter,
    ArtifactCollectionFilterKey,
    FlowFilter,
    FlowFilterName,
    FlowRunFilter,
    FlowRunFilterState,
    FlowRunFilterStateType,
    FlowRunFilterTags,
)
from prefect.client.schemas.objects import StateType
from prefect.events import emit_event
from prefect.exceptions import ObjectNotFound
from starlette.concurrency import run_in_threadpool

from tasks.build.source import redact_url
from tasks.config.models import ServiceConfig
from tasks.core.report import artifact_key
from tasks.release.live_view import parse_record
from tasks.release.outcome import outcome_of
from tasks.release.runs import (
    DEPLOY_DEPLOYMENT,
    DEPLOY_FLOW,
    NOT_NEWER,
    cancel_waiting_runs,
    commit_order_for,
    create_deploy_run,
    create_fleet_run,
    queueing_mode,
)
from tasks.triggers.push_payloads import PushEvent

log = logging.getLogger("ecs_pipeline.webhook")

PUSH_EVENT = "ecs-pipeline.git.push"
Dispatch = Literal["direct", "automation"]


@dataclass(frozen=True)
class StartedRun:
    """A service's run in the 202 answer; ``fleet`` when it is the push's one release-fleet run."""

    service: str
    sha: str
    flow_run_id: str | None
    fleet: bool = False


StartRuns = Callable[[PushEvent, list[ServiceConfig], str | None], Awaitable[list[StartedRun]]]


class PrefectRunStarter:
    """Creates deploy-service runs through one long-lived Prefect client.

    The deployment id is looked up once; with ``dispatch="automation"`` no run
    is created here and the ``deploy-on-push`` trigger starts them from the event.
    PARALLEL_CREATES bounds concurrent creations across all requests: keep 1 for a
    SQLite-backed server (concurrent writes there wait on its lock for seconds),
    raise it for Postgres. Older Scheduled runs of a service are cancelled
    ("Superseded by ...") once pushes have been quiet for SWEEP_AFTER seconds, in
    turn with creations, so a burst of pushes is answered first. With GIT_CACHE
    they give way by git ancestry, so a replayed older push never cancels the
    run of a newer commit.

    With FLEET_DEPLOYMENT, a push that concerns FLEET_FROM or more services (a
    monorepo) creates one release-fleet run for all of them: one API call
    whatever the number of services, and the fleet starts their deploy-service
    runs in waves. Without it (or when that deployment does not exist) each
    service gets its own run, created concurrently.
    """

    def __init__(
        self,
        deployment_name: str = DEPLOY_DEPLOYMENT,
        dispatch: Dispatch = "direct",
        parallel_creates: int = 1,
        sweep_after: float = 1.0,
        git_cache: Path | None = None,
        fleet_deployment: str | None = None,
        fleet_from: int = 2,
    ) -> None:
        self.deployment_name = deployment_name
        self.fleet_deployment = fleet_deployment
        self.fleet_from = max(2, fleet_from)
        self._fleet_id: uuid.UUID | None = None
        self.dispatch = dispatch
        self.sweep_after = sweep_after
        self.git_cache = git_cache
        self._client: SyncPrefectClient | None = None
        self._deployment_id: uuid.UUID | None = None
        self._lock = asyncio.Lock()
        self._slots = asyncio.Semaphore(max(1, parallel_creates))
        self._newest: dict[str, tuple[str, ServiceConfig]] = {}
        self._last_push = 0.0
        self._sweeper: asyncio.Task[None] | None = None

    async def __call__(
        self, push: PushEvent, services: list[ServiceConfig], delivery: str | None
    ) -> list[StartedRun]:
        fleet = False
        if self.dispatch == "automation":
            ids: list[str | None] = [None] * len(services)
        elif (fleet_id := await self._create_fleet(push, services, delivery)) is not None:
            ids, fleet = [fleet_id] * len(services), True
        else:
            ids = list(await asyncio.gather(*(self._create(push, c, delivery) for c in services)))
        for cfg, run_id in zip(services, ids, strict=True):
            _emit_push_event(push, cfg.name, run_id, delivery, self.dispatch)
            if run_id and queueing_mode(cfg) == "supersede":
                self._newest[cfg.name] = (run_id, cfg)
        self._last_push = time.monotonic()
        if self._newest and (self._sweeper is None or self._sweeper.done()):
            self._sweeper = asyncio.create_task(self._sweep())
        return [StartedRun(c.name, push.sha, i, fleet) for c, i in zip(services, ids, strict=True)]

    async def _sweep(self) -> None:
        while self._newest:
            quiet_in = self._last_push + self.sweep_after - time.monotonic()
            if quiet_in > 0:
                await asyncio.sleep(quiet_in)
                continue
            service, (run_id, cfg) = self._newest.popitem()
            order = commit_order_for(cfg, self.git_cache)
            async with self._slots:
                try:
                    await run_in_threadpool(cancel_waiting_runs, service, run_id, order=order)
                except Exception as exc:  # noqa: BLE001 - the new run is started either way
                    log.warning("Could not cancel older runs of %s: %s", service, exc)

    async def _create(self, push: PushEvent, cfg: ServiceConfig, delivery: str | None) -> str:
        client, deployment_id = await self._ready()
        try:
            async with self._slots:
                run = await run_in_threadpool(
                    create_deploy_run, client, deployment_id, cfg.name, push.sha, "push",
                    idempotency_key=_key(deployment_id, delivery, cfg.name),
                )
        except ObjectNotFound:  # the deployment was re-created: look it up again
            self._deployment_id = None
            client, deployment_id = await self._ready()
            async with self._slots:
                run = await run_in_threadpool(
                    create_deploy_run, client, deployment_id, cfg.name, push.sha, "push",
                    idempotency_key=_key(deployment_id, delivery, cfg.name),
                )
        return str(run.id)

    async def _create_fleet(
        self, push: PushEvent, services: list[ServiceConfig], delivery: str | None
    ) -> str | None:
        """One release-fleet run for SERVICES, or None when fleets are off, too small or not deployed."""
        if self.fleet_deployment is None or len(services) < self.fleet_from:
            return None
        client, _ = await self._ready()
        if self._fleet_id is None:
            try:
                found = await run_in_threadpool(client.read_deployment_by_name, self.fleet_deployment)
            except ObjectNotFound:
                log.warning("No %s deployment: one run per service", self.fleet_deployment)
                self.fleet_deployment = None
                return None
            self._fleet_id = found.id
        key = f"{self._fleet_id}:{delivery}:fleet" if delivery else None
        names = sorted(c.name for c in services)
        async with self._slots:
            run = await run_in_threadpool(
                create_fleet_run, client, self._fleet_id, names, push.sha, "push", idempotency_key=key
            )
        return str(run.id)

    async def settled(self, push: PushEvent, services: list[ServiceConfig]) -> dict[str, str]:
        """The SERVICES a run for PUSH's commit would have nothing to do for, and why.

        Read from the Prefect server only, so the answer stays quick and the
        receiver needs no AWS credentials: the live view each release publishes
        (the commit is live), and this commit's finished runs (it was released,
        so production is on it or has since moved on; or a run refused it as not
        newer than live). Whether it descends from the live commit is not asked
        of git here, since that may need a fetch while the sender waits; the run
        decides, and once it refused an older commit, replays of it start nothing.
        When the server cannot be read this fails open: nothing is settled and
        the runs start as before, each checking what is live itself.
        """
        if not services:
            return {}
        try:
            client = await self._open()
            return await run_in_threadpool(settled_commits, client, push.sha, [c.name for c in services])
        except Exception as exc:  # noqa: BLE001 - fail open: the runs check what is live themselves
            log.warning("Could not read whether %s is live (%s); starting the runs", push.sha[:12], type(exc).__name__)
            return {}

    async def _open(self) -> SyncPrefectClient:
        async with self._lock:
            if self._client is None:
                self._client = get_client(sync_client=True).__enter__()
            return self._client

    async def _ready(self) -> tuple[SyncPrefectClient, uuid.UUID]:
        client = await self._open()
        async with self._lock:
            if self._deployment_id is None:
                deployment = await run_in_threadpool(client.read_deployment_by_name, self.deployment_name)
                self._deployment_id = deployment.id
            return client, self._deployment_id

    async def warm(self) -> None:
        """Open the client and look the deployment up before the first push arrives."""
        if self.dispatch == "direct":
            try:
                client, _ = await self._ready()
                if self.fleet_deployment is not None:
                    self._fleet_id = (
                        await run_in_threadpool(client.read_deployment_by_name, self.fleet_deployment)
                    ).id
            except (ObjectNotFound, httpx.HTTPError) as exc:
                log.warning(
                    "Deployment %s not reachable yet (%s); pushes get 502 until it is",
                    self.deployment_name,
                    type(exc).__name__,
                )

    async def aclose(self) -> None:
        if self._sweeper is not None:
            self._sweeper.cancel()
        if self._client is not None:
            client, self._client = self._client, None
            client.__exit__(None, None, None)


def settled_commits(client: SyncPrefectClient, sha: str, services: list[str]) -> dict[str, str]:
    """Of SERVICES, those for which commit SHA is live or was released or refused before; service -> why."""
    keys = {artifact_key(name, "live"): name for name in services}
    live = client.read_latest_artifacts(
        artifact_filter=ArtifactCollectionFilter(key=ArtifactCollectionFilterKey(any_=list(keys))), limit=len(keys)
    )
    why: dict[str, str] = {}
    for artifact in live:
        record = parse_record(str(artifact.data))
        if record is not None and record.sha == sha and artifact.key in keys:
            why[keys[artifact.key]] = f"{sha[:12]} is already live"
    finished = client.read_flow_runs(
        flow_filter=FlowFilter(name=FlowFilterName(any_=[DEPLOY_FLOW])),
        flow_run_filter=FlowRunFilter(
            tags=FlowRunFilterTags(all_=[f"sha:{sha}"]),
            state=FlowRunFilterState(type=FlowRunFilterStateType(any_=[StateType.COMPLETED, StateType.CANCELLED])),
        ),
        limit=200,
    )
    for run in finished:
        name = next((n for n in services if f"service:{n}" in run.tags), None)
        if name is None or name in why:
            continue
        if run.state_type == StateType.COMPLETED:  # Deployed, or No change: it was live then
            why[name] = f"{sha[:12]} was released by run {run.name} ({run.id})"
        elif outcome_of(run.state) == NOT_NEWER:
            why[name] = f"{sha[:12]} is not newer than live (run {run.name} refused it)"
    return why


def _key(deployment_id: uuid.UUID, delivery: str | None, service: str) -> str | None:
    """Idempotency key: a delivery that reaches two receivers still makes one run per service."""
    return f"{deployment_id}:{delivery}:{service}" if delivery else None


def _emit_push_event(
    push: PushEvent, service: str, run_id: str | None, delivery: str | None, dispatch: Dispatch
) -> None:
    related = [
        {"prefect.resource.id": f"prefect.flow-run.{run_id}", "prefect.resource.role": "flow-run"}
    ]
    event_id = uuid.uuid5(uuid.NAMESPACE_URL, f"{delivery}/{service}") if delivery else None
    emit_event(
        PUSH_EVENT,
        resource={
            "prefect.resource.id": f"ecs-pipeline.service.{service}",
            "prefect.resource.name": service,
            "ecs-pipeline.dispatch": dispatch,
        },
        related=related if run_id else None,
        payload={
            "sha": push.sha,
            "branch": push.branch,
            "repo": push.repo_name,
            "url": redact_url(push.repo_urls[0]),
            "delivery": delivery,
        },
        id=event_id,
    )
