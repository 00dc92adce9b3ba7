"""One webhook delivery from its sender's name to the runs it starts: sender on, proof, reading, replay, runs.

The webhook app (``flows/webhook.py``) only reads the capped body and turns the
outcomes and refusals here into HTTP answers. A delivery id is recorded only
when its runs are about to start, so a refused request never uses up the id of
a genuine delivery, and a delivery whose runs could not start is let through
again. Ids are kept per sender, and a push that would start runs must carry one.
The receiver that ``serve`` runs keeps them in the Prefect server
(``PrefectDeliveries``), so a restarted receiver, or a second one, knows them
too. A push whose commit is already live (or was released or refused before)
is answered "nothing to do" without a run.
"""

from __future__ import annotations

import hashlib
import logging
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any, Protocol
from uuid import UUID

import httpx
from prefect.client.orchestration import SyncPrefectClient, get_client
from prefect.client.schemas.actions import VariableCreate
from prefect.client.schemas.objects import Variable
from prefect.exceptions import ObjectAlreadyExists
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
    settled: dict[str, str] = field(default_factory=dict)  # services of the push that needed no run, and why


@dataclass(frozen=True)
class NothingToDo:
    """Every service of the push already has its commit live, or released or refused before: no run."""

    settled: dict[str, str]  # service -> why
    sha: str
    branch: str | None


Outcome = Ping | Ignored | Duplicate | NothingToDo | Started


class SeenDeliveries(Protocol):
    """Where a receiver remembers delivery ids; both calls may block (run them off the event loop)."""

    def check_and_add(self, delivery_id: str) -> bool: ...

    def forget(self, delivery_id: str) -> None: ...


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


DELIVERY_TAG = "ecs-pipeline-webhook-delivery"
_VARIABLE_PREFIX = "ecs_pipeline_delivery_"
DEFAULT_DELIVERY_TTL = 24 * 3600.0


def delivery_variable(delivery_id: str) -> str:
    """The Variable that records DELIVERY_ID: names allow lowercase letters, digits, ``_`` and ``-`` only."""
    return _VARIABLE_PREFIX + hashlib.sha256(delivery_id.encode()).hexdigest()[:40]


