"""The release skeleton: every release, whatever its strategy, in one order with one rollback.

    check permissions         the caller may do what the deploy policy grants (IAM's simulation)
    reconcile                 what a dead run left, brought to one verified version
    detect change             the commit against the live one; refused when not newer
    build, push, register     the image and its task definition (found done: skipped)
    ── rollback boundary: a failure or cancellation from here to the end of the bake
       puts production 100 % back on the last verified version ──
    deploy green, verify      the strategy's before_production; production untouched
    migrate                   the service's migration task (tasks/release/migration.py), when it has one
    wave migrations           in a fleet's wave: until the other services passed theirs (fleet_plan.WaveGate)
    approval                  when required and production has not moved
    shift traffic, bake       the strategy's to_production; alarms and green's health watched
    held for the fleet        in an atomic fleet: blue still warm, until the fleet says go on or go back
                              (going back is this same rollback: fleet_plan.FleetHold)
    ── past the bake (and the fleet's word) nothing rolls back: green serves and is verified ──
    teardown blue             the strategy's after_bake

``release`` reads in that order. A strategy supplies only its steps
(tasks/release/contract.py); the flow hands in the chooser that picks them
from the live service (choose.py in the strategies room). ``roll_back_in_flight`` is
the same rollback for ``ecs-pipeline rollback``.
"""

from __future__ import annotations

import signal
import threading
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

from prefect import get_run_logger
from prefect.client.schemas.objects import State
from prefect.exceptions import Pause
from prefect.runtime import flow_run

from tasks.aws.clients import AwsClients
from tasks.build.codepipeline_files import hand_over_live
from tasks.config.models import ServiceConfig
from tasks.core.errors import AccessDenied, DeployError, RollbackFailed, reason_of
from tasks.core.report import ReleaseSummary, ShiftProgress, emit
from tasks.core.waits import abort_when
from tasks.release import migration, stages
from tasks.release.approval import request_approval
from tasks.release.contract import Chooser, Outcome, Reconciled, Release, Step, Steps, with_group
from tasks.release.fleet_plan import hold_of, wave_of
from tasks.release.outcome import name_run, not_newer_state, outcome_state, unchanged_state
from tasks.release.permission_preflight import Verdict, check_permissions, explain_denial


@dataclass(frozen=True)
class Request:
    """What the run was asked for: a commit (default: branch head), and how far it may go."""

    sha: str | None
    force: bool
    allow_older: bool
    task_definition: str | None = None  # a revision to put live as it is (a manifest's), when it runs the image


def release(
    cfg: ServiceConfig, clients: AwsClients, summary: ReleaseSummary, asked: Request, choose: Chooser,
    dead_run: str | None = None, permissions: Verdict | None = None,
) -> State[Any]:
    """One release, stage by stage; DEAD_RUN is the run this one took the service's slot from, if any.

    PERMISSIONS: the permission check's verdict, asked ahead (``asked_ahead``); None: asked now.
    A refused AWS call ends it with the generator's statement for it in the reason.
    """
    try:
        return stages_in_order(cfg, clients, summary, asked, choose, dead_run, permissions)
    except AccessDenied as exc:
        explained = explain_denial(exc, cfg, clients)
        if explained is exc:
            raise
        raise explained from exc


