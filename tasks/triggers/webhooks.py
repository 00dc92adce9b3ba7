"""The push senders GitHub, Gitea and GitLab as triggers: their headers, their proof, their payloads.

Each sender's event is one POST (``WebhookDelivery``: headers and the raw
body). GitHub and Gitea sign the raw body with HMAC-SHA256 under a key that
never travels; GitLab sends its token itself. A sender is added here as one
``SenderRules`` row. Nothing here raises on a malformed header, and no message
quotes a secret or a body.
"""

from __future__ import annotations

import hashlib
import hmac
import logging
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from tasks.config.models import ServiceConfig
from tasks.triggers.contract import NotAnEvent, NotAuthentic, RunTrigger, TriggeredCommit
from tasks.triggers.push_payloads import PushEvent, decode_payload, parse_push, services_for_push
from tasks.triggers.webhook_secrets import WebhookSecrets

log = logging.getLogger("ecs_pipeline.webhook")

DELIVERY_ID = re.compile(r"^[A-Za-z0-9._:-]{1,128}$")


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


# -- the senders ----------------------------------------------------------------


@dataclass(frozen=True)
class WebhookDelivery:
    """One POST from a sender: its headers (looked up by lower-case name, as Starlette's Headers) and raw body."""

    headers: Mapping[str, str]
    body: bytes


@dataclass(frozen=True)
class SenderRules:
    """What tells one sender's deliveries apart: header names, event names, how the proof is checked."""

    name: str
    event_header: str
    delivery_headers: tuple[str, ...]  # the first one sent names the delivery (kept across redeliveries)
    push_events: frozenset[str]
    ping_events: frozenset[str]
    proves: Callable[[str, bytes, Mapping[str, str]], bool]  # (secret, raw body, headers)
    # events that carry a push when the payload says so (GitLab's system hooks: event_name push)
    pushes_inside: frozenset[str] = frozenset()

    def is_push(self, event: str, payload: Any) -> bool:
        if event in self.push_events:
            return True
        inner = payload.get("event_name") if isinstance(payload, dict) else None
        return event in self.pushes_inside and inner in ("push", "tag_push")


SENDER_RULES: dict[str, SenderRules] = {
    rules.name: rules
    for rules in (
        SenderRules(
            "github",
            "x-github-event",
            ("x-github-delivery",),
            frozenset({"push"}),
            frozenset({"ping"}),
            lambda s, b, h: verify_github_signature(s, b, h.get("x-hub-signature-256")),
        ),
        SenderRules(
            "gitea",
            "x-gitea-event",
            ("x-gitea-delivery",),
            frozenset({"push"}),
            frozenset(),
            lambda s, b, h: verify_gitea_signature(s, b, h.get("x-gitea-signature")),
        ),
        SenderRules(
            "gitlab",
            "x-gitlab-event",
            ("idempotency-key", "x-gitlab-event-uuid"),  # GitLab 17.4+: Idempotency-Key is the same on retries
            frozenset({"Push Hook", "Tag Push Hook"}),
            frozenset(),
            lambda s, b, h: verify_gitlab_token(s, h.get("x-gitlab-token")),
            frozenset({"System Hook"}),
        ),
    )
}


@dataclass(frozen=True)
class PushReading:
    """What one delivery asks for; DELIVERY (``sender:id``) is the key its replays are known by."""

    commits: tuple[TriggeredCommit, ...] = ()
    ignored: str | None = None
    ping: bool = False
    push: PushEvent | None = None
    delivery: str | None = None
# Every header a sender names its deliveries by, for the receiver's log of refused requests.
DELIVERY_HEADERS = frozenset(h for rules in SENDER_RULES.values() for h in rules.delivery_headers)


class WebhookSender:
    """One sender's pushes as a trigger, checked with that sender's own secret."""

    kind: RunTrigger = "push"

    def __init__(self, rules: SenderRules, secrets: WebhookSecrets) -> None:
        self.rules = rules
        self.secrets = secrets

    @property
    def name(self) -> str:
        return self.rules.name

    def enabled(self) -> bool:
        """Whether this sender's endpoint is on (a secret is configured for it)."""
        return self.secrets.enabled(self.name)

    def authenticate(self, event: WebhookDelivery) -> None:
        """HMAC over the raw body (the token for GitLab); may block reading a Secret block."""
        secret = self.secrets.get(self.name)  # SecretUnavailable names settings, never a value
        if not self.rules.proves(secret.get_secret_value(), event.body, event.headers):
            raise NotAuthentic("bad or missing signature")

    def read(self, event: WebhookDelivery, services: Sequence[ServiceConfig]) -> PushReading:
        payload = decode_payload(event.body, event.headers.get("content-type", ""))
        kind = event.headers.get(self.rules.event_header, "")
        if kind in self.rules.ping_events:
            return PushReading(ignored=f"event {kind} checks the endpoint", ping=True)
        if not self.rules.is_push(kind, payload):
            return PushReading(ignored=f"event {kind or '(none)'} is not a push")
        delivery = self.delivery_id(event)
        push = parse_push(payload)
        reason = push.ignore_reason()
        targets = [] if reason else services_for_push(services, push)
        if not reason and not targets:
            reason = f"no service builds from {push.repo_name} branch {push.branch}"
        if reason:
            log.info("Delivery %s ignored: %s", delivery, reason)
            return PushReading(ignored=reason, push=push, delivery=delivery)
        commits = tuple(TriggeredCommit(cfg, push.sha) for cfg in targets)
        return PushReading(commits=commits, push=push, delivery=delivery)

    def delivery_id(self, event: WebhookDelivery) -> str | None:
        """``sender:id`` from the first delivery header sent (ids are kept per sender), or None."""
        header = next((h for h in self.rules.delivery_headers if event.headers.get(h)), None)
        if header is None:
            return None
        delivery = event.headers[header]
        if not DELIVERY_ID.match(delivery):
            raise NotAnEvent(f"{header} is not a delivery id")
        return f"{self.name}:{delivery}"


def webhook_senders(secrets: WebhookSecrets) -> dict[str, WebhookSender]:
    """Every sender this module knows, each with its own secret from SECRETS."""
    return {name: WebhookSender(rules, secrets) for name, rules in SENDER_RULES.items()}
