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

import ssl
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar
from urllib.parse import urlsplit

import httpx
from prefect import get_run_logger

from tasks.aws import shared_reads
from tasks.aws.clients import AwsClients
from tasks.aws.retry import stage
from tasks.aws.traffic import Routing
from tasks.config.models import HttpCheck, ServiceConfig, Verify
from tasks.config.taskdef import SHA_TAG
from tasks.core.errors import ConfigError, VerifyFailed
from tasks.core.tls import tls_context
from tasks.core.waits import checkpoint, poll

T = TypeVar("T")


@dataclass(frozen=True)
class HttpResult:
    path: str
    passes: int
    attempts: int
    worst_ms: float


@dataclass(frozen=True)
class Reach:
    """How checks reach the service: by its own name through the listener's address.

    HOST goes out as Host header and TLS SNI and is the name the certificate must cover
    (no ACM certificate covers an ALB's DNS name). INTERNAL: the listener's ALB answers only
    inside its VPC. With REVISION_HEADER and REVISION, an answer counts only when it names
    this release (ELB applies a listener change "after a short time": blue may still answer).
    """

    host: str | None = None
    ca_bundle: Path | None = None
    internal: bool = False
    revision_header: str | None = None
    revision: str | None = None

    def tls(self) -> ssl.SSLContext:
        return tls_context(str(self.ca_bundle) if self.ca_bundle else None)


def reach_for(verify: Verify, base_dir: str, internal: bool = False, revision: str | None = None) -> Reach:
    bundle = Path(base_dir) / verify.ca_bundle if verify.ca_bundle else None
    if bundle is not None and not bundle.is_file():
        raise ConfigError(f"verify.ca_bundle: {verify.ca_bundle}: no such file (a PEM file of the issuing CA)")
    return Reach(verify.host, bundle, internal, verify.revision_header if revision else None, revision)


def _describe(outcomes: Counter[str]) -> str:
    return ", ".join(f"{what} on {n}" for what, n in outcomes.most_common())


def _certificate_refused(exc: BaseException) -> ssl.SSLCertVerificationError | None:
    seen: BaseException | None = exc
    while seen is not None:
        if isinstance(seen, ssl.SSLCertVerificationError):
            return seen
        seen = seen.__cause__ or seen.__context__
    return None


def _tls_message(check: HttpCheck, url: str, reach: Reach, refused: ssl.SSLCertVerificationError) -> str:
    name = urlsplit(url).hostname or url
    if reach.host is None:
        return (
            f"GET {check.path}: the TLS certificate at {url} does not cover the load balancer's DNS name "
            f"{name} (no ACM certificate can; it is issued for the service's own domain): set verify.host "
            "to the service's host name, sent as Host and TLS SNI (and verify.ca_bundle for a private CA)"
        )
    return (
        f"GET {check.path}: the TLS certificate at {url} is not trusted for {reach.host} "
        f"({refused.verify_message or refused.reason}): check verify.host is a name the listener's "
        "certificate covers, or set verify.ca_bundle to the CA that issued it"
    )


def _revision_problem(resp: httpx.Response, reach: Reach, required: bool = False) -> str | None:
    """Why this answer is not green's: another revision named (after ``await_green``, an answer
    without the header counts: a path such as a static /health need not name it)."""
    if reach.revision_header is None or reach.revision is None:
        return None
    named = resp.headers.get(reach.revision_header, "").strip()
    if len(named) >= 7 and reach.revision.startswith(named):
        return None
    if not named and not required:
        return None
    if not named:
        return f"no {reach.revision_header} header (not proven to be {reach.revision[:7]})"
    return f"answered by {named[:12]}, not {reach.revision[:7]}"


