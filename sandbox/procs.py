"""Process bookkeeping for the sandbox: start detached, record, probe, stop.

A pid file holds the pid and the process's kernel start time, so `down` never
signals a recycled pid that now belongs to someone else's process.
"""

from __future__ import annotations

import http.client
import os
import signal
import socket
import subprocess
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class Recorded:
    """A process `up` started, as written to its pid file."""

    pid: int
    start_ticks: int


def proc_start_ticks(pid: int) -> int | None:
    """The kernel's start time of PID (field 22 of /proc/PID/stat), None if gone."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    # comm (field 2) may contain spaces and parentheses: split after the last ')'.
    fields = stat.rsplit(")", 1)[1].split()
    if fields and fields[0] == "Z":
        return None
    return int(fields[19])


def write_pidfile(path: Path, pid: int) -> None:
    ticks = proc_start_ticks(pid) or 0
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(f"{pid} {ticks}\n")


def read_pidfile(path: Path) -> Recorded | None:
    try:
        pid_s, ticks_s = path.read_text().split()[:2]
        return Recorded(int(pid_s), int(ticks_s))
    except (OSError, ValueError):
        return None


def alive(rec: Recorded | None) -> bool:
    """True when the recorded process still runs and is the same process."""
    if rec is None:
        return False
    return proc_start_ticks(rec.pid) == rec.start_ticks


def start_detached(
    argv: Sequence[str],
    *,
    env: Mapping[str, str],
    log: Path,
    cwd: Path | None = None,
    user: int | None = None,
    group: int | None = None,
) -> subprocess.Popen[bytes]:
    """Start ARGV in its own session so it outlives `up` and `down` can stop its group.

    USER/GROUP run it as another account (PostgreSQL will not run as root).
    """
    log.parent.mkdir(parents=True, exist_ok=True)
    with open(log, "ab") as out:
        if user is not None:
            os.chown(log, user, group if group is not None else -1)
        return subprocess.Popen(
            list(argv),
            env=dict(env),
            cwd=cwd,
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
            user=user,
            group=group,
        )


def stop(rec: Recorded, *, timeout: float = 15.0) -> bool:
    """SIGTERM the process (and its group when it leads one), wait, then SIGKILL."""
    if not alive(rec):
        return False
    leads_group = os.getpgid(rec.pid) == rec.pid
    _signal(rec.pid, signal.SIGTERM, leads_group)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if not alive(rec):
            break
        time.sleep(0.1)
    else:
        _signal(rec.pid, signal.SIGKILL, leads_group)
        time.sleep(0.2)
    if leads_group:
        # Children that ignored the group SIGTERM (e.g. a server's worker) go too.
        _signal(rec.pid, signal.SIGKILL, True)
    return True


def _signal(pid: int, sig: signal.Signals, group: bool) -> None:
    try:
        if group:
            os.killpg(pid, sig)
        else:
            os.kill(pid, sig)
    except (ProcessLookupError, PermissionError):
        pass


def http_ok(url: str, *, timeout: float = 1.0) -> bool:
    """True when a GET of URL (http://127.0.0.1:PORT/path) answers 200."""
    rest = url.removeprefix("http://")
    hostport, _, path = rest.partition("/")
    host, _, port = hostport.partition(":")
    conn = http.client.HTTPConnection(host, int(port or 80), timeout=timeout)
    try:
        conn.request("GET", "/" + path)
        return conn.getresponse().status == 200
    except (OSError, http.client.HTTPException):
        return False
    finally:
        conn.close()


def unix_http_ok(sock_path: str, path: str = "/_ping", *, timeout: float = 1.0) -> bool:
    """True when the HTTP server on a unix socket (the Docker API) answers 200."""
    try:
        s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        s.settimeout(timeout)
        s.connect(sock_path)
    except OSError:
        return False
    try:
        s.sendall(f"GET {path} HTTP/1.0\r\nHost: docker\r\n\r\n".encode())
        head = s.recv(64)
        return head.split(b" ", 2)[1:2] == [b"200"]
    except (OSError, IndexError):
        return False
    finally:
        s.close()


def port_open(port: int, host: str = "127.0.0.1", *, timeout: float = 0.3) -> bool:
    """True when something accepts connections on HOST:PORT."""
    try:
        with socket.create_connection((host, port), timeout=timeout):
            return True
    except OSError:
        return False


def listening_addresses(port: int) -> set[str]:
    """Local addresses with a LISTEN socket on PORT, read from /proc/net/tcp{,6}."""
    found: set[str] = set()
    for table, width in (("/proc/net/tcp", 8), ("/proc/net/tcp6", 32)):
        try:
            lines = Path(table).read_text().splitlines()[1:]
        except OSError:
            continue
        for line in lines:
            cols = line.split()
            local, state = cols[1], cols[3]
            addr_hex, port_hex = local.split(":")
            if state != "0A" or int(port_hex, 16) != port:
                continue
            found.add(_decode_addr(addr_hex, width))
    return found


def _decode_addr(addr_hex: str, width: int) -> str:
    raw = bytes.fromhex(addr_hex)
    # /proc stores each 32-bit word in host (little-endian) order.
    words = b"".join(raw[i : i + 4][::-1] for i in range(0, len(raw), 4))
    family = socket.AF_INET if width == 8 else socket.AF_INET6
    return socket.inet_ntop(family, words)
