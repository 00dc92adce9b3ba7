"""How every strategy verifies green: before production (``verify_green``) and while it takes it (``watch``).

One answer to "how is a traffic step judged?": each strategy hands ``watch`` its
own look at the world (task sets: the listener's weights and green's targets;
CodeDeploy: the deployment; ECS: the service deployment's lifecycle) and the
loop adds what every step shares: the service's CloudWatch alarms, how long the
step lasts (time-scaled) or until when it is followed, and the words of a
failure ("alarm in ALARM during the 25% step: ..."). ``Green`` is the new
version as the strategies that run one beside blue name it.
"""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, TypeVar

import httpx
from prefect import get_run_logger

from tasks.aws.clients import AwsClients
from tasks.aws.retry import stage
from tasks.aws.traffic import Routing
from tasks.config.models import HttpCheck, ServiceConfig
from tasks.core.errors import ConfigError, VerifyFailed
from tasks.core.waits import checkpoint, poll

T = TypeVar("T")


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


@dataclass(frozen=True)
class Green:
    """The new version beside the old one, and the old one."""

    task_set: str | None
    target_group: str
    task_definition: str
    blue_task_set: str | None
    blue_target_group: str | None
    reused: bool = False
    already_primary: bool = False


@stage("verify green", "verify green {cfg.name}")
def verify_green(cfg: ServiceConfig, clients: AwsClients, routing: Routing, green: Green) -> list[str]:
    """HTTP checks through the test listener, target health and alarms, before any production traffic."""
    log = get_run_logger()
    lines = []
    for check in cfg.verify.http:
        res = check_http(routing.test_url, check)
        lines.append(f"GET {res.path}: {res.passes} passes in {res.attempts} tries, worst {res.worst_ms:.0f} ms")
        log.info(lines[-1])
    if cfg.verify.target_health:
        n = check_target_health(clients.get("elbv2"), green.target_group, 1)
        lines.append(f"{n} healthy target{'' if n == 1 else 's'}")
    raise_on_alarm(cfg, clients, "")
    return lines


def raise_on_alarm(cfg: ServiceConfig, clients: AwsClients, when: str, deployment_id: str | None = None) -> None:
    """VerifyFailed naming each of the service's alarms in ALARM ("alarm in ALARM during the bake: ...")."""
    firing = alarms_firing(clients.get("cloudwatch"), cfg.verify.alarms)
    if firing:
        lead = f"alarm in ALARM {when}".rstrip()
        raise VerifyFailed(f"{lead}: {'; '.join(firing)}", service=cfg.name, deployment_id=deployment_id)


def watch(
    cfg: ServiceConfig,
    clients: AwsClients,
    what: str | Callable[[], str],
    look: Callable[[], T | None],
    *,
    seconds: float | None = None,
    timeout: float | None = None,
    until: str = "",
    deployment_id: str | None = None,
) -> T | None:
    """Watch production through one traffic step, the bake, or a shift AWS drives.

    Every look calls the strategy's LOOK (which raises on what it alone can
    see, and returns a value once its step is over) and then the alarms.
    SECONDS: the step lasts that long, time-scaled (LOOK's value may end it
    early). Otherwise it lasts until LOOK returns a value, for at most TIMEOUT
    seconds, the strategy's own wait budget: then a DeployError naming UNTIL.
    WHAT names the step in a failure (a callable when the step is AWS's to name).
    """
    settings = clients.settings

    def check() -> T | None:
        found = look()
        step = what() if callable(what) else what
        raise_on_alarm(cfg, clients, f"during {step}", deployment_id)
        return found

    if seconds is None:
        assert timeout is not None, "a watch without SECONDS ends by its LOOK, within TIMEOUT"
        return poll(check, timeout=timeout, what=until or str(what), log=get_run_logger().info, cap=settings.poll_cap())
    deadline = time.monotonic() + settings.scaled(seconds)
    while True:
        found = check()
        left = deadline - time.monotonic()
        if found is not None or left <= 0:
            return found
        checkpoint()
        time.sleep(min(left, settings.poll_cap()))