def stages_in_order(
    cfg: ServiceConfig, clients: AwsClients, summary: ReleaseSummary, asked: Request, choose: Chooser,
    dead_run: str | None, permissions: Verdict | None = None,
) -> State[Any]:
    migration.check_migration(cfg)  # its container logs where the run can read it: refused before any read
    with summary.stage("check permissions"):  # before anything is read for the release, let alone changed
        skipped = permissions() if permissions is not None else check_permissions(cfg, clients)
    if skipped:
        summary.notes.append(skipped)
    run = Release(cfg, clients, asked.sha or "", summary)
    strategy = choose(run)  # once, before anything is built
    with summary.stage("reconcile"):
        found = strategy.reconcile()
    if found:
        summary.notes.append(f"found in flight (an earlier run or another tool): {found.text}")
    with summary.stage("detect change"):  # the service as chosen, unless reconcile just changed it
        target = stages.detect_change(cfg, clients, asked.sha, None if found else run.service)
    ended = admit(run, strategy, target, asked, found, dead_run)
    if (found and found.direction == "forward") or (ended is not None and summary.outcome == "Deployed"):
        hand_over(run, target.live.image)  # a dead run's release, finished now: it never handed it over
    if ended is not None:
        return ended  # not newer than live, or production already runs it
    with summary.stage("build"):
        built = stages.build(cfg, clients, target.sha, asked.force, stages.repository_uri(cfg, target.live))
    summary.notes.extend(built.notes)
    with summary.stage("push"):
        pushed = stages.push(cfg, clients, target.sha, built, asked.force)
    with summary.stage("register task definition"):
        registered = stages.register(cfg, clients, target.sha, pushed.value, target.live.family_latest,
                                     pinned=asked.task_definition)
    done = [name for name, r in (("build", built), ("push", pushed), ("register", registered)) if r.done]
    summary.image, summary.task_definition = pushed.value, registered.value
    run.task_definition = registered.value
    run.on_step = traffic_reporter(run, ShiftProgress(cfg.name))
    try:  # ── rollback boundary ──
        run_steps(run, strategy.before_production())  # deploy green, verify
        migrate(run, strategy)  # green up, production not moved: the migration gates the shift
        hold_for_wave(run)
        approve(run, strategy)
        run_steps(run, strategy.to_production())  # shift traffic, bake
        wait_for_fleet(run)  # an atomic fleet's: blue kept warm until every service passed
    except Pause:
        raise  # suspended for approval (tasks/release/approval.py): green waits beside blue for the resumed run
    except BaseException as exc:
        # Everything (cancellation and SIGTERM too) is caught only to put traffic back, then decided.
        failure = explain_denial(exc, cfg, clients)
        outcome = roll_back(strategy, run, reason_of(failure), exc)
        if outcome is not None:
            hand_over(run, target.live.image)  # put back on the version production went back to
        if outcome is None or not isinstance(exc, Exception):
            if failure is exc:
                raise
            raise failure from exc
    else:  # ── past the bake: no rollback ──
        hand_over(run, pushed.value)  # green serves and is verified: before teardown, which may fail
        run_steps(run, strategy.after_bake())  # teardown blue
        summary.outcome, summary.traffic = "Deployed", strategy.live_traffic
        outcome = Outcome(run.task_definition, traffic=strategy.live_traffic)
    summary.notes.append(f"work done in this run: {', '.join(done) or 'none (all found done)'}")
    return outcome_state(summary, outcome, done, target.live)


def admit(
    run: Release, strategy: Steps, target: stages.Target, asked: Request, found: Reconciled | None,
    dead_run: str | None,
) -> State[Any] | None:
    """After detect change: the run's final state when it ends here (not newer, no change), else None."""
    cfg, summary = run.cfg, run.summary
    summary.sha, summary.previous_task_definition = target.sha, target.live.task_definition
    summary.live_sha = target.live.sha
    run.sha = target.sha
    if not asked.sha:
        name_run(cfg.name, target.sha)
    if target.moves_back and not asked.allow_older:
        return not_newer_state(cfg.name, target, summary)
    if not target.changed and not asked.force:
        unchanged = unchanged_state(cfg.name, strategy, summary, target, found, dead_run)
        if unchanged is not None:
            return unchanged
    if asked.allow_older and target.moves_back:
        summary.notes.append(f"allow_older: asked to go back ({target.ancestry} than live {target.live.sha})")
    emit(cfg.name, "started", sha=target.sha, strategy=cfg.strategy.type, flow_run=flow_run.get_id(),
         allow_older=asked.allow_older, ancestry=target.ancestry)
    return None


def traffic_reporter(run: Release, progress: ShiftProgress) -> Callable[..., None]:
    """What a strategy calls as production moves: the summary's split, the progress artifact, an event."""

    def on_step(weight: int, **extra: Any) -> None:
        group = extra.get("target_group")  # green's target group, when the strategy has them
        run.summary.traffic = with_group(f"{weight}% green", group)
        if weight < 100 or progress.id is not None:  # one step to 100 % (rolling) is no progress to show
            progress.update(float(weight), group)
        emit(run.cfg.name, "traffic-shifted", sha=run.sha, green_percent=weight, **extra)

    return on_step


def migrate(run: Release, strategy: Steps) -> None:
    """The migration task of the new revision, when the service has one and production has not moved yet."""
    if run.cfg.migrate is None:
        return
    if not strategy.pauses_for_approval():
        run.note("migration not run: production already moved to this revision (a resumed release, whose "
                 "shift its migration gated)")
        return
    with run.stage("migrate"):
        run.note(migration.migrate(run.cfg, run.clients, run.task_definition, run.sha))


def hold_for_wave(run: Release) -> None:
    """In a fleet's wave: production moves only once every other service of the wave passed its migration."""
    name = run.cfg.name
    gate = wave_of(name)
    if gate is None:
        return
    others = gate.waiting_for(name)
    if not others:
        gate.arrive(name)
        return
    with run.stage("wave migrations"):
        log = get_run_logger()
        log.info("%s waits for %s to pass their migrations before production moves", name, ", ".join(others))
        gate.hold(name, log.info)


