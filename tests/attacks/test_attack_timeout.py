"""Attack: a build leaves a process behind (setsid, nohup) that outlives its timeout or its end.

A left process keeps running the pusher's code on the worker, with whatever the
next builds and releases leave within its reach. Every process a build started
must be gone when the build ends, by its timeout or normally.
"""

from __future__ import annotations

import random
import subprocess
import time
from pathlib import Path

import pytest

from tasks.build.buildspec_runner import BuildRun
from tasks.config.models import ServiceConfig
from tasks.core.errors import BuildError
from tests.attacks.builds import Build, service


def build(cfg: ServiceConfig, tmp_path: Path, commands: list[str]) -> BuildRun:
    return Build(cfg, tmp_path)(commands)


def alive(seconds: int) -> list[str]:
    found = subprocess.run(["pgrep", "-af", f"sleep {seconds}"], capture_output=True, text=True, check=False)
    return found.stdout.splitlines()


def gone_soon(seconds: int) -> bool:
    deadline = time.monotonic() + 5
    while alive(seconds) and time.monotonic() < deadline:
        time.sleep(0.1)
    return not alive(seconds)


def test_a_process_started_with_setsid_dies_with_the_builds_timeout(tmp_path: Path) -> None:
    mark = random.randint(100_000, 999_999)  # sleep MARK: this test's process, no other
    with pytest.raises(BuildError, match=r"timed out \(build.timeout_seconds\)"):
        build(service(tmp_path, timeout_seconds=10), tmp_path, [f"setsid sleep {mark} >/dev/null 2>&1 &",
                                            f"nohup sleep {mark + 1} >/dev/null 2>&1 &", "sleep 60"])
    assert gone_soon(mark) and gone_soon(mark + 1), alive(mark) + alive(mark + 1)


def test_a_process_left_running_dies_when_the_build_ends(tmp_path: Path) -> None:
    mark = random.randint(100_000, 999_999)
    done = build(service(tmp_path, timeout_seconds=10), tmp_path,
                 [f"setsid sleep {mark} >/dev/null 2>&1 &", "echo left it running"])
    assert done.failure is None
    assert gone_soon(mark), alive(mark)
