"""One shell for a whole build, as CodeBuild's buildspec 0.2 runs commands.

``cd`` and variables set by one command are seen by the next, across phases.
Each command is written to a file and sourced (stdin from /dev/null, so a
command that reads stdin cannot eat the next one); a syntax check with ``-n``
comes first because dash exits on a syntax error in a sourced file. After each
command the shell prints a marker line with a random token and the exit
status. A command that exits the shell (``exit 1``, ``set -e``) fails, and the
commands after it get a fresh shell (the same environment, the source folder).

The shell runs on the worker's host, or inside a build image (``docker run -i``
with the source folder and the Docker socket mounted): both are one argv here.
"""

from __future__ import annotations

import contextlib
import os
import queue
import re
import secrets
import signal
import subprocess
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

Log = Callable[[str], None]


@dataclass(frozen=True)
class ShellSpec:
    """How to start the shell: its argv, environment and starting folder."""

    argv: tuple[str, ...]
    env: dict[str, str]
    cwd: Path
    shell: str  # the shell's own path, for the syntax check, as the shell sees it
    scripts: Path  # where command files go (visible to the shell at the same path)


class ShellTimeout(Exception):
    pass


def _lines(stream: Iterator[bytes], out: queue.Queue[str | None]) -> None:
    for raw in stream:
        out.put(raw.decode("utf-8", "replace").rstrip("\r\n"))
    out.put(None)


class Shell:
    """A shell session; ``run`` one command at a time, ``close`` at the end."""

    def __init__(self, spec: ShellSpec, deadline: float) -> None:
        self.spec = spec
        self.deadline = deadline
        self.count = 0
        self.token = secrets.token_hex(8)
        self._marker = re.compile(rf"^(.*)::ecs-pipeline-{self.token}:: (\d+)$")
        self._proc: subprocess.Popen[bytes] | None = None
        self._out: queue.Queue[str | None] = queue.Queue()

    def _start(self) -> subprocess.Popen[bytes]:
        proc = subprocess.Popen(
            list(self.spec.argv), cwd=self.spec.cwd, env=self.spec.env, stdin=subprocess.PIPE,
            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, start_new_session=True,
        )
        self._out = queue.Queue()
        threading.Thread(target=_lines, args=(iter(proc.stdout.readline, b""), self._out),  # type: ignore[union-attr]
                         daemon=True).start()
        return proc

    def _script(self, command: str) -> Path:
        self.count += 1
        path = self.spec.scripts / f"command-{self.count}.sh"
        path.write_text(command + "\n", encoding="utf-8")
        return path

    def run(self, command: str, log: Log) -> int:
        """Run COMMAND in the session; every output line goes to LOG; its exit status."""
        if self._proc is None or self._proc.poll() is not None:
            if self._proc is not None:
                log("[shell] the shell exited: the next commands run in a new shell, from the source folder")
            self._proc = self._start()
        script = self._script(command)
        line = (f'if {self.spec.shell} -n {script}; then . {script} </dev/null; else (exit 2); fi; '
                f"printf '::ecs-pipeline-{self.token}:: %d\\n' \"$?\"\n")
        try:
            self._proc.stdin.write(line.encode())  # type: ignore[union-attr]
            self._proc.stdin.flush()  # type: ignore[union-attr]
        except BrokenPipeError:
            pass
        return self._wait(log)

    def _wait(self, log: Log) -> int:
        while True:
            left = self.deadline - time.monotonic()
            if left <= 0:
                self.close()
                raise ShellTimeout()
            try:
                item = self._out.get(timeout=min(left, 1.0))
            except queue.Empty:
                continue
            if item is None:  # the shell is gone: the command exited it
                assert self._proc is not None
                return self._proc.wait() or 1
            found = self._marker.match(item)
            if found:
                if found.group(1):
                    log(found.group(1))
                return int(found.group(2))
            log(item)

    def capture(self, names: tuple[str, ...]) -> dict[str, str]:
        """The values of NAMES in the session now (unset: empty), read back through files."""
        out: dict[str, str] = {}
        if not names:
            return out
        files = {name: self.spec.scripts / f"value-{name}" for name in names}
        command = "\n".join(f'printf "%s" "${{{name}-}}" > {path}' for name, path in files.items())
        if self.run(command, lambda _line: None) == 0:
            out = {name: path.read_text("utf-8", "replace") for name, path in files.items() if path.exists()}
        return out

    def close(self) -> None:
        proc, self._proc = self._proc, None
        if proc is None or proc.poll() is not None:
            return
        try:
            proc.stdin.close()  # type: ignore[union-attr]
            proc.wait(5)
        except (OSError, subprocess.TimeoutExpired):
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
