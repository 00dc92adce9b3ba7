"""What a process costs: CPU-seconds (its own, a server's) and the HTTP calls it makes, by route.

The calls are counted by a proxy the process is pointed at (``PREFECT_API_URL`` for Prefect,
``DOCKER_HOST`` for Docker), not by a hook inside it: it sees every request whichever client
makes it (Prefect's sync and async clients, the runner's, the events websocket's opening), needs
no change to the process measured, and costs that process nothing (the proxy's CPU is the
bench's). A websocket counts once, when it opens: the events it carries are counted by the
server's own record of them (``events_of``).
"""

from __future__ import annotations

import contextlib
import os
import re
import resource
import socket
import subprocess
import threading
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

TICK = os.sysconf("SC_CLK_TCK")
_REQUEST = re.compile(rb"(GET|POST|PATCH|PUT|DELETE|HEAD) (/[^ ?]*)[^ ]* HTTP/1\.[01]\r\n")
_ID = re.compile(r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}|[0-9a-f]{12,64}")
# Docker's paths name a container, image, exec or network after the collection: one route each.
_DOCKER_NAMED = re.compile(r"^/(containers|images|exec|networks|volumes|distribution)/(.+?)(/[a-z]+)?$")


def route(path: str) -> str:
    """/api/flow_runs/<uuid>/set_state → /api/flow_runs/{id}/set_state; /v1.45/containers/x/start → ..."""
    path = re.sub(r"^/v1\.\d+", "", path)
    named = _DOCKER_NAMED.match(path)
    if named and not path.startswith("/images/create") and named.group(2) not in ("create", "json", "prune"):
        path = f"/{named.group(1)}/{{name}}{named.group(3) or ''}"
    path = re.sub(r"^/api/variables/name/[^/]+", "/api/variables/name/{name}", path)
    path = re.sub(r"^/api/v2/concurrency_limits/(?!filter$|increment|decrement|leases/)[^/]+$",
                  "/api/v2/concurrency_limits/{name}", path)
    return _ID.sub("{id}", path)


class CountingProxy(threading.Thread):
    """Forwards a listening socket (TCP on loopback, or a unix socket) to TARGET; counts request lines."""

    def __init__(self, target: str | tuple[str, int], listen: str | None = None) -> None:
        super().__init__(daemon=True)
        self.target = target
        self.counts: Counter[str] = Counter()
        self._lock = threading.Lock()
        if listen is None:
            self.sock = socket.socket()
            self.sock.bind(("127.0.0.1", 0))
            self.address = f"127.0.0.1:{self.sock.getsockname()[1]}"
        else:
            Path(listen).unlink(missing_ok=True)
            self.sock = socket.socket(socket.AF_UNIX)
            self.sock.bind(listen)
            self.address = listen
        self.sock.listen(128)

    def run(self) -> None:
        while True:
            try:
                client, _ = self.sock.accept()
            except OSError:
                return
            family = socket.AF_UNIX if isinstance(self.target, str) else socket.AF_INET
            upstream = socket.socket(family)
            upstream.connect(self.target)
            threading.Thread(target=self._pipe, args=(client, upstream, True), daemon=True).start()
            threading.Thread(target=self._pipe, args=(upstream, client, False), daemon=True).start()

    def take(self) -> Counter[str]:
        """The counts so far, and start again from zero."""
        with self._lock:
            counts, self.counts = self.counts, Counter()
        return counts

    def close(self) -> None:
        with contextlib.suppress(OSError):
            self.sock.close()

    def _pipe(self, src: socket.socket, dst: socket.socket, count: bool) -> None:
        tail = b""
        try:
            while chunk := src.recv(65536):
                if count:
                    data = tail + chunk
                    found = _REQUEST.findall(data)
                    with self._lock:
                        for method, path in found:
                            self.counts[f"{method.decode()} {route(path.decode())}"] += 1
                    # Keep a request line cut in two for the next chunk, but never count one twice.
                    last = data.rfind(b"\r\n")
                    tail = data[last + 2:][-300:] if last >= 0 else data[-300:]
                dst.sendall(chunk)
        except OSError:
            pass
        finally:
            for s in (src, dst):
                with contextlib.suppress(OSError):
                    s.shutdown(socket.SHUT_RDWR)


