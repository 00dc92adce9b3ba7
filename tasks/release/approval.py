"""A person's go/no-go before production traffic moves.

The run pauses with a form (the release summary as its description) in the
Prefect UI; ``ecs-pipeline approve RUN`` or the UI's Resume button answers it.
A rejection or no answer in time raises ApprovalRejected, and the pipeline
rolls back: green never receives production traffic without a yes.
"""

from __future__ import annotations

from uuid import UUID

from prefect import get_run_logger, task
from prefect.cache_policies import NO_CACHE
from prefect.client.orchestration import get_client
from prefect.context import FlowRunContext
from prefect.exceptions import FlowPauseTimeout
from prefect.flow_runs import pause_flow_run, resume_flow_run
from prefect.input import RunInput
from prefect.states import Running

from tasks.core.errors import ApprovalRejected


class ApprovalInput(RunInput):
    """The answer a person gives to a paused release."""

    approve: bool
    comment: str = ""


@task(
    name="approval",
    task_run_name="approval {service}",
    cache_policy=NO_CACHE,
    persist_result=False,
    log_prints=True,
)
def request_approval(
    service: str,
    summary_markdown: str,
    timeout_seconds: int,
    *,
    poll_interval_seconds: int = 5,
    revision: str | None = None,
) -> ApprovalInput:
    """Pause the current flow run until someone approves; raise unless they do.

    A task of its own, so the gate is a node in the run's graph: a person sees
    where the release waits, for how long, and (failed) that the answer was no.
    Never cached: a retried run asks again.
    """
    context = FlowRunContext.get()
    if context is None or context.flow_run is None:
        raise RuntimeError("request_approval must be called inside a flow run")
    run_id = context.flow_run.id
    logger = get_run_logger()
    logger.info("Waiting up to %d s for approval of %s (run %s)", timeout_seconds, service, run_id)
    form = ApprovalInput.with_initial_data(description=summary_markdown, approve=False)
    try:
        answer = pause_flow_run(
            wait_for_input=form, timeout=timeout_seconds, poll_interval=poll_interval_seconds
        )
    except FlowPauseTimeout as exc:
        _resume_after_timeout(run_id)
        raise ApprovalRejected(
            f"No approval within {timeout_seconds} s; not releasing",
            service=service,
            revision=revision,
        ) from exc
    if not answer.approve:
        note = f": {answer.comment}" if answer.comment else ""
        raise ApprovalRejected(f"Release rejected{note}", service=service, revision=revision)
    note = f" ({answer.comment})" if answer.comment else ""
    logger.info("Approved%s", note)
    return answer


def _resume_after_timeout(flow_run_id: UUID) -> None:
    """Put a timed-out run back to Running.

    Otherwise Prefect turns the run's final state into "The flow was ... and
    never resumed", hiding the rollback's own outcome and reason.
    """
    with get_client(sync_client=True) as client:
        client.set_flow_run_state(
            flow_run_id, Running(message="Approval timed out; rolling back"), force=True
        )


def approve_run(flow_run_id: UUID | str, approve: bool, comment: str = "") -> None:
    """Answer a run paused by request_approval (what the CLI's ``approve`` does)."""
    resume_flow_run(UUID(str(flow_run_id)), run_input={"approve": approve, "comment": comment})
