"""Every AWS call the sandbox answered, in order: what a test reads to prove a call never happened.

A bounded ring of (sequence number, service, operation, HTTP status); readers ask
for what came after the last number they saw, so parallel tests do not clear
each other's view. The caller's User-Agent is kept too, so a reader can ask for
the pipeline's own calls only (its clients send ``ecs-pipeline/<version>``): the
botocore contract check (tests/test_contract_botocore.py) proves with it that it
saw every call the pipeline made. A call the IAM enforcer refused is marked
``denied`` (its 400 looks like any other client error's otherwise).
"""

from __future__ import annotations

import threading
from collections import deque
from typing import Any

MUTATING_PREFIXES = ("Create", "Register", "Update", "Put", "Delete", "Deregister", "Modify", "Continue",
                     "Stop", "Start", "Run", "Set", "Tag", "Untag", "Batch", "Complete", "Upload",
                     "Initiate")
SIZE = 50_000


def is_mutating(operation: str) -> bool:
    """Whether an AWS operation changes something (every Create*/Register*/Update*/Put*/Delete*, ...)."""
    return operation.startswith(MUTATING_PREFIXES) and operation != "BatchGetImage"


class RequestLog:
    def __init__(self, size: int = SIZE) -> None:
        self._lock = threading.Lock()
        self._items: deque[dict[str, Any]] = deque(maxlen=size)
        self._seq = 0

    def record(self, service: str, operation: str, status: int, body: bytes, agent: str = "",
               denied: bool = False) -> None:
        with self._lock:
            self._seq += 1
            self._items.append({"seq": self._seq, "service": service, "operation": operation,
                                "status": status, "mutating": is_mutating(operation), "denied": denied,
                                "body": body[:2048].decode("utf-8", "replace"), "agent": agent})

    def since(self, seq: int, match: str = "", agent: str = "") -> dict[str, Any]:
        """Calls after SEQ, and the last number; only those whose body contains MATCH and whose
        User-Agent contains AGENT, when given."""
        with self._lock:
            found = [dict(i) for i in self._items
                     if i["seq"] > seq and (not match or match in i["body"]) and agent in i["agent"]]
            last = self._seq
        for item in found:
            item.pop("body")
            item.pop("agent")
        return {"requests": found, "last": last}
