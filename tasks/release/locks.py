"""One release per service at a time, held only by a live run.

The slot is a Prefect global concurrency limit with one slot per service, so
two live releases of a service never overlap, on any number of workers.
Prefect's own lease on a slot lasts at least a minute; a dead run must free
its service sooner. So the holder also writes a heartbeat (a Prefect variable
naming its run and lease) every few seconds, and a waiting run that finds the
heartbeat older than ``stale_after`` seconds releases the dead holder's slot,
marks its flow run Crashed and takes the service. The next release then
reconciles whatever the dead run left (flows/recovery). A beat is two calls,
the lease's renewal and the heartbeat's write; the holder reads the heartbeat
only when Prefect refuses the renewal (410: the lease was revoked by a run
that took the service, or ran out), to learn which.

A run suspended for approval has no process, so it cannot keep Prefect's
lease: it lets the slot go and leaves its heartbeat marked ``suspended``, a
reservation. A run that then gets the slot finds the reservation and, while
the suspended run is alive (suspended, or resumed and on its way back), either
waits, gives way, or takes the service from it (``Reserved``: the caller's
choice, e.g. a newer commit that supersedes it). The resumed run takes its own
reservation back. A reservation whose run has ended (rejected by Prefect's
timeout, cancelled) is a dead holder's: the next run takes over and
reconciles the green it left.
"""

from __future__ import annotations

import re
import ssl
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager, suppress
from contextvars import copy_context
from dataclasses import dataclass, field
from functools import cache, partial
from typing import Any
from uuid import UUID

import certifi
import httpx
from prefect import get_run_logger
from prefect.client.orchestration import SyncPrefectClient, get_client
from prefect.client.schemas.actions import GlobalConcurrencyLimitCreate, VariableCreate, VariableUpdate
from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterId
from prefect.client.schemas.objects import State, StateType
from prefect.context import SettingsContext, get_settings_context
from prefect.exceptions import ObjectAlreadyExists, ObjectNotFound, Pause, PrefectHTTPStatusError
from prefect.settings import (
    PREFECT_API_SSL_CERT_FILE,
    PREFECT_API_TLS_INSECURE_SKIP_VERIFY,
    PREFECT_CLIENT_MAX_RETRIES,
    Settings,
)
from prefect.states import Crashed

from tasks.core.errors import DeployError
from tasks.core.tls import tls_context
from tasks.core.waits import checkpoint

PREFECT_LEASE_SECONDS = 60.0  # the server's minimum; our heartbeat decides liveness sooner
HTTP_NOT_FOUND = 404
HTTP_GONE = 410  # a lease renewed after it was revoked (another run took the service) or ran out
HTTP_LOCKED = 423


def lock_name(service: str) -> str:
    return f"ecs-pipeline-deploy-{service}"


def heartbeat_name(service: str) -> str:
    """Variable names allow lowercase letters, digits and underscores."""
    return "ecs_pipeline_lock_" + re.sub(r"[^a-z0-9_]", "_", service.lower())


def ensure_limit(client: SyncPrefectClient, name: str) -> None:
    """Create the limit (1 slot) if missing; a limit that exists keeps its settings."""
    try:
        client.read_global_concurrency_limit_by_name(name)
        return
    except ObjectNotFound:
        pass
    with suppress(ObjectAlreadyExists):
        client.create_global_concurrency_limit(GlobalConcurrencyLimitCreate(name=name, limit=1))


@dataclass
class Held:
    """The slot a run holds: its lease, and whether it was taken over from a dead run."""

    service: str
    lease_id: UUID
    run_id: str | None
    took_over_from: str | None = None
    lost: threading.Event = field(default_factory=threading.Event)


def read_heartbeat(client: SyncPrefectClient, service: str) -> dict[str, Any] | None:
    found = client.read_variable_by_name(heartbeat_name(service))
    return found.value if found is not None and isinstance(found.value, dict) else None


