"""How a release's end looks in the Prefect UI: state, run name, tags, live view.

The UI's lists and filters (a deployment's default "All except scheduled", the
Runs page's "Failed") ask the API for Prefect's built-in state *names*, so a
run in a custom-named state ("Rolled back") is missing from them. Every run
therefore ends in a built-in state (Completed, Failed, Cancelled) whose
message leads with the outcome and its reason ("Rolled back: GET / returned
500 ..."), with a ``verdict:<slug>`` tag to search by. ``outcome_of`` reads
the outcome back from a state.

The tag's name is chosen for the lists: where a run's tags do not fit, the
UI (3.9) sorts them and shows the last ones (``+3`` hides the rest), its V2 UI
shows the first ones as stored. ``verdict:`` sorts after ``service:``,
``sha:`` and ``trigger:``, and the run stores it first, so both UIs show it
in every list row, also on the deployment page where one tag fits.
"""

from __future__ import annotations

import logging
from typing import Any
from uuid import UUID

from prefect.client.orchestration import get_client
from prefect.client.schemas.objects import State, StateType
from prefect.runtime import flow_run
from prefect.settings import PREFECT_UI_URL
from prefect.states import Cancelled, Completed, Failed

from tasks.aws.ecs import LiveRelease
from tasks.core.report import ReleaseSummary
from tasks.release.live_view import Failure, LiveRecord, now, publish_live, read_live
from tasks.release.runs import ensure_run_tags

OUTCOME_TYPES: dict[str, StateType] = {
    "Deployed": StateType.COMPLETED,
    "No change": StateType.COMPLETED,
    "Rolled back": StateType.FAILED,
    "Rollback failed": StateType.FAILED,
    "Failed": StateType.FAILED,
    "Cancelled": StateType.CANCELLED,
    "Superseded": StateType.CANCELLED,
    "Not newer than live": StateType.CANCELLED,
}
_MAKE = {StateType.COMPLETED: Completed, StateType.FAILED: Failed, StateType.CANCELLED: Cancelled}
# Messages of the Failed states this process returned on purpose (see ExpectedOutcomeFilter).
_EXPECTED: set[str] = set()
ENGINE_EXIT_LINE = "Engine execution exited with unexpected exception"


def outcome_of(state: State[Any] | None) -> str:
    """The release outcome a state carries: its message's lead, else the state's name."""
    if state is None:
        return "unknown"
    lead = (state.message or "").split(":", 1)[0]
    return lead if lead in OUTCOME_TYPES else str(state.name)


VERDICT = "verdict:"
_OLD_VERDICT = "outcome:"  # the tag's name before 2026-12; replaced when such a run is retried


def outcome_tag(outcome: str) -> str:
    return VERDICT + outcome.lower().replace(" ", "-")


def final_state(outcome: str, text: str, data: Any = None) -> State[Any]:
    """A built-in state with the outcome leading its message; the run gets the outcome's tag.

    A Failed or Cancelled state carries no data: the engine turns its result
    into an exception, and a dict there is an engine traceback in every log.
    """
    kind = OUTCOME_TYPES[outcome]
    message = f"{outcome}: {text}"
    if kind != StateType.COMPLETED:
        data = None
        _EXPECTED.add(message)
    tag_run(outcome_tag(outcome))
    state: State[Any] = _MAKE[kind](message=message, data=data)
    return state


def tag_run(*tags: str) -> None:
    """TAGS first (the V2 UI shows a run's first tags), replacing an earlier attempt's verdict."""
    run_id = flow_run.get_id()
    if not run_id:
        return
    with get_client(sync_client=True) as client:
        run = client.read_flow_run(UUID(str(run_id)))
        kept = [t for t in run.tags if not t.startswith((VERDICT, _OLD_VERDICT))]
        client.update_flow_run(run.id, tags=[*tags, *kept])


def flow_run_name() -> str:
    """``deploy sample-app@3356bf2`` once the commit is known, ``deploy sample-app`` before."""
    params = flow_run.get_parameters()
    sha = params.get("sha")
    return f"deploy {params.get('service')}" + (f"@{str(sha)[:7]}" if sha else "")


def name_run(service: str, sha: str) -> None:
    """Name and ``sha:`` tag the run once detect change resolved the commit (the branch head was asked for)."""
    run_id = flow_run.get_id()
    if run_id:
        ensure_run_tags(run_id, service, sha, name=f"deploy {service}@{sha[:7]}")


def current_run() -> str | None:
    """``name|url`` of the running flow run, for links in the live view."""
    run_id = flow_run.get_id()
    if not run_id:
        return None
    ui = (PREFECT_UI_URL.value() or "").rstrip("/")
    name = flow_run.get_name() or str(run_id)
    with get_client(sync_client=True) as client:  # the name may have changed since the run started
        name = client.read_flow_run(UUID(str(run_id))).name or name
    return f"{name}|{ui}/runs/flow-run/{run_id}" if ui else name


def update_live(summary: ReleaseSummary, live: LiveRelease | None) -> LiveRecord:
    """The service's live view after this outcome; what it was when nothing moved."""
    record = read_live(summary.service) or LiveRecord(summary.service)
    run = current_run()
    if summary.outcome == "Deployed":
        record.sha, record.image, record.task_definition = summary.sha, summary.image, summary.task_definition
        record.traffic, record.since, record.run = "100% of production", now(), run
    else:
        if live is not None and live.sha and live.sha != record.sha:
            # Put live before this pipeline, or by hand: the truth AWS tells wins over the record.
            record = LiveRecord(summary.service, live.sha, live.image, live.task_definition,
                                "100% of production", last_failure=record.last_failure)
        if OUTCOME_TYPES.get(summary.outcome) == StateType.FAILED or summary.outcome == "Cancelled":
            record.last_failure = Failure(summary.sha, summary.outcome, summary.reason or "-", run, now())
        if summary.traffic == "production on blue" and record.sha:
            record.traffic = "100% of production"  # this run's words for: the live release serves it all
        elif summary.traffic != "unchanged":  # a split a rollback could not undo, and the like
            record.traffic = summary.traffic
    publish_live(record)
    return record


class ExpectedOutcomeFilter(logging.Filter):
    """Drops the engine's traceback for a Failed state the flow returned on purpose.

    Prefect's engine resolves a deployment run's final state into its result
    and logs any exception that raises as "unexpected", traceback included;
    for a rollback that is the designed outcome, already logged in one line.
    """

    def filter(self, record: logging.LogRecord) -> bool:
        if record.msg != ENGINE_EXIT_LINE or not record.exc_info:
            return True
        return str(record.exc_info[1]) not in _EXPECTED


def quiet_expected_failures() -> None:
    logger = logging.getLogger("prefect.flow_runs")
    if not any(isinstance(f, ExpectedOutcomeFilter) for f in logger.filters):
        logger.addFilter(ExpectedOutcomeFilter())
