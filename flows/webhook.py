"""The push webhook: a small ASGI app that turns a signed git push into deploy runs.

POST /webhook/github (also /webhook/gitea, /webhook/gitlab) answers within
milliseconds: it checks the signature, drops replays, maps the repository and
branch to services, creates one ``deploy-service`` flow run per service and
emits ``ecs-pipeline.git.push`` for automations. GET /healthz for probes.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import threading
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Any, Literal

import httpx
from prefect.client.orchestration import PrefectClient, get_client
from prefect.events import emit_event
from prefect.exceptions import ObjectNotFound
from starlette.applications import Starlette
from starlette.concurrency import run_in_threadpool
from starlette.datastructures import Headers
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from tasks.models import ServiceConfig, load_all_services
from tasks.settings import Settings
from tasks.source import redact_url
from tasks.triggers import (
    DEPLOY_DEPLOYMENT,
    cancel_waiting_runs,
    queueing_mode,
    run_parameters,
    run_tags,
)
from tasks.webhook import (
    DeliveryCache,
    PayloadError,
    PushEvent,
    parse_push,
    services_for_push,
    verify_gitea_signature,
    verify_github_signature,
    verify_gitlab_token,
)

log = logging.getLogger("ecs_pipeline.webhook")

MAX_BODY_BYTES = 1024 * 1024
PUSH_EVENT = "ecs-pipeline.git.push"
SECRET_ENV = "ECS_PIPELINE_WEBHOOK_SECRET"
SECRET_BLOCK_ENV = "ECS_PIPELINE_WEBHOOK_SECRET_BLOCK"
Dispatch = Literal["direct", "automation"]


@dataclass(frozen=True)
class StartedRun:
    service: str
    sha: str
    flow_run_id: str | None


StartRuns = Callable[[PushEvent, list[ServiceConfig], str | None], Awaitable[list[StartedRun]]]
SecretProvider = Callable[[], str]


@dataclass(frozen=True)
class _Provider:
    event_header: str
    delivery_header: str
    push_events: frozenset[str]
    ping_events: frozenset[str]
    verify: Callable[[str, bytes, Headers], bool]


PROVIDERS: dict[str, _Provider] = {
    "github": _Provider(
        "x-github-event",
        "x-github-delivery",
        frozenset({"push"}),
        frozenset({"ping"}),
        lambda s, b, h: verify_github_signature(s, b, h.get("x-hub-signature-256")),
    ),
    "gitea": _Provider(
        "x-gitea-event",
        "x-gitea-delivery",
        frozenset({"push"}),
        frozenset(),
        lambda s, b, h: verify_gitea_signature(s, b, h.get("x-gitea-signature")),
    ),
    "gitlab": _Provider(
        "x-gitlab-event",
        "x-gitlab-event-uuid",
        frozenset({"Push Hook"}),
        frozenset(),
        lambda s, b, h: verify_gitlab_token(s, h.get("x-gitlab-token")),
    ),
}


def secret_from_environment(cache_seconds: float = 300) -> SecretProvider:
    """The shared secret from $ECS_PIPELINE_WEBHOOK_SECRET, or the Secret block it names.

    The block is read at most every CACHE_SECONDS so a rotated secret is picked up.
    """
    lock = threading.Lock()
    cached: dict[str, Any] = {}

    def provide() -> str:
        value = os.environ.get(SECRET_ENV)
        if value:
            return value
        block = os.environ.get(SECRET_BLOCK_ENV)
        if not block:
            raise LookupError(f"set {SECRET_ENV} or {SECRET_BLOCK_ENV}")
        with lock:
            if cached and time.monotonic() - cached["at"] < cache_seconds:
                return str(cached["value"])
            from prefect.blocks.system import Secret

            secret: Any = Secret.load(block)
            cached.update(value=str(secret.get()), at=time.monotonic())
            return str(cached["value"])

    return provide


class PrefectRunStarter:
    """Creates deploy-service runs through one long-lived Prefect client.

    The deployment id is looked up once; with ``dispatch="automation"`` no run
    is created here and the ``deploy-on-push`` trigger starts them from the event.
    PARALLEL_CREATES bounds concurrent creations across all requests: keep 1 for a
    SQLite-backed server (concurrent writes there wait on its lock for seconds),
    raise it for Postgres. Older Scheduled runs of a service are cancelled
    ("Superseded by ...") once pushes have been quiet for SWEEP_AFTER seconds, in
    turn with creations, so a burst of pushes is answered first.
    """

    def __init__(
        self,
        deployment_name: str = DEPLOY_DEPLOYMENT,
        dispatch: Dispatch = "direct",
        parallel_creates: int = 1,
        sweep_after: float = 1.0,
    ) -> None:
        self.deployment_name = deployment_name
        self.dispatch = dispatch
        self.sweep_after = sweep_after
        self._client: PrefectClient | None = None
        self._deployment_id: uuid.UUID | None = None
        self._lock = asyncio.Lock()
        self._slots = asyncio.Semaphore(max(1, parallel_creates))
        self._newest: dict[str, str] = {}
        self._last_push = 0.0
        self._sweeper: asyncio.Task[None] | None = None

    async def __call__(
        self, push: PushEvent, services: list[ServiceConfig], delivery: str | None
    ) -> list[StartedRun]:
        if self.dispatch == "automation":
            ids: list[str | None] = [None] * len(services)
        else:
            ids = list(await asyncio.gather(*(self._create(push, c, delivery) for c in services)))
        for cfg, run_id in zip(services, ids, strict=True):
            _emit_push_event(push, cfg.name, run_id, delivery, self.dispatch)
            if run_id and queueing_mode(cfg) == "supersede":
                self._newest[cfg.name] = run_id
        self._last_push = time.monotonic()
        if self._newest and (self._sweeper is None or self._sweeper.done()):
            self._sweeper = asyncio.create_task(self._sweep())
        return [StartedRun(c.name, push.sha, i) for c, i in zip(services, ids, strict=True)]

    async def _sweep(self) -> None:
        while self._newest:
            quiet_in = self._last_push + self.sweep_after - time.monotonic()
            if quiet_in > 0:
                await asyncio.sleep(quiet_in)
                continue
            service, run_id = self._newest.popitem()
            async with self._slots:
                try:
                    await run_in_threadpool(cancel_waiting_runs, service, run_id)
                except Exception as exc:  # noqa: BLE001 - the new run is started either way
                    log.warning("Could not cancel older runs of %s: %s", service, exc)

    async def _create(self, push: PushEvent, cfg: ServiceConfig, delivery: str | None) -> str:
        client, deployment_id = await self._ready()
        key = f"{deployment_id}:{delivery}:{cfg.name}" if delivery else None
        kwargs: dict[str, Any] = {
            "parameters": run_parameters(cfg.name, push.sha),
            "tags": run_tags(cfg.name, push.sha, "push"),
            "idempotency_key": key,
            "name": f"{cfg.name}-{push.sha[:7]}",
        }
        try:
            async with self._slots:
                run = await client.create_flow_run_from_deployment(deployment_id, **kwargs)
        except ObjectNotFound:  # the deployment was re-created: look it up again
            self._deployment_id = None
            client, deployment_id = await self._ready()
            kwargs["idempotency_key"] = key and f"{deployment_id}:{delivery}:{cfg.name}"
            async with self._slots:
                run = await client.create_flow_run_from_deployment(deployment_id, **kwargs)
        return str(run.id)

    async def _ready(self) -> tuple[PrefectClient, uuid.UUID]:
        async with self._lock:
            if self._client is None:
                client = get_client()
                self._client = await client.__aenter__()
            if self._deployment_id is None:
                deployment = await self._client.read_deployment_by_name(self.deployment_name)
                self._deployment_id = deployment.id
            return self._client, self._deployment_id

    async def warm(self) -> None:
        """Open the client and look the deployment up before the first push arrives."""
        if self.dispatch == "direct":
            try:
                await self._ready()
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
            await client.__aexit__(None, None, None)


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


def _json(status: int, **body: Any) -> JSONResponse:
    return JSONResponse(body, status_code=status)


async def _read_capped(request: Request, limit: int) -> bytes | None:
    """The body, or None once it is longer than LIMIT (never buffered past it)."""
    declared = request.headers.get("content-length", "")
    if declared.isdigit() and int(declared) > limit:
        return None
    chunks: list[bytes] = []
    size = 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            return None
        chunks.append(chunk)
    return b"".join(chunks)


class _Receiver:
    """One POST: size, signature, JSON, event kind, replay, mapping, then the runs."""

    def __init__(
        self,
        services: list[ServiceConfig],
        secret_provider: SecretProvider,
        start_runs: StartRuns,
        max_body_bytes: int,
        deliveries: DeliveryCache,
    ) -> None:
        self.services = services
        self.secret_provider = secret_provider
        self.start_runs = start_runs
        self.max_body_bytes = max_body_bytes
        self.seen = deliveries

    async def receive(self, request: Request) -> JSONResponse:
        provider = PROVIDERS.get(request.path_params["provider"])
        if provider is None:
            return _json(404, error=f"unknown sender; use one of {', '.join(PROVIDERS)}")
        body = await _read_capped(request, self.max_body_bytes)
        if body is None:
            return _json(413, error=f"payload larger than {self.max_body_bytes} bytes")
        try:
            secret = await run_in_threadpool(self.secret_provider)
        except Exception:  # noqa: BLE001 - never echo what the secret store said
            log.error("Webhook secret is not available; refusing deliveries")
            return _json(503, error="webhook secret not configured")
        if not provider.verify(secret, body, request.headers):
            return _json(401, error="bad or missing signature")
        try:
            payload = json.loads(body)
        except (UnicodeDecodeError, json.JSONDecodeError):
            return _json(400, error="body is not JSON")
        event = request.headers.get(provider.event_header, "")
        if event in provider.ping_events:
            return _json(200, ok=True, ping=True)
        if event not in provider.push_events:
            return _json(200, ignored=f"event {event or '(none)'} is not a push")
        delivery = request.headers.get(provider.delivery_header) or None
        if delivery and self.seen.check_and_add(delivery):
            return _json(200, duplicate=True, delivery=delivery)
        return await self.handle_push(payload, delivery)

    async def handle_push(self, payload: Any, delivery: str | None) -> JSONResponse:
        try:
            push = parse_push(payload)
        except PayloadError as exc:
            return _json(400, error=str(exc))
        reason = push.ignore_reason()
        targets = [] if reason else services_for_push(self.services, push)
        if not reason and not targets:
            reason = f"no service builds from {push.repo_name} branch {push.branch}"
        if reason:
            log.info("Delivery %s ignored: %s", delivery, reason)
            return _json(200, ignored=reason)
        try:
            started = await self.start_runs(push, targets, delivery)
        except Exception as exc:  # noqa: BLE001 - answered 502 so the sender redelivers
            if delivery:
                self.seen.forget(delivery)  # let the sender's redelivery try again
            log.error("Delivery %s: starting runs failed: %s", delivery, type(exc).__name__)
            return _json(502, error=f"could not start runs ({type(exc).__name__}); redeliver")
        runs = ", ".join(f"{s.service}:{s.flow_run_id}" for s in started)
        log.info("Delivery %s: %s@%s -> %s", delivery, push.repo_name, push.sha[:12], runs)
        body = {"started": [s.__dict__ for s in started], "sha": push.sha, "branch": push.branch}
        return JSONResponse(body, status_code=202)

    async def healthz(self, request: Request) -> JSONResponse:
        return _json(200, ok=True, services=len(self.services))

    @contextlib.asynccontextmanager
    async def lifespan(self, app: Starlette) -> AsyncIterator[None]:
        warm = getattr(self.start_runs, "warm", None)
        if warm is not None:
            await warm()
        yield
        closer = getattr(self.start_runs, "aclose", None)
        if closer is not None:
            await closer()


def create_app(
    services: Sequence[ServiceConfig],
    secret_provider: SecretProvider,
    start_runs: StartRuns,
    *,
    max_body_bytes: int = MAX_BODY_BYTES,
    deliveries: DeliveryCache | None = None,
) -> Starlette:
    """The webhook app; START_RUNS is a PrefectRunStarter in production."""
    receiver = _Receiver(
        list(services), secret_provider, start_runs, max_body_bytes, deliveries or DeliveryCache()
    )
    routes = [
        Route("/webhook/{provider:str}", receiver.receive, methods=["POST"]),
        Route("/healthz", receiver.healthz, methods=["GET"]),
    ]
    return Starlette(routes=routes, lifespan=receiver.lifespan)


def serve(
    host: str = "127.0.0.1",
    port: int = 9000,
    *,
    deployment_name: str = DEPLOY_DEPLOYMENT,
    dispatch: Dispatch = "direct",
    parallel_creates: int = 1,
) -> None:
    """Run the webhook app under uvicorn (put TLS and a public name in front of it)."""
    import uvicorn

    provider = secret_from_environment()
    provider()  # fail at start, not at the first push, when no secret is configured
    app = create_app(
        load_all_services(Settings().deployments),
        provider,
        PrefectRunStarter(deployment_name, dispatch, parallel_creates),
    )
    uvicorn.run(app, host=host, port=port, log_level="info")
