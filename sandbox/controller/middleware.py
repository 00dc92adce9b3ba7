"""WSGI middleware in front of moto: control endpoints, faults, extra operations.

Every call into moto runs under the world lock, so API threads and the
controller never see a half-updated model.
"""

from __future__ import annotations

import contextlib
import io
import json
import re
import socket
import time
from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING, Any, NamedTuple
from urllib.parse import parse_qs

from .cloudwatch import MetricReads, describe_alarm_history
from .ecr_api import HANDLERS as ECR_HANDLERS
from .ecr_api import ApiError
from .faults import canonical, error_response, weather_error
from .iam_simulate import OPERATION as SIMULATE
from .iam_simulate import handle as simulate_principal_policy
from .supported import CODE as UNSUPPORTED
from .supported import is_supported, unsupported_message
from .world import LOCK, log

if TYPE_CHECKING:
    from .iam_enforce import Enforcer
    from .loop import Controller

_SCOPE = re.compile(r"Credential=[^/]+/\d{8}/[^/]+/([^/]+)/aws4_request")
Handler = Callable[[dict[str, Any]], "dict[str, Any] | None"]
QueryHandler = Callable[[str, bytes], tuple[int, list[tuple[str, str]], bytes]]


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


class Call(NamedTuple):
    """One AWS call as the middleware sees it."""

    service: str
    operation: str
    is_json: bool
    body: bytes


def without_nulls(body: bytes) -> bytes:
    """A JSON-protocol answer without null members: AWS leaves an absent member out (a null on the wire is no
    string, list or structure botocore's model allows); moto writes some, e.g. DescribeLogGroups' nextToken."""
    try:
        data = json.loads(body)
    except ValueError:
        return body

    def strip(value: Any) -> Any:
        if isinstance(value, dict):
            return {k: strip(v) for k, v in value.items() if v is not None}
        if isinstance(value, list):
            return [strip(v) for v in value]
        return value

    return json.dumps(strip(data)).encode()


def _discard(status: str, headers: list[tuple[str, str]], *rest: Any) -> Callable[[bytes], None]:
    """start_response for an answer nobody will read (a fault "after" the call)."""
    return lambda data: None


def _reset(environ: dict[str, Any], start_response: Callable[..., Any]) -> list[bytes]:
    """Close the connection without an answer; the client sees it dropped and retries."""
    sock = environ.get("werkzeug.socket")
    if sock is not None:
        with contextlib.suppress(OSError):
            sock.shutdown(socket.SHUT_RDWR)
    # the server's write of these headers then fails as a dropped connection, and is ignored
    start_response("500 Internal Server Error", [("Content-Length", "0")])
    return [b""]