def write_heartbeat(client: SyncPrefectClient, held: Held, exists: bool | None = None, suspended: bool = False) -> None:
    """EXISTS: whether the caller just read the variable (None: look first). SUSPENDED: the reservation."""
    value: dict[str, Any] = {"run": held.run_id, "lease": str(held.lease_id), "at": time.time()}
    if suspended:
        value["suspended"] = True
    name = heartbeat_name(held.service)
    if exists is None:
        exists = client.read_variable_by_name(name) is not None
    if exists:
        try:
            client.update_variable(VariableUpdate(name=name, value=value))
            return
        except PrefectHTTPStatusError as exc:  # gone since it was read (deleted from outside): made again
            if exc.response.status_code != HTTP_NOT_FOUND:
                raise
    try:
        client.create_variable(VariableCreate(name=name, value=value))
    except ObjectAlreadyExists:
        client.update_variable(VariableUpdate(name=name, value=value))


def delete_heartbeat(client: SyncPrefectClient, service: str) -> None:
    with suppress(ObjectNotFound, PrefectHTTPStatusError):  # already gone: another run cleaned up
        client.delete_variable_by_name(heartbeat_name(service))


def _try_acquire(client: SyncPrefectClient, name: str) -> UUID | None:
    """The slot's lease, or None while another run holds it. The limit is made on the first ask that finds
    none (Prefect then hands out a lease that holds nothing), not looked up before every ask."""
    for _ in range(2):
        try:
            response = client.increment_concurrency_slots_with_lease(
                names=[name], slots=1, mode="concurrency", lease_duration=PREFECT_LEASE_SECONDS
            )
        except PrefectHTTPStatusError as exc:
            if exc.response.status_code == HTTP_LOCKED:
                return None
            raise
        answer = response.json()
        lease = UUID(answer["lease_id"])
        if answer.get("limits"):
            return lease
        client.release_concurrency_slots_with_lease(lease)
        ensure_limit(client, name)
    raise DeployError(f"the Prefect concurrency limit {name} is missing and could not be made; create it "
                      f"(`prefect gcl create {name} --limit 1`) and run again")


def _free_dead_holder(
    client: SyncPrefectClient, service: str, stale_after: float, run_id: str | None = None
) -> str | None:
    """Release the slot of a holder whose heartbeat stopped; returns its run id (or 'unknown').

    When the dead holder is an earlier attempt of RUN_ID itself (its worker died and the run
    was retried), the run is not marked Crashed: it is the one running now.
    """
    return _free_if_stale(client, service, read_heartbeat(client, service), stale_after, run_id)


def _free_if_stale(
    client: SyncPrefectClient, service: str, beat: dict[str, Any] | None, stale_after: float, run_id: str | None
) -> str | None:
    """_free_dead_holder with the heartbeat BEAT as the caller just read it."""
    if beat is None or beat.get("suspended") or time.time() - float(beat.get("at", 0)) < stale_after:
        return None  # a reservation has no heartbeat to go stale: reservation() judges it
    try:
        client.release_concurrency_slots_with_lease(UUID(str(beat["lease"])))
    except PrefectHTTPStatusError as exc:
        if exc.response.status_code != 404:
            raise
    dead = str(beat.get("run") or "unknown")
    if beat.get("run") and dead != run_id:
        mark_crashed(client, dead, f"its process stopped: no heartbeat for over {stale_after:.0f} s; "
                     "the next release of the service reconciles what it left")
    delete_heartbeat(client, service)
    return dead


def mark_crashed(client: SyncPrefectClient, run_id: str, why: str) -> None:
    """A run that died without saying so: Crashed, unless it already ended."""
    try:
        run = client.read_flow_run(UUID(run_id))
    except ObjectNotFound:
        return
    if run.state is not None and not run.state.is_final():
        client.set_flow_run_state(UUID(run_id), Crashed(message=why), force=True)


class BeatUnanswered(Exception):
    """The Prefect API answered a beat's call with a transient status (408, 429, 5xx): tried again at once."""


TRANSIENT = frozenset({408, 429, 500, 502, 503, 504})
BEAT_RETRY = 0.1