class PrefectDeliveries:
    """Delivery ids kept in the Prefect server, one Variable each, so every receiver and its restarts know them.

    Creating the delivery's Variable is the check: the server refuses a second
    Variable of one name (409), atomically, whichever receiver asks. Its value
    says until when the id counts (TTL_SECONDS from when it was first seen); an
    expired one is deleted by its id and created again, so of two receivers
    replacing it at once only one creation succeeds. Expired records are swept
    in the background, oldest first, at most once every SWEEP_SECONDS.
    """

    def __init__(
        self,
        ttl_seconds: float = DEFAULT_DELIVERY_TTL,
        *,
        sweep_seconds: float = 600.0,
        sweep_batch: int = 100,
        clock: Callable[[], datetime] = lambda: datetime.now(UTC),
    ) -> None:
        if ttl_seconds <= 0:
            raise ValueError("ttl_seconds must be > 0")
        self.ttl = timedelta(seconds=ttl_seconds)
        self.sweep_seconds, self.sweep_batch, self._clock = sweep_seconds, sweep_batch, clock
        self._client: SyncPrefectClient | None = None
        self._lock = threading.Lock()
        self._last_sweep = time.monotonic()
        self._sweeping = False

    def check_and_add(self, delivery_id: str) -> bool:
        """True when DELIVERY_ID was recorded and has not expired; records it otherwise."""
        client, name = self._open(), delivery_variable(delivery_id)
        for _ in range(3):
            now = self._clock()
            record = {"delivery": delivery_id, "seen": now.isoformat(), "expires": (now + self.ttl).isoformat()}
            try:
                client.create_variable(VariableCreate(name=name, value=record, tags=[DELIVERY_TAG]))
            except ObjectAlreadyExists:
                found = client.read_variable_by_name(name)
                if found is not None and not self._expired(found, now):
                    return True
                if found is not None:
                    self._delete(client, found.id)  # by id: never another receiver's fresh record
                continue  # expired or just swept: creating it again decides
            self._sweep_soon()
            return False
        return True  # lost every race to other receivers: one of them has it

    def forget(self, delivery_id: str) -> None:
        """Let a delivery through again, e.g. when starting its runs failed."""
        client = self._open()
        found = client.read_variable_by_name(delivery_variable(delivery_id))
        if found is not None:
            self._delete(client, found.id)

    def sweep(self) -> int:
        """Delete up to SWEEP_BATCH expired records, the oldest first; how many went."""
        client, now = self._open(), self._clock()
        mine = {"tags": {"all_": [DELIVERY_TAG]}}
        total = int(client.request("POST", "/variables/count", json={"variables": mine}).json())
        oldest = client.request("POST", "/variables/filter", json={
            "variables": mine, "sort": "CREATED_DESC", "limit": self.sweep_batch,
            "offset": max(0, total - self.sweep_batch),
        }).json()
        gone = 0
        for found in Variable.model_validate_list(oldest):
            if self._expired(found, now):
                self._delete(client, found.id)
                gone += 1
        return gone

    def close(self) -> None:
        with self._lock:
            client, self._client = self._client, None
        if client is not None:
            client.__exit__(None, None, None)

    def _open(self) -> SyncPrefectClient:
        with self._lock:
            if self._client is None:
                self._client = get_client(sync_client=True).__enter__()
            return self._client

    @staticmethod
    def _expired(found: Variable, now: datetime) -> bool:
        value: Any = found.value
        try:
            return bool(datetime.fromisoformat(value["expires"]) <= now)
        except (TypeError, KeyError, ValueError):  # not a record this class wrote: replace it
            return True

    @staticmethod
    def _delete(client: SyncPrefectClient, variable_id: UUID) -> None:
        try:
            client.request("DELETE", "/variables/{id}", path_params={"id": variable_id})
        except httpx.HTTPStatusError as exc:
            if exc.response.status_code != 404:  # 404: another receiver deleted it first
                raise

    def _sweep_soon(self) -> None:
        with self._lock:
            if self._sweeping or time.monotonic() - self._last_sweep < self.sweep_seconds:
                return
            self._sweeping, self._last_sweep = True, time.monotonic()

        def sweep_quietly() -> None:
            try:
                if gone := self.sweep():
                    log.info("Forgot %d expired webhook delivery ids", gone)
            except Exception as exc:  # noqa: BLE001 - the next sweep tries again; nothing waits for this one
                log.warning("Sweeping expired webhook delivery ids failed: %s", type(exc).__name__)
            finally:
                with self._lock:
                    self._sweeping = False

        threading.Thread(target=sweep_quietly, name="delivery-sweep", daemon=True).start()


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
    """The webhook senders, the services they may start, the delivery ids seen, and the run starter.

    DELIVERIES: a ``DeliveryCache`` (this process only) unless given, e.g. ``PrefectDeliveries``.
    The run starter may also say which services' commits are settled (``settled(push, services)``:
    service -> why), as ``PrefectRunStarter`` does; those get no run.
    """

    def __init__(
        self,
        services: Sequence[ServiceConfig],
        secrets: WebhookSecrets,
        start_runs: StartRuns,
        deliveries: SeenDeliveries | None = None,
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
        try:
            seen = await run_in_threadpool(self.seen.check_and_add, delivery)
        except Exception as exc:  # the ids' store is the Prefect server, as are the runs: the sender redelivers
            log.error("Delivery %s: cannot check its id: %s", delivery, type(exc).__name__)
            raise RunsNotStarted(type(exc).__name__) from exc
        if seen:
            return Duplicate(delivery.partition(":")[2])
        configs = [c.config for c in reading.commits]
        try:
            settled = await self._settled(push, configs)
            todo = [c for c in configs if c.name not in settled]
            started = await self.start_runs(push, todo, delivery) if todo else []
        except Exception as exc:
            await run_in_threadpool(self._forget, delivery)  # let the sender's redelivery try again
            log.error("Delivery %s: starting runs failed: %s", delivery, type(exc).__name__)
            raise RunsNotStarted(type(exc).__name__) from exc
        if settled:
            log.info("Delivery %s: nothing to do for %s@%s: %s", delivery, push.repo_name, push.sha[:12],
                     "; ".join(f"{name}: {why}" for name, why in sorted(settled.items())))
        if not todo:
            return NothingToDo(settled, push.sha, push.branch)
        runs = ", ".join(f"{s.service}:{s.flow_run_id}" for s in started)
        log.info("Delivery %s: %s@%s -> %s", delivery, push.repo_name, push.sha[:12], runs)
        return Started(started, push.sha, push.branch, settled)

    async def _settled(self, push: PushEvent, configs: list[ServiceConfig]) -> dict[str, str]:
        settled = getattr(self.start_runs, "settled", None)
        if settled is None:
            return {}
        found: dict[str, str] = await settled(push, configs)
        return found

    def _forget(self, delivery: str) -> None:
        try:
            self.seen.forget(delivery)
        except Exception as exc:  # noqa: BLE001 - the id then counts until it expires; the runs' error is the news
            log.warning("Delivery %s: could not forget its id: %s", delivery, type(exc).__name__)

    async def warm(self) -> None:
        """Let the run starter open its client before the first push arrives."""
        warm = getattr(self.start_runs, "warm", None)
        if warm is not None:
            await warm()

    async def aclose(self) -> None:
        closer = getattr(self.start_runs, "aclose", None)
        if closer is not None:
            await closer()
        close_seen = getattr(self.seen, "close", None)
        if close_seen is not None:
            await run_in_threadpool(close_seen)