def wait_for_fleet(run: Release) -> None:
    """In an atomic fleet: baked, production on green, blue still warm and the lock held, the release waits
    for the fleet. Going back is a DeployError, so it takes the rollback every failure takes."""
    name = run.cfg.name
    hold = hold_of(name)
    if hold is None:
        return
    with run.stage("held for the fleet"):
        log = get_run_logger()
        log.info("%s passed its bake: blue stays up until every service of the fleet has passed", name)
        back = hold.wait(name, log.info)
    if back is not None:
        raise DeployError(back, service=name)


def approve(run: Release, strategy: Steps) -> None:
    """The approval gate, when the service requires one and production has not moved yet."""
    if run.cfg.approval != "required" or not strategy.pauses_for_approval():
        return
    with run.stage("approval"):
        # A person's answer is seen within 5 s (1 s in a fast rehearsal, where the canary is seconds long).
        every = max(1, round(run.clients.settings.scaled(5)))
        request_approval(run.cfg.name, run.summary.markdown(), run.cfg.approval_timeout_seconds,
                         poll_interval_seconds=every, revision=run.sha)


def hand_over(release: Release, image: str | None) -> None:
    """CodePipeline's hand-over files name IMAGE, what production serves now (tasks/build/codepipeline_files.py)."""
    hand_over_live(release.cfg, image, release.clients.settings.artifacts_dir)


def run_steps(release: Release, steps: Iterable[Step]) -> None:
    for name, step in steps:
        with release.stage(name):
            step()


@contextmanager
def sigterm_deferred() -> Iterator[None]:
    """A second SIGTERM (a runner's impatience) must not cut the rollback short: hold it until done."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    pending: list[int] = []
    previous = signal.signal(signal.SIGTERM, lambda signum, _frame: pending.append(signum))
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)
        if pending and callable(previous):
            previous(signal.SIGTERM, None)


def traffic_now(steps: Steps) -> str:
    try:
        return steps.where_traffic_is()
    except Exception as exc:  # noqa: BLE001 - reporting must not hide the rollback failure itself
        return f"production traffic unknown ({reason_of(exc)})"


def roll_back(steps: Steps, release: Release, reason: str, cause: BaseException | None = None) -> Outcome | None:
    """Production back on the last verified version; None when the failure had moved nothing.

    CAUSE: what the rollback is for (a failure, a cancel), kept on a RollbackFailed.
    """
    get_run_logger().warning("rolling back %s: %s", release.cfg.name, reason)
    summary = release.summary
    with release.stage("roll back"), abort_when(None), sigterm_deferred():
        try:
            result = steps.roll_back(reason)
        except Exception as failed:
            where = traffic_now(steps)
            summary.outcome, summary.traffic = "Rollback failed", where
            summary.reason = f"{reason}; then the rollback failed: {reason_of(failed)}"
            emit(release.cfg.name, "rollback-failed", sha=release.sha, reason=summary.reason, traffic=where)
            loud = RollbackFailed(
                f"ROLLBACK FAILED, {where}: {summary.reason}. The next release of {release.cfg.name} "
                "(or `ecs-pipeline rollback`) puts production back on the last verified version",
                service=release.cfg.name,
            )
            loud.interrupted_by = cause
            raise loud from failed
    if result is None:
        return None
    summary.outcome, summary.reason, summary.traffic = "Rolled back", result.reason, result.traffic
    return Outcome(release.task_definition, rolled_back=True, reason=result.reason, traffic=result.traffic)


def roll_back_in_flight(
    cfg: ServiceConfig, clients: AwsClients, summary: ReleaseSummary, choose: Chooser
) -> State[Any] | None:
    """``ecs-pipeline rollback``, under the service's lock: a release left half-way goes back the way a
    failing release does (the strategy's roll_back), with the same outcome, event and live view.

    None when nothing is in flight: production runs one verified version, and going back is a release.
    """
    run = Release(cfg, clients, "", summary)
    strategy = choose(run)
    with summary.stage("find in flight"):
        found = strategy.adopt_in_flight()
    if found is None:
        return None
    green = stages.release_of(cfg, clients, run.task_definition)
    run.sha = green.sha or ""
    summary.sha, summary.image, summary.task_definition = green.sha, green.image, run.task_definition
    summary.notes.append(f"found in flight: {found}")
    outcome = roll_back(strategy, run, f"asked for by `ecs-pipeline rollback {cfg.name}` while {found}")
    if outcome is None:
        return None
    live = stages.live_release(cfg, clients)
    hand_over(run, live.image)
    summary.live_sha, summary.previous_task_definition = live.sha, live.task_definition
    return outcome_state(summary, outcome, [], live)