def _unanswered(response: httpx.Response) -> None:
    if response.status_code in TRANSIENT:
        response.close()
        raise BeatUnanswered(f"the Prefect API answered {response.status_code}")


def _keep_alive(held: Held, interval: float, stop: threading.Event) -> None:
    """Renew Prefect's lease and our heartbeat every INTERVAL until stopped; flag the hold as lost if taken.

    A beat's calls are tried again every BEAT_RETRY s within the beat, never after Prefect's client's
    pauses (2, 4, 8 ... s, and one even when told not to retry): a holder whose beat sits in such a
    pause looks dead to a run waiting for the service, which then takes it from a live release. So
    the beat's own client raises on a transient answer at once (an httpx response hook), tries no
    connection twice, and waits at most INTERVAL for an answer. A beat that still fails is tried
    again at the next.
    """
    settings = {"timeout": interval, "event_hooks": {"response": [_unanswered]}, "verify": _api_tls()}
    with _no_client_retries(), get_client(httpx_settings=settings, sync_client=True) as client:
        _beat(held, interval, stop, client)


# Built once per process, not per hold: Prefect's settings with its client's retries off (a copy of the
# settings costs tens of milliseconds), and the TLS context its client would load (tasks/core/tls.py).
_NO_RETRIES: list[tuple[Settings, Settings]] = []


def _no_client_retries() -> SettingsContext:
    """Prefect's current settings with PREFECT_CLIENT_MAX_RETRIES=0, as temporary_settings would enter them."""
    context = get_settings_context()
    kept = _NO_RETRIES[0] if _NO_RETRIES else None
    # Each flow run may enter settings of its own, equal to the last: compared, not copied again.
    if kept is None or (kept[0] is not context.settings and kept[0] != context.settings):
        kept = (context.settings, context.settings.copy_with_update(updates={PREFECT_CLIENT_MAX_RETRIES: 0}))
        _NO_RETRIES[:] = [kept]
    return SettingsContext(profile=context.profile, settings=kept[1])


def _api_tls() -> ssl.SSLContext:
    """The TLS context Prefect's client builds for the API: its CA file's, or none checked when told to skip."""
    if PREFECT_API_TLS_INSECURE_SKIP_VERIFY.value():
        return _unverified()
    return tls_context(PREFECT_API_SSL_CERT_FILE.value() or certifi.where())


@cache
def _unverified() -> ssl.SSLContext:
    context = ssl.create_default_context()
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    return context


def _beat(held: Held, interval: float, stop: threading.Event, client: SyncPrefectClient) -> None:
    def soon(call: Callable[[], Any], until: float) -> Any:
        while True:
            try:
                return call()
            except (BeatUnanswered, httpx.TransportError):
                if time.monotonic() + BEAT_RETRY >= until or stop.wait(BEAT_RETRY):
                    raise

    while not stop.wait(interval):
        until = time.monotonic() + interval
        try:
            try:
                soon(partial(client.renew_concurrency_lease, held.lease_id, lease_duration=PREFECT_LEASE_SECONDS),
                     until)
            except PrefectHTTPStatusError as exc:
                if exc.response.status_code != HTTP_GONE:
                    raise
                # Revoked by a run that found us stale (it revokes before it writes its own heartbeat), or
                # Prefect's lease ran out: the heartbeat says which. Only then is it read.
                beat = soon(partial(read_heartbeat, client, held.service), until)
                if beat is None or beat.get("lease") != str(held.lease_id):
                    held.lost.set()  # another run took the service
                    return
                # Still ours: the heartbeat keeps the service until a run finds it stale.
            soon(partial(write_heartbeat, client, held, exists=True), until)
        except Exception:  # noqa: BLE001 - a failed beat is tried again at the next; the lease outlives it
            continue


class ServiceBusy(DeployError):
    """Another live run holds the service's release slot, and this one would not wait longer."""


class LooseLimit(DeployError):
    """The service's concurrency limit no longer keeps one release at a time (disabled, or widened)."""


