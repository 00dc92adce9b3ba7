"""What a deploy strategy is: the steps it hands to the release skeleton (tasks/release/skeleton.py).

The skeleton owns the order (reconcile → detect → build → push → register →
before production → approval → to production → after the bake), the summary's
stages and timings, traffic events, rollback on any failure and the outcome. A
strategy only says *how*: each phase is a sequence of (stage name, step) that
the skeleton runs one at a time, so a strategy can decide its next step from
what the previous one found (a resumed CodeDeploy deployment skips what already
happened).
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable
from contextlib import AbstractContextManager
from dataclasses import asdict, dataclass, field
from typing import Any, Protocol

from tasks.aws import traffic
from tasks.aws.clients import AwsClients
from tasks.config.models import ServiceConfig
from tasks.core.report import ReleaseSummary

Step = tuple[str, Callable[[], None]]


@dataclass(frozen=True)
class Outcome:
    """How a release ended and where production traffic is."""

    task_definition: str
    rolled_back: bool = False
    reason: str | None = None
    traffic: str = ""

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class Release:
    """One release in progress: what every step may read, and the skeleton's hooks."""

    cfg: ServiceConfig
    clients: AwsClients
    sha: str
    summary: ReleaseSummary
    task_definition: str = ""
    on_step: Callable[..., None] = field(default=lambda weight, **extra: None)
    # The service as described when the strategy was chosen, under the lock: later steps that only need
    # what it was then (the live revision) reuse it; waits and rollbacks describe afresh.
    service: dict[str, Any] | None = None

    def stage(self, name: str) -> AbstractContextManager[None]:
        return self.summary.stage(name)

    def note(self, *lines: str) -> None:
        self.summary.notes.extend(lines)


@dataclass(frozen=True)
class RollbackResult:
    """Where traffic is after a rollback, and the reason to report (the strategy may add AWS's words)."""

    traffic: str
    reason: str


@dataclass(frozen=True)
class Reconciled:
    """What a release found left by an earlier, dead run, and what it did about it."""

    direction: str  # "forward": green was fully shifted, now finished; "back": production on blue again
    task_definition: str  # what serves production now
    text: str


class Steps(Protocol):
    """A strategy's own steps. Every phase may yield nothing."""

    @property
    def live_traffic(self) -> str:
        """Where production is once the release is done, in the summary's words ("100% green [app-tg-b]")."""
        ...

    def before_production(self) -> Iterable[Step]:
        """Green up and verified while production stays on blue (a failure here costs users nothing)."""
        ...

    def pauses_for_approval(self) -> bool:
        """Whether the approval gate applies now (False when production already moved)."""
        ...

    def to_production(self) -> Iterable[Step]:
        """Move production to green and bake, calling ``release.on_step(weight)`` as traffic moves."""
        ...

    def after_bake(self) -> Iterable[Step]:
        """Blue removed; failures here no longer roll back (green serves and is verified)."""
        ...

    def roll_back(self, reason: str) -> RollbackResult | None:
        """Production 100 % on the last verified version, green removed; None when nothing had moved."""
        ...

    def reconcile(self) -> Reconciled | None:
        """Before anything else: bring what a dead run left to one verified version (None: nothing left)."""
        ...

    def adopt_in_flight(self) -> str | None:
        """A release left half-way (green beside blue, split traffic, a deployment in progress), taken on
        as this run's own so ``roll_back`` undoes it; what was found in words, None when nothing is."""
        ...

    def where_traffic_is(self) -> str:
        """Production's split as AWS shows it now, for a report when a rollback could not finish."""
        ...


# Picks the steps for the live service, once per run (the strategies room's choose.py): the flow hands it in.
Chooser = Callable[[Release], Steps]


class LoadBalanced:
    """A strategy for a service behind listeners: resolves them once per run."""

    def __init__(self, release: Release) -> None:
        assert release.cfg.load_balancer is not None, "the config validator requires it for this strategy"
        self.release = release
        self.cfg, self.clients = release.cfg, release.clients
        self.routing = traffic.resolve_routing(release.clients.get("elbv2"), release.cfg.load_balancer)

    def where_traffic_is(self) -> str:
        weights = traffic.get_weights(self.clients.get("elbv2"), self.routing.production_listener)
        return "production split " + " / ".join(f"{w}% {self.group_name(arn)}" for arn, w in weights.items())

    @property
    def live_traffic(self) -> str:
        """Green serves it all, named by the target group the production listener sends it to."""
        return self.on_group("100% green")

    def group_name(self, arn: str) -> str:
        return dict(zip(self.routing.target_groups, self.routing.target_group_names, strict=True)).get(arn, arn)

    def on_group(self, words: str) -> str:
        """WORDS ("100% green", "production on blue") with the target group production is wholly on, as
        ``100% green [app-tg-b]``; WORDS alone when production is split or the listener cannot be read."""
        try:
            weights = traffic.get_weights(self.clients.get("elbv2"), self.routing.production_listener)
        except Exception:  # noqa: BLE001 - the words are a report: never the reason a release fails
            return words
        serving = [arn for arn, w in weights.items() if w]
        return with_group(words, self.group_name(serving[0])) if len(serving) == 1 else words


def with_group(words: str, group: str | None) -> str:
    """``100% green [app-tg-b]``: blue/green named with its target group, when it is known."""
    return f"{words} [{group}]" if group else words


def group_of(words: str) -> str | None:
    """The target group ``with_group`` named in WORDS, None when they name none."""
    found = re.search(r"\[([^\[\]]+)\]$", words.strip())
    return found.group(1) if found else None
