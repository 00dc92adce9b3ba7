"""A release process's heap after its imports: frozen once, so the collector stops walking it.

A release imports Prefect, pydantic, botocore and their models: hundreds of thousands of
long-lived objects. CPython's cyclic collector walks every one of them each time its
oldest generation is collected, which a release's allocations trigger again and again;
measured on one task-set release, that walk was about a third of the process's CPU.
``gc.freeze`` (made for this: a process's start-up objects moved out of the collector's
reach) after one last collection ends that, and a larger first threshold makes the young
collections fewer. Garbage made later is still collected as before.
"""

from __future__ import annotations

import gc
import threading

_done = threading.Event()
_lock = threading.Lock()
FIRST_GENERATION_THRESHOLD = 10_000  # CPython's default is 700: a release allocates in bursts of far more


def settle() -> None:
    """Once per process, after the imports: collect, then freeze what is left (later calls do nothing)."""
    if _done.is_set():
        return
    with _lock:
        if _done.is_set():
            return
        gc.collect()
        gc.freeze()
        _, second, third = gc.get_threshold()
        gc.set_threshold(FIRST_GENERATION_THRESHOLD, second, third)
        _done.set()
