"""Weather on the Prefect API: a proxy in front of a Prefect server that answers a share of requests itself.

As the sandbox's AWS fault weather does for AWS, this plays an orchestrator's bad minute: a seeded
share of API requests is answered, before it reaches the server, with what a busy or restarting
Prefect server and the load balancer in front of it answer:

* ``503`` ``{"exception_message": "Service Unavailable"}``, Prefect's own answer to a retryable
  database error (``custom_internal_exception_handler`` in ``prefect/server/api/server.py``);
* ``502`` from a load balancer whose upstream went away;
* ``429`` with ``Retry-After: 1``, a rate limit in front of the API.

Requests that pass go to the server unchanged, websockets (``/api/events/in``, ``/api/events/out``,
``/api/logs/out``) included. Health and readiness probes always pass, as a load balancer's own
checks bypass its weather. A ``Refusal`` answers chosen requests (one service's run, say) with a
status Prefect does not retry. ``hits`` counts the answered faults by code, ``routes`` the requests
that reached the server by method and path.

    python -m sandbox.prefect_weather --upstream http://127.0.0.1:4200 --port 4300 --rate 0.1
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import random
import socket
import threading
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass

import httpx
import uvicorn
import websockets
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route, WebSocketRoute
from starlette.websockets import WebSocket, WebSocketDisconnect

CODES = ("503", "502", "429")
ALWAYS_PASS = ("/api/health", "/api/ready")
HOP_BY_HOP = {"connection", "keep-alive", "transfer-encoding", "te", "trailer", "upgrade", "content-length",
              "proxy-authorization", "proxy-authenticate", "host", "content-encoding"}


@dataclass(frozen=True)
class Refusal:
    """Every request of METHOD to PATH whose body holds NEEDLE is answered STATUS (not retried by Prefect: 500)."""

    method: str
    path: str
    needle: bytes
    status: int = 500

    def matches(self, method: str, path: str, body: bytes) -> bool:
        return method == self.method and path == self.path and self.needle in body


class PrefectWeather:
    """The proxy: ``rate`` of requests answered with one of ``codes`` (seeded), the rest forwarded."""

    def __init__(self, upstream: str, rate: float, seed: int = 0, codes: Sequence[str] = CODES,
                 port: int = 0, refuse: Sequence[Refusal] = ()) -> None:
        if not 0 <= rate < 1:
            raise ValueError(f"rate {rate}: choose 0 <= rate < 1")
        unknown = set(codes) - set(CODES)
        if unknown:
            raise ValueError(f"codes {sorted(unknown)}: choose from {', '.join(CODES)}")
        self.refuse = list(refuse)
        self.upstream = upstream.rstrip("/")
        self.rate, self.codes = rate, tuple(codes)
        self.random = random.Random(seed)
        self.hits: Counter[str] = Counter()
        self.passed = 0
        self.routes: Counter[tuple[str, str]] = Counter()  # the requests that reached the server
        self.answers: Counter[int] = Counter()  # the server's own status codes, of the requests that passed
        self.unavailable: Counter[tuple[str, str]] = Counter()  # the server's own 5xx answers: (method, path)
        self._lock = threading.Lock()
        self._sock = socket.socket()
        self._sock.bind(("127.0.0.1", port))
        self.port = self._sock.getsockname()[1]
        self.url = f"http://127.0.0.1:{self.port}"
        self._client: httpx.AsyncClient | None = None
        methods = ["GET", "POST", "PUT", "PATCH", "DELETE", "HEAD", "OPTIONS"]
        routes = [WebSocketRoute("/{path:path}", self._websocket), Route("/{path:path}", self._http, methods=methods)]
        self.app = Starlette(routes=routes)
        config = uvicorn.Config(self.app, log_level="warning", lifespan="off", ws="websockets-sansio")
        self._server = uvicorn.Server(config)
        self._thread: threading.Thread | None = None

    # -- lifecycle -------------------------------------------------------------
    def start(self) -> PrefectWeather:
        self._thread = threading.Thread(target=self._serve, name="prefect-weather", daemon=True)
        self._thread.start()
        while not self._server.started:
            if not self._thread.is_alive():
                raise RuntimeError(f"the Prefect weather proxy on {self.url} did not start")
            threading.Event().wait(0.02)
        return self

    def stop(self) -> None:
        self._server.should_exit = True
        if self._thread is not None:
            self._thread.join(10)
        with contextlib.suppress(OSError):
            self._sock.close()

    def __enter__(self) -> PrefectWeather:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def _serve(self) -> None:
        asyncio.run(self._server.serve(sockets=[self._sock]))

    # -- the weather -----------------------------------------------------------
    def _fault(self, path: str) -> str | None:
        if path.startswith(ALWAYS_PASS):
            return None
        with self._lock:
            if self.random.random() >= self.rate:
                self.passed += 1
                return None
            code = self.random.choice(self.codes)
            self.hits[code] += 1
            return code

    async def _http(self, request: Request) -> Response:
        body = await request.body()
        for rule in self.refuse:
            if rule.matches(request.method, request.url.path, body):
                with self._lock:
                    self.hits[f"{rule.status} refused"] += 1
                return JSONResponse({"exception_message": "Internal Server Error"}, status_code=rule.status)
        code = self._fault(request.url.path)
        if code == "503":
            return JSONResponse({"exception_message": "Service Unavailable"}, status_code=503)
        if code == "502":
            return Response("<html><body><h1>502 Bad Gateway</h1></body></html>", status_code=502,
                            media_type="text/html")
        if code == "429":
            return JSONResponse({"detail": "Too Many Requests"}, status_code=429, headers={"Retry-After": "1"})
        if self._client is None:
            # Idle connections are dropped before the server's own keep-alive (uvicorn: 5 s) ends them.
            self._client = httpx.AsyncClient(timeout=httpx.Timeout(120.0), limits=httpx.Limits(
                max_connections=200, keepalive_expiry=2.0))
        headers = [(k, v) for k, v in request.headers.items() if k.lower() not in HOP_BY_HOP]
        try:
            upstream = await self._client.request(
                request.method, f"{self.upstream}{request.url.path}", params=request.url.query or None,
                headers=headers, content=body)
        except httpx.TransportError:  # the server dropped the connection: a load balancer answers 502
            with self._lock:
                self.hits["502 upstream"] += 1
            return Response("<html><body><h1>502 Bad Gateway</h1></body></html>", status_code=502,
                            media_type="text/html")
        with self._lock:
            self.routes[(request.method, request.url.path)] += 1
            self.answers[upstream.status_code] += 1
            if upstream.status_code >= 500:
                self.unavailable[(request.method, request.url.path)] += 1
        back = {k: v for k, v in upstream.headers.items() if k.lower() not in HOP_BY_HOP}
        return Response(upstream.content, status_code=upstream.status_code, headers=back)

    async def _websocket(self, ws: WebSocket) -> None:
        """Websockets pass whole: a fault on the upgrade would only be another connection error."""
        target = "ws" + self.upstream[4:] + ws.url.path + (f"?{ws.url.query}" if ws.url.query else "")
        headers = [(k, v) for k, v in ws.headers.items()
                   if k.lower() in ("authorization", "user-agent", "x-prefect-api-version")]
        asked = list(ws.scope.get("subprotocols") or [])  # Prefect's sockets speak the "prefect" subprotocol
        try:
            upstream = await websockets.connect(target, additional_headers=headers, max_size=None,
                                                subprotocols=asked or None)
        except (OSError, websockets.WebSocketException):
            await ws.close(code=1011)
            return
        await ws.accept(subprotocol=upstream.subprotocol)

        async def down() -> None:
            async for message in upstream:
                if isinstance(message, bytes):
                    await ws.send_bytes(message)
                else:
                    await ws.send_text(message)

        async def up() -> None:
            while True:
                message = await ws.receive()
                if message["type"] == "websocket.disconnect":
                    return
                if message.get("text") is not None:
                    await upstream.send(message["text"])
                elif message.get("bytes") is not None:
                    await upstream.send(message["bytes"])

        tasks = [asyncio.ensure_future(down()), asyncio.ensure_future(up())]
        try:
            await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
        except (WebSocketDisconnect, websockets.WebSocketException):
            pass
        finally:
            for t in tasks:
                t.cancel()
            await upstream.close()
            with contextlib.suppress(RuntimeError, WebSocketDisconnect):
                await ws.close()


def main() -> int:
    parser = argparse.ArgumentParser(prog="python -m sandbox.prefect_weather", description=__doc__.split("\n\n")[0])
    parser.add_argument("--upstream", required=True, help="the Prefect server, e.g. http://127.0.0.1:4200")
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--rate", type=float, default=0.1, help="share of requests answered with a fault")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    weather = PrefectWeather(args.upstream, args.rate, args.seed, port=args.port).start()
    print(f"{weather.url}/api -> {args.upstream} ({args.rate:.0%} answered 503/502/429)", flush=True)
    try:
        threading.Event().wait()
    except KeyboardInterrupt:
        pass
    finally:
        weather.stop()
        print(f"faults answered: {dict(weather.hits)}; passed: {weather.passed}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
