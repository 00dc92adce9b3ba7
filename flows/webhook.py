"""The push webhook: a small ASGI app that turns a signed git push into deploy runs.

POST /webhook/github (also /webhook/gitea, /webhook/gitlab, each on only when
its own secret is configured) answers within milliseconds: it checks the
signature, drops replays, maps the repository and branch to services, creates
one ``deploy-service`` flow run per service (one ``release-fleet`` run when the
push concerns several) and emits ``ecs-pipeline.git.push`` for automations. GET /healthz for probes.
"""

from __future__ import annotations

import contextlib
import json
import logging
import re
from collections.abc import AsyncIterator, Callable, Sequence
from dataclasses import dataclass
from typing import Any
from urllib.parse import parse_qs

from starlette.applications import Starlette
from starlette.concurrency import run_in_threadpool
from starlette.datastructures import Headers
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from tasks.config.models import ServiceConfig, load_all_services
from tasks.core.settings import Settings
from tasks.release.runs import DEPLOY_DEPLOYMENT, FLEET_DEPLOYMENT
from tasks.triggers.push_runs import Dispatch, PrefectRunStarter, StartRuns
from tasks.triggers.pushes import (
    DeliveryCache,
    PayloadError,
    PushEvent,
    parse_push,
    services_for_push,
    verify_gitea_signature,
    verify_github_signature,
    verify_gitlab_token,
)
from tasks.triggers.webhook_secrets import SecretUnavailable, WebhookSecrets, secret_variables

log = logging.getLogger("ecs_pipeline.webhook")

MAX_BODY_BYTES = 1024 * 1024
_DELIVERY_ID = re.compile(r"^[A-Za-z0-9._:-]{1,128}$")


@dataclass(frozen=True)
class _Provider:
    event_header: str
    delivery_headers: tuple[str, ...]  # the first one sent names the delivery (kept across redeliveries)
    push_events: frozenset[str]
    ping_events: frozenset[str]
    verify: Callable[[str, bytes, Headers], bool]
    # events that carry a push when the payload says so (GitLab's system hooks: event_name push)
    pushes_inside: frozenset[str] = frozenset()

    def is_push(self, event: str, payload: Any) -> bool:
        if event in self.push_events:
            return True
        inner = payload.get("event_name") if isinstance(payload, dict) else None
        return event in self.pushes_inside and inner in ("push", "tag_push")


PROVIDERS: dict[str, _Provider] = {
    "github": _Provider(
        "x-github-event",
        ("x-github-delivery",),
        frozenset({"push"}),
        frozenset({"ping"}),
        lambda s, b, h: verify_github_signature(s, b, h.get("x-hub-signature-256")),
    ),
    "gitea": _Provider(
        "x-gitea-event",
        ("x-gitea-delivery",),
        frozenset({"push"}),
        frozenset(),
        lambda s, b, h: verify_gitea_signature(s, b, h.get("x-gitea-signature")),
    ),
    "gitlab": _Provider(
        "x-gitlab-event",
        ("idempotency-key", "x-gitlab-event-uuid"),  # GitLab 17.4+: Idempotency-Key is the same on retries
        frozenset({"Push Hook", "Tag Push Hook"}),
        frozenset(),
        lambda s, b, h: verify_gitlab_token(s, h.get("x-gitlab-token")),
        frozenset({"System Hook"}),
    ),
}


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


_NOT_JSON = object()


def _payload(body: bytes, content_type: str) -> Any:
    """The JSON payload, sent as JSON or, as GitHub and Gitea can, as a form field ``payload=``.

    The signature covers the raw body either way; _NOT_JSON for anything else (nesting too deep included).
    """
    try:
        if content_type.split(";")[0].strip().lower() == "application/x-www-form-urlencoded":
            fields = parse_qs(body.decode("ascii"), strict_parsing=True, max_num_fields=100)
            (text,) = fields.get("payload") or [""]
            return json.loads(text)
        return json.loads(body)
    except (ValueError, RecursionError):  # JSON, UTF-8, form syntax, not one payload field
        return _NOT_JSON


