"""A migrated, empty Prefect database that new sandbox servers start from.

A Prefect server on a new SQLite file first runs every migration and registers
its block types: about 9 s and 9 CPU-seconds here, against about 4 on a file
that has them. The first server of a Prefect version to come up healthy leaves
a copy of its database, taken before any run was made, in the user's cache
(``$XDG_CACHE_HOME/ecs-pipeline``); a sandbox whose state has no database yet
starts from that copy. It holds nothing but what the server itself wrote at
start, so a server started from it is as empty as a new one.
"""

from __future__ import annotations

import contextlib
import os
import sqlite3
from importlib.metadata import version
from pathlib import Path

FILE = "prefect.db"  # Prefect's default database under PREFECT_HOME


def template() -> Path:
    cache = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
    return cache / "ecs-pipeline" / f"prefect-{version('prefect')}-empty.db"


def start_from_template(home: Path) -> bool:
    """Copy the template into HOME when HOME has no database yet; whether it did."""
    target, source = home / FILE, template()
    if target.exists() or not source.is_file():
        return False
    home.mkdir(parents=True, exist_ok=True)
    _copy(source, target)
    return True


def keep_as_template(home: Path) -> None:
    """After a server came up on a new database in HOME (no run made yet): keep a copy, once per version."""
    source, target = home / FILE, template()
    if target.exists() or not source.is_file():
        return
    target.parent.mkdir(parents=True, exist_ok=True)
    _copy(source, target)


def _copy(source: Path, target: Path) -> None:
    """SQLite's online backup (consistent while a server writes), into a temporary name, then renamed."""
    partial = target.with_name(f".{target.name}.{os.getpid()}")
    try:
        with contextlib.closing(sqlite3.connect(source)) as src, contextlib.closing(sqlite3.connect(partial)) as dst:
            src.backup(dst)
        os.replace(partial, target)
    finally:
        partial.unlink(missing_ok=True)
