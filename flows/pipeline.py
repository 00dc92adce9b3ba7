"""deploy-service: one release, from a commit to verified production traffic, or back."""

from __future__ import annotations

from typing import Any
from uuid import UUID

from prefect import flow, get_run_logger
from prefect.client.orchestration import get_client
from prefect.client.schemas.objects import State
from prefect.exceptions import Pause
from prefect.runtime import flow_run
from prefect.states import Cancelled

from tasks.aws.clients import AwsClients
from tasks.config.models import ServiceConfig, find_service
from tasks.core import heap
from tasks.core.errors import PipelineError, RollbackFailed, reason_of
from tasks.core.report import ReleaseSummary, emit
from tasks.core.settings import Settings
from tasks.core.waits import Aborted, abort_when
from tasks.release.approval import check_approval_window
from tasks.release.fleet_plan import child_created
from tasks.release.locks import GaveWay, LooseLimit, Reserved, StopWatch, service_lock
from tasks.release.manifest import deployed_entry, record_release_manifest
from tasks.release.outcome import conclude, final_state, flow_run_name, outcome_of, quiet_expected_failures
from tasks.release.permission_preflight import Verdict, asked_ahead
from tasks.release.runs import commit_order_for, ensure_run_tags, queueing_mode, superseded_by, wins_over
from tasks.release.skeleton import Request, release
from tasks.strategies.choose import choose_strategy

quiet_expected_failures()


@flow(name="deploy-service", flow_run_name=flow_run_name, persist_result=True, log_prints=True)
def deploy_service(
    service: str, sha: str | None = None, force: bool = False, allow_older: bool = False,
    task_definition: str | None = None,
) -> State[Any]:
    """Detect, build, push, register, deploy green, verify, shift, bake, teardown blue.

    Args:
        service: The service to release: the `name` in its file under deployments/ (e.g. sample-app).
        sha: The commit to release, full or short. Empty: the head of the service's branch.
        force: Build and release even when production already runs this commit.
        allow_older: Allow moving production back to an older (or diverged) commit: an explicit step
            back, as `ecs-pipeline rollback` asks for. Without it a run never moves production back.
        task_definition: A task definition revision (ARN) to put live as it is, when it runs this commit's
            image (a release manifest's, `deploy --manifest`). Empty: the rendered task definition.
    """
    child_created()  # in a fleet: its next child's run may be created now
    heap.settle()
    clients = AwsClients(Settings())
    try:
        cfg = find_service(service, clients.settings.deployments)
        check_approval_window(cfg)
    except PipelineError as exc:  # a broken file: refused before any AWS or Docker call
        get_run_logger().error("Failed: %s", exc)
        return final_state("Failed", str(exc))
    clients = clients.for_service(cfg)
    summary = ReleaseSummary(service=cfg.name, strategy=cfg.strategy.type)
    run_id = flow_run.get_id()
    if run_id:
        ensure_run_tags(run_id, cfg.name, sha)
    stop = StopWatch(str(run_id) if run_id else None)
    try:
        # IAM is asked while the slot is taken; its verdict is acted on first thing under the slot
        with asked_ahead(cfg, clients) as permissions, abort_when(stop), service_lock(
                cfg.name, stop.run_id, clients.settings.lock_stale_seconds,
                reserved=toward_suspended(cfg, stop.run_id, clients)) as held:
            return locked_release(cfg, clients, summary, held, stop,
                                  Request(sha, force, allow_older, task_definition or None), permissions)
    except GaveWay as exc:
        return final_state("Superseded", f"by run {exc.holder}, waiting for approval of a newer commit")
    except LooseLimit as exc:  # another run releases the service: refused before any change, reported as one
        return stopped_by(exc, summary)


def locked_release(
    cfg: ServiceConfig, clients: AwsClients, summary: ReleaseSummary, held: Any, stop: StopWatch, asked: Request,
    permissions: Verdict | None = None,
) -> State[Any]:
    """The release, once the service's slot is held (or its reservation taken back by a resumed run)."""
    run_id, stop.held = stop.run_id, held
    superseded = superseded_by(cfg.name, run_id, cfg=cfg, cache_dir=clients.settings.cache / "git") if run_id else None
    if superseded:
        return final_state("Superseded", f"by newer run {superseded}")
    try:
        state = release(cfg, clients, summary, asked, choose_strategy, held.took_over_from, permissions)
    except Pause:
        raise  # suspended for approval: green waits beside blue for the resumed run, the slot stays reserved
    except BaseException as exc:  # noqa: BLE001 - stopped_by re-raises what is no release outcome
        return stopped_by(exc, summary)
    outcome = outcome_of(state)
    if outcome in ("Deployed", "Rolled back"):  # what production runs now, the slot still held
        served = deployed_entry(cfg, summary) if outcome == "Deployed" else None  # known: no AWS read
        record_release_manifest(cfg, clients, run_id, served=served)  # best-effort: a failed write is a warning
    return state


def toward_suspended(cfg: ServiceConfig, run_id: str | None, clients: AwsClients) -> Reserved:
    """What this run does when a run suspended for approval reserves the service.

    ``queueing: queue``: wait behind it. ``supersede`` (the default): the newer commit goes; an older or
    equal one gives way, a newer one ends the suspended run (Cancelled "Superseded by ...") and takes the
    service, and its reconcile removes the green the suspended run left (production never moved).
    """

    def decide(holder: str) -> str:
        if queueing_mode(cfg) == "queue" or not run_id:
            return "wait"
        order = commit_order_for(cfg, clients.settings.cache / "git")
        with get_client(sync_client=True) as client:
            mine, theirs = client.read_flow_run(UUID(run_id)), client.read_flow_run(UUID(holder))
            if wins_over(theirs, mine, order):
                return "give way"
            if not wins_over(mine, theirs, order):
                return "wait"
            get_run_logger().warning("superseding run %s, which waits for approval of an older commit", holder)
            client.set_flow_run_state(UUID(holder), Cancelled(message=f"Superseded by {run_id} while waiting for "
                                                                      "approval"), force=True)
        return "take"

    return decide


def traffic_note(traffic: str) -> str:
    """Where production is after a run that did not finish, in words that cannot be read as about the tests."""
    return "production unchanged" if traffic == "unchanged" else traffic


def stopped_by(exc: BaseException, summary: ReleaseSummary) -> State[Any]:
    """How a run ends that did not finish its release: cancelled, failed (rolled back or not), or a bug."""
    if isinstance(exc, Aborted):
        summary.outcome, summary.reason = "Cancelled", str(exc)
        conclude(summary)
        emit(summary.service, "cancelled", sha=summary.sha, reason=summary.reason, traffic=summary.traffic)
        return final_state("Cancelled", f"{exc}; {traffic_note(summary.traffic)}")
    if summary.outcome != "Rollback failed":
        summary.outcome, summary.reason = "Failed", summary.reason or reason_of(exc)
    conclude(summary)
    emit(summary.service, "failed", sha=summary.sha, reason=summary.reason, traffic=summary.traffic)
    if not isinstance(exc, PipelineError):
        raise exc  # a bug or an interruption keeps its traceback
    get_run_logger().error("%s: %s", summary.outcome, summary.reason)
    state = final_state(summary.outcome, f"{summary.reason} ({traffic_note(summary.traffic)})")
    if isinstance(exc, RollbackFailed) and isinstance(exc.interrupted_by, Aborted):
        # Prefect ends a Cancelling run only as Cancelled (a Failed is refused and the run
        # stays Cancelling): the same outcome and message, in a Cancelled state.
        return Cancelled(message=state.message)
    return state
