"""Checks on green before and while it takes traffic: HTTP, target health, alarms."""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import httpx

from tasks.config.models import HttpCheck
from tasks.core.errors import ConfigError, VerifyFailed
from tasks.core.waits import checkpoint


@dataclass(frozen=True)
class HttpResult:
    path: str
    passes: int
    attempts: int
    worst_ms: float


def _describe(outcomes: Counter[str]) -> str:
    return ", ".join(f"{what} on {n}" for what, n in outcomes.most_common())


def check_http(
    base_url: str, check: HttpCheck, log: Callable[[str], None] | None = None
) -> HttpResult:
    """Until ``consecutive`` passes in a row; VerifyFailed saying what was seen otherwise."""
    url = (check.base_url or base_url).rstrip("/") + check.path
    streak = 0
    outcomes: Counter[str] = Counter()
    worst = 0.0
    with httpx.Client(timeout=check.max_latency_ms / 1000 + 1, follow_redirects=False) as client:
        for attempt in range(1, check.attempts + 1):
            started = time.perf_counter()
            try:
                resp = client.get(url, headers={"Cache-Control": "no-cache"})
                elapsed = (time.perf_counter() - started) * 1000
                problem = _judge(resp, elapsed, check)
            except httpx.HTTPError as exc:
                elapsed = (time.perf_counter() - started) * 1000
                problem = f"{type(exc).__name__}"
            worst = max(worst, elapsed)
            if problem is None:
                streak += 1
                if streak >= check.consecutive:
                    return HttpResult(check.path, streak, attempt, worst)
            else:
                streak = 0
                outcomes[problem] += 1
            checkpoint()
            time.sleep(check.interval_seconds)
    seen = _describe(outcomes)
    raise VerifyFailed(
        f"GET {check.path} failed verification: {seen} of {check.attempts} checks "
        f"(needed {check.consecutive} passing in a row at {url})"
    )


def _judge(resp: httpx.Response, elapsed_ms: float, check: HttpCheck) -> str | None:
    if resp.status_code != check.expect_status:
        return f"returned {resp.status_code}"
    if check.expect_body is not None and check.expect_body not in resp.text:
        return f"body without {check.expect_body!r}"
    if elapsed_ms > check.max_latency_ms:
        return f"took over {check.max_latency_ms} ms"
    return None


def unhealthy_targets(elbv2: Any, target_group: str) -> tuple[int, list[str]]:
    """(healthy count, descriptions of the others) for a target group."""
    found = elbv2.describe_target_health(TargetGroupArn=target_group)["TargetHealthDescriptions"]
    healthy = 0
    others = []
    for t in found:
        health = t.get("TargetHealth", {})
        if health.get("State") == "healthy":
            healthy += 1
        else:
            target = t.get("Target", {})
            others.append(
                f"{target.get('Id')}:{target.get('Port')} {health.get('State')}"
                + (f" ({health.get('Reason')})" if health.get("Reason") else "")
            )
    return healthy, others


def check_target_health(elbv2: Any, target_group: str, expected: int) -> int:
    healthy, others = unhealthy_targets(elbv2, target_group)
    if healthy < expected:
        detail = "; ".join(others) or "no targets registered"
        plural = "" if expected == 1 else "s"
        raise VerifyFailed(f"target group has {healthy} of {expected} healthy target{plural}: {detail}")
    return healthy


def alarms_firing(cloudwatch: Any, names: list[str]) -> list[str]:
    """Names (with reasons) of the given alarms that are in ALARM; unknown names are config errors.

    An AWS error reading them propagates as it is: a throttle is the stage's to retry,
    not a failed verification (which would roll a good release back).
    """
    if not names:
        return []
    found = cloudwatch.describe_alarms(AlarmNames=names)["MetricAlarms"]
    known = {a["AlarmName"] for a in found}
    missing = [n for n in names if n not in known]
    if missing:
        raise ConfigError(f"verify.alarms: no CloudWatch alarm named {', '.join(missing)}")
    return [
        f"{a['AlarmName']} ({a.get('StateReason', 'in ALARM')})"
        for a in found
        if a.get("StateValue") == "ALARM"
    ]


def check_alarms(cloudwatch: Any, names: list[str]) -> None:
    firing = alarms_firing(cloudwatch, names)
    if firing:
        raise VerifyFailed(f"alarm in ALARM: {'; '.join(firing)}")