class _Receiver:
    """One POST: sender on, size, signature, JSON, event kind, payload, replay, mapping, then the runs.

    A delivery id is recorded only when its runs are about to start, so a
    refused request (400, 401) never uses up the id of a genuine delivery, and
    ids are kept per sender.
    """

    def __init__(
        self,
        services: list[ServiceConfig],
        secrets: WebhookSecrets,
        start_runs: StartRuns,
        max_body_bytes: int,
        deliveries: DeliveryCache,
    ) -> None:
        self.services = services
        self.secrets = secrets
        self.start_runs = start_runs
        self.max_body_bytes = max_body_bytes
        self.seen = deliveries

    async def receive(self, request: Request) -> JSONResponse:
        sender = request.path_params["provider"]
        provider = PROVIDERS.get(sender)
        if provider is None:
            return _json(404, error=f"unknown sender; use one of {', '.join(PROVIDERS)}")
        if not self.secrets.enabled(sender):
            return _json(404, error=f"{sender} webhooks are off; set {secret_variables(sender)}")
        body = await _read_capped(request, self.max_body_bytes)
        if body is None:
            return _json(413, error=f"payload larger than {self.max_body_bytes} bytes")
        try:
            secret = await run_in_threadpool(self.secrets.get, sender)
        except SecretUnavailable as exc:  # names settings only, never a value
            log.error("Refusing %s deliveries: %s", sender, exc)
            return _json(503, error=f"{sender} webhook secret unavailable; see the receiver's log")
        if not provider.verify(secret.get_secret_value(), body, request.headers):
            return _json(401, error="bad or missing signature")
        payload = _payload(body, request.headers.get("content-type", ""))
        if payload is _NOT_JSON:
            return _json(400, error="body is not JSON (nor a form whose payload field is JSON)")
        event = request.headers.get(provider.event_header, "")
        if event in provider.ping_events:
            return _json(200, ok=True, ping=True)
        if not provider.is_push(event, payload):
            return _json(200, ignored=f"event {event or '(none)'} is not a push")
        header = next((h for h in provider.delivery_headers if request.headers.get(h)), None)
        delivery = request.headers[header] if header else None
        if delivery is not None and not _DELIVERY_ID.match(delivery):
            return _json(400, error=f"{header} is not a delivery id")
        try:
            push = parse_push(payload)
        except PayloadError as exc:
            return _json(400, error=str(exc))
        return await self.handle_push(push, f"{sender}:{delivery}" if delivery else None)

    async def handle_push(self, push: PushEvent, delivery: str | None) -> JSONResponse:
        reason = push.ignore_reason()
        targets = [] if reason else services_for_push(self.services, push)
        if not reason and not targets:
            reason = f"no service builds from {push.repo_name} branch {push.branch}"
        if reason:
            log.info("Delivery %s ignored: %s", delivery, reason)
            return _json(200, ignored=reason)
        if delivery and self.seen.check_and_add(delivery):
            return _json(200, duplicate=True, delivery=delivery.partition(":")[2])
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
    secrets: WebhookSecrets,
    start_runs: StartRuns,
    *,
    max_body_bytes: int = MAX_BODY_BYTES,
    deliveries: DeliveryCache | None = None,
) -> Starlette:
    """The webhook app; START_RUNS is a PrefectRunStarter in production."""
    receiver = _Receiver(
        list(services), secrets, start_runs, max_body_bytes, deliveries or DeliveryCache()
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
    fleet_deployment: str | None = FLEET_DEPLOYMENT,
) -> None:
    """Run the webhook app under uvicorn (put TLS and a public name in front of it).

    A push that concerns several services starts one FLEET_DEPLOYMENT run for them.
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
    )
    uvicorn.run(app, host=host, port=port, log_level="info")