class SandboxMiddleware:
    """Routes /_sandbox/* to the controller and AWS calls to faults, handlers or moto."""

    def __init__(self, app: Any, controller: Controller, enforcer: Enforcer | None = None) -> None:
        self.app = app
        self.controller = controller
        self.enforcer = enforcer  # IAM enforcement, only when the server was started with it
        # ECR handlers talk to the registry over HTTP: they must not hold the world lock
        self.unlocked = {("ecr", op) for op in ECR_HANDLERS}
        self.handlers: dict[tuple[str, str], Handler] = {
            ("ecr", op): fn for op, fn in ECR_HANDLERS.items()
        }
        for op, fn in controller.codedeploy_api.handlers().items():
            self.handlers[("codedeploy", op)] = fn
        self.handlers[("cloudwatch", "DescribeAlarmHistory")] = describe_alarm_history
        # statistics and percentiles of the ALB metrics from the proxies' own samples (moto has no percentiles)
        for op, fn in MetricReads(controller.metrics).handlers().items():
            self.handlers[("cloudwatch", op)] = fn
        for op, fn in controller.native_api.handlers().items():
            self.handlers[("ecs", op)] = fn
        # query-protocol operations moto lacks: (query string, form body) -> the whole answer
        self.query_handlers: dict[tuple[str, str], QueryHandler] = {("iam", SIMULATE): simulate_principal_policy}
        self.handled = frozenset(self.handlers) | frozenset(self.query_handlers)

    def __call__(self, environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterable[bytes]:
        path = environ.get("PATH_INFO", "")
        if path.startswith("/_sandbox/"):
            return self._control(environ, start_response, path)
        length = int(environ.get("CONTENT_LENGTH") or 0)
        body = environ["wsgi.input"].read(length) if length else b""
        environ["wsgi.input"] = io.BytesIO(body)
        environ["CONTENT_LENGTH"] = str(len(body))
        call = Call(*identify(environ, body), body)
        if not call.operation:
            return self._moto(environ, start_response)
        agent = environ.get("HTTP_USER_AGENT", "")
        logged = self._logged(start_response, call, agent)
        if self.enforcer is not None:
            denied = self.enforcer.judge(environ, *call)
            if denied is not None:
                return self._send(self._logged(start_response, call, agent, denied=True), *denied)
        fault = self.controller.faults.take(call.service, call.operation, body,
                                            environ.get("HTTP_USER_AGENT", ""))
        if fault is None:
            return self._answer(environ, logged, call)
        log.info("fault injected: %s.%s -> %s%s", call.service, call.operation,
                 fault.get("weather") or fault.get("code"), " (after the call)" if fault["after"] else "")
        if fault["kind"] == "slow":
            time.sleep(float(fault["slow_seconds"]))
            return self._answer(environ, logged, call)
        if fault["after"]:  # the call takes effect; only its answer is lost
            self._answer(environ, _discard, call)
        if fault["kind"] == "reset":
            self.controller.requests.record(call.service, call.operation, 0, body, agent)
            return _reset(environ, start_response)
        if "weather" in fault:
            code, status, message = weather_error(fault["weather"], call.is_json)
        else:
            code, status, message = fault["code"], fault["status"], fault["message"]
        return self._send(logged, *error_response(call.service, code, message, status, call.is_json))

    def _answer(self, environ: dict[str, Any], start_response: Callable[..., Any], call: Call) -> list[bytes]:
        """The real answer: UnsupportedOperation, a sandbox handler's or moto's."""
        service, op = call.service, call.operation
        if not is_supported(service, op, call.body, self.handled):
            return self._send(start_response, *error_response(
                service, UNSUPPORTED, unsupported_message(service, op), 400, call.is_json))
        query_handler = self.query_handlers.get((service, op))
        if query_handler is not None and not call.is_json:
            with LOCK:
                status, headers, body = query_handler(str(environ.get("QUERY_STRING", "")), call.body)
            return self._send(start_response, status, headers, body)
        handler = self.handlers.get((service, op))
        if handler is not None and call.is_json:
            answer = self._handle(handler, start_response, call)
            if answer is not None:
                return answer
        return self._moto(environ, start_response, call.is_json)

    def _handle(self, handler: Handler, start_response: Callable[..., Any], call: Call) -> list[bytes] | None:
        """A sandbox handler's answer, or None when it leaves the call to moto."""
        service = call.service
        try:
            params = json.loads(call.body or b"{}")
            if (service, call.operation) in self.unlocked:
                result = handler(params)
            else:
                with LOCK:
                    result = handler(params)
            if result is None:
                return None
            data = json.dumps(result, default=str).encode()
            return self._send(start_response, 200, [("Content-Type", "application/x-amz-json-1.1")], data)
        except ApiError as exc:
            return self._send(start_response, *error_response(service, exc.code, exc.message, exc.status, True))
        except json.JSONDecodeError as exc:
            return self._send(start_response, *error_response(
                service, "SerializationException", f"Request body is not JSON: {exc}", 400, True))
        except Exception as exc:  # noqa: BLE001 - answer like AWS, never with an HTML page
            log.exception("%s.%s failed", service, call.operation)
            return self._send(start_response, *error_response(
                service, "InternalFailure", f"{type(exc).__name__}: {exc}", 500, True))

    def _moto(self, environ: dict[str, Any], start_response: Callable[..., Any], is_json: bool = False) -> list[bytes]:
        held: list[Any] = []
        with LOCK:
            result_iter = self.app(environ, (lambda *args: held.append(args)) if is_json else start_response)
            try:
                body = b"".join(result_iter)
            finally:
                close = getattr(result_iter, "close", None)
                if close:
                    close()
        if not is_json:
            return [body]
        status, headers, *rest = held[0]
        if status.startswith("2") and b"null" in body:
            body = without_nulls(body)
            headers = [(k, str(len(body)) if k.lower() == "content-length" else v) for k, v in headers]
        start_response(status, headers, *rest)
        return [body]

    def _logged(self, start_response: Callable[..., Any], call: Call, agent: str,
                denied: bool = False) -> Callable[..., Any]:
        """start_response that also records the call, its status, its User-Agent and whether IAM refused it
        in the request log."""
        def recording(status: str, headers: list[tuple[str, str]], *rest: Any) -> Any:
            self.controller.requests.record(call.service, call.operation, int(status.split(" ", 1)[0]),
                                            call.body, agent, denied)
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
            ok = self.controller.requests.since(since, (query.get("match") or [""])[0],
                                                (query.get("agent") or [""])[0])
        elif path == "/_sandbox/faults" and method == "POST":
            length = int(environ.get("CONTENT_LENGTH") or 0)
            try:
                spec = json.loads(environ["wsgi.input"].read(length) or b"{}")
                ok = {"fault": self.controller.faults.add(spec)}
            except (ValueError, TypeError) as exc:
                ok, status = {"error": str(exc)}, 400
        elif path == "/_sandbox/faults" and method == "DELETE":
            query = parse_qs(environ.get("QUERY_STRING", ""))
            ok = {"ok": True, "cleared": self.controller.faults.clear((query.get("match") or [""])[0],
                                                                       (query.get("name") or [""])[0])}
        elif path == "/_sandbox/faults":
            ok = {"faults": self.controller.faults.list()}
        elif path == "/_sandbox/hooks":
            length = int(environ.get("CONTENT_LENGTH") or 0)
            try:
                spec = json.loads(environ["wsgi.input"].read(length) or b"{}") if method == "POST" else {}
                with LOCK:
                    ok = self.controller.codedeploy_api.hooks_control(method, spec)
            except (ValueError, TypeError) as exc:
                ok, status = {"error": str(exc)}, 400
        else:
            ok, status = {"error": f"unknown endpoint {path}"}, 404
        data = json.dumps(ok, default=str).encode()
        return self._send(start_response, status, [("Content-Type", "application/json")], data)
