"""deploy-service: one release, from a commit to verified production traffic, or back."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from prefect import flow, get_run_logger
from prefect.client.schemas.objects import State
from prefect.runtime import flow_run
from prefect.states import Cancelled

from tasks.aws.clients import AwsClients
from tasks.aws.ecs import LiveRelease
from tasks.build.codepipeline_files import write_interop_files
from tasks.config.models import ServiceConfig, find_service
from tasks.core.errors import PipelineError
from tasks.core.report import ReleaseSummary, ShiftProgress, emit
from tasks.core.settings import Settings
from tasks.core.waits import Aborted, abort_when
from tasks.release import stages
from tasks.release.contract import LoadBalanced, Outcome, Reconciled, Release, Steps
from tasks.release.locks import StopWatch, commit_of_run, service_lock
from tasks.release.outcome import final_state, flow_run_name, name_run, quiet_expected_failures, update_live
from tasks.release.runs import ensure_run_tags, superseded_by
from tasks.release.skeleton import RollbackFailed, choose_strategy, reason_of, run_release

quiet_expected_failures()


@flow(name="deploy-service", flow_run_name=flow_run_name, persist_result=True, log_prints=True)
def deploy_service(
    service: str, sha: str | None = None, force: bool = False, allow_older: bool = False
) -> State[Any]:
    """Detect, build, push, register, deploy green, verify, shift, bake, teardown blue.

    ALLOW_OLDER lets a person move production back to an older (or diverged) commit.
    """
    clients = AwsClients(Settings())
    try:
        cfg = find_service(service, clients.settings.deployments)
    except PipelineError as exc:  # a broken file: refused before any AWS or Docker call
        get_run_logger().error("Failed: %s", exc)
        return final_state("Failed", str(exc))
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
            return final_state("Superseded", f"by newer run {superseded}")
        try:
            return release(cfg, clients, summary, Request(sha, force, allow_older), held.took_over_from)
        except Aborted as exc:
            summary.outcome, summary.reason = "Cancelled", str(exc)
            conclude(summary)
            emit(cfg.name, "cancelled", sha=summary.sha, reason=summary.reason, traffic=summary.traffic)
            return final_state("Cancelled", f"{exc}; {summary.traffic}")
        except BaseException as exc:
            if summary.outcome != "Rollback failed":
                summary.outcome, summary.reason = "Failed", summary.reason or reason_of(exc)
            conclude(summary)
            emit(cfg.name, "failed", sha=summary.sha, reason=summary.reason, traffic=summary.traffic)
            if not isinstance(exc, PipelineError):
                raise  # a bug or an interruption keeps its traceback
            get_run_logger().error("%s: %s", summary.outcome, summary.reason)
            state = final_state(summary.outcome, f"{summary.reason} ({summary.traffic})")
            if isinstance(exc, RollbackFailed) and isinstance(exc.interrupted_by, Aborted):
                # Prefect ends a Cancelling run only as Cancelled (a Failed is refused and the run
                # stays Cancelling): the same outcome and message, in a Cancelled state.
                return Cancelled(message=state.message)
            return state


def conclude(summary: ReleaseSummary, live: LiveRelease | None = None) -> None:
    """Publish the release summary and the service's live view; reporting never hides the outcome."""
    summary.publish()
    try:
        update_live(summary, live)
    except Exception as exc:  # noqa: BLE001 - the release's outcome matters more than its live view
        get_run_logger().warning("live view of %s not updated: %s", summary.service, reason_of(exc))


@dataclass(frozen=True)
class Request:
    """What the run was asked for: a commit (default: branch head), and how far it may go."""

    sha: str | None
    force: bool
    allow_older: bool


