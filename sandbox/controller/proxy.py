"""A real HTTP(S) proxy per ELBv2 listener, routing each request by its actions.

ELB's guide (Edit a listener rule): "Rule updates do not take effect
immediately, so requests could be routed using the previous rule configuration
for a short time after you update a rule." So a change to a listener's default
action or rules reaches its proxy only PROPAGATION_SECONDS (time-scaled) after
it is made (dated from the proxy's last look that did not see it, at most one
controller tick earlier); until then the previous configuration answers.
An HTTPS listener serves its ACM certificate (moto's ACM holds the key), so a
client must ask for the name the certificate covers, never the ALB's DNS name.
Authentication actions run as they would for a client without a session: no
identity provider is reachable, so no request is ever authenticated.
"""

from __future__ import annotations

import copy
import fnmatch
import http.client
import itertools
import json
import os
import random
import ssl
import tempfile
import threading
import time
import urllib.parse
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from .cloudwatch import Metrics
from .targets import begin_request, end_request, healthy_targets
from .world import LOCK, all_listeners, elbv2, log, now, scaled

PROPAGATION_SECONDS = 30.0  # AWS documents only "a short time": half a minute, time-scaled
AUTHENTICATE = ("authenticate-oidc", "authenticate-cognito", "jwt-validation")

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


class _Rule:
    """A rule as the proxy last received it (a copy: later API calls do not reach it)."""

    def __init__(self, priority: int, conditions: list[Any], actions: list[dict[str, Any]]) -> None:
        self.priority, self.conditions, self.actions = priority, conditions, actions


def snapshot(listener: Any) -> dict[str, Any]:
    """The listener's routing configuration as data: default actions and rules by priority."""
    rules = sorted(listener._non_default_rules.values(), key=lambda r: int(r.priority))
    return {
        "default": [copy.deepcopy(_action_dict(a)) for a in listener.default_actions],
        "rules": [(int(r.priority), copy.deepcopy(list(r.conditions or [])),
                   [copy.deepcopy(_action_dict(a)) for a in r.actions]) for r in rules],
    }


def resolve_actions(config: dict[str, Any], path: str, host: str) -> list[dict[str, Any]]:
    """The actions ALB would run for this request: first matching rule, else default; by Order."""
    for priority, conditions, actions in config["rules"]:
        if _rule_matches(_Rule(priority, conditions, actions), path.split("?")[0], host):
            return sorted(actions, key=lambda a: int(a.get("Order") or 0))
    return sorted(config["default"], key=lambda a: int(a.get("Order") or 0))


