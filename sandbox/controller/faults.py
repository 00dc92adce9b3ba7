"""Injected AWS faults: named ones for tests, and random "weather" for retry tests and benchmarks.

A named fault answers the next N calls of one operation with a chosen error.
Weather hits a share (``rate``) of the calls it covers with throttling, 5xx,
connection resets or slow answers, drawn from its own seeded generator, so a
given seed and call sequence always hits the same calls. Tests use this
instead of mocks to exercise retries through the real client stack.
"""

from __future__ import annotations

import json
import random
import threading
import uuid
from typing import Any
from urllib.parse import unquote

ALIASES = {"elasticloadbalancing": "elbv2", "monitoring": "cloudwatch", "api.ecr": "ecr",
           "elbv2": "elbv2", "cloudwatch": "cloudwatch"}
QUERY_SERVICES = {"elbv2", "cloudwatch", "iam", "sts", "ec2", "autoscaling"}
WEATHER_CODES = ("throttling", "500", "503", "reset", "slow")


def canonical(service: str) -> str:
    service = (service or "").lower()
    return ALIASES.get(service, service)


def weather_error(kind: str, json_protocol: bool) -> tuple[str, int, str]:
    """(code, status, message) of a weather error as the service's protocol spells it.

    botocore's retry handler treats ThrottlingException (JSON) and Throttling
    (query) at 400 as throttling, and InternalFailure/InternalError 500 and
    ServiceUnavailable 503 as transient, so a standard-mode client retries all of them.
    """
    if kind == "throttling":
        return ("ThrottlingException" if json_protocol else "Throttling"), 400, "Rate exceeded"
    if kind == "500":
        return ("InternalFailure" if json_protocol else "InternalError"), 500, \
            "We encountered an internal error. Please try again."
    return "ServiceUnavailable", 503, "Service is unavailable. Please try again."