def check_http(
    base_url: str, check: HttpCheck, log: Callable[[str], None] | None = None, reach: Reach | None = None
) -> HttpResult:
    """Until ``consecutive`` passes in a row; VerifyFailed saying what was seen otherwise."""
    reach = reach or Reach()
    url = (check.base_url or base_url).rstrip("/") + check.path
    headers = {"Cache-Control": "no-cache"}
    extensions: dict[str, Any] = {}
    if reach.host:
        headers["Host"] = reach.host
        extensions["sni_hostname"] = reach.host
    streak = 0
    outcomes: Counter[str] = Counter()
    unreachable = 0
    worst = 0.0
    timeout = check.max_latency_ms / 1000 + 1
    with httpx.Client(timeout=timeout, follow_redirects=False, verify=reach.tls()) as client:
        for attempt in range(1, check.attempts + 1):
            started = time.perf_counter()
            try:
                resp = client.get(url, headers=headers, extensions=extensions)
                elapsed = (time.perf_counter() - started) * 1000
                problem = _judge(resp, elapsed, check) or _revision_problem(resp, reach)
            except httpx.HTTPError as exc:
                refused = _certificate_refused(exc)
                if refused is not None:
                    raise VerifyFailed(_tls_message(check, url, reach, refused)) from exc
                unreachable += isinstance(exc, (httpx.ConnectError, httpx.ConnectTimeout))
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
    hint = ""
    if reach.internal and unreachable == check.attempts:
        hint = (
            f"; the load balancer at {urlsplit(url).hostname} is internal (scheme internal) and answers "
            "only clients inside its VPC: run the worker inside the VPC (or a network routed to it)"
        )
    raise VerifyFailed(
        f"GET {check.path} failed verification: {seen} of {check.attempts} checks "
        f"(needed {check.consecutive} passing in a row at {url}){hint}"
    )


def release_revision(ecs: Any, task_definition: str) -> str | None:
    """The commit a task definition was registered for (its git-sha tag)."""
    found = ecs.describe_task_definition(taskDefinition=task_definition, include=["TAGS"])
    return next((t["value"] for t in found.get("tags", []) if t.get("key") == SHA_TAG), None)


def await_green(base_url: str, checks: list[HttpCheck], reach: Reach, log: Callable[[str], None]) -> None:
    """Until an answer names this release: the listener change reached the node that answered.

    Any status counts here (a broken green is the checks' to judge, once it is green they judge).
    """
    assert reach.revision is not None and reach.revision_header is not None
    tries = max(c.attempts for c in checks)
    headers = {"Cache-Control": "no-cache", **({"Host": reach.host} if reach.host else {})}
    extensions = {"sni_hostname": reach.host} if reach.host else {}
    seen: Counter[str] = Counter()
    with httpx.Client(timeout=5, follow_redirects=False, verify=reach.tls()) as client:
        for attempt in range(1, tries + 1):
            for check in checks:
                url = (check.base_url or base_url).rstrip("/") + check.path
                try:
                    resp = client.get(url, headers=headers, extensions=extensions)
                except httpx.HTTPError as exc:
                    refused = _certificate_refused(exc)
                    if refused is not None:
                        raise VerifyFailed(_tls_message(check, url, reach, refused)) from exc
                    seen[type(exc).__name__] += 1
                    continue
                problem = _revision_problem(resp, reach, required=True)
                if problem is None:
                    log(f"green answers: GET {check.path} named {reach.revision[:7]} (round {attempt})")
                    return
                seen[problem] += 1
            checkpoint()
            time.sleep(min(c.interval_seconds for c in checks) or 0.1)
    raise VerifyFailed(
        f"no answer through {base_url} named this release ({reach.revision_header}: {reach.revision[:7]}) "
        f"in {tries} rounds ({_describe(seen)}): the listener still routes to another version, "
        f"or the service does not send {reach.revision_header}"
    )


def wait_out_propagation(seconds: float, scaled: float, log: Callable[[str], None]) -> None:
    log(f"waiting {seconds:g} s for the test listener's change to take effect (ELB: rule updates take "
        "effect after a short time); verify.revision_header proves green instead of waiting")
    deadline = time.monotonic() + scaled
    while (left := deadline - time.monotonic()) > 0:
        checkpoint()
        time.sleep(min(left, 1.0))


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
    found = shared_reads.target_health(elbv2, target_group)
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
    answered = shared_reads.alarms(cloudwatch, names)  # one DescribeAlarms for the process's waiting releases
    found = [answered[n] for n in dict.fromkeys(names) if n in answered]
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
    revision = None
    if cfg.verify.revision_header:
        revision = release_revision(clients.get("ecs"), green.task_definition)
        if revision is None:
            raise ConfigError(f"verify.revision_header: {green.task_definition} has no {SHA_TAG} tag to compare")
    reach = reach_for(cfg.verify, cfg.base_dir, routing.test_internal, revision)
    if reach.revision is not None and cfg.verify.http:
        await_green(routing.test_url, cfg.verify.http, reach, log.info)
    elif cfg.verify.http and cfg.verify.propagation_seconds:
        seconds = cfg.verify.propagation_seconds
        wait_out_propagation(seconds, clients.settings.scaled(seconds), log.info)
    for check in cfg.verify.http:
        res = check_http(routing.test_url, check, reach=reach)
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