def authenticate_answer(action: dict[str, Any], host: str, region: str) -> tuple[int, str] | None:
    """What an authenticate action answers a client without a session: (status, Location) or
    None when OnUnauthenticatedRequest is allow (the request goes on to the next action)."""
    config = action.get("AuthenticateOidcConfig") or action.get("AuthenticateCognitoConfig") or {}
    behaviour = str(config.get("OnUnauthenticatedRequest") or "authenticate")
    if action.get("Type") == "jwt-validation":
        return 401, ""
    if behaviour == "allow":
        return None
    if behaviour == "deny":
        return 401, ""
    query = urllib.parse.urlencode({
        "client_id": config.get("ClientId") or config.get("UserPoolClientId") or "",
        "redirect_uri": f"https://{host}/oauth2/idpresponse", "response_type": "code",
        "scope": config.get("Scope") or "openid",
    })
    if action.get("Type") == "authenticate-oidc":
        return 302, f"{config.get('AuthorizationEndpoint')}?{query}"
    domain = str(config.get("UserPoolDomain") or "")
    base = f"https://{domain}" if "." in domain else f"https://{domain}.auth.{region}.amazoncognito.com"
    return 302, f"{base}/oauth2/authorize?{query}"


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

    def __init__(self, listener_arn: str, lb_arn: str, port: int, metrics: Metrics,
                 certificate: str | None = None) -> None:
        self.listener_arn, self.lb_arn, self.port = listener_arn, lb_arn, port
        self.metrics = metrics
        self.requests = 0
        self.https = certificate is not None
        self._rr: dict[str, itertools.count[int]] = {}
        self._view_lock = threading.Lock()
        self._served: dict[str, Any] | None = None
        self._seen = ""
        self._checked = now()  # the last look at the listener: a change first seen later was made after it
        self._pending: list[tuple[float, dict[str, Any]]] = []
        self.server = _QuietServer(("127.0.0.1", port), self._handler())
        self.server.daemon_threads = True
        if certificate is not None:
            self.server.socket = _tls_context(certificate).wrap_socket(self.server.socket, server_side=True)
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True,
                                       name=f"listener-{port}")

    def start(self) -> None:
        self.thread.start()

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()

    def view(self, listener: Any) -> dict[str, Any]:
        """The configuration this listener's nodes have received: a change arrives after the delay."""
        t = now()
        config = snapshot(listener)
        key = json.dumps(config, sort_keys=True, default=str)
        with self._view_lock:
            if self._served is None:
                self._served, self._seen = config, key
            elif key != self._seen:
                self._seen = key
                # dated from the last look that did not see it, so it serves no later than PROPAGATION_SECONDS
                # after it was made: what waits that long after its own change (blue's removal) finds it served
                self._pending.append((self._checked + scaled(PROPAGATION_SECONDS), config))
            self._checked = max(self._checked, t)
            while self._pending and self._pending[0][0] <= t:
                self._served = self._pending.pop(0)[1]
            return self._served

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
        host = self.headers.get("Host", "")
        action: dict[str, Any] = {}
        for action in resolve_actions(proxy.view(listener), self.path, host):
            if action.get("Type") not in AUTHENTICATE:
                break
            answer = authenticate_answer(action, host, proxy.listener_arn.split(":")[3])
            if answer is not None:
                return self._reply(answer[0], b"" if answer[0] == 302 else b"401 Authorization Required\n",
                                   None, False, location=answer[1] or None)
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
        headers["X-Forwarded-Proto"] = "https" if self.proxy.https else "http"
        headers["X-Forwarded-Port"] = str(self.proxy.port)
        started = time.monotonic()
        try:
            conn = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
            conn.request(self.command, self.path, body=body, headers=headers)
            resp = conn.getresponse()
            # TargetResponseTime ends "when the target starts to send the response headers" (ALB's guide)
            waited = time.monotonic() - started
            data = resp.read()
            out = [(k, v) for k, v in resp.getheaders()
                   if k.lower() not in HOP_BY_HOP and k.lower() != "content-length"]
            conn.close()
        except TimeoutError:
            return self._reply(504, b"504 Gateway Time-out\n", tg_arn, False)
        except (OSError, http.client.HTTPException):
            return self._reply(502, b"502 Bad Gateway\n", tg_arn, False)
        self.proxy.metrics.record(self.proxy.lb_arn, tg_arn, resp.status, True, waited)
        self.send_response(resp.status)
        for k, v in out:
            self.send_header(k, v)
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(data)

    def _reply(self, status: int, data: bytes, tg_arn: str | None, from_target: bool,
               ctype: str = "text/plain", location: str | None = None) -> None:
        self.proxy.metrics.record(self.proxy.lb_arn, tg_arn, status, from_target)
        self.send_response(status)
        if location:
            self.send_header("Location", location)
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


def _tls_context(certificate_arn: str) -> ssl.SSLContext:
    """A server context with the ACM certificate (and chain) the listener names.

    The key goes to ssl only through a private file removed at once: never logged or kept.
    """
    from moto.acm.models import acm_backends

    parts = certificate_arn.split(":")
    bundle = acm_backends[parts[4]][parts[3]].get_certificate(certificate_arn)
    chain = bundle.chain.split(b"-----BEGIN CERTIFICATE-----")[1:] if bundle.chain else []
    pem = bundle.cert.strip() + b"\n" + b"".join(b"-----BEGIN CERTIFICATE-----" + c for c in chain[:-1])
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    with tempfile.TemporaryDirectory(prefix="listener-tls-") as folder:
        cert_path, key_path = os.path.join(folder, "cert.pem"), os.path.join(folder, "key.pem")
        with open(cert_path, "wb") as f:
            f.write(pem)
        with open(os.open(key_path, os.O_WRONLY | os.O_CREAT, 0o600), "wb") as f:
            f.write(bundle.key)
        context.load_cert_chain(cert_path, key_path)
    return context


def _certificate(listener: Any) -> str | None:
    if listener.protocol != "HTTPS":
        return None
    for cert in listener.certificates or []:
        arn = cert.get("CertificateArn") if isinstance(cert, dict) else cert
        if arn:
            return str(arn)
    return None


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
            found = {ln.arn: ln for ln in all_listeners()}
            wanted = {arn: (ln.load_balancer_arn, int(ln.port), _certificate(ln)) for arn, ln in found.items()}
        for arn, proxy in list(self.proxies.items()):
            if arn in wanted and wanted[arn][1] == proxy.port and (wanted[arn][2] is not None) == proxy.https:
                proxy.view(found[arn])  # a change starts propagating when made, not at the next request
                continue
            proxy.stop()
            del self.proxies[arn]
            log.info("listener proxy on 127.0.0.1:%s closed", proxy.port)
        for arn, (lb_arn, port, certificate) in wanted.items():
            if arn in self.proxies:
                continue
            try:
                proxy = ListenerProxy(arn, lb_arn, port, self.metrics, certificate)
            except (OSError, KeyError, ValueError) as exc:
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
