"""`ecs-pipeline deploy` in a terminal: a live view of the release instead of raw log lines.

The flow runs in the main thread as before (signals, rollback on SIGTERM);
a background thread reads the run's task runs and its traffic-shift progress
from the Prefect API and redraws: stages done with their seconds, the one in
progress, green's share of production during the shift, elapsed time. At the
end it prints the release summary the run published (the same markdown as
the artifact) and one line with the outcome. ``--json`` prints one JSON
object instead, for machines.
"""

from __future__ import annotations

import json
import logging
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

from prefect.client.orchestration import get_client
from prefect.client.schemas.filters import (
    ArtifactFilter,
    ArtifactFilterFlowRunId,
    ArtifactFilterType,
    FlowRunFilter,
    FlowRunFilterId,
)
from prefect.client.schemas.objects import State
from prefect.client.schemas.sorting import ArtifactSort, TaskRunSort
from prefect.settings import PREFECT_UI_URL
from rich.console import Console, Group
from rich.live import Live
from rich.markdown import Markdown
from rich.table import Table
from rich.text import Text

from tasks.release.outcome import outcome_of

ICONS = {"COMPLETED": ("✓", "green"), "FAILED": ("✗", "red"), "RUNNING": ("…", "yellow"),
         "CRASHED": ("✗", "red"), "CANCELLED": ("-", "dim")}


@dataclass
class Seen:
    """What the view last read about the run.

    ``run_id`` comes from the flow run itself (an ``on_running`` hook, in the main thread, before the
    release starts), not from a tag to search by: a tags context would tag every task run too, and
    Prefect asks the server for a concurrency slot per tagged task run.
    """

    run_id: Any = None
    name: str = ""
    stages: list[tuple[str, str, float]] = field(default_factory=list)
    green_percent: float | None = None


def read_run(seen: Seen) -> None:
    """The run's name, stages and traffic progress, once the flow run has told its id (see ``Seen``)."""
    if seen.run_id is None:
        return
    with get_client(sync_client=True) as client:
        seen.name = client.read_flow_run(seen.run_id).name
        tasks = client.read_task_runs(
            flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=[seen.run_id])),
            sort=TaskRunSort.EXPECTED_START_TIME_ASC,
        )
        seen.stages = [
            (t.name, t.state.type.value if t.state else "PENDING", t.estimated_run_time.total_seconds())
            for t in tasks
        ]
        progress = client.read_artifacts(
            artifact_filter=ArtifactFilter(
                flow_run_id=ArtifactFilterFlowRunId(any_=[seen.run_id]), type=ArtifactFilterType(any_=["progress"])
            ),
            sort=ArtifactSort.CREATED_DESC,
            limit=1,
        )
        if progress:
            seen.green_percent = float(progress[0].data)  # type: ignore[arg-type]


def render(service: str, seen: Seen, started: float) -> Group:
    table = Table(box=None, show_header=False, pad_edge=False)
    table.add_column(width=2)
    table.add_column()
    table.add_column(justify="right")
    for name, kind, seconds in seen.stages:
        icon, style = ICONS.get(kind, ("·", "dim"))
        table.add_row(Text(icon, style=style), name, f"{seconds:.1f}s")
    head = Text(f"{seen.name or 'deploy ' + service}", style="bold")
    head.append(f"   {time.monotonic() - started:.0f}s elapsed", style="dim")
    parts: list[Any] = [head, table]
    if seen.green_percent is not None:
        bar = int(seen.green_percent / 5)
        parts.append(Text(f"production: [{'#' * bar}{'.' * (20 - bar)}] {seen.green_percent:.0f}% green"))
    return Group(*parts)


@contextmanager
def quiet_console_logs() -> Iterator[None]:
    """Prefect's console lines would scroll the view away: keep only errors while it shows."""
    handlers = [h for name in ("prefect", "prefect.flow_runs", "prefect.task_runs")
                for h in logging.getLogger(name).handlers if type(h).__name__ == "PrefectConsoleHandler"]
    levels = [h.level for h in handlers]
    for h in handlers:
        h.setLevel(logging.ERROR)
    try:
        yield
    finally:
        for h, level in zip(handlers, levels, strict=True):
            h.setLevel(level)


def release_markdown(run_id: Any) -> str:
    """The release summary this run published last (the `<service>-release` artifact)."""
    with get_client(sync_client=True) as client:
        found = client.read_artifacts(
            artifact_filter=ArtifactFilter(
                flow_run_id=ArtifactFilterFlowRunId(any_=[run_id]), type=ArtifactFilterType(any_=["markdown"])
            ),
            sort=ArtifactSort.CREATED_DESC,
        )
    return next((str(a.data) for a in found if (a.key or "").endswith("-release")), "")


def run_with_view(service: str, call: Callable[[Seen], State[Any]], as_json: bool) -> int:
    """Run CALL (the flow; it sets ``Seen.run_id`` once the run exists) with the live view, then print
    its summary and outcome."""
    console = Console()
    seen, started, done = Seen(), time.monotonic(), threading.Event()
    if as_json or not console.is_terminal:
        state = call(seen)
    else:
        with quiet_console_logs(), Live(render(service, seen, started), console=console, transient=True) as live:

            def follow() -> None:
                while not done.wait(0.5):
                    try:
                        read_run(seen)
                    except Exception:  # noqa: BLE001 - the view must never break the release
                        continue
                    live.update(render(service, seen, started))

            watcher = threading.Thread(target=follow, daemon=True)
            watcher.start()
            try:
                state = call(seen)
            finally:
                done.set()
                watcher.join(5)
    return finish(service, seen, state, console, as_json)


def finish(service: str, seen: Seen, state: State[Any], console: Console, as_json: bool) -> int:
    seen.run_id = seen.run_id or state.state_details.flow_run_id
    if as_json and seen.run_id and not seen.name:  # the name only: the stages are in the summary
        with get_client(sync_client=True) as client:
            seen.name = client.read_flow_run(seen.run_id).name
    markdown = release_markdown(seen.run_id) if seen.run_id else ""
    code = 0 if state.is_completed() else 1
    if as_json:
        ui = (PREFECT_UI_URL.value() or "").rstrip("/")
        print(json.dumps({
            "service": service, "outcome": outcome_of(state), "state": state.type.value,
            "message": state.message, "flow_run": str(seen.run_id) if seen.run_id else None,
            "flow_run_name": seen.name or None,
            "url": f"{ui}/runs/flow-run/{seen.run_id}" if ui and seen.run_id else None,
            "summary": markdown,
        }, indent=2))
        return code
    if markdown:
        if console.is_terminal:
            console.print(Markdown(markdown))
        else:
            print(markdown)
    print(state.message or state.name, flush=True)
    return code
