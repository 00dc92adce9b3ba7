"""Injected AWS errors: the next N calls of an operation answer a chosen error.

Tests use this instead of mocks to exercise retries (ThrottlingException) and
permanent failures (AccessDeniedException) through the real client stack.
"""

from __future__ import annotations

import json
import threading
import uuid
from typing import Any
from urllib.parse import unquote

ALIASES = {"elasticloadbalancing": "elbv2", "monitoring": "cloudwatch", "api.ecr": "ecr",
           "elbv2": "elbv2", "cloudwatch": "cloudwatch"}
QUERY_SERVICES = {"elbv2", "cloudwatch", "iam", "sts", "ec2", "autoscaling"}


def canonical(service: str) -> str:
    service = (service or "").lower()
    return ALIASES.get(service, service)


class Faults:
    """Thread-safe queue of pending faults keyed by (service, operation)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._items: list[dict[str, Any]] = []

    def add(self, spec: dict[str, Any]) -> dict[str, Any]:
        for key in ("service", "operation", "code"):
            if not spec.get(key):
                raise ValueError(f"fault needs '{key}'")
        item = {
            "service": canonical(str(spec["service"])), "operation": str(spec["operation"]),
            "code": str(spec["code"]), "status": int(spec.get("status", 400)),
            "message": str(spec.get("message", spec["code"])), "count": int(spec.get("count", 1)),
            # optional: only requests whose body contains this text (a resource name), so
            # parallel users of one sandbox do not consume each other's faults
            "match": str(spec.get("match") or ""),
        }
        with self._lock:
            self._items.append(item)
        return item

    def clear(self, match: str = "") -> int:
        """Drop pending faults (only those with this ``match`` when given); returns how many."""
        with self._lock:
            keep = [i for i in self._items if match and i["match"] != match]
            dropped = len(self._items) - len(keep)
            self._items[:] = keep
            return dropped

    def list(self) -> list[dict[str, Any]]:
        with self._lock:
            return [dict(i) for i in self._items]

    def take(self, service: str, operation: str, body: bytes = b"") -> dict[str, Any] | None:
        """Consume one matching fault, if any."""
        service = canonical(service)
        text = body.decode("utf-8", "replace")
        with self._lock:
            for item in self._items:
                if (item["service"] == service and item["operation"] == operation and item["count"] > 0
                        and (not item["match"] or item["match"] in text or item["match"] in unquote(text))):
                    item["count"] -= 1
                    if item["count"] == 0:
                        self._items.remove(item)
                    return dict(item)
        return None


def error_response(service: str, code: str, message: str, status: int,
                   json_protocol: bool) -> tuple[int, list[tuple[str, str]], bytes]:
    """The error as the service's protocol spells it (JSON ``__type`` or query XML)."""
    request_id = str(uuid.uuid4())
    if json_protocol:
        body = json.dumps({"__type": code, "message": message, "Message": message}).encode()
        headers = [("Content-Type", "application/x-amz-json-1.1"), ("x-amzn-RequestId", request_id),
                   ("x-amzn-ErrorType", code)]
        if canonical(service) in QUERY_SERVICES:
            headers.append(("x-amzn-query-error", f"{code};Sender"))
        return status, headers, body
    fault_type = "Receiver" if status >= 500 else "Sender"
    xml = (f'<ErrorResponse xmlns="http://webservices.amazon.com/AWSFault/2005-15-09">'
           f"<Error><Type>{fault_type}</Type><Code>{_esc(code)}</Code><Message>{_esc(message)}</Message>"
           f"</Error><RequestId>{request_id}</RequestId></ErrorResponse>")
    return status, [("Content-Type", "text/xml"), ("x-amzn-RequestId", request_id)], xml.encode()


def _esc(text: str) -> str:
    return text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")
