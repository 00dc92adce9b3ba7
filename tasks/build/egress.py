"""What a build box may reach on the network: named endpoints forwarded into its loopback, nothing else.

A build box has a network namespace of its own with only a loopback interface:
no route out, no host loopback (the Docker engine's API, moto, the Prefect API
and every other service on 127.0.0.1 stay out of reach). Each allowed endpoint
(the service's registry, the AWS endpoints of a build identity, ``build.egress``)
gets a listener inside the box, made by this process entering the box's
namespace from one short-lived thread; each connection to it is forwarded, byte
for byte, to the real endpoint from the worker's own network. TLS runs end to
end between the build and the endpoint: names resolve, through the box's own
``/etc/hosts``, to a loopback address that stands for that one endpoint.
"""

from __future__ import annotations

import contextlib
import ctypes
import ipaddress
import os
import socket
import threading
from dataclasses import dataclass
from urllib.parse import urlsplit

CLONE_NEWNET = 0x40000000
CONNECT_TIMEOUT = 10.0
_libc = ctypes.CDLL(None, use_errno=True)


@dataclass(frozen=True)
class Endpoint:
    """HOST:PORT a build may reach; ``inside`` is the loopback address the build connects to."""

    host: str
    port: int
    inside: str

    @property
    def named(self) -> bool:
        return self.inside != self.host


def parse_endpoint(text: str, field: str = "build.egress") -> tuple[str, int]:
    """``host:port`` (or a URL, or a registry host without a port: 443) as (host, port); ValueError naming FIELD."""
    url = urlsplit(text if "://" in text else f"https://{text}")
    try:
        port = url.port or (80 if url.scheme == "http" else 443)
    except ValueError:
        raise ValueError(f"{field}: {text!r} has no valid port; write host:port") from None
    host = (url.hostname or "").lower()
    if not host:
        raise ValueError(f"{field}: {text!r} names no host; write host:port")
    return host, port


def is_loopback(host: str) -> bool:
    with contextlib.suppress(ValueError):
        return ipaddress.ip_address(host).is_loopback
    return False


def plan(wanted: list[tuple[str, int]]) -> list[Endpoint]:
    """One endpoint per wanted (host, port): loopback hosts keep their address, names get 127.0.1.N."""
    out: dict[tuple[str, int], Endpoint] = {}
    names: dict[str, str] = {}
    for host, port in wanted:
        if (host, port) in out:
            continue
        inside = host if is_loopback(host) else names.setdefault(host, f"127.0.1.{len(names) + 1}")
        out[(host, port)] = Endpoint(host, port, inside)
    return list(out.values())


def hosts_file(endpoints: list[Endpoint]) -> str:
    """The box's /etc/hosts: localhost, and each named endpoint at its loopback address."""
    lines = ["127.0.0.1 localhost", "::1 localhost"]
    seen: set[str] = set()
    for e in endpoints:
        if e.named and e.host not in seen:
            seen.add(e.host)
            lines.append(f"{e.inside} {e.host}")
    return "\n".join(lines) + "\n"


def listen_in_namespace(netns: str, address: str, port: int) -> socket.socket:
    """A TCP listener bound to ADDRESS:PORT inside the network namespace at path NETNS."""
    made: dict[str, socket.socket | OSError] = {}

    def enter_and_listen() -> None:  # a thread of its own: setns changes only the calling thread
        fd = os.open(netns, os.O_RDONLY)
        try:
            if _libc.setns(fd, CLONE_NEWNET) != 0:
                err = ctypes.get_errno()
                raise OSError(err, f"cannot enter the build box's network ({os.strerror(err)})")
            sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            sock.bind((address, port))
            sock.listen(64)
            made["sock"] = sock
        except OSError as exc:  # handed to the caller's thread
            made["error"] = exc
        finally:
            os.close(fd)

    thread = threading.Thread(target=enter_and_listen, name="egress-listen")
    thread.start()
    thread.join()
    if "error" in made:
        raise made["error"]  # type: ignore[misc]
    return made["sock"]  # type: ignore[return-value]


def _pump(src: socket.socket, dst: socket.socket) -> None:
    try:
        while data := src.recv(65536):
            dst.sendall(data)
    except OSError:
        pass
    finally:
        with contextlib.suppress(OSError):
            dst.shutdown(socket.SHUT_WR)


class Forwarders:
    """The listeners of one build box, each forwarding to its endpoint; ``close`` ends them all."""

    def __init__(self) -> None:
        self._listeners: list[socket.socket] = []
        self._open: set[socket.socket] = set()
        self._lock = threading.Lock()
        self.connections = 0

    def start(self, netns: str, endpoints: list[Endpoint]) -> None:
        for e in endpoints:
            listener = listen_in_namespace(netns, e.inside, e.port)
            self._listeners.append(listener)
            threading.Thread(target=self._accept, args=(listener, e), name=f"egress-{e.host}", daemon=True).start()

    def _accept(self, listener: socket.socket, e: Endpoint) -> None:
        while True:
            try:
                inner, _ = listener.accept()
            except OSError:
                return
            threading.Thread(target=self._connect, args=(inner, e), daemon=True).start()

    def _connect(self, inner: socket.socket, e: Endpoint) -> None:
        try:
            outer = socket.create_connection((e.host, e.port), timeout=CONNECT_TIMEOUT)
        except OSError:
            inner.close()
            return
        outer.settimeout(None)
        with self._lock:
            self.connections += 1
            self._open.update((inner, outer))
        back = threading.Thread(target=_pump, args=(outer, inner), daemon=True)
        back.start()
        _pump(inner, outer)
        back.join()
        with self._lock:
            self._open.difference_update((inner, outer))
        inner.close()
        outer.close()

    def close(self) -> None:
        for listener in self._listeners:
            with contextlib.suppress(OSError):
                listener.shutdown(socket.SHUT_RDWR)
            listener.close()
        self._listeners.clear()
        with self._lock:
            for sock in list(self._open):
                with contextlib.suppress(OSError):
                    sock.shutdown(socket.SHUT_RDWR)
