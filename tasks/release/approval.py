"""A person's go/no-go before production traffic moves.

Two ways to wait, chosen by where the run runs:

- **Suspended** (a run of a deployment: ``ecs-pipeline serve``, workers, the UI,
  webhooks, polling). The run asks with a form (the release summary as its
  description), its state becomes *Suspended* and its process exits: no worker
  is held, for up to 14 days. The answer (``ecs-pipeline approve RUN`` or the
  UI's Resume) reschedules the run; it runs again from the start, each stage
  finds its work done (the image, the task definition, green beside blue, the
  service deployment at its PAUSE hook) and the gate finds the answer, keyed by
  the commit and the attempt, so a retried run asks again and another commit
  is never approved by this answer.
- **Paused** in the live process (a CLI run: no deployment to resume it).

A rejection or no answer in time raises ApprovalRejected, and the pipeline
rolls back: green never receives production traffic without a yes. A suspended
run cannot count its own deadline (nothing runs): ``answer_expired_approvals``,
which ``ecs-pipeline serve`` runs, answers "no" once ``approval_timeout_seconds``
has passed, and the run rolls back as on a rejection. Prefect itself fails a
suspended run ``SUSPEND_GRACE_SECONDS`` later, should nothing sweep; the
service's next release then reconciles the green it left.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from uuid import UUID

from prefect import get_run_logger, task
from prefect.cache_policies import NO_CACHE
from prefect.client.orchestration import SyncPrefectClient, get_client
from prefect.client.schemas.filters import (
    FlowFilter,
    FlowFilterName,
    FlowRunFilter,
    FlowRunFilterState,
    FlowRunFilterStateName,
)
from prefect.client.schemas.objects import FlowRun
from prefect.context import FlowRunContext
from prefect.exceptions import FlowPauseTimeout, NotPausedError
from prefect.flow_runs import pause_flow_run, resume_flow_run, suspend_flow_run
from prefect.input import RunInput
from prefect.input.run_input import keyset_from_base_key
from prefect.states import Running

from tasks.config.models import ServiceConfig
from tasks.core.errors import ApprovalRejected, ConfigError
from tasks.core.report import emit

# How long each strategy's AWS side holds green at the gate, in seconds (None: the flow holds it itself).
# ECS-native: the PAUSE hook, DeploymentLifecycleHookDuration in botocore's ECS model, "min": 1, "max": 20160
# minutes (14 days). CodeDeploy: the deployment waits at Ready for deploymentReadyOption.waitTimeInMinutes, then
# "the deployment status is changed to Stopped" (API_DeploymentReadyOption); the API reference gives no maximum,
# its console offers up to 2 days and CodeDeploy documents "The maximum setting is 2880 minutes (2 days)" for the
# group's other wait (terminationWaitTimeInMinutes): the least convenient reading, 2880 minutes.
HOLD_LIMITS: dict[str, tuple[int, str]] = {
    "ecs-native": (20160 * 60, "ECS's PAUSE hook (timeoutInMinutes) holds a service deployment at most 20160 "
                               "minutes (14 days)"),
    "codedeploy": (2880 * 60, "CodeDeploy holds a blue/green deployment at Ready at most 2880 minutes (2 days: "
                              "deploymentReadyOption.waitTimeInMinutes)"),
}
SUSPEND_GRACE_SECONDS = 3600  # Prefect fails an unanswered suspended run this long after its approval deadline
DEPLOY_FLOW = "deploy-service"
IN_PROCESS = "waiting in this process: a CLI run has no deployment to resume; use serve/workers for long approvals"


class ApprovalInput(RunInput):
    """The answer a person gives to a waiting release."""

    approve: bool
    comment: str = ""


def check_approval_window(cfg: ServiceConfig) -> None:
    """Refuse, before any AWS call, an approval wait longer than the strategy's AWS side can hold green."""
    if cfg.approval != "required":
        return
    limit = HOLD_LIMITS.get(cfg.strategy.type)
    if limit is not None and cfg.approval_timeout_seconds > limit[0]:
        raise ConfigError(
            f"{cfg.name}: approval_timeout_seconds is {cfg.approval_timeout_seconds}, longer than strategy "
            f"{cfg.strategy.type} can wait: {limit[1]}; set approval_timeout_seconds to {limit[0]} or less",
            service=cfg.name,
        )


def can_suspend(run: FlowRun) -> bool:
    """A run of a deployment that is no subflow: Prefect can reschedule it once answered."""
    return run.deployment_id is not None and run.parent_task_run_id is None


def request_approval(
    service: str,
    summary_markdown: str,
    timeout_seconds: int,
    *,
    poll_interval_seconds: int = 5,
    revision: str | None = None,
) -> ApprovalInput:
    """Wait for a person's answer (suspended when the run can be, else paused); raise unless it is yes.

    Suspending raises Prefect's Pause on the first pass (the process exits); the resumed run gets the answer.
    """
    context = FlowRunContext.get()
    if context is None or context.flow_run is None:
        raise RuntimeError("request_approval must be called inside a flow run")
    if not can_suspend(context.flow_run):
        return wait_in_process(service, summary_markdown, timeout_seconds, poll_interval_seconds, revision)
    answer = wait_suspended(service, summary_markdown, timeout_seconds, revision)
    return answered(service, answer, revision)