class GaveWay(DeployError):
    """The run gave way to a suspended run that reserves the service (its commit wins: this one is pointless)."""

    def __init__(self, message: str, *, holder: str, **kw: Any) -> None:
        super().__init__(message, **kw)
        self.holder = holder


# What a run that finds the service reserved by a suspended run (its id) does: "wait" behind it, "give way"
# (end, changing nothing), or "take" the service (the callable has ended the suspended run first).
Reserved = Callable[[str], str]


def reservation(
    client: SyncPrefectClient, beat: dict[str, Any] | None, run_id: str | None, stale_after: float
) -> tuple[str, bool] | None:
    """The suspended run whose heartbeat BEAT reserves the service, and whether it is alive; None when no
    other run reserves it.

    Alive: still suspended, or resumed and on its way back (scheduled, pending, or running for less than
    STALE_AFTER seconds without taking its slot back). Ended (Prefect's timeout, cancelled) is dead.
    """
    holder = str(beat.get("run") or "") if beat else ""
    if not beat or not beat.get("suspended") or not holder or holder == run_id:
        return None
    try:
        state = client.read_flow_run(UUID(holder)).state
    except (ObjectNotFound, ValueError):
        return holder, False
    if state is None or state.is_final():
        return holder, False
    if state.is_running() and (time.time() - state.timestamp.timestamp()) > stale_after:
        return holder, False
    return holder, True


def _take_reserved(client: SyncPrefectClient, service: str, holder: str) -> str:
    """A reservation taken: its run ended (or the caller ended it); the taker reconciles what it left."""
    mark_crashed(client, holder, "its approval wait ended without an answer it acted on; the next release of "
                 "the service reconciles what it left")
    delete_heartbeat(client, service)
    return holder


@contextmanager
def service_lock(
    service: str, run_id: str | None, stale_after: float = 30.0, give_up_after: float | None = None,
    reserved: Reserved | None = None,
) -> Iterator[Held]:
    """Hold the service's release slot; wait for a live holder, take over from a dead one.

    GIVE_UP_AFTER: seconds to wait for a live holder before ServiceBusy (None: as long as it takes).
    RESERVED: what to do when a suspended run reserves the service (None: wait for it).
    A Prefect Pause (the run suspends) leaves the reservation instead of freeing the service.
    """
    log = get_run_logger()
    deadline = None if give_up_after is None else time.monotonic() + give_up_after
    with get_client(sync_client=True) as client:
        log.info("waiting for the deploy slot of %s", service)
        lease, took_over, reservation_of, beat = _acquire(client, service, run_id, stale_after, reserved,
                                                          deadline, give_up_after)
        try:
            if _live_other(beat, run_id, stale_after):
                _refuse_loose_limit(client, service)
            # A free slot with a stale heartbeat: the holder died and Prefect's lease ran out first.
            dead = _free_if_stale(client, service, beat, stale_after, run_id)
            took_over = took_over or dead
            held = Held(service, lease, run_id, took_over)
            # Written over the heartbeat read at the acquire (this run's own reservation, or a live holder's
            # whose lease ran out); created when there was none, or a dead holder's or a reservation was removed.
            write_heartbeat(client, held, exists=beat is not None and not dead)
        except BaseException:  # refused, or the API failed: the slot goes back now, not when its lease ends
            with suppress(Exception):
                client.release_concurrency_slots_with_lease(lease)
            raise
    if took_over:
        log.warning("took the deploy slot of %s from run %s, which had %s", service, took_over,
                    "reserved it while waiting for approval" if reservation_of else "stopped")
    log.info("holding the deploy slot of %s", service)
    stop = threading.Event()
    every = max(1.0, stale_after / 6)
    # In a copy of the run's context: the thread's settings are the run's, with its own client's few changes.
    keeper = threading.Thread(target=copy_context().run, args=(_keep_alive, held, every, stop), daemon=True)
    keeper.start()
    suspended = False
    try:
        yield held
    except Pause:
        suspended = True
        raise
    finally:
        stop.set()
        keeper.join(timeout=10)
        _let_go(held, suspended)


