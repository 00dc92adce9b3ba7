"""One webhook delivery from its sender's name to the runs it starts: sender on, proof, reading, replay, runs.

The webhook app (``flows/webhook.py``) only reads the capped body and turns the
outcomes and refusals here into HTTP answers. A delivery id is recorded only
when its runs are about to start, so a refused request never uses up the id of
a genuine delivery, and a delivery whose runs could not start is let through
again. Ids are kept per sender, and a push that would start runs must carry one.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from starlette.concurrency import run_in_threadpool

from tasks.config.models import ServiceConfig
from tasks.triggers.contract import NotAnEvent
from tasks.triggers.push_payloads import PushEvent
from tasks.triggers.push_runs import StartedRun, StartRuns
from tasks.triggers.webhook_secrets import SecretUnavailable, WebhookSecrets, secret_variables
from tasks.triggers.webhooks import PushReading, WebhookDelivery, WebhookSender, webhook_senders

log = logging.getLogger("ecs_pipeline.webhook")


class SenderNotFound(LookupError):
    """No such sender, or its endpoint is off (no secret configured); the message says which setting."""


class RunsNotStarted(Exception):
    """Starting the delivery's runs failed; its id is forgotten so the sender's redelivery tries again."""


@dataclass(frozen=True)
class Ping:
    """The sender checking the endpoint."""


@dataclass(frozen=True)
class Ignored:
    reason: str


@dataclass(frozen=True)
class Duplicate:
    delivery: str  # as the sender sent it, without the sender's prefix


@dataclass(frozen=True)
class Started:
    runs: list[StartedRun]
    sha: str
    branch: str | None


Outcome = Ping | Ignored | Duplicate | Started


class DeliveryCache:
    """Remembers recent delivery ids so a redelivered webhook starts nothing twice.

    Bounded (oldest forgotten first) and time-limited; safe across threads.
    """

    def __init__(
        self,
        max_entries: int = 10_000,
        ttl_seconds: float = 24 * 3600,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if max_entries < 1 or ttl_seconds <= 0:
            raise ValueError("max_entries must be >= 1 and ttl_seconds > 0")
        self._max = max_entries
        self._ttl = ttl_seconds
        self._clock = clock
        self._seen: OrderedDict[str, float] = OrderedDict()
        self._lock = threading.Lock()

    def check_and_add(self, delivery_id: str) -> bool:
        """True when DELIVERY_ID was seen within the TTL; records it otherwise."""
        now = self._clock()
        with self._lock:
            self._expire(now)
            if delivery_id in self._seen:
                self._seen[delivery_id] = now
                self._seen.move_to_end(delivery_id)
                return True
            self._seen[delivery_id] = now
            while len(self._seen) > self._max:
                self._seen.popitem(last=False)
            return False

    def forget(self, delivery_id: str) -> None:
        """Let a delivery through again, e.g. when starting its runs failed."""
        with self._lock:
            self._seen.pop(delivery_id, None)

    def __len__(self) -> int:
        with self._lock:
            self._expire(self._clock())
            return len(self._seen)

    def _expire(self, now: float) -> None:
        while self._seen:
            key, added = next(iter(self._seen.items()))
            if now - added < self._ttl:
                return
            del self._seen[key]


class TooManyDeliveries(Exception):
    """A sender went over its rate or its concurrent deliveries; RETRY_AFTER seconds until one more fits."""

    def __init__(self, message: str, retry_after: float) -> None:
        super().__init__(message)
        self.retry_after = retry_after


class SenderLimits:
    """Per sender: at most PER_MINUTE authenticated deliveries in any minute and CONCURRENT at once.

    A captured signed delivery (or a leaked secret) can then start at most so many
    run creations, however fast it is replayed; a genuine sender redelivers on 429.
    """

    def __init__(self, per_minute: int = 120, concurrent: int = 16,
                 clock: Callable[[], float] = time.monotonic) -> None:
        if per_minute < 1 or concurrent < 1:
            raise ValueError("per_minute and concurrent must be >= 1")
        self.per_minute, self.concurrent, self._clock = per_minute, concurrent, clock
        self._recent: dict[str, list[float]] = {}
        self._busy: dict[str, int] = {}
        self._lock = threading.Lock()

    def acquire(self, sender: str) -> None:
        """Count one delivery of SENDER; TooManyDeliveries when it does not fit."""
        now = self._clock()
        with self._lock:
            recent = [t for t in self._recent.get(sender, []) if now - t < 60]
            self._recent[sender] = recent
            if len(recent) >= self.per_minute:
                raise TooManyDeliveries(f"more than {self.per_minute} {sender} deliveries in a minute",
                                        60 - (now - recent[0]))
            if self._busy.get(sender, 0) >= self.concurrent:
                raise TooManyDeliveries(f"{self.concurrent} {sender} deliveries already in progress", 1.0)
            recent.append(now)
            self._busy[sender] = self._busy.get(sender, 0) + 1

    def release(self, sender: str) -> None:
        with self._lock:
            self._busy[sender] = max(0, self._busy.get(sender, 0) - 1)


class PushReceiver:
    """The webhook senders, the services they may start, the delivery ids seen, and the run starter."""

    def __init__(
        self,
        services: Sequence[ServiceConfig],
        secrets: WebhookSecrets,
        start_runs: StartRuns,
        deliveries: DeliveryCache | None = None,
        limits: SenderLimits | None = None,
    ) -> None:
        self.services = list(services)
        self.limits = limits if limits is not None else SenderLimits()
        self.senders = webhook_senders(secrets)
        self.start_runs = start_runs
        self.seen = deliveries if deliveries is not None else DeliveryCache()  # an empty cache is falsy

    def sender(self, name: str) -> WebhookSender:
        """The sender NAME, checked before its body is read; SenderNotFound when unknown or off."""
        sender = self.senders.get(name)
        if sender is None:
            raise SenderNotFound(f"unknown sender; use one of {', '.join(self.senders)}")
        if not sender.enabled():
            raise SenderNotFound(f"{name} webhooks are off; set {secret_variables(name)}")
        return sender

    async def receive(self, sender: WebhookSender, delivery: WebhookDelivery) -> Outcome:
        """Raises SecretUnavailable, NotAuthentic, TooManyDeliveries, NotAnEvent or RunsNotStarted."""
        try:
            await run_in_threadpool(sender.authenticate, delivery)
        except SecretUnavailable as exc:  # names settings only, never a value
            log.error("Refusing %s deliveries: %s", sender.name, exc)
            raise
        self.limits.acquire(sender.name)  # authenticated: counts against the sender's own budget
        try:
            reading = sender.read(delivery, self.services)
            if reading.ping:
                return Ping()
            if reading.ignored is not None or reading.push is None:
                return Ignored(reading.ignored or "no push")
            return await self._start(reading.push, reading, sender)
        finally:
            self.limits.release(sender.name)

    async def _start(self, push: PushEvent, reading: PushReading, sender: WebhookSender) -> Outcome:
        delivery = reading.delivery
        if delivery is None:
            # Without an id a captured delivery replays as a new one, so it would start a run each time.
            raise NotAnEvent(f"a push that starts releases needs its delivery id "
                             f"({' or '.join(sender.rules.delivery_headers)}); none was sent")
        if self.seen.check_and_add(delivery):
            return Duplicate(delivery.partition(":")[2])
        try:
            started = await self.start_runs(push, [c.config for c in reading.commits], delivery)
        except Exception as exc:
            self.seen.forget(delivery)  # let the sender's redelivery try again
            log.error("Delivery %s: starting runs failed: %s", delivery, type(exc).__name__)
            raise RunsNotStarted(type(exc).__name__) from exc
        runs = ", ".join(f"{s.service}:{s.flow_run_id}" for s in started)
        log.info("Delivery %s: %s@%s -> %s", delivery, push.repo_name, push.sha[:12], runs)
        return Started(started, push.sha, push.branch)

    async def warm(self) -> None:
        """Let the run starter open its client before the first push arrives."""
        warm = getattr(self.start_runs, "warm", None)
        if warm is not None:
            await warm()

    async def aclose(self) -> None:
        closer = getattr(self.start_runs, "aclose", None)
        if closer is not None:
            await closer()
