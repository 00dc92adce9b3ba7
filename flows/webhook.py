"""The push webhook: a small ASGI app that turns a signed git push into deploy runs.

POST /webhook/github (also /webhook/gitea, /webhook/gitlab, each on only when
its own secret is configured) answers within milliseconds: it checks the
signature, drops replays (delivery ids are kept in the Prefect server for
``delivery_ttl`` seconds, for every receiver), maps the repository and branch to
services, answers "nothing to do" for services whose commit is already live (or
was released or refused before), creates one ``deploy-service`` flow run per
other service (one ``release-fleet`` run when the push concerns several) and
emits ``ecs-pipeline.git.push`` for automations. GET /healthz for probes.

The senders are triggers (``tasks/triggers/webhooks.py``) and a delivery's way
to its runs is ``tasks/triggers/webhook_deliveries.py``; this app reads the
capped body and turns their outcomes into status codes.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import AsyncIterator, Sequence
from typing import Any

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from tasks.config.models import ServiceConfig, load_all_services
from tasks.core.settings import Settings
from tasks.release.runs import DEPLOY_DEPLOYMENT, FLEET_DEPLOYMENT
from tasks.triggers.contract import NotAnEvent, NotAuthentic
from tasks.triggers.push_runs import Dispatch, PrefectRunStarter, StartRuns
from tasks.triggers.webhook_deliveries import (
    DEFAULT_DELIVERY_TTL,
    Duplicate,
    Ignored,
    NothingToDo,
    Outcome,
    Ping,
    PrefectDeliveries,
    PushReceiver,
    RunsNotStarted,
    SeenDeliveries,
    SenderLimits,
    SenderNotFound,
    Started,
    TooManyDeliveries,
)
from tasks.triggers.webhook_secrets import SecretUnavailable, WebhookSecrets
from tasks.triggers.webhooks import DELIVERY_HEADERS, DELIVERY_ID, WebhookDelivery

log = logging.getLogger("ecs_pipeline.webhook")

MAX_BODY_BYTES = 1024 * 1024


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


def refused(request: Request, status: int, reason: str) -> JSONResponse:
    """The answer to a refused request, logged with who sent it and its delivery id (never a body or secret)."""
    ids = [v for h, v in request.headers.items() if h in DELIVERY_HEADERS]
    delivery = ids[0] if ids and DELIVERY_ID.fullmatch(ids[0]) else ("(invalid)" if ids else "(none)")
    sender = request.client.host if request.client else "unknown"
    log.warning("Refused %s from %s (delivery %s): %d %s", request.url.path, sender, delivery, status, reason)
    return _json(status, error=reason)


def _answer(outcome: Outcome) -> JSONResponse:
    match outcome:
        case Ping():
            return _json(200, ok=True, ping=True)
        case Ignored(reason):
            return _json(200, ignored=reason)
        case Duplicate(delivery):
            return _json(200, duplicate=True, delivery=delivery)
        case NothingToDo(settled, sha, branch):
            return _json(200, nothing_to_do=settled, sha=sha, branch=branch)
        case Started(runs, sha, branch, settled):
            extra = {"nothing_to_do": settled} if settled else {}
            return _json(202, started=[r.__dict__ for r in runs], sha=sha, branch=branch, **extra)


class _Routes:
    """HTTP in and out; every decision is the receiver's."""

    def __init__(self, receiver: PushReceiver, max_body_bytes: int) -> None:
        self.receiver = receiver
        self.max_body_bytes = max_body_bytes

    async def receive(self, request: Request) -> JSONResponse:
        name = request.path_params["provider"]
        try:
            sender = self.receiver.sender(name)
        except SenderNotFound as exc:
            return refused(request, 404, str(exc))
        body = await _read_capped(request, self.max_body_bytes)
        if body is None:
            return refused(request, 413, f"payload larger than {self.max_body_bytes} bytes")
        try:
            outcome = await self.receiver.receive(sender, WebhookDelivery(request.headers, body))
        except SecretUnavailable:  # logged by the receiver, naming settings only
            return _json(503, error=f"{name} webhook secret unavailable; see the receiver's log")
        except NotAuthentic as exc:
            return refused(request, 401, str(exc))
        except NotAnEvent as exc:
            return refused(request, 400, str(exc))
        except TooManyDeliveries as exc:
            answer = refused(request, 429, f"{exc}; redeliver later")
            answer.headers["Retry-After"] = str(max(1, round(exc.retry_after)))
            return answer
        except RunsNotStarted as exc:  # the sender redelivers
            return _json(502, error=f"could not start runs ({exc}); redeliver")
        return _answer(outcome)

    async def healthz(self, request: Request) -> JSONResponse:
        return _json(200, ok=True, services=len(self.receiver.services))

    @contextlib.asynccontextmanager
    async def lifespan(self, app: Starlette) -> AsyncIterator[None]:
        await self.receiver.warm()
        yield
        await self.receiver.aclose()


def create_app(
    services: Sequence[ServiceConfig],
    secrets: WebhookSecrets,
    start_runs: StartRuns,
    *,
    max_body_bytes: int = MAX_BODY_BYTES,
    deliveries: SeenDeliveries | None = None,
    limits: SenderLimits | None = None,
) -> Starlette:
    """The webhook app; START_RUNS is a PrefectRunStarter and DELIVERIES a PrefectDeliveries in production.

    Without DELIVERIES the ids are kept in this process only (``DeliveryCache``).
    """
    routes = _Routes(PushReceiver(services, secrets, start_runs, deliveries, limits), max_body_bytes)
    return Starlette(
        routes=[
            Route("/webhook/{provider:str}", routes.receive, methods=["POST"]),
            Route("/healthz", routes.healthz, methods=["GET"]),
        ],
        lifespan=routes.lifespan,
    )


def serve(
    host: str = "127.0.0.1",
    port: int = 9000,
    *,
    deployment_name: str = DEPLOY_DEPLOYMENT,
    dispatch: Dispatch = "direct",
    parallel_creates: int = 1,
    fleet_deployment: str | None = FLEET_DEPLOYMENT,
    delivery_ttl: float = DEFAULT_DELIVERY_TTL,
) -> None:
    """Run the webhook app under uvicorn (put TLS and a public name in front of it).

    A push that concerns several services starts one FLEET_DEPLOYMENT run for them.
    Delivery ids count as seen for DELIVERY_TTL seconds, by every receiver of the
    same Prefect server and across restarts (a sender's redeliveries come within hours).
    """
    import uvicorn

    settings = Settings()
    secrets = WebhookSecrets.from_settings(settings)
    senders = secrets.check()  # fail at start, not at the first push, when a secret is missing or shared
    log.info("Webhook senders on: %s", ", ".join(senders))
    app = create_app(
        load_all_services(settings.deployments),
        secrets,
        PrefectRunStarter(
            deployment_name, dispatch, parallel_creates, git_cache=settings.cache / "git",
            fleet_deployment=fleet_deployment,
        ),
        deliveries=PrefectDeliveries(delivery_ttl),
    )
    uvicorn.run(app, host=host, port=port, log_level="info")
