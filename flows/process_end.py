"""The ``ecs-pipeline`` program's end: once every exit handler ran, the process ends without tearing down.

Imported by the CLI before anything that registers an exit handler (logging, Prefect's loop threads
and its temporary server), so its own handler runs after all of them, and after Prefect's queued logs
and events were sent (those drain when the threads are joined, before any exit handler). What is left
then is freeing every object the release imported and made: about 0.07 s of a release from the
terminal. The standard streams are flushed first; a file the program left open would lose what it still
buffers (the CLI's files are written whole, in ``with`` blocks). Only ``arm`` (the program's ``run``)
turns it on: ``main`` called by anything else, a test, leaves its process's exit alone.
"""

from __future__ import annotations

import atexit
import os
import sys

_code: list[int] = []


def arm(code: int) -> None:
    """End the process with CODE once the other exit handlers ran."""
    _code[:] = [code]


def _end_now() -> None:
    if not _code:
        return
    logging = sys.modules.get("logging")
    if logging is not None:
        logging.shutdown()
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except (OSError, ValueError):  # a reader gone (`| head`), a stream closed: nothing more to write
            continue
    os._exit(_code[0])


atexit.register(_end_now)
