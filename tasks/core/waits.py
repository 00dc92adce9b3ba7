"""Bounded waits that poll with backoff: every wait in the pipeline goes through ``poll``."""

from __future__ import annotations

import random
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from typing import TypeVar

from tasks.core.errors import DeployError

T = TypeVar("T")


class Backoff:
    """Exponential delays with jitter: first, first*factor, ... capped."""

    def __init__(self, first: float, factor: float, cap: float) -> None:
        self.next_delay = first
        self.factor = factor
        self.cap = cap

    def __iter__(self) -> Backoff:
        return self

    def __next__(self) -> float:
        delay = self.next_delay
        self.next_delay = min(self.cap, self.next_delay * self.factor)
        return delay * random.uniform(0.8, 1.2)


def poll(
    check: Callable[[], T | None],
    *,
    timeout: float,
    what: str,
    log: Callable[[str], None] | None = None,
    first: float = 0.2,
    cap: float = 5.0,
    look_at: float | None = None,
) -> T:
    """Call ``check`` until it returns a value; DeployError naming ``what`` after ``timeout`` s.

    LOOK_AT (``time.monotonic()``): when the awaited state is expected; a pause that would pass over it
    ends there instead, one look sooner (the pauses after it go on as before).
    """
    deadline = time.monotonic() + timeout
    delays = Backoff(first, 1.5, cap)
    last_log = 0.0
    while True:
        checkpoint()
        result = check()
        if result is not None:
            return result
        now = time.monotonic()
        if now >= deadline:
            raise DeployError(f"timed out after {timeout:.0f}s waiting for {what}")
        if log and now - last_log > 10:
            log(f"waiting for {what} ({deadline - now:.0f}s left)")
            last_log = now
        pause = next(delays)
        if look_at is not None and look_at <= now + pause:
            pause, look_at = max(0.0, look_at - now), None
        time.sleep(min(pause, max(0.0, deadline - now)))


class Aborted(BaseException):
    """The run must stop now (cancelled, or its deploy slot was taken): roll back, then end.

    A BaseException, like Prefect's own TerminationSignal, so no ``except Exception``
    on the way up (a stage's retry, a check's error handling) swallows it.
    """


_abort_check: ContextVar[Callable[[], str | None] | None] = ContextVar("ecs_pipeline_abort", default=None)


_stopping = threading.Event()
_stopping_why: list[str] = []


def stop_every_release(why: str) -> None:
    """Every release in this process stops at its next wait and rolls back (a fleet run's threads).

    Signals reach only the main thread: a fleet run that is told to stop there passes it on.
    """
    _stopping_why.append(why)
    _stopping.set()


def checkpoint() -> None:
    """Raise Aborted if the run was cancelled or lost its slot; every wait loop calls this.

    Nothing aborts where checks are off (abort_when(None): a rollback must finish).
    """
    check = _abort_check.get()
    if check is None:
        return
    if _stopping.is_set():
        raise Aborted(_stopping_why[0])
    if why := check():
        raise Aborted(why)


@contextmanager
def abort_when(check: Callable[[], str | None] | None) -> Iterator[None]:
    """Waits inside this block stop with Aborted once ``check`` gives a reason (None: never)."""
    token = _abort_check.set(check)
    try:
        yield
    finally:
        _abort_check.reset(token)
