"""deploy-service: one release, from a commit to verified production traffic, or back."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from prefect import flow, get_run_logger
from prefect.client.schemas.objects import State
from prefect.runtime import flow_run
from prefect.states import Cancelled, Completed, Failed

from flows.skeleton import RollbackFailed, choose_strategy, reason_of, run_release
from tasks import release as stages
from tasks.aws import AwsClients
from tasks.interop import write_interop_files
from tasks.locks import StopWatch, service_lock
from tasks.models import ServiceConfig, find_service
from tasks.report import ReleaseSummary, ShiftProgress, emit
from tasks.runs import ensure_run_tags, superseded_by
from tasks.settings import Settings
from tasks.strategy import Outcome, Release
from tasks.waits import Aborted, abort_when


@flow(name="deploy-service", flow_run_name="deploy {service}", persist_result=True, log_prints=True)
def deploy_service(
    service: str, sha: str | None = None, force: bool = False, allow_older: bool = False
) -> State[Any]:
    """Detect, build, push, register, deploy green, verify, shift, bake, teardown blue.

    ALLOW_OLDER lets a person move production back to an older (or diverged) commit.
    """
    clients = AwsClients(Settings())
    cfg = find_service(service, clients.settings.deployments)
    summary = ReleaseSummary(service=cfg.name, strategy=cfg.strategy.type)
    run_id = flow_run.get_id()
    if run_id:
        ensure_run_tags(run_id, cfg.name, sha)
    stop = StopWatch(str(run_id) if run_id else None)
    with abort_when(stop), service_lock(cfg.name, stop.run_id, clients.settings.lock_stale_seconds) as held:
        stop.held = held
        git_cache = clients.settings.cache / "git"
        superseded = superseded_by(cfg.name, run_id, cfg=cfg, cache_dir=git_cache) if run_id else None
        if superseded:
            return Cancelled(name="Superseded", message=f"superseded by newer run {superseded}")
        try:
            return release(cfg, clients, summary, Request(sha, force, allow_older))
        except Aborted as exc:
            summary.outcome, summary.reason = "Cancelled", str(exc)
            summary.publish()
            emit(cfg.name, "cancelled", sha=summary.sha, reason=summary.reason, traffic=summary.traffic)
            return Cancelled(name="Cancelled", message=f"{exc}; {summary.traffic}")
        except BaseException as exc:
            if summary.outcome != "Rollback failed":
                summary.outcome, summary.reason = "Failed", summary.reason or reason_of(exc)
            summary.publish()
            emit(cfg.name, "failed", sha=summary.sha, reason=summary.reason, traffic=summary.traffic)
            if isinstance(exc, RollbackFailed) and isinstance(exc.interrupted_by, Aborted):
                # Prefect ends a Cancelling run only as Cancelled; the name and message say what is left.
                return Cancelled(name="Rollback failed", message=exc.message)
            raise


@dataclass(frozen=True)
class Request:
    """What the run was asked for: a commit (default: branch head), and how far it may go."""

    sha: str | None
    force: bool
    allow_older: bool


def release(cfg: ServiceConfig, clients: AwsClients, summary: ReleaseSummary, asked: Request) -> State[Any]:
    """The stages in order; the strategy is chosen once, before anything is built."""
    run = Release(cfg, clients, asked.sha or "", summary)
    strategy = choose_strategy(run)
    with summary.stage("reconcile"):
        found = strategy.reconcile()
    if found:
        summary.notes.append(f"left by an earlier run: {found.text}")
    with summary.stage("detect change"):
        target = stages.detect_change(cfg, clients, asked.sha)
    summary.sha, summary.previous_task_definition = target.sha, target.live.task_definition
    run.sha = target.sha
    if target.moves_back and not asked.allow_older:
        return not_newer_state(cfg.name, target, summary)
    if not target.changed and not asked.force:
        summary.task_definition = target.live.task_definition
        if found and found.direction == "forward":
            # An earlier run of this very commit died after green took production: it is done now.
            summary.outcome, summary.traffic = "Deployed", strategy.live_traffic
            summary.publish()
            finished = Outcome(found.task_definition, traffic=strategy.live_traffic)
            return outcome_state(cfg.name, target.sha, finished, [])
        summary.outcome = "No change"
        summary.publish()
        return Completed(name="No change", message=f"{cfg.name} already runs {target.sha[:7]}")
    if asked.allow_older and target.moves_back:
        summary.notes.append(f"allow_older: asked to go back ({target.ancestry} than live {target.live.sha})")
    emit(cfg.name, "started", sha=target.sha, strategy=cfg.strategy.type, flow_run=flow_run.get_id(),
         allow_older=asked.allow_older, ancestry=target.ancestry)
    with summary.stage("build"):
        built = stages.build(cfg, clients, target.sha)
    with summary.stage("push"):
        pushed = stages.push(cfg, clients, target.sha, built)
    with summary.stage("register task definition"):
        registered = stages.register(cfg, clients, target.sha, pushed.value)
    write_interop_files(cfg, pushed.value, clients.settings.artifacts_dir)
    done = [name for name, r in (("build", built), ("push", pushed), ("register", registered)) if r.done]
    summary.image, summary.task_definition = pushed.value, registered.value
    run.task_definition = registered.value
    outcome = run_release(strategy, run, ShiftProgress(cfg.name))
    summary.notes.append(f"work done in this run: {', '.join(done) or 'none (all found done)'}")
    summary.publish()
    return outcome_state(cfg.name, target.sha, outcome, done)


def not_newer_state(service: str, target: stages.Target, summary: ReleaseSummary) -> State[Any]:
    """A triggered release never moves production back: refused before anything changes."""
    how = "older than" if target.ancestry == "older" else "not a descendant of"
    reason = (
        f"{target.sha[:12]} is {how} the live commit {str(target.live.sha)[:12]}; going back is explicit: "
        f"ecs-pipeline deploy {service} --sha {target.sha[:12]} --allow-older (or ecs-pipeline rollback {service})"
    )
    summary.outcome, summary.reason = "Not newer than live", reason
    summary.publish()
    emit(service, "refused", sha=target.sha, live=target.live.sha, ancestry=target.ancestry, reason=reason)
    get_run_logger().warning("Not newer than live: %s", reason)
    return Cancelled(name="Not newer than live", message=reason)


def outcome_state(service: str, sha: str, outcome: Outcome, done: list[str]) -> State[Any]:
    """The flow's final state in words a person understands; the data stays in the result."""
    data = {"service": service, "sha": sha, "done": done, **outcome.as_dict()}
    if outcome.rolled_back:
        emit(service, "rolled-back", sha=sha, reason=outcome.reason)
        get_run_logger().error("Rolled back: %s", outcome.reason)
        return Failed(name="Rolled back", message=f"Rolled back: {outcome.reason}", data=data)
    emit(service, "succeeded", sha=sha, task_definition=outcome.task_definition)
    return Completed(name="Deployed", message=f"{service}@{sha[:7]} serves 100% of production", data=data)
