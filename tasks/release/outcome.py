"""How a release ends: its final state in the Prefect UI, run name, tags, summary, events, live view.

The UI's lists and filters (a deployment's default "All except scheduled", the
Runs page's "Failed") ask the API for Prefect's built-in state *names*, so a
run in a custom-named state ("Rolled back") is missing from them. Every run
therefore ends in a built-in state (Completed, Failed, Cancelled) whose
message leads with the outcome and its reason ("Rolled back: GET / returned
500 ..."), with a ``verdict:<slug>`` tag to search by. ``outcome_of`` reads
the outcome back from a state.

The verdict is in the runs list too, where a state's message is not: the run's
name ends with it (``deploy sample-app@1a2b3c4 · rolled back``), and a failure
says which stage failed when that is what a person needs first ("Build failed:
...", "Push failed: ...", still the outcome "Failed" with its red state).

The tag's name is chosen for the lists: where a run's tags do not fit, the
UI (3.9) sorts them and shows the last ones (``+3`` hides the rest), its V2 UI
shows the first ones as stored. ``verdict:`` sorts after ``service:``,
``sha:`` and ``trigger:``, and the run stores it first, so both UIs show it
in every list row, also on the deployment page where one tag fits.
"""

from __future__ import annotations

import logging
from typing import Any

from prefect import get_run_logger
from prefect.client.orchestration import get_client
from prefect.client.schemas.objects import State, StateType
from prefect.runtime import flow_run
from prefect.settings import PREFECT_UI_URL
from prefect.states import Cancelled, Completed, Failed

from tasks.aws.ecs import LiveRelease
from tasks.core.errors import reason_of
from tasks.core.report import ReleaseSummary, emit
from tasks.release.contract import LoadBalanced, Outcome, Reconciled, Steps, group_of
from tasks.release.live_view import Failure, LiveRecord, now, publish_live, read_live
from tasks.release.locks import commit_of_run
from tasks.release.runs import ensure_run_tags, relabel_run, run_labels
from tasks.release.stages import Target

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
# A "Failed" release in the stage that tells a person where to look: the verdict's words.
FAILED_IN: dict[str, str] = {"build": "Build failed", "push": "Push failed"}
# verdict words -> the outcome they are (what a state's message leads with -> what outcome_of says)
VERDICTS: dict[str, str] = {o: o for o in OUTCOME_TYPES} | {words: "Failed" for words in FAILED_IN.values()}
NAME_MARK = " · "  # between a run's name and its verdict: ``deploy sample-app@1a2b3c4 · rolled back``
# The stage a run's release failed in, by flow run id: conclude records it, final_state words it.
_FAILED_STAGE: dict[str, str] = {}
# Messages of the Failed states this process returned on purpose (see ExpectedOutcomeFilter).
_EXPECTED: set[str] = set()
ENGINE_EXIT_LINE = "Engine execution exited with unexpected exception"


def outcome_of(state: State[Any] | None) -> str:
    """The release outcome a state carries: its message's lead ("Build failed" is a "Failed"), else the state's name."""
    if state is None:
        return "unknown"
    lead = (state.message or "").split(":", 1)[0]
    return VERDICTS.get(lead, str(state.name))


def reason_in(state: State[Any] | None) -> str:
    """What a state's message says after its verdict ("Rolled back: X" -> "X"); the whole message otherwise."""
    message = (state.message if state is not None else None) or ""
    lead, sep, rest = message.partition(": ")
    return rest if sep and lead in VERDICTS else message


def verdict_words(outcome: str, failed_stage: str | None = None) -> str:
    """The outcome in the words a person reads first: "Build failed" for a release that failed building."""
    if outcome == "Failed" and failed_stage in FAILED_IN:
        return FAILED_IN[failed_stage]
    return outcome


def verdict_run_name(name: str, verdict: str) -> str:
    """NAME with VERDICT at its end, in place of an earlier attempt's: ``deploy sample-app@1a2b3c4 · rolled back``."""
    return f"{release_name(name)}{NAME_MARK}{verdict.lower()}"


def release_name(name: str) -> str:
    """A run's name without its verdict (``deploy sample-app@1a2b3c4``), for a list with an outcome column."""
    return name.split(NAME_MARK, 1)[0]