def release(
    cfg: ServiceConfig, clients: AwsClients, summary: ReleaseSummary, asked: Request, dead_run: str | None = None
) -> State[Any]:
    """The stages in order; the strategy is chosen once, before anything is built.

    DEAD_RUN is the run this one took the service's slot from (it had stopped), if any.
    """
    run = Release(cfg, clients, asked.sha or "", summary)
    strategy = choose_strategy(run)
    with summary.stage("reconcile"):
        found = strategy.reconcile()
    if found:
        summary.notes.append(f"found in flight (an earlier run or another tool): {found.text}")
    with summary.stage("detect change"):  # the service as chosen, unless reconcile just changed it
        target = stages.detect_change(cfg, clients, asked.sha, None if found else run.service)
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
    with summary.stage("build"):
        built = stages.build(cfg, clients, target.sha, asked.force, stages.repository_uri(cfg, target.live))
    summary.notes.extend(built.notes)
    with summary.stage("push"):
        pushed = stages.push(cfg, clients, target.sha, built, asked.force)
    with summary.stage("register task definition"):
        registered = stages.register(cfg, clients, target.sha, pushed.value, target.live.family_latest)
    write_interop_files(cfg, pushed.value, clients.settings.artifacts_dir)
    done = [name for name, r in (("build", built), ("push", pushed), ("register", registered)) if r.done]
    summary.image, summary.task_definition = pushed.value, registered.value
    run.task_definition = registered.value
    outcome = run_release(strategy, run, ShiftProgress(cfg.name))
    summary.notes.append(f"work done in this run: {', '.join(done) or 'none (all found done)'}")
    return outcome_state(summary, outcome, done, target.live)


def unchanged_state(
    service: str, strategy: Steps, summary: ReleaseSummary, target: stages.Target,
    found: Reconciled | None, dead_run: str | None,
) -> State[Any] | None:
    """Production already runs the commit: "No change", or the end of a dead run's release of it.

    A dead run of this very commit that got production onto it finished everything but saying so
    (killed in its teardown). Blue/green strategies verified green before production moved: the
    release is Deployed now. Rolling verifies after: None, so the release runs on (resumes the
    rollout, checks production, rolls back if they fail).
    """
    died = commit_of_run(dead_run)
    unfinished = bool(died) and target.sha.startswith(str(died))
    summary.task_definition = target.live.task_definition
    if (found and found.direction == "forward") or (unfinished and isinstance(strategy, LoadBalanced)):
        td = found.task_definition if found else str(target.live.task_definition)
        if not found:
            summary.notes.append(f"run {dead_run} of this commit stopped after production moved: finished its release")
        summary.outcome, summary.traffic = "Deployed", strategy.live_traffic
        summary.image, summary.task_definition = target.live.image, td
        return outcome_state(summary, Outcome(td, traffic=strategy.live_traffic), [], target.live)
    if unfinished:
        summary.notes.append(f"run {dead_run} of this commit stopped before production was verified: checked again")
        return None
    summary.outcome = "No change"
    conclude(summary, target.live)
    return final_state("No change", f"{service} already runs {target.sha[:7]}")


def not_newer_state(service: str, target: stages.Target, summary: ReleaseSummary) -> State[Any]:
    """A triggered release never moves production back: refused before anything changes."""
    how = "older than" if target.ancestry == "older" else "not a descendant of"
    reason = (
        f"{target.sha[:12]} is {how} the live commit {str(target.live.sha)[:12]}; going back is explicit: "
        f"ecs-pipeline deploy {service} --sha {target.sha[:12]} --allow-older (or ecs-pipeline rollback {service})"
    )
    summary.outcome, summary.reason = "Not newer than live", reason
    conclude(summary, target.live)
    emit(service, "refused", sha=target.sha, live=target.live.sha, ancestry=target.ancestry, reason=reason)
    get_run_logger().warning("Not newer than live: %s", reason)
    return final_state("Not newer than live", reason)


def outcome_state(summary: ReleaseSummary, outcome: Outcome, done: list[str], live: LiveRelease) -> State[Any]:
    """The flow's final state: a built-in state, the outcome and its reason leading the message."""
    service, sha = summary.service, str(summary.sha)
    if not outcome.rolled_back:
        summary.live_sha = sha
    conclude(summary, live)
    if outcome.rolled_back:
        emit(service, "rolled-back", sha=sha, reason=outcome.reason, traffic=outcome.traffic)
        get_run_logger().warning("Rolled back: %s", outcome.reason)
        return final_state("Rolled back", f"{outcome.reason} ({outcome.traffic}, live {str(live.sha)[:7]})")
    emit(service, "succeeded", sha=sha, task_definition=outcome.task_definition)
    data = {"service": service, "sha": sha, "done": done, **outcome.as_dict()}
    return final_state("Deployed", f"{service}@{sha[:7]} serves 100% of production", data)
