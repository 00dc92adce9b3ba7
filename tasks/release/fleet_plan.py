"""A fleet release in data: which services, in which waves, and how each one ended.

Pure functions (no Prefect, no AWS), so the rules are tested with plain
tables: ``flows/fleet.py`` starts the runs and reads their states. Two pieces
are shared by its threads: the wave gate (a wave's migrations before its
shifts) and, in an atomic fleet, the hold (each service waits past its bake,
blue still warm, until the fleet says go on or go back).
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

# reverted: an atomic fleet sent it back to what it ran before the fleet (another service failed).
Outcome = Literal["ok", "failed", "skipped", "held", "reverted"]
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


class FleetHold:
    """An atomic fleet's services, each held past its bake (production on green, blue still warm, the
    service's lock kept) until the fleet decides: go on (teardown blue) or go back (the strategy's rollback).

    A held service counts as released for the services that depend on it: it serves, verified and baked.
    """

    def __init__(self, timeout_seconds: float = 6 * 3600.0) -> None:
        self.timeout_seconds = timeout_seconds
        self._passed: set[str] = set()
        self._decided: dict[str, str | None] = {}
        self._lock = threading.Lock()

    def has_passed(self, name: str) -> bool:
        with self._lock:
            return name in self._passed

    def decide(self, name: str, back: str | None) -> None:
        """NAME goes on to its teardown (BACK None), or goes back for the reason BACK."""
        with self._lock:
            self._decided[name] = back

    def wait(self, name: str, log: Callable[[str], None] | None = None) -> str | None:
        """NAME passed its bake; the fleet's word for it: None (go on) or the reason to go back.

        A cancel or SIGTERM stops the wait (and so rolls back); so does the timeout (DeployError).
        """
        with self._lock:
            self._passed.add(name)

        def word() -> tuple[str | None] | None:
            with self._lock:
                return (self._decided[name],) if name in self._decided else None

        return poll(word, timeout=self.timeout_seconds, what="the fleet's decision (every service passed its bake, "
                    "or one failed and all go back)", log=log, first=0.1, cap=0.5)[0]


_HOLD: ContextVar[tuple[FleetHold, str] | None] = ContextVar("ecs_pipeline_fleet_hold", default=None)


@contextmanager
def held_by(hold: FleetHold | None, name: str) -> Iterator[None]:
    """The release of NAME inside this block waits past its bake for HOLD's decision (no HOLD: it does not)."""
    token = _HOLD.set((hold, name) if hold is not None else None)
    try:
        yield
    finally:
        _HOLD.reset(token)


def hold_of(name: str) -> FleetHold | None:
    """The atomic fleet's hold over the release of NAME running in this context, if any."""
    found = _HOLD.get()
    return found[0] if found is not None and found[1] == name else None


# Fleet children whose runs are being created in this process at once. Measured, twenty children at a
# realistic time scale on SQLite: all at once 3.32x one service's wall, one at a time 1.60x (a 503's
# backoff held up every child behind it), four at a time 1.40x; small fleets are not held up at all.
CREATIONS = 4
_CREATING = threading.Semaphore(CREATIONS)
_LET_GO: ContextVar[Callable[[], None] | None] = ContextVar("ecs_pipeline_child_creation", default=None)


@contextmanager
def creation_turn() -> Iterator[None]:
    """The child run started in this block is created while at most CREATIONS - 1 other fleet children
    of this process are.

    Prefect's server creates a flow run in a deferred transaction; on SQLite, runs created at once make
    it answer 503 ("database is locked", at once, without waiting), and its client backs off 2, 4,
    8 s: twenty children started together began over half a minute. The next child may be created
    once this one's body begins (``child_created``), or once the block ends, however it ends.
    """
    _CREATING.acquire()
    held = [True]

    def let_go() -> None:
        if held[0]:
            held[0] = False
            _CREATING.release()

    token = _LET_GO.set(let_go)
    try:
        yield
    finally:
        _LET_GO.reset(token)
        let_go()


def child_created() -> None:
    """A release's first step: when it is a fleet child, the fleet's next child may be created."""
    let_go = _LET_GO.get()
    if let_go is not None:
        let_go()


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
    ended_on: str = ""  # what the service runs after the fleet, when the fleet read it


@dataclass
class FleetSummary:
    """What the fleet summary artifact says: one line per service, then the totals."""

    results: list[ServiceResult] = field(default_factory=list)
    max_parallel: int = 1
    stop_on_first_failure: bool = False
    atomic: bool = False

    def count(self, outcome: Outcome) -> int:
        return sum(1 for r in self.results if r.outcome == outcome)

    @property
    def failed(self) -> list[str]:
        return [r.service for r in self.results if r.outcome == "failed"]

    @property
    def held(self) -> list[str]:
        return [r.service for r in self.results if r.outcome == "held"]

    def named(self, outcome: Outcome) -> list[str]:
        return [r.service for r in self.results if r.outcome == outcome]

    def aftermath(self) -> str:
        """After a failure: which service failed and why, and where the others are (empty when none failed)."""
        failed = [r for r in self.results if r.outcome == "failed"]
        if not failed:
            return ""
        first = next((r for r in failed if not r.reason.startswith("did not go back")), failed[0])
        why = f"{first.service} failed ({first.state}: {first.reason[:200] or 'no reason given'})"
        deployed = [r.service for r in self.results if r.outcome == "ok" and r.state == "Deployed"]
        if self.atomic:
            back = self.named("reverted")
            words = [f"atomic: {why}"]
            if back:
                words.append(f"{', '.join(back)} went back to what they ran before the fleet")
            if deployed:
                words.append(f"{', '.join(deployed)} could not go back and stay on the new version")
            return "; ".join(words)
        if deployed:
            return f"not atomic: {why}; {', '.join(deployed)} stay on the new version"
        return why

    def headline(self) -> str:
        n = len(self.results)
        parts = [f"{self.count('ok')} of {n} deployed or unchanged"]
        if self.failed:
            parts.append(f"failed: {', '.join(self.failed)}")
        if self.count("skipped"):
            parts.append(f"{self.count('skipped')} gave way")
        if self.held:
            label = "held after the first failure" if self.stop_on_first_failure and not self.atomic else "held"
            parts.append(f"{label}: {', '.join(self.held)}")
        if self.named("reverted"):
            parts.append(f"went back with the fleet: {', '.join(self.named('reverted'))}")
        return "; ".join(parts)

    def markdown(self) -> str:
        how = f"waves of {self.max_parallel}" + (", stop on first failure" if self.stop_on_first_failure else "")
        how += ", atomic" if self.atomic else ""
        lines = [
            f"# Fleet release: {len(self.results)} services ({how})",
            "",
            f"**{self.headline()}**",
            "",
            *([self.aftermath(), ""] if self.aftermath() else []),
            "| service | wave | outcome | state | SHA | time | reason | ended on | run |",
            "|---|---|---|---|---|---|---|---|---|",
        ]
        for r in self.results:
            sha = r.sha[:12] if r.sha else "-"
            took = f"{r.seconds:.1f} s" if r.seconds is not None else "-"
            reason = r.reason.replace("|", "\\|").replace("\n", " ")[:300] or "-"
            lines.append(
                f"| {r.service} | {r.wave or '-'} | {r.outcome} | {r.state} | `{sha}` | {took} | {reason} "
                f"| {r.ended_on or '-'} | {r.flow_run_id or '-'} |"
            )
        return "\n".join(lines) + "\n"
