"""One shell for a whole build, as CodeBuild's buildspec 0.2 runs commands.

``cd`` and variables set by one command are seen by the next, across phases.
Each command is written to a file and sourced (stdin from /dev/null, so a
command that reads stdin cannot eat the next one); a syntax check with ``-n``
comes first because dash exits on a syntax error in a sourced file. After each
command the shell prints a marker line with a random token and the exit
status. A command that exits the shell (``exit 1``, ``set -e``) fails, and the
commands after it get a fresh shell (the same environment, the source folder).

The shell runs on the worker's host, or inside a build image: then one
container (``BuildContainer``) lives for the whole build and each shell is a
``docker exec`` into it, so what ``install`` put outside the source folder is
still there after a shell exited. Either way the session is one argv here, and
the phases run the same code in both.
"""

from __future__ import annotations

import contextlib
import os
import queue
import re
import secrets
import signal
import stat
import subprocess
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

Log = Callable[[str], None]


@dataclass(frozen=True)
class ShellSpec:
    """How to start the shell: its argv, environment and starting folder."""

    argv: tuple[str, ...]
    env: dict[str, str]
    cwd: Path
    shell: str  # the shell's own path, for the syntax check, as the shell sees it
    scripts: Path  # where command files go (written here, by the worker)
    scripts_seen: Path | None = None  # where the shell sees them (default: the same path)
    values: Path | None = None  # where the shell writes values read back (default: SCRIPTS)
    values_seen: Path | None = None  # the same folder as the shell sees it

    def seen(self, path: Path) -> Path:
        """PATH, a file of SCRIPTS or VALUES, as the shell sees it."""
        for here, there in ((self.values, self.values_seen), (self.scripts, self.scripts_seen)):
            if here is not None and there is not None and path.parent == here:
                return there / path.name
        return path


def in_own_pid_namespace(argv: tuple[str, ...]) -> tuple[str, ...]:
    """ARGV as the first process of a PID namespace of its own (util-linux ``unshare``).

    When that process ends, or is killed at the build's timeout, the kernel kills every
    process left in the namespace: a command started with ``setsid`` or ``nohup ... &``
    cannot outlive its build, as nothing outlives a CodeBuild build's container. Without
    root, a user namespace maps the worker's user to root inside (unprivileged user
    namespaces must be allowed).
    """
    user = () if os.geteuid() == 0 else ("--user", "--map-root-user")
    return ("unshare", *user, "--pid", "--fork", "--kill-child", "--", *argv)


class ShellTimeout(Exception):
    pass


class ContainerError(Exception):
    """The build container did not start (the image is missing, the engine refused): docker's own words."""


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
        script = self.spec.seen(script)
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
        folder = self.spec.values or self.spec.scripts
        files = {name: folder / f"value-{self.count}-{name}" for name in names}
        command = "\n".join(f'printf "%s" "${{{name}-}}" > {self.spec.seen(path)}' for name, path in files.items())
        if self.run(command, lambda _line: None) == 0:
            out = {name: value for name, path in files.items() if (value := read_written(path)) is not None}
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


MAX_VALUE = 1 << 20


def open_written(path: Path) -> BinaryIO | None:
    """A file a build wrote, opened without following a link it may have put there, nor blocking on a pipe
    (None: not a plain file)."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK)
    except OSError:
        return None
    if not stat.S_ISREG(os.fstat(fd).st_mode):  # before fdopen, which refuses a folder with an error of its own
        os.close(fd)
        return None
    return os.fdopen(fd, "rb")


def read_written(path: Path) -> str | None:
    """A file a build wrote, read without following a link it may have put there (None: not a plain file)."""
    f = open_written(path)
    if f is None:
        return None
    with f:
        return f.read(MAX_VALUE).decode("utf-8", "replace")


class BuildContainer:
    """The build image's container for one build; removed by ``close``, and by itself when this process dies.

    Its first process is a shell reading a pipe of this process: when the worker
    dies, even by SIGKILL, the pipe closes, that shell exits and the container
    (``--rm``) goes, with every command still running in it. Commands get the
    build's environment per ``docker exec``: nothing of it is on the container.
    """

    def __init__(self, run_argv: tuple[str, ...], env: dict[str, str], name: str, label: str,
                 cli: tuple[str, ...] | None = None, remove: tuple[str, ...] = ("rm", "-f")) -> None:
        self.run_argv, self.env, self.name, self.label = run_argv, env, name, label
        self.cli = cli or run_argv[:1]  # the client command that reaches the container's engine
        self.remove = remove  # how that client removes a running container at once
        self._keeper: subprocess.Popen[bytes] | None = None

    def _docker(self, *args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([*self.cli, *args], env=self.env, capture_output=True, text=True, timeout=60,
                              check=False)

    def start(self, deadline: float) -> None:
        """Run the container and wait until its shell answers (a pull included, up to DEADLINE);
        ContainerError with docker's output otherwise."""
        keeper = subprocess.Popen(list(self.run_argv), env=self.env, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                  stderr=subprocess.STDOUT, start_new_session=True)
        self._keeper = keeper
        late = threading.Timer(max(deadline - time.monotonic(), 0.0), keeper.kill)
        late.daemon = True
        late.start()
        ready = f"ecs-pipeline-ready-{secrets.token_hex(4)}"
        output: list[str] = []
        try:
            keeper.stdin.write(f"echo {ready}\n".encode())  # type: ignore[union-attr]
            keeper.stdin.flush()  # type: ignore[union-attr]
        except BrokenPipeError:
            pass
        try:
            for raw in iter(keeper.stdout.readline, b""):  # type: ignore[union-attr]
                line = raw.decode("utf-8", "replace").rstrip("\r\n")
                if line == ready:
                    return
                output.append(line)
        finally:
            late.cancel()
        self.close()
        if time.monotonic() >= deadline:
            output.append("(not started within build.timeout_seconds)")
        raise ContainerError("\n".join(output[-5:]) or f"docker run exited {keeper.returncode}")

    def close(self) -> None:
        """Remove the container (its commands stop with it); then the docker client that ran it ends."""
        keeper, self._keeper = self._keeper, None
        if keeper is None:
            return
        with contextlib.suppress(OSError, subprocess.SubprocessError):
            self._docker(*self.remove, self.name)
        with contextlib.suppress(OSError):
            keeper.stdin.close()  # type: ignore[union-attr]
        try:
            keeper.wait(10)
        except subprocess.TimeoutExpired:
            keeper.kill()
            keeper.wait()