def wait_suspended(service: str, summary_markdown: str, timeout_seconds: int, revision: str | None) -> ApprovalInput:
    """Suspend the run for the answer: None comes back only on the resumed run, with the answer."""
    context = FlowRunContext.get()
    assert context is not None and context.flow_run is not None
    run_id = context.flow_run.id
    sha = pin_commit(run_id, revision)
    key = f"approval-{sha[:12] if sha else 'head'}-{context.flow_run.run_count}"
    if key in (context.flow_run.empirical_policy.pause_keys or set()):
        # The resumed run: its answer is stored under the suspension's keyset (what suspend_flow_run would
        # load after the server refused a second suspension of the same key, without its "Suspending" line).
        get_run_logger().info("Answered while suspended; the release goes on from the approval gate")
        loaded = ApprovalInput.load(keyset_from_base_key(f"suspended-{key}"))
        assert isinstance(loaded, ApprovalInput), "called from a sync flow: loaded, not a coroutine"
        return loaded
    form = ApprovalInput.with_initial_data(description=summary_markdown, approve=False)
    emit(service, "approval-requested", sha=sha, flow_run=str(run_id), timeout_seconds=timeout_seconds,
         waits="suspended")
    get_run_logger().info(
        "Suspending for approval of %s (run %s) for up to %d s: the process exits and frees its worker; "
        "`ecs-pipeline approve %s` or Resume in the UI reschedules the run", service, run_id, timeout_seconds, run_id)
    answer = suspend_flow_run(wait_for_input=form, timeout=timeout_seconds + SUSPEND_GRACE_SECONDS, key=key)
    return answer


def pin_commit(run_id: UUID, revision: str | None) -> str | None:
    """The commit this run releases, written into its ``sha`` parameter: the resumed run releases exactly the
    commit that was approved, even when the branch has moved on meanwhile."""
    with get_client(sync_client=True) as client:
        run = client.read_flow_run(run_id)
        sha = revision or next((t.split(":", 1)[1] for t in run.tags if t.startswith("sha:")), None)
        params = dict(run.parameters or {})
        if sha and params.get("sha") != sha:
            params["sha"] = sha
            client.update_flow_run(run_id, parameters=params)
    return sha


@task(name="approval", task_run_name="approval {service}", cache_policy=NO_CACHE, persist_result=False)
def answered(service: str, answer: ApprovalInput, revision: str | None = None) -> ApprovalInput:
    """The answer a suspended run came back with: a node of the run's graph, failed when it is no."""
    return judge(service, answer, revision)


@task(
    name="approval",
    task_run_name="approval {service}",
    cache_policy=NO_CACHE,
    persist_result=False,
    log_prints=True,
)
def wait_in_process(
    service: str,
    summary_markdown: str,
    timeout_seconds: int,
    poll_interval_seconds: int = 5,
    revision: str | None = None,
) -> ApprovalInput:
    """Pause the current flow run until someone answers, in this process.

    A task of its own, so the gate is a node in the run's graph: a person sees
    where the release waits, for how long, and (failed) that the answer was no.
    Never cached: a retried run asks again.
    """
    context = FlowRunContext.get()
    assert context is not None and context.flow_run is not None
    run_id = context.flow_run.id
    logger = get_run_logger()
    logger.warning("%s", IN_PROCESS)  # a long approval holds this process (and its terminal) throughout
    logger.info("Waiting up to %d s for approval of %s (run %s)", timeout_seconds, service, run_id)
    form = ApprovalInput.with_initial_data(description=summary_markdown, approve=False)
    emit(service, "approval-requested", sha=revision, flow_run=str(run_id), timeout_seconds=timeout_seconds,
         waits="paused")
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
    return judge(service, answer, revision)


def judge(service: str, answer: ApprovalInput, revision: str | None) -> ApprovalInput:
    if not answer.approve:
        note = f": {answer.comment}" if answer.comment else ""
        raise ApprovalRejected(f"Release rejected{note}", service=service, revision=revision)
    note = f" ({answer.comment})" if answer.comment else ""
    get_run_logger().info("Approved%s", note)
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
    """Answer a run waiting in request_approval, paused or suspended (what the CLI's ``approve`` does)."""
    resume_flow_run(UUID(str(flow_run_id)), run_input={"approve": approve, "comment": comment})


def approval_deadline(run: FlowRun) -> datetime | None:
    """When a suspended release's approval runs out (Prefect's own timeout is the grace later)."""
    state = run.state
    if state is None or state.name != "Suspended" or state.state_details.pause_timeout is None:
        return None
    timeout: datetime = state.state_details.pause_timeout
    return timeout - timedelta(seconds=SUSPEND_GRACE_SECONDS)


def answer_expired_approvals(client: SyncPrefectClient, now: datetime | None = None) -> list[str]:
    """Answer "no" for each suspended release whose approval deadline has passed; returns their run ids.

    The answer reschedules the run: it runs again, finds the "no", and rolls back (green removed, production
    untouched), ending Rolled back with the reason.
    """
    now = now or datetime.now(UTC)
    suspended = client.read_flow_runs(
        flow_filter=FlowFilter(name=FlowFilterName(any_=[DEPLOY_FLOW])),
        flow_run_filter=FlowRunFilter(state=FlowRunFilterState(name=FlowRunFilterStateName(any_=["Suspended"]))),
        limit=200,
    )
    answered_ids: list[str] = []
    for run in suspended:
        deadline = approval_deadline(run)
        if deadline is None or deadline > now or run.state is None:
            continue
        waited = round((deadline - run.state.timestamp).total_seconds())
        comment = f"no approval within {waited} s (approval_timeout_seconds); not releasing"
        try:
            approve_run(run.id, approve=False, comment=comment)
        except (NotPausedError, FlowPauseTimeout, RuntimeError):
            continue  # answered meanwhile, or already past Prefect's own timeout
        answered_ids.append(str(run.id))
    return answered_ids