class Faults:
    """Thread-safe list of named faults and weather, consulted for every AWS call."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._items: list[dict[str, Any]] = []
        self._weather: list[Weather] = []

    def add(self, spec: dict[str, Any]) -> dict[str, Any]:
        if "rate" in spec:
            weather = Weather(spec)
            with self._lock:
                self._weather = [w for w in self._weather if w.name != weather.name]
                self._weather.append(weather)
            return weather.describe()
        for key in ("service", "operation", "code"):
            if not spec.get(key):
                raise ValueError(f"fault needs '{key}' (or 'rate' for weather)")
        item = {
            "service": canonical(str(spec["service"])), "operation": str(spec["operation"]),
            "code": str(spec["code"]), "status": int(spec.get("status", 400)),
            "message": str(spec.get("message", spec["code"])), "count": int(spec.get("count", 1)),
            # optional: only requests whose body contains this text (a resource name), so
            # parallel users of one sandbox do not consume each other's faults
            "match": str(spec.get("match") or ""), "name": str(spec.get("name") or ""),
            "after": bool(spec.get("after", False)), "hits": 0,
        }
        with self._lock:
            self._items.append(item)
        return dict(item)

    def clear(self, match: str = "", name: str = "") -> int:
        """Drop faults and weather (only those with this ``match`` or ``name`` when given)."""
        def gone(item_match: str, item_name: str) -> bool:
            return (not match or item_match == match) and (not name or item_name == name)

        with self._lock:
            keep = [i for i in self._items if not gone(i["match"], i["name"])]
            sky = [w for w in self._weather if not gone(w.match, w.name)]
            dropped = len(self._items) - len(keep) + len(self._weather) - len(sky)
            self._items[:], self._weather[:] = keep, sky
            return dropped

    def list(self) -> list[dict[str, Any]]:
        with self._lock:
            return [dict(i) for i in self._items] + [w.describe() for w in self._weather]

    def take(self, service: str, operation: str, body: bytes = b"", agent: str = "") -> dict[str, Any] | None:
        """The fault this call gets, if any: a named one first (consumed), else weather's draw.

        Returns ``{"kind": "error"|"reset"|"slow", "after": bool, ...}``; errors carry
        ``code``/``status``/``message`` or, for weather, ``weather`` (the kind to spell).
        """
        service = canonical(service)
        text = body.decode("utf-8", "replace")
        with self._lock:
            for item in self._items:
                if (item["service"] == service and item["operation"] == operation and item["count"] > 0
                        and _contains(text, item["match"])):
                    item["count"] -= 1
                    item["hits"] += 1
                    if item["count"] == 0:
                        self._items.remove(item)
                    return {**item, "kind": "error"}
            for weather in self._weather:
                if weather.covers(service, operation, text, agent):
                    hit = weather.draw()
                    if hit is not None:
                        return hit
        return None


class Weather:
    """A seeded share of calls answered with a random transient fault."""

    def __init__(self, spec: dict[str, Any]) -> None:
        self.rate = float(spec["rate"])
        if not 0.0 <= self.rate <= 1.0:
            raise ValueError("weather 'rate' must be between 0 and 1")
        self.codes = [str(c) for c in spec.get("codes") or WEATHER_CODES]
        unknown = sorted(set(self.codes) - set(WEATHER_CODES))
        if unknown:
            raise ValueError(f"unknown weather codes {unknown}; use some of {list(WEATHER_CODES)}")
        weights = spec.get("weights") or {}
        if not isinstance(weights, dict):
            raise ValueError("weather 'weights' must map a code to a number")
        self.weights = [float(weights.get(c, 1.0)) for c in self.codes]
        if any(w < 0 for w in self.weights) or not sum(self.weights):
            raise ValueError("weather 'weights' must be non-negative and not all zero")
        self.seed = int(spec.get("seed", 0))
        self.service = canonical(str(spec.get("service") or ""))
        self.operation = str(spec.get("operation") or "")
        self.match = str(spec.get("match") or "")
        self.agent = str(spec.get("agent") or "")
        self.slow_seconds = float(spec.get("slow_seconds", 2.0))
        self.after = bool(spec.get("after", False))
        self.name = str(spec.get("name") or f"weather-{uuid.uuid4().hex[:6]}")
        self.calls = 0
        self.hits = 0
        self._rng = random.Random(self.seed)

    def covers(self, service: str, operation: str, text: str, agent: str) -> bool:
        return ((not self.service or self.service == service)
                and (not self.operation or self.operation == operation)
                and _contains(text, self.match) and (not self.agent or self.agent in agent))

    def draw(self) -> dict[str, Any] | None:
        """One draw per covered call (caller holds the lock), so the sequence is reproducible."""
        self.calls += 1
        if self._rng.random() >= self.rate:
            return None
        kind = self._rng.choices(self.codes, weights=self.weights)[0]
        self.hits += 1
        return {"kind": "error" if kind in ("throttling", "500", "503") else kind, "weather": kind,
                "after": self.after, "slow_seconds": self.slow_seconds, "name": self.name}

    def describe(self) -> dict[str, Any]:
        return {"name": self.name, "rate": self.rate, "seed": self.seed, "codes": self.codes,
                "weights": dict(zip(self.codes, self.weights, strict=True)), "service": self.service,
                "operation": self.operation, "match": self.match, "agent": self.agent,
                "slow_seconds": self.slow_seconds, "after": self.after, "calls": self.calls, "hits": self.hits}


def _contains(text: str, needle: str) -> bool:
    return not needle or needle in text or needle in unquote(text)


def error_response(service: str, code: str, message: str, status: int,
                   json_protocol: bool) -> tuple[int, list[tuple[str, str]], bytes]:
    """The error as the service's protocol spells it (JSON ``__type`` or query XML)."""
    request_id = str(uuid.uuid4())
    if json_protocol:
        body = json.dumps({"__type": code, "message": message, "Message": message}).encode()
        headers = [("Content-Type", "application/x-amz-json-1.1"), ("x-amzn-RequestId", request_id),
                   ("x-amzn-ErrorType", code)]
        if canonical(service) in QUERY_SERVICES:
            fault = "Receiver" if status >= 500 else "Sender"
            headers.append(("x-amzn-query-error", f"{code};{fault}"))
        return status, headers, body
    fault_type = "Receiver" if status >= 500 else "Sender"
    xml = (f'<ErrorResponse xmlns="http://webservices.amazon.com/AWSFault/2005-15-09">'
           f"<Error><Type>{fault_type}</Type><Code>{_esc(code)}</Code><Message>{_esc(message)}</Message>"
           f"</Error><RequestId>{request_id}</RequestId></ErrorResponse>")
    return status, [("Content-Type", "text/xml"), ("x-amzn-RequestId", request_id)], xml.encode()


def _esc(text: str) -> str:
    return text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")
