"""deploy-service: one release, from a commit to verified production traffic, or back."""

from __future__ import annotations

from typing import Any

from prefect import flow, get_run_logger
from prefect.client.schemas.objects import State
from prefect.runtime import flow_run
from prefect.states import Cancelled

from tasks.aws.clients import AwsClients
from tasks.config.models import find_service
from tasks.core import heap
from tasks.core.errors import PipelineError, RollbackFailed, reason_of
from tasks.core.report import ReleaseSummary, emit
from tasks.core.settings import Settings
from tasks.core.waits import Aborted, abort_when
from tasks.release.locks import StopWatch, service_lock
from tasks.release.outcome import conclude, final_state, flow_run_name, quiet_expected_failures
from tasks.release.runs import ensure_run_tags, superseded_by
from tasks.release.skeleton import Request, release
from tasks.strategies.choose import choose_strategy

quiet_expected_failures()


@flow(name="deploy-service", flow_run_name=flow_run_name, persist_result=True, log_prints=True)
def deploy_service(
    service: str, sha: str | None = None, force: bool = False, allow_older: bool = False
) -> State[Any]:
    """Detect, build, push, register, deploy green, verify, shift, bake, teardown blue.

    Args:
        service: The service to release: the `name` in its file under deployments/ (e.g. sample-app).
        sha: The commit to release, full or short. Empty: the head of the service's branch.
        force: Build and release even when production already runs this commit.
        allow_older: Allow moving production back to an older (or diverged) commit: an explicit step
            back, as `ecs-pipeline rollback` asks for. Without it a run never moves production back.
    """
    heap.settle()
    clients = AwsClients(Settings())
    try:
        cfg = find_service(service, clients.settings.deployments)
    except PipelineError as exc:  # a broken file: refused before any AWS or Docker call
        get_run_logger().error("Failed: %s", exc)
        return final_state("Failed", str(exc))
    clients = clients.for_service(cfg)
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
            asked = Request(sha, force, allow_older)
            return release(cfg, clients, summary, asked, choose_strategy, held.took_over_from)
        except BaseException as exc:  # noqa: BLE001 - stopped_by re-raises what is no release outcome
            return stopped_by(exc, summary)


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
