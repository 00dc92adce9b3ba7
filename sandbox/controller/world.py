"""Shared access to moto's in-memory backends, the world lock and the time scale.

moto's models are plain Python objects without locking; the API threads and the
controller thread both mutate them, so every read-modify-write goes through
``LOCK``. Slow work (Docker, HTTP health checks) never runs under it.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from typing import Any

ACCOUNT = "123456789012"
REGION = "us-east-1"
LOCK = threading.RLock()
log = logging.getLogger("sandbox")


def time_scale() -> float:
    """Factor that turns AWS minutes into sandbox seconds (SANDBOX_TIME_SCALE)."""
    try:
        return max(float(os.environ.get("SANDBOX_TIME_SCALE", "60")), 1.0)
    except ValueError:
        return 60.0


def scaled(seconds: float, floor: float = 0.2) -> float:
    """An AWS wait played at sandbox speed, never shorter than ``floor``."""
    return max(float(seconds) / time_scale(), floor)


def now() -> float:
    return time.time()


def ecs() -> Any:
    from moto.ecs.models import ecs_backends

    return ecs_backends[ACCOUNT][REGION]


def elbv2() -> Any:
    from moto.elbv2.models import elbv2_backends

    return elbv2_backends[ACCOUNT][REGION]


def codedeploy() -> Any:
    from moto.codedeploy.models import codedeploy_backends

    return codedeploy_backends[ACCOUNT][REGION]


def cloudwatch() -> Any:
    from moto.cloudwatch.models import cloudwatch_backends

    return cloudwatch_backends[ACCOUNT][REGION]


def ecr() -> Any:
    from moto.ecr.models import ecr_backends

    return ecr_backends[ACCOUNT][REGION]


def all_listeners() -> list[Any]:
    """Every listener of every load balancer, read under the lock."""
    with LOCK:
        out: list[Any] = []
        for lb in list(elbv2().load_balancers.values()):
            out.extend(lb.listeners.values())
        return out


def arn_suffix(arn: str, marker: str) -> str:
    """`targetgroup/<name>/<id>` or `app/<name>/<id>` from an ELBv2 ARN."""
    idx = arn.find(marker)
    return arn[idx:] if idx >= 0 else arn