def tree_cpu(pid: int) -> float:
    """utime + stime of PID and its live descendants, in seconds, from /proc."""
    from harness.workers import descendants

    total = 0
    for p in (pid, *descendants(pid)):
        with contextlib.suppress(OSError, IndexError, ValueError):
            fields = Path(f"/proc/{p}/stat").read_text().rsplit(")", 1)[1].split()
            total += int(fields[11]) + int(fields[12])  # utime, stime (fields 14 and 15 of stat)
    return total / TICK


def prefect_server_pid() -> int:
    """The sandbox's Prefect server, from its pid file (checked against the kernel's start time)."""
    from sandbox import procs
    from sandbox.layout import layout

    rec = procs.read_pidfile(layout().pidfile("prefect"))
    if rec is None or not procs.alive(rec):
        raise SystemExit("the sandbox's Prefect server is not running: `python -m sandbox up`")
    return rec.pid


@dataclass
class ServerMeter:
    """A server's CPU over a window, less what it burns idle (its own loops: schedulers, event triggers)."""

    pid: int
    idle_rate: float = 0.0

    def measure_idle(self, seconds: float = 3.0) -> float:
        start, cpu = time.monotonic(), tree_cpu(self.pid)
        time.sleep(seconds)
        self.idle_rate = (tree_cpu(self.pid) - cpu) / (time.monotonic() - start)
        return self.idle_rate

    def settle(self, within: float) -> float:
        """Until the server burns no more than its idle rate for a second (at most WITHIN s); its CPU then."""
        deadline, quiet = time.monotonic() + within, 0
        last = tree_cpu(self.pid)
        while quiet < 2 and time.monotonic() < deadline:
            time.sleep(0.5)
            now = tree_cpu(self.pid)
            quiet = quiet + 1 if now - last <= self.idle_rate * 0.5 + 0.02 else 0
            last = now
        return last

    @contextlib.contextmanager
    def window(self, out: dict[str, float], settle_within: float = 20.0) -> Iterator[None]:
        """CPU the server spends on what the block does, including what it finishes after the block
        (events it persists, task runs it writes from them): from the server at idle (what came before
        is finished first, so it bills nothing here) until it is back to idle."""
        self.settle(settle_within)
        start, cpu = time.monotonic(), tree_cpu(self.pid)
        yield
        last = self.settle(settle_within)
        took = time.monotonic() - start
        out["server_cpu"] = max(0.0, last - cpu - self.idle_rate * took)
        out["server_window"] = took


@dataclass
class Child:
    """One command run as a child process: wall seconds, CPU-seconds (its whole waited tree), output."""

    argv: list[str]
    wall: float = 0.0
    cpu: float = 0.0
    code: int = 0
    stdout: str = ""
    stderr: str = ""
    extra: dict[str, float] = field(default_factory=dict)


def run_child(argv: list[str], env: dict[str, str], cwd: Path, timeout: float = 900) -> Child:
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    started = time.perf_counter()
    done = subprocess.run(argv, cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout, check=False)
    wall = time.perf_counter() - started
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    return Child(argv, wall, cpu, done.returncode, done.stdout, done.stderr)


def machine_busy(window: float = 0.5) -> float:
    """Share of all CPUs busy over WINDOW seconds (/proc/stat)."""

    def sample() -> tuple[int, int]:
        fields = [int(v) for v in Path("/proc/stat").read_text().splitlines()[0].split()[1:]]
        idle = fields[3] + fields[4]  # idle + iowait
        return sum(fields), idle

    total0, idle0 = sample()
    time.sleep(window)
    total1, idle1 = sample()
    return 1.0 - (idle1 - idle0) / max(1, total1 - total0)


def wait_quiet(busy: float = 0.15, longest: float = 20.0) -> float:
    """Until the machine is quiet (under BUSY of its CPUs over half a second), at most LONGEST s: what the last
    timed run left behind (old tasks draining, the Prefect server storing its events) does not bill the next.
    The seconds waited."""
    started = time.monotonic()
    while time.monotonic() - started < longest and machine_busy() > busy:
        pass
    return time.monotonic() - started
