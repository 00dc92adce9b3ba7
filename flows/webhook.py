"""The push webhook: a small ASGI app that turns a signed git push into deploy runs.

POST /webhook/github (also /webhook/gitea, /webhook/gitlab) answers within
milliseconds: it checks the signature, drops replays, maps the repository and
branch to services, creates one ``deploy-service`` flow run per service and
emits ``ecs-pipeline.git.push`` for automations. GET /healthz for probes.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import threading
import time
from collections.abc import AsyncIterator, Callable, Sequence
from dataclasses import dataclass
from typing import Any

from starlette.applications import Starlette
from starlette.concurrency import run_in_threadpool
from starlette.datastructures import Headers
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from flows.push_runs import Dispatch, PrefectRunStarter, StartRuns
from tasks.models import ServiceConfig, load_all_services
from tasks.pushes import (
    DeliveryCache,
    PayloadError,
    parse_push,
    services_for_push,
    verify_gitea_signature,
    verify_github_signature,
    verify_gitlab_token,
)
from tasks.runs import DEPLOY_DEPLOYMENT
from tasks.settings import Settings

log = logging.getLogger("ecs_pipeline.webhook")

MAX_BODY_BYTES = 1024 * 1024
SECRET_ENV = "ECS_PIPELINE_WEBHOOK_SECRET"
SECRET_BLOCK_ENV = "ECS_PIPELINE_WEBHOOK_SECRET_BLOCK"


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