VERDICT = "verdict:"
_OLD_VERDICT = "outcome:"  # the tag's name before 2026-12; replaced when such a run is retried


def outcome_tag(outcome: str) -> str:
    return VERDICT + outcome.lower().replace(" ", "-")


def final_state(outcome: str, text: str, data: Any = None) -> State[Any]:
    """A built-in state with the verdict leading its message; the run gets the verdict's tag and name.

    A Failed or Cancelled state carries no data: the engine turns its result
    into an exception, and a dict there is an engine traceback in every log.
    """
    kind = OUTCOME_TYPES[outcome]
    run_id = flow_run.get_id()
    verdict = verdict_words(outcome, _FAILED_STAGE.pop(str(run_id), None) if run_id else None)
    message = f"{verdict}: {text}"
    if kind != StateType.COMPLETED:
        data = None
        _EXPECTED.add(message)
    tag_run(outcome_tag(verdict), verdict=verdict)
    state: State[Any] = _MAKE[kind](message=message, data=data)
    return state


def tag_run(*tags: str, verdict: str | None = None) -> None:
    """TAGS first (the V2 UI shows a run's first tags), replacing an earlier attempt's verdict.

    VERDICT: also at the end of the run's name, in the same update (the runs list shows names, not messages).
    """
    run_id = flow_run.get_id()
    if not run_id:
        return
    with get_client(sync_client=True) as client:
        current, run_name = run_labels(run_id, client)
        kept = [t for t in current if not t.startswith((VERDICT, _OLD_VERDICT))]
        name = verdict_run_name(run_name, verdict) if verdict and run_name else None
        relabel_run(client, run_id, [*tags, *kept], name)


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
    name = run_labels(run_id)[1] or name  # named since it started: as this process named it
    return f"{name}|{ui}/runs/flow-run/{run_id}" if ui else name


def update_live(summary: ReleaseSummary, live: LiveRelease | None) -> LiveRecord:
    """The service's live view after this outcome; what it was when nothing moved."""
    record = read_live(summary.service) or LiveRecord(summary.service)
    run = current_run()
    if summary.outcome == "Deployed":
        record.sha, record.image, record.task_definition = summary.sha, summary.image, summary.task_definition
        record.traffic, record.since, record.run = "100% of production", now(), run
        record.target_group = group_of(summary.traffic)  # green's, now production's
    else:
        if live is not None and live.sha and live.sha != record.sha:
            # Put live before this pipeline, or by hand: the truth AWS tells wins over the record.
            record = LiveRecord(summary.service, live.sha, live.image, live.task_definition,
                                "100% of production", last_failure=record.last_failure, strategy=record.strategy)
        if OUTCOME_TYPES.get(summary.outcome) == StateType.FAILED or summary.outcome == "Cancelled":
            record.last_failure = Failure(summary.sha, summary.outcome, summary.reason or "-", run, now())
        if summary.traffic.startswith("production on blue") and record.sha:
            record.traffic = "100% of production"  # this run's words for: the live release serves it all
            record.target_group = group_of(summary.traffic) or record.target_group
        elif summary.traffic != "unchanged":  # a split a rollback could not undo, and the like
            record.traffic, record.target_group = summary.traffic, group_of(summary.traffic)
    record.strategy = summary.strategy  # the fleet view's strategy column
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


def conclude(summary: ReleaseSummary, live: LiveRelease | None = None) -> None:
    """Publish the release summary and the service's live view; reporting never hides the outcome.

    A failed release's last stage is kept for the final state's words (``verdict_words``).
    """
    run_id = flow_run.get_id()
    if run_id and summary.outcome == "Failed" and summary.stage_seconds:
        _FAILED_STAGE[str(run_id)] = list(summary.stage_seconds)[-1]
    summary.publish()
    try:
        update_live(summary, live)
    except Exception as exc:  # noqa: BLE001 - the release's outcome matters more than its live view
        get_run_logger().warning("live view of %s not updated: %s", summary.service, reason_of(exc))


def unchanged_state(
    service: str, strategy: Steps, summary: ReleaseSummary, target: Target,
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


def not_newer_state(service: str, target: Target, summary: ReleaseSummary) -> State[Any]:
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
