"""WSGI middleware in front of moto: control endpoints, faults, extra operations.

Every call into moto runs under the world lock, so API threads and the
controller never see a half-updated model.
"""

from __future__ import annotations

import io
import json
import re
from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING, Any
from urllib.parse import parse_qs

from .ecr_api import HANDLERS as ECR_HANDLERS
from .ecr_api import ApiError
from .faults import canonical, error_response
from .supported import CODE as UNSUPPORTED
from .supported import is_supported, unsupported_message
from .world import LOCK, log

if TYPE_CHECKING:
    from . import Controller

_SCOPE = re.compile(r"Credential=[^/]+/\d{8}/[^/]+/([^/]+)/aws4_request")
Handler = Callable[[dict[str, Any]], "dict[str, Any] | None"]


def identify(environ: dict[str, Any], body: bytes) -> tuple[str, str, bool]:
    """(service, operation, json protocol?) of an AWS request."""
    match = _SCOPE.search(environ.get("HTTP_AUTHORIZATION", ""))
    service = canonical(match.group(1)) if match else ""
    target = environ.get("HTTP_X_AMZ_TARGET", "")
    if target:
        return service, target.rsplit(".", 1)[-1], True
    params = parse_qs(environ.get("QUERY_STRING", ""))
    ctype = environ.get("CONTENT_TYPE", "")
    if "x-www-form-urlencoded" in ctype and body:
        params.update(parse_qs(body.decode("utf-8", "replace")))
    action = (params.get("Action") or [""])[0]
    return service, action, False


class SandboxMiddleware:
    """Routes /_sandbox/* to the controller and AWS calls to faults, handlers or moto."""

    def __init__(self, app: Any, controller: Controller) -> None:
        self.app = app
        self.controller = controller
        # ECR handlers talk to the registry over HTTP: they must not hold the world lock
        self.unlocked = {("ecr", op) for op in ECR_HANDLERS}
        self.handlers: dict[tuple[str, str], Handler] = {
            ("ecr", op): fn for op, fn in ECR_HANDLERS.items()
        }
        for op, fn in controller.codedeploy_api.handlers().items():
            self.handlers[("codedeploy", op)] = fn
        self.handled = frozenset(self.handlers)

    def __call__(self, environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterable[bytes]:
        path = environ.get("PATH_INFO", "")
        if path.startswith("/_sandbox/"):
            return self._control(environ, start_response, path)
        length = int(environ.get("CONTENT_LENGTH") or 0)
        body = environ["wsgi.input"].read(length) if length else b""
        environ["wsgi.input"] = io.BytesIO(body)
        environ["CONTENT_LENGTH"] = str(len(body))
        service, op, is_json = identify(environ, body)
        if op:
            start_response = self._logged(start_response, service, op, body)
        fault = self.controller.faults.take(service, op, body) if op else None
        if fault:
            log.info("fault injected: %s.%s -> %s", service, op, fault["code"])
            return self._send(start_response, *error_response(
                service, fault["code"], fault["message"], fault["status"], is_json))
        if op and not is_supported(service, op, body, self.handled):
            return self._send(start_response, *error_response(
                service, UNSUPPORTED, unsupported_message(service, op), 400, is_json))
        handler = self.handlers.get((service, op))
        if handler is not None and is_json:
            try:
                params = json.loads(body or b"{}")
                if (service, op) in self.unlocked:
                    result = handler(params)
                else:
                    with LOCK:
                        result = handler(params)
                if result is not None:
                    data = json.dumps(result, default=str).encode()
                    return self._send(start_response, 200,
                                      [("Content-Type", "application/x-amz-json-1.1")], data)
            except ApiError as exc:
                return self._send(start_response, *error_response(service, exc.code, exc.message,
                                                                  exc.status, True))
            except json.JSONDecodeError as exc:
                return self._send(start_response, *error_response(
                    service, "SerializationException", f"Request body is not JSON: {exc}", 400, True))
            except Exception as exc:  # noqa: BLE001 - answer like AWS, never with an HTML page
                log.exception("%s.%s failed", service, op)
                return self._send(start_response, *error_response(
                    service, "InternalFailure", f"{type(exc).__name__}: {exc}", 500, True))
        with LOCK:
            result_iter = self.app(environ, start_response)
            try:
                return [b"".join(result_iter)]
            finally:
                close = getattr(result_iter, "close", None)
                if close:
                    close()

    def _logged(self, start_response: Callable[..., Any], service: str, op: str,
                body: bytes) -> Callable[..., Any]:
        """start_response that also records the call and its status in the request log."""
        def recording(status: str, headers: list[tuple[str, str]], *rest: Any) -> Any:
            self.controller.requests.record(service, op, int(status.split(" ", 1)[0]), body)
            return start_response(status, headers, *rest)
        return recording

    @staticmethod
    def _send(start_response: Callable[..., Any], status: int, headers: list[tuple[str, str]],
              body: bytes) -> list[bytes]:
        reason = {200: "OK", 400: "Bad Request", 404: "Not Found", 500: "Internal Server Error",
                  503: "Service Unavailable"}.get(status, "Error")
        start_response(f"{status} {reason}", [*headers, ("Content-Length", str(len(body)))])
        return [body]

    def _control(self, environ: dict[str, Any], start_response: Callable[..., Any],
                 path: str) -> list[bytes]:
        method = environ.get("REQUEST_METHOD", "GET")
        ok: dict[str, Any]
        status = 200
        if path == "/_sandbox/health":
            ok = {"ok": self.controller.running}
            status = 200 if self.controller.running else 503
        elif path == "/_sandbox/state":
            ok = self.controller.snapshot()
        elif path == "/_sandbox/requests":
            query = parse_qs(environ.get("QUERY_STRING", ""))
            since = int((query.get("since") or ["0"])[0] or 0)
            ok = self.controller.requests.since(since, (query.get("match") or [""])[0])
        elif path == "/_sandbox/faults" and method == "POST":
            length = int(environ.get("CONTENT_LENGTH") or 0)
            try:
                spec = json.loads(environ["wsgi.input"].read(length) or b"{}")
                ok = {"fault": self.controller.faults.add(spec)}
            except (ValueError, TypeError) as exc:
                ok, status = {"error": str(exc)}, 400
        elif path == "/_sandbox/faults" and method == "DELETE":
            match = (parse_qs(environ.get("QUERY_STRING", "")).get("match") or [""])[0]
            ok = {"ok": True, "cleared": self.controller.faults.clear(match)}
        elif path == "/_sandbox/faults":
            ok = {"faults": self.controller.faults.list()}
        else:
            ok, status = {"error": f"unknown endpoint {path}"}, 404
        data = json.dumps(ok, default=str).encode()
        return self._send(start_response, status, [("Content-Type", "application/json")], data)
