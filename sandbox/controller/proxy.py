"""A real HTTP proxy per ELBv2 listener, routing each request by its live actions.

The listener's rules and default action are read on every request, so a
ModifyListener (weights, target groups) takes effect on the next request.
"""

from __future__ import annotations

import fnmatch
import http.client
import itertools
import random
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from .cloudwatch import Metrics
from .targets import begin_request, end_request, healthy_targets
from .world import LOCK, all_listeners, elbv2, log

UNAVAILABLE = b"<html><body><h1>503 Service Temporarily Unavailable</h1></body></html>\n"
HOP_BY_HOP = {"connection", "keep-alive", "proxy-authenticate", "proxy-authorization", "te",
              "trailers", "transfer-encoding", "upgrade"}


def _action_dict(action: Any) -> dict[str, Any]:
    return dict(getattr(action, "data", None) or action)


def _path_values(cond: dict[str, Any]) -> list[str]:
    return list(cond.get("Values") or (cond.get("PathPatternConfig") or {}).get("Values") or [])


def _rule_matches(rule: Any, path: str, host: str) -> bool:
    for cond in rule.conditions or []:
        field = cond.get("Field")
        if field == "path-pattern":
            if not any(fnmatch.fnmatchcase(path, v) for v in _path_values(cond)):
                return False
        elif field == "host-header":
            values = cond.get("Values") or (cond.get("HostHeaderConfig") or {}).get("Values") or []
            if not any(fnmatch.fnmatch(host.split(":")[0], v) for v in values):
                return False
        else:
            return False
    return True


def resolve_actions(listener: Any, path: str, host: str) -> list[dict[str, Any]]:
    """The actions ALB would run for this request: first matching rule, else default."""
    rules = sorted(listener._non_default_rules.values(), key=lambda r: int(r.priority))
    for rule in rules:
        if _rule_matches(rule, path.split("?")[0], host):
            return [_action_dict(a) for a in rule.actions]
    return [_action_dict(a) for a in listener.default_actions]


def pick_target_group(action: dict[str, Any]) -> str | None:
    """Weighted choice among the forward action's target groups."""
    groups = (action.get("ForwardConfig") or {}).get("TargetGroups") or []
    if not groups:
        return action.get("TargetGroupArn")
    weights = [max(int(g.get("Weight", 1) or 0), 0) for g in groups]
    if sum(weights) == 0:
        return None
    return str(random.choices([g["TargetGroupArn"] for g in groups], weights=weights)[0])


class ListenerProxy:
    """One bound listener port and its serving thread."""

    def __init__(self, listener_arn: str, lb_arn: str, port: int, metrics: Metrics) -> None:
        self.listener_arn, self.lb_arn, self.port = listener_arn, lb_arn, port
        self.metrics = metrics
        self.requests = 0
        self._rr: dict[str, itertools.count[int]] = {}
        self.server = _QuietServer(("127.0.0.1", port), self._handler())
        self.server.daemon_threads = True
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True,
                                       name=f"listener-{port}")

    def start(self) -> None:
        self.thread.start()

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()

    def choose(self, tg_arn: str) -> tuple[str, int] | None:
        """Round-robin over healthy targets; the pick counts as in flight until end_request."""
        targets = healthy_targets(tg_arn)
        if not targets:
            return None
        counter = self._rr.setdefault(tg_arn, itertools.count())
        target = targets[next(counter) % len(targets)]
        begin_request(target[1])
        return target

    def _handler(self) -> type[BaseHTTPRequestHandler]:
        return type("ListenerHandler", (_ListenerHandler,), {"proxy": self})


