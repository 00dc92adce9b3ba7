"""A fleet release in data: which services, in which waves, and how each one ended.

Pure functions (no Prefect, no AWS), so the rules are tested with plain
tables: ``flows/fleet.py`` starts the runs and reads their states. The wave
gate is the one piece its threads share: a wave's migrations before its shifts.
"""

from __future__ import annotations

import fnmatch
import threading
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass, field
from typing import Literal

from tasks.config.models import ServiceConfig
from tasks.core.errors import ConfigError
from tasks.core.waits import poll

Outcome = Literal["ok", "failed", "skipped", "held"]
# deploy-service outcomes (tasks/release/outcome.py: the lead of the final state's message) for the fleet.
OK_OUTCOMES = frozenset({"Deployed", "No change"})
SKIPPED_OUTCOMES = frozenset({"Superseded", "Not newer than live"})


def select_services(configs: Sequence[ServiceConfig], patterns: Iterable[str] | None) -> list[ServiceConfig]:
    """The services whose name matches one of PATTERNS (names or globs); all when None or empty.

    A pattern matching nothing is an error naming it: a typo never releases a smaller fleet silently.
    """
    wanted = [p for p in (patterns or []) if p]
    if not wanted:
        return sorted(configs, key=lambda c: c.name)
    unmatched = [p for p in wanted if not any(fnmatch.fnmatchcase(c.name, p) for c in configs)]
    if unmatched:
        known = ", ".join(sorted(c.name for c in configs)[:10]) or "none"
        raise ConfigError(f"no service matches {', '.join(unmatched)}; services are: {known}")
    return sorted((c for c in configs if any(fnmatch.fnmatchcase(c.name, p) for p in wanted)), key=lambda c: c.name)


def plan_waves(names: Sequence[str], max_parallel: int) -> list[list[str]]:
    """NAMES in waves of at most MAX_PARALLEL, in order."""
    if max_parallel < 1:
        raise ConfigError(f"max_parallel is {max_parallel}; set it to 1 or more")
    return [list(names[i : i + max_parallel]) for i in range(0, len(names), max_parallel)]


class WaveGate:
    """A wave's migrations before its shifts: each service, past its migration (or at once without one) and
    before production moves, waits until every other service of its wave has got there or ended.

    For the children of one fleet run in one process (threads); a service that fails, rolls back or has
    nothing to do ends and so lets the others go.
    """

    def __init__(self, names: Iterable[str], timeout_seconds: float) -> None:
        self.timeout_seconds = timeout_seconds
        self._short: set[str] = set(names)  # not yet past their migration, still running
        self._lock = threading.Lock()

    def arrive(self, name: str) -> None:
        """NAME passed its migration, or ended: it holds nobody back any more."""
        with self._lock:
            self._short.discard(name)

    def waiting_for(self, name: str) -> list[str]:
        with self._lock:
            return sorted(self._short - {name})

    def hold(self, name: str, log: Callable[[str], None] | None = None) -> None:
        """NAME arrives, then waits for the others (a cancel stops the wait); DeployError after the timeout."""
        self.arrive(name)
        poll(lambda: True if not self.waiting_for(name) else None, timeout=self.timeout_seconds,
             what=f"the other services of the wave to pass their migrations ({', '.join(self.waiting_for(name))})",
             log=log, first=0.2, cap=1.0)


# What a release of a fleet's wave shares with its siblings (set by the fleet run around each child).
_WAVE: ContextVar[tuple[WaveGate, str] | None] = ContextVar("ecs_pipeline_wave", default=None)


@contextmanager
def in_wave(gate: WaveGate, name: str) -> Iterator[None]:
    """The release of NAME inside this block belongs to GATE's wave; however it ends, it stops holding it."""
    token = _WAVE.set((gate, name))
    try:
        yield
    finally:
        gate.arrive(name)
        _WAVE.reset(token)


def wave_of(name: str) -> WaveGate | None:
    """The wave gate of the release of NAME running in this context, if it is a fleet's child."""
    found = _WAVE.get()
    return found[0] if found is not None and found[1] == name else None


def gate_seconds(configs: Iterable[ServiceConfig]) -> float:
    """How long a wave's service waits at the gate: an hour beyond the longest migration of the wave."""
    return 3600.0 + max((c.migrate.timeout_seconds for c in configs if c.migrate is not None), default=0)


def classify(state_type: str | None, outcome: str | None) -> Outcome:
    """A deploy-service run's end, for the fleet: deployed (or nothing to do), given way, or failed.

    A run cancelled by a person, a crash or a rollback all leave the service not released: failed.
    """
    if state_type == "COMPLETED" or outcome in OK_OUTCOMES:
        return "ok"
    if state_type == "CANCELLED" and outcome in SKIPPED_OUTCOMES:
        return "skipped"
    return "failed"


@dataclass
class ServiceResult:
    """One line of the fleet summary."""

    service: str
    sha: str | None = None
    wave: int = 0
    outcome: Outcome = "held"
    state: str = "Held"
    seconds: float | None = None
    reason: str = ""
    flow_run_id: str | None = None


@dataclass
class FleetSummary:
    """What the fleet summary artifact says: one line per service, then the totals."""

    results: list[ServiceResult] = field(default_factory=list)
    max_parallel: int = 1
    stop_on_first_failure: bool = False

    def count(self, outcome: Outcome) -> int:
        return sum(1 for r in self.results if r.outcome == outcome)

    @property
    def failed(self) -> list[str]:
        return [r.service for r in self.results if r.outcome == "failed"]

    @property
    def held(self) -> list[str]:
        return [r.service for r in self.results if r.outcome == "held"]

    def headline(self) -> str:
        n = len(self.results)
        parts = [f"{self.count('ok')} of {n} deployed or unchanged"]
        if self.failed:
            parts.append(f"failed: {', '.join(self.failed)}")
        if self.count("skipped"):
            parts.append(f"{self.count('skipped')} gave way")
        if self.held:
            parts.append(f"held after the first failure: {', '.join(self.held)}")
        return "; ".join(parts)

    def markdown(self) -> str:
        how = f"waves of {self.max_parallel}" + (", stop on first failure" if self.stop_on_first_failure else "")
        lines = [
            f"# Fleet release: {len(self.results)} services ({how})",
            "",
            f"**{self.headline()}**",
            "",
            "| service | wave | outcome | state | SHA | time | reason | run |",
            "|---|---|---|---|---|---|---|---|",
        ]
        for r in self.results:
            sha = r.sha[:12] if r.sha else "-"
            took = f"{r.seconds:.1f} s" if r.seconds is not None else "-"
            reason = r.reason.replace("|", "\\|").replace("\n", " ")[:300] or "-"
            lines.append(
                f"| {r.service} | {r.wave or '-'} | {r.outcome} | {r.state} | `{sha}` | {took} | {reason} "
                f"| {r.flow_run_id or '-'} |"
            )
        return "\n".join(lines) + "\n"
