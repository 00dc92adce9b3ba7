"""A release process's heap after its imports: frozen once, so the collector stops walking it.

A release imports Prefect, pydantic, botocore and their models: hundreds of thousands of
long-lived objects. CPython's cyclic collector walks every one of them each time its
oldest generation is collected, which a release's allocations trigger again and again;
measured on one task-set release, that walk was about a third of the process's CPU.
``gc.freeze`` (made for this: a process's start-up objects moved out of the collector's
reach) after one last collection ends that, and a larger first threshold makes the young
collections fewer. Garbage made later is still collected as before.

A command-line process goes further: its imports (Prefect alone is most of a second) make
almost no garbage, yet CPython's collector, counting allocations, walks the growing heap
dozens of times while they run. ``loading`` stops it while they do, then freezes what they
made: measured on this machine, the release command's imports took 1.14-1.20 s with the
collector and 1.01-1.07 s without, and the one collection ``settle`` makes anyway grew by 0.03 s.
"""

from __future__ import annotations

import gc
import threading
from collections.abc import Iterator
from contextlib import contextmanager

_done = threading.Event()
_by_loading = threading.Event()  # settled by ``loading`` blocks: a command-line process, whose next block freezes too
_lock = threading.Lock()
FIRST_GENERATION_THRESHOLD = 10_000  # CPython's default is 700: a release allocates in bursts of far more


@contextmanager
def loading() -> Iterator[None]:
    """No cyclic collection while the block imports what the process runs; then what it loaded is frozen.

    Ends as ``settle`` does (so the flow's own ``settle`` does nothing more); a second block freezes what it
    added, its collection walking only that. A block that raises turns the collector back on, no more. In a
    process settled otherwise (a worker's, a test session's) or whose collector is off, a block changes nothing.
    """
    if (_done.is_set() and not _by_loading.is_set()) or not gc.isenabled():
        yield
        return
    gc.disable()
    try:
        yield
    except BaseException:
        gc.enable()
        raise
    with _lock:
        _freeze()
        gc.enable()
        _by_loading.set()
        _done.set()


def settle() -> None:
    """Once per process, after the imports: collect, then freeze what is left (later calls do nothing)."""
    if _done.is_set():
        return
    with _lock:
        if _done.is_set():
            return
        _freeze()
        _done.set()


def _freeze() -> None:
    gc.collect()
    gc.freeze()
    _, second, third = gc.get_threshold()
    gc.set_threshold(FIRST_GENERATION_THRESHOLD, second, third)