def _live_other(beat: dict[str, Any] | None, run_id: str | None, stale_after: float) -> bool:
    """Whether BEAT, read once this run got the slot, is another run's live hold (not a reservation)."""
    return (beat is not None and not beat.get("suspended") and str(beat.get("run") or "") != str(run_id)
            and time.time() - float(beat.get("at", 0)) < stale_after)


def _refuse_loose_limit(client: SyncPrefectClient, service: str) -> None:
    """The slot was given while another run's heartbeat is fresh: its lease ran out (Prefect's 60 s while its
    beats failed; it goes on as before), or the limit no longer keeps one run at a time (disabled, more than
    one slot, or deleted), and this run would release beside it: LooseLimit, changing nothing."""
    name = lock_name(service)
    try:
        limit = client.read_global_concurrency_limit_by_name(name)
    except ObjectNotFound:
        state, fix = "deleted", f"prefect gcl create {name} --limit 1"
    else:
        if limit.active and limit.limit == 1:
            return
        state, fix = (("disabled", f"prefect gcl enable {name}") if not limit.active else
                      (f"set to {limit.limit} slots", f"prefect gcl update {name} --limit 1"))
    raise LooseLimit(
        f"the Prefect concurrency limit {name} is {state}, so it no longer keeps one release of {service} at a "
        f"time, and {holder_text(client, service)} is releasing it now; changed nothing. Run `{fix}` and start "
        "this release again", service=service)


def _acquire(
    client: SyncPrefectClient, service: str, run_id: str | None, stale_after: float, reserved: Reserved | None,
    deadline: float | None, give_up_after: float | None,
) -> tuple[UUID, str | None, bool, dict[str, Any] | None]:
    """The slot's lease, the run taken over from (if any), whether that was a reservation's run and the
    service's heartbeat as read once the slot was held; waits, gives way or gives up as told."""
    name = lock_name(service)
    took_over: str | None = None
    delay = 0.2
    while True:
        lease = _try_acquire(client, name)
        if lease is None:
            took_over = _free_dead_holder(client, service, stale_after, run_id) or took_over
        else:
            beat = read_heartbeat(client, service)
            found = reservation(client, beat, run_id, stale_after)
            if found is None:
                return lease, took_over, False, beat
            holder, alive = found
            verdict = (reserved(holder) if reserved is not None else "wait") if alive else "take"
            if verdict == "take":
                return lease, _take_reserved(client, service, holder), True, None
            client.release_concurrency_slots_with_lease(lease)
            if verdict == "give way":
                raise GaveWay(f"run {holder}, waiting for approval, reserves {service} and wins over this run",
                              holder=holder, service=service)
        checkpoint()
        if deadline is not None and time.monotonic() > deadline:
            raise ServiceBusy(f"{holder_text(client, service)} holds the deploy slot of {service}; "
                              f"waited {give_up_after:.0f} s for it and changed nothing", service=service)
        time.sleep(delay)
        delay = min(2.0, delay * 1.5)


def _let_go(held: Held, suspended: bool) -> None:
    """Free the slot; a suspending run leaves its heartbeat as the service's reservation."""
    with get_client(sync_client=True) as client:
        if read_heartbeat_lease(client, held.service) == str(held.lease_id):
            if suspended and not held.lost.is_set():
                write_heartbeat(client, held, exists=True, suspended=True)
                get_run_logger().info("the deploy slot of %s stays reserved for this run while it waits for "
                                      "approval", held.service)
            else:
                delete_heartbeat(client, held.service)
        try:
            client.release_concurrency_slots_with_lease(held.lease_id)
        except PrefectHTTPStatusError as exc:
            if exc.response.status_code != 404:
                raise


def holder_text(client: SyncPrefectClient, service: str) -> str:
    """``run 'deploy svc@abc1234' (<id>)``: the run its heartbeat names, for a person."""
    beat = read_heartbeat(client, service)
    run_id = str(beat.get("run") or "") if beat else ""
    if not run_id:
        return "another run"
    try:
        name = client.read_flow_run(UUID(run_id)).name
    except (ObjectNotFound, ValueError):
        return f"run {run_id}"
    return f"run '{name}' ({run_id})"


