"""How long a strategy waits for AWS: budgets derived from the service's own AWS settings.

A wait shorter than what AWS may legitimately take rolls a healthy release
back; a longer one only delays the report of a stuck one. So each budget adds
up what the deployment is documented to need, read from the account where it
lives:

- a new target's health checks: the target group's HealthCheckIntervalSeconds
  x HealthyThresholdCount ("the number of consecutive health check successes
  required before considering a target healthy", ELB's API reference);
- green's start (image pull, container start): ``timeouts.green_healthy_seconds``;
- each appspec hook the release's appspec names: its event waits until the
  hook's function reports (PutLifecycleEventHookExecutionStatus), at most
  ``timeouts.hook_seconds`` (default one hour, the longest CodeDeploy lets a
  lifecycle hook run);
- the deployment config's shift minutes and the group's termination wait.

Canary analysis adds no term: a task-sets step waits for traffic at most
``analysis.inconclusive_wait_seconds`` and no budget bounds that shift, and a
shift CodeDeploy or ECS drives is judged within the looks its budget already
allows (AWS does not wait for a judgement).

AWS times are time-scaled in a sandbox rehearsal; start and MARGIN_SECONDS
(polling and API latency) are wall time. Every budget is capped at
CAP_SECONDS. Its text says how it was computed, so a wait that runs out names
what it waited for and why it gave up when it did.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

from tasks.aws.clients import AwsClients
from tasks.config import appspec as appspec_mod
from tasks.config.models import ServiceConfig, appspec_for

MARGIN_SECONDS = 60.0
CAP_SECONDS = 8 * 3600.0  # five one-hour hooks and a long shift fit; a stuck deployment still ends
# ELB's documented defaults (HTTP/HTTPS target groups), used when a group does not say.
DEFAULT_INTERVAL_SECONDS = 30
DEFAULT_HEALTHY_THRESHOLD = 5
BEFORE_READY_HOOKS = ("BeforeInstall", "AfterInstall", "AfterAllowTestTraffic")
SHIFT_HOOKS = ("BeforeAllowTraffic", "AfterAllowTraffic")


@dataclass(frozen=True)
class Budget:
    """A wait's bound in wall seconds and how it was computed."""

    seconds: float
    how: str

    def waiting_for(self, what: str) -> str:
        """WHAT with its budget, for poll's messages: 'timed out after Ns waiting for <this>'."""
        return f"{what} (budget {self.seconds:.0f}s = {self.how})"


def compute(clients: AwsClients, wall: Sequence[tuple[str, float]], aws: Sequence[tuple[str, float]]) -> Budget:
    """WALL parts as they are, AWS parts time-scaled, plus the margin, capped."""
    settings = clients.settings
    aws_seconds = sum(seconds for _, seconds in aws)
    scaled = settings.scaled(aws_seconds)
    total = sum(seconds for _, seconds in wall) + scaled + MARGIN_SECONDS
    terms = [f"{label} {seconds:.0f}s" for label, seconds in wall if seconds]
    if aws:
        aws_text = f"{' + '.join(label for label, _ in aws)} = {aws_seconds:.0f}s"
        if settings.effective_time_scale != 1:
            aws_text += f" ({scaled:.0f}s at time scale {settings.effective_time_scale:g})"
        terms.append(aws_text)
    terms.append(f"margin {MARGIN_SECONDS:.0f}s")
    how = " + ".join(terms)
    if total > CAP_SECONDS:
        return Budget(CAP_SECONDS, f"{how}, capped at {CAP_SECONDS:.0f}s")
    return Budget(total, how)


def health_check_seconds(clients: AwsClients, target_groups: Iterable[str]) -> tuple[str, float]:
    """(how, seconds) a new target needs to turn healthy: the slowest group's interval x healthy threshold."""
    arns = list(target_groups)
    groups: list[dict[str, Any]] = []
    if arns:
        groups = clients.get("elbv2").describe_target_groups(TargetGroupArns=arns).get("TargetGroups", [])
    worst = (DEFAULT_INTERVAL_SECONDS, DEFAULT_HEALTHY_THRESHOLD)
    if groups:
        worst = max(
            ((int(g.get("HealthCheckIntervalSeconds") or DEFAULT_INTERVAL_SECONDS),
              int(g.get("HealthyThresholdCount") or DEFAULT_HEALTHY_THRESHOLD)) for g in groups),
            key=lambda pair: pair[0] * pair[1],
        )
    interval, threshold = worst
    return f"health checks {interval}s x {threshold}", float(interval * threshold)


def hook_events(cfg: ServiceConfig) -> list[str]:
    """The lifecycle events the service's appspec hangs a hook on (the ARN does not change them)."""
    doc = appspec_for(cfg, appspec_mod.PLACEHOLDER_ARN)
    return [str(event) for hook in doc.get("Hooks") or [] if isinstance(hook, dict) for event in hook]


def _hooks(cfg: ServiceConfig, hooks: Sequence[str], among: Sequence[str]) -> list[tuple[str, float]]:
    mine = [h for h in hooks if h in among]
    if not mine:
        return []
    label = f"hooks {'+'.join(mine)} {len(mine)} x {cfg.timeouts.hook_seconds}s"
    return [(label, float(len(mine) * cfg.timeouts.hook_seconds))]


def green_healthy(cfg: ServiceConfig, clients: AwsClients, target_groups: Iterable[str]) -> Budget:
    """Green started and healthy in its target group: start + health checks."""
    return compute(clients, [("green start", cfg.timeouts.green_healthy_seconds)],
                   [health_check_seconds(clients, target_groups)])


def codedeploy_ready(
    cfg: ServiceConfig, clients: AwsClients, target_groups: Iterable[str], hooks: Sequence[str]
) -> Budget:
    """CodeDeploy's Ready: green healthy + the hooks before test traffic is allowed and after."""
    aws = [health_check_seconds(clients, target_groups), *_hooks(cfg, hooks, BEFORE_READY_HOOKS)]
    return compute(clients, [("green start", cfg.timeouts.green_healthy_seconds)], aws)


def codedeploy_shift(cfg: ServiceConfig, clients: AwsClients, minutes: float, hooks: Sequence[str]) -> Budget:
    """The production shift: the deployment config's minutes + the hooks around AllowTraffic."""
    aws = [(f"shift {minutes:g} min", minutes * 60), *_hooks(cfg, hooks, SHIFT_HOOKS)]
    return compute(clients, [], aws)


def codedeploy_termination(clients: AwsClients, minutes: float) -> Budget:
    """Blue's removal or a rollback: the group's termination wait."""
    return compute(clients, [], [(f"termination wait {minutes:g} min", minutes * 60)])
