"""The release skeleton: every strategy's release in one order, with one rollback.

    before production  (green up, verified; production untouched)
    approval gate      (when required and production has not moved)
    to production      (traffic steps, bake; alarms and green's health watched)
    after the bake     (blue removed)

Any failure (or cancellation) up to the end of the bake rolls back: production
100 % on the last verified version. A strategy supplies only its steps
(tasks/release/contract.py); which one is chosen once, from the live service's
deployment controller, in STRATEGIES.
"""

from __future__ import annotations

import signal
import threading
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from typing import Any

from prefect import get_run_logger

from tasks.aws import ecs as ecs_ops
from tasks.core.errors import DeployError, StrategyMismatch
from tasks.core.report import ShiftProgress, emit
from tasks.core.waits import abort_when
from tasks.release.approval import request_approval
from tasks.release.contract import Outcome, Release, Step, Steps
from tasks.strategies.codedeploy import CodeDeploySteps
from tasks.strategies.ecs_native import EcsNativeSteps, check_native, live_strategy
from tasks.strategies.rolling import RollingSteps
from tasks.strategies.task_sets import TaskSetSteps

# deploymentController.type (for ECS, with deploymentConfiguration.strategy) → (strategy.type, its steps).
# A new strategy is one row.
STRATEGIES: dict[str, tuple[str, Callable[[Release], Steps]]] = {
    "EXTERNAL": ("task-sets", TaskSetSteps),
    "CODE_DEPLOY": ("codedeploy", CodeDeploySteps),
    "ECS/ROLLING": ("rolling", RollingSteps),
    "ECS/BLUE_GREEN|LINEAR|CANARY": ("ecs-native", EcsNativeSteps),
}


def controller_key(service: dict[str, Any]) -> tuple[str, str]:
    """(row of STRATEGIES, how the service deploys in words) for the live service."""
    controller = ecs_ops.controller_type(service)
    if controller != "ECS":
        return controller, f"the {controller} deployment controller"
    strategy = live_strategy(service)
    row = next((k for k in STRATEGIES if k.startswith("ECS/") and strategy in k[4:].split("|")), f"ECS/{strategy}")
    return row, f"the ECS deployment controller with strategy {strategy}"


def choose_strategy(release: Release) -> Steps:
    """The steps for the live service's controller; a config asking for another fails before any change."""
    cfg = release.cfg
    service = ecs_ops.describe_service(release.clients.get("ecs"), cfg.ecs.cluster, cfg.ecs.service)
    release.service = service
    key, how = controller_key(service)
    expected, steps = STRATEGIES.get(key, (key, None))
    if cfg.strategy.type != expected:
        fix = (f"or run `ecs-pipeline migrate {cfg.name} --to ecs-native` to move it to ECS blue/green"
               if key == "CODE_DEPLOY" and cfg.strategy.type == "ecs-native"
               else f"or change the service to the controller for {cfg.strategy.type}")
        raise StrategyMismatch(
            f"strategy.type is {cfg.strategy.type} but service {cfg.ecs.service} uses {how}, which deploys "
            f"with {expected}; set strategy.type: {expected} {fix}",
            service=cfg.name,
        )
    if steps is None:
        raise StrategyMismatch(f"no strategy for {how}", service=cfg.name)
    if expected == "ecs-native":
        check_native(service, cfg)
    return steps(release)


def traffic_now(steps: Steps) -> str:
    try:
        return steps.where_traffic_is()
    except Exception as exc:  # noqa: BLE001 - reporting must not hide the rollback failure itself
        return f"production traffic unknown ({reason_of(exc)})"


def reason_of(exc: BaseException) -> str:
    return getattr(exc, "message", None) or f"{type(exc).__name__}: {exc}".rstrip(": ")


def run_release(steps: Steps, release: Release, progress: ShiftProgress) -> Outcome:
    """Deploy green, verify, (approve,) shift, bake, teardown; roll back on any failure before teardown."""
    cfg, summary = release.cfg, release.summary

    def on_step(weight: int, **extra: Any) -> None:
        summary.traffic = f"{weight}% green"
        if weight < 100 or progress.id is not None:  # one step to 100 % (rolling) is no progress to show
            progress.update(float(weight))
        emit(cfg.name, "traffic-shifted", sha=release.sha, green_percent=weight, **extra)

    release.on_step = on_step
    try:
        run_steps(release, steps.before_production())
        if cfg.approval == "required" and steps.pauses_for_approval():
            with release.stage("approval"):
                # A person's answer is seen within 5 s (1 s in a fast rehearsal, where the canary is seconds long).
                every = max(1, round(release.clients.settings.scaled(5)))
                request_approval(cfg.name, summary.markdown(), cfg.approval_timeout_seconds,
                                 poll_interval_seconds=every)
        run_steps(release, steps.to_production())
    except BaseException as exc:
        # Catch everything (cancellation and SIGTERM too) only to put traffic back, then decide.
        outcome = roll_back(steps, release, exc)
        if outcome is None or not isinstance(exc, Exception):
            raise
        return outcome
    run_steps(release, steps.after_bake())
    summary.outcome, summary.traffic = "Deployed", steps.live_traffic
    return Outcome(release.task_definition, traffic=steps.live_traffic)


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


class RollbackFailed(DeployError):
    """Production is left split; ``interrupted_by`` is what the rollback was for (a cancel, a failure)."""

    interrupted_by: BaseException | None = None


def roll_back(steps: Steps, release: Release, exc: BaseException) -> Outcome | None:
    """Production back on the last verified version; None when the failure had moved nothing."""
    reason = reason_of(exc)
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
            loud.interrupted_by = exc
            raise loud from failed
    if result is None:
        return None
    summary.outcome, summary.reason, summary.traffic = "Rolled back", result.reason, result.traffic
    return Outcome(release.task_definition, rolled_back=True, reason=result.reason, traffic=result.traffic)