def read_heartbeat_lease(client: SyncPrefectClient, service: str) -> str | None:
    beat = read_heartbeat(client, service)
    return str(beat.get("lease")) if beat else None


def commit_of_run(run_id: str | None) -> str | None:
    """The commit a (dead) run was releasing: its sha parameter, else the one its name got at detect change."""
    if not run_id or run_id == "unknown":
        return None
    with get_client(sync_client=True) as client:
        try:
            run = client.read_flow_run(UUID(run_id))
        except (ObjectNotFound, ValueError):
            return None
    asked = run.parameters.get("sha")
    if asked:
        return str(asked)
    named = re.search(r"@([0-9a-f]{7,40})$", run.name or "")
    return named.group(1) if named else None


class StopWatch:
    """Why this run must stop now, if it must: cancelled in Prefect, or its slot taken over.

    Read by every wait loop (tasks/waits.checkpoint), at most every ``every`` seconds
    for the API call, so a cancel from the UI or ``prefect flow-run cancel`` rolls the
    release back even when no runner is there to send SIGTERM (an in-process CLI run).
    The releases of one process (a fleet run's threads) share that call (``RunStates``).
    """

    def __init__(self, run_id: str | None, every: float = 2.0) -> None:
        self.run_id, self.every = run_id, every
        self.held: Held | None = None

    def __call__(self) -> str | None:
        if self.held is not None and self.held.lost.is_set():
            return "another run took the deploy slot (this run's heartbeat had stopped)"
        if self.run_id is None:
            return None
        state = RUN_STATES.state_of(self.run_id, self.every)
        if state is not None and state.type in (StateType.CANCELLING, StateType.CANCELLED):
            return f"cancelled ({state.message or 'from the Prefect API'})"
        return None


class RunStates:
    """The states of the runs this process watches, all read in one API call at most every few seconds.

    Twenty releases in one fleet process, each reading its own run every two seconds, made ten reads
    a second; now one read serves them all. A run nobody asked about for a while is no longer read.
    """

    PAGE = 200  # the most runs the API returns for one filter

    def __init__(self) -> None:
        self._guard = threading.Lock()  # the dicts below
        self._reading = threading.Lock()  # one read at a time; the others keep the last answer meanwhile
        self._asked: dict[str, float] = {}
        self._states: dict[str, State[Any] | None] = {}
        self._read_at = float("-inf")

    def state_of(self, run_id: str, every: float) -> State[Any] | None:
        """RUN_ID's state as last read, at most EVERY seconds ago (plus one read in progress)."""
        with self._guard:
            self._asked[run_id] = time.monotonic()
            known = run_id in self._states
        # A run read before goes on with its last state while another thread reads; a new one waits.
        if self._due(run_id, every) and self._reading.acquire(blocking=not known):
            try:
                if self._due(run_id, every):
                    self._refresh(every)
            finally:
                self._reading.release()
        with self._guard:
            return self._states.get(run_id)

    def _due(self, run_id: str, every: float) -> bool:
        with self._guard:
            return run_id not in self._states or time.monotonic() - self._read_at >= every

    def _refresh(self, every: float) -> None:
        with self._guard:
            now = time.monotonic()
            self._asked = {r: t for r, t in self._asked.items() if now - t < max(30.0, 10 * every)}
            wanted = list(self._asked)
        found = self._read(wanted)
        with self._guard:
            self._states, self._read_at = found, time.monotonic()

    def _read(self, run_ids: list[str]) -> dict[str, State[Any] | None]:
        found: dict[str, State[Any] | None] = {}
        with get_client(sync_client=True) as client:
            for i in range(0, len(run_ids), self.PAGE):
                page = [UUID(r) for r in run_ids[i : i + self.PAGE]]
                only = FlowRunFilter(id=FlowRunFilterId(any_=page))
                runs = client.read_flow_runs(flow_run_filter=only, limit=len(page))
                found.update({str(run.id): run.state for run in runs})
        return found


RUN_STATES = RunStates()