class _ListenerHandler(BaseHTTPRequestHandler):
    """Answers one request the way the listener's current actions say."""

    proxy: ListenerProxy
    protocol_version = "HTTP/1.1"
    server_version = "awselb/2.0"

    def log_message(self, format: str, *args: Any) -> None:
        return

    def _serve(self) -> None:
        proxy = self.proxy
        proxy.requests += 1
        length = int(self.headers.get("Content-Length") or 0)
        body = self.rfile.read(length) if length else None
        listener = _find_listener(proxy.listener_arn)
        if listener is None:
            return self._reply(503, b"listener gone\n", None, False)
        actions = resolve_actions(listener, self.path, self.headers.get("Host", ""))
        action = next((a for a in actions if a.get("Type") != "authenticate-oidc"), {})
        if action.get("Type") == "fixed-response":
            cfg = action.get("FixedResponseConfig") or {}
            return self._reply(int(cfg.get("StatusCode", 200)), str(cfg.get("MessageBody", "")).encode(),
                               None, False, cfg.get("ContentType", "text/plain"))
        if action.get("Type") != "forward":
            return self._reply(501, b"Not Implemented\n", None, False)
        tg_arn = pick_target_group(action)
        target = proxy.choose(tg_arn) if tg_arn else None
        if target is None:
            return self._reply(503, UNAVAILABLE, tg_arn, False, "text/html")
        try:
            self._forward(tg_arn or "", target[1], body)
        finally:
            end_request(target[1])

    def _forward(self, tg_arn: str, port: int, body: bytes | None) -> None:
        headers = {k: v for k, v in self.headers.items() if k.lower() not in HOP_BY_HOP}
        headers["X-Forwarded-For"] = self.client_address[0]
        headers["X-Forwarded-Proto"] = "http"
        headers["X-Forwarded-Port"] = str(self.proxy.port)
        started = time.monotonic()
        try:
            conn = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
            conn.request(self.command, self.path, body=body, headers=headers)
            resp = conn.getresponse()
            data = resp.read()
            out = [(k, v) for k, v in resp.getheaders()
                   if k.lower() not in HOP_BY_HOP and k.lower() != "content-length"]
            conn.close()
        except TimeoutError:
            return self._reply(504, b"504 Gateway Time-out\n", tg_arn, False)
        except (OSError, http.client.HTTPException):
            return self._reply(502, b"502 Bad Gateway\n", tg_arn, False)
        self.proxy.metrics.record(self.proxy.lb_arn, tg_arn, resp.status, True, time.monotonic() - started)
        self.send_response(resp.status)
        for k, v in out:
            self.send_header(k, v)
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(data)

    def _reply(self, status: int, data: bytes, tg_arn: str | None, from_target: bool,
               ctype: str = "text/plain") -> None:
        self.proxy.metrics.record(self.proxy.lb_arn, tg_arn, status, from_target)
        self.send_response(status)
        self.send_header("Content-Type", ctype)
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(data)

    do_GET = do_POST = do_PUT = do_DELETE = do_HEAD = do_PATCH = do_OPTIONS = _serve


class _QuietServer(ThreadingHTTPServer):
    """Clients that hang up mid-response are normal for a load balancer, not tracebacks."""

    daemon_threads = True

    def handle_error(self, request: Any, client_address: Any) -> None:
        log.debug("listener connection from %s ended with an error", client_address, exc_info=True)


def _find_listener(arn: str) -> Any:
    for lb in list(elbv2().load_balancers.values()):
        listener = lb.listeners.get(arn)
        if listener is not None:
            return listener
    return None


class ProxyManager:
    """Keeps one proxy bound per existing listener; closes proxies of deleted ones."""

    def __init__(self, metrics: Metrics) -> None:
        self.metrics = metrics
        self.proxies: dict[str, ListenerProxy] = {}
        self.errors: dict[str, str] = {}

    def sync(self) -> None:
        with LOCK:
            wanted = {ln.arn: (ln.load_balancer_arn, int(ln.port)) for ln in all_listeners()}
        for arn, proxy in list(self.proxies.items()):
            if arn not in wanted or wanted[arn][1] != proxy.port:
                proxy.stop()
                del self.proxies[arn]
                log.info("listener proxy on 127.0.0.1:%s closed", proxy.port)
        for arn, (lb_arn, port) in wanted.items():
            if arn in self.proxies:
                continue
            try:
                proxy = ListenerProxy(arn, lb_arn, port, self.metrics)
            except OSError as exc:
                if self.errors.get(arn) != str(exc):
                    log.error("cannot bind listener proxy on 127.0.0.1:%s: %s", port, exc)
                self.errors[arn] = str(exc)
                continue
            self.errors.pop(arn, None)
            proxy.start()
            self.proxies[arn] = proxy
            log.info("listener proxy on 127.0.0.1:%s for %s", port, arn)

    def stop_all(self) -> None:
        for proxy in self.proxies.values():
            proxy.stop()
        self.proxies.clear()

    def snapshot(self) -> list[dict[str, Any]]:
        out = [{"listenerArn": a, "port": p.port, "requests": p.requests, "bound": True}
               for a, p in self.proxies.items()]
        out += [{"listenerArn": a, "bound": False, "error": e} for a, e in self.errors.items()]
        return out
