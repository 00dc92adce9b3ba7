"""`ecs-pipeline deploy` in a terminal: a live view of the release instead of raw log lines.

The flow runs in the main thread as before (signals, rollback on SIGTERM);
a background thread reads the run's task runs and its traffic-shift progress
from the Prefect API and redraws: stages done with their seconds, the one in
progress, green's share of production during the shift, elapsed time. At the
end it prints the release summary the run published (the same markdown as
the artifact) and one line with the outcome. ``--json`` prints one JSON
object instead, for machines.

`ecs-pipeline status` is drawn here too: one table of every service, or one
service's lines, in one vocabulary (blue/green with the target group in
brackets) and local times with how long ago.
"""

from __future__ import annotations

import json
import logging
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime
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
from rich.table import Table
from rich.text import Text

from tasks.core.report import published_summary
from tasks.release.outcome import outcome_of

ICONS = {"COMPLETED": ("✓", "green"), "FAILED": ("✗", "red"), "RUNNING": ("…", "yellow"),
         "CRASHED": ("✗", "red"), "CANCELLED": ("-", "dim")}


@dataclass
class Seen:
    """What the view last read about the run.

    ``run_id`` is the flow run's own, set in the main thread before the release starts (the command
    makes the run), not found by a tag: a tags context would tag every task run too, and Prefect
    asks the server for a concurrency slot per tagged task run.
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
    """The release summary this run published last (the `<service>-release` artifact): as this process
    published it, else read back."""
    published = published_summary(run_id)
    if published is not None:
        return published
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
            from rich.markdown import Markdown  # a terminal's only: its parser is 16 ms of a release's imports

            console.print(Markdown(markdown))
        else:
            print(markdown)
    print(state.message or state.name, flush=True)
    return code


# `ecs-pipeline status`: the same data as its --json (flows/operations.py), in words and local time.


def ago(seconds: float) -> str:
    """A duration the way a person says it: "12 s ago", "3 min ago", "5 h ago", "2 days ago"."""
    seconds = max(0.0, seconds)
    for size, unit in ((86400, "days"), (3600, "h"), (60, "min")):
        if seconds >= size:
            count = int(seconds // size)
            return f"{count} {'day' if unit == 'days' and count == 1 else unit} ago"
    return f"{int(seconds)} s ago"


def local_time(iso: str | None, now: datetime | None = None) -> str:
    """An ISO-8601 time as local time to the second, with how long ago: "2026-12-06 15:03:12 (3 min ago)"."""
    if not iso:
        return "-"
    when = datetime.fromisoformat(iso)
    since = ((now or datetime.now(UTC)) - when).total_seconds()
    return f"{when.astimezone().strftime('%Y-%m-%d %H:%M:%S')} ({ago(since)})"


def traffic_text(sides: list[dict[str, Any]]) -> str:
    """The production split in one vocabulary: "blue [app-a] 80 %, green [app-b] 20 %"."""
    shown = [s for s in sides if s["weight"] > 0] or sides
    return ", ".join(
        f"{s['role'] + ' ' if s['role'] else ''}[{s['target_group']}] {s['weight']} %" for s in shown
    ) or "-"


def in_flight_text(held: dict[str, Any] | None) -> str:
    if held is None:
        return "none"
    name = held["run_name"] or held["run_id"]
    if not held["alive"]:
        return (f"none live: {name} stopped {ago(held['heartbeat_age_seconds'])} without finishing; "
                "the next release takes over")
    parts = [name]
    if held["stage"]:
        parts.append(held["stage"])
    if held["green_percent"] is not None:
        parts.append(f"{held['green_percent']:.0f} % green")
    return ", ".join(parts)


def outcome_text(run: dict[str, Any] | None) -> str:
    if run is None:
        return "-"
    reason = (run["reason"] or "").splitlines()[0] if run["reason"] else ""
    return f"{run['outcome']}: {reason}" if reason and run["outcome"] != "Deployed" else run["outcome"]


def run_line(run: dict[str, Any]) -> list[str]:
    """A run in `status`: when, name, outcome, link; below it the reason when it did not deploy."""
    lines = [f"{local_time(run['started_at'])}  {run['name']}  {run['outcome']}  {run['url'] or run['id']}"]
    if run["reason"] and run["outcome"] != "Deployed":
        lines.append(f"    {run['reason'].splitlines()[0]}")
    return lines


def service_lines(info: dict[str, Any]) -> list[str]:
    """`status SERVICE` for a person."""
    live = info["live"]
    lines = [
        f"service: {info['service']} ({info['strategy']}, ECS controller {info['controller'] or '?'})",
        f"live commit: {live['sha'] or 'none (never deployed)'}"
        + (f", since {local_time(live['since'])}" if live["since"] else ""),
        f"image: {live['image'] or '-'}",
        f"task definition: {live['task_definition'] or 'none (never deployed)'}",
        f"running: {info['running']} of {info['desired']}",
    ]
    if info["production_url"]:
        lines += [f"production traffic: {traffic_text(info['traffic'])}", f"production url: {info['production_url']}"]
    if info["task_sets"]:
        lines.append("task sets:")
        lines += [f"  {ts['id']} {ts['status']} {ts['task_definition']} running {ts['running']}"
                  + (f" [{ts['target_group']}]" if ts["target_group"] else "") for ts in info["task_sets"]]
    lines.append(f"release in flight: {in_flight_text(info['release_in_flight'])}")
    if info["left_by_dead_run"]:
        lines.append(f"left by a dead run: {info['left_by_dead_run']}")
    lines.append("last runs:" if info["last_runs"] else "last runs: none")
    held = info["release_in_flight"] or {}
    stale = held.get("run_id") if held and not held.get("alive") else None
    for run in info["last_runs"]:
        first, *rest = run_line(run)
        gone = " (no heartbeat: its process is gone)" if stale and run["id"] == stale else ""
        lines += [f"  {first}{gone}", *(f"  {line}" for line in rest)]
    return lines


def status_table(data: dict[str, Any]) -> Table:
    """`status` without a service: one row per service of the deployments folder."""
    table = Table(title=Text(f"services in {data['deployments']}"), title_justify="left")
    for column in ("service", "live commit", "strategy", "production traffic", "health", "release in flight",
                   "last outcome", "drift"):
        table.add_column(column, overflow="fold")
    for row in data["services"]:
        if row["error"]:
            table.add_row(Text(row["service"]), Text(f"error: {row['error']}", style="red"), Text(row["strategy"]),
                          "-", "-", "-", "-", "-")
            continue
        drift = row["drift"]
        live = row["live"]
        commit = f"{live['sha'][:7]} ({ago_of(live['since'])})" if live["sha"] else "never deployed"
        health = f"{row['running']} of {row['desired']}"
        outcome = row["last_outcome"]
        table.add_row(  # Text, not markup: "[sample-app-b]" is a target group, not a style
            Text(row["service"]), Text(commit), Text(row["strategy"]), Text(traffic_text(row["traffic"])),
            Text(health, style="green" if row["running"] == row["desired"] and row["desired"] else "yellow"),
            Text(in_flight_text(row["release_in_flight"])),
            Text(outcome_text(outcome), style="" if outcome is None or outcome["state"] == "COMPLETED" else "red"),
            Text(drift_text(drift), style="yellow" if drift and drift["drifted"] else ""),
        )
    return table


def drift_text(drift: dict[str, Any] | None) -> str:
    """The drift column and line: "none", "no release recorded", "drifted: <what differs>"; "-" unread."""
    if drift is None:
        return "-"
    if drift["drifted"]:
        return f"drifted: {drift['detail']}"
    return str(drift["detail"] or "none")


def ago_of(iso: str | None) -> str:
    return ago((datetime.now(UTC) - datetime.fromisoformat(iso)).total_seconds()) if iso else "since unknown"


def print_status_table(data: dict[str, Any]) -> None:
    console = Console(width=None if Console().is_terminal else 220)
    console.print(status_table(data))
