"""The fleet view: every service's live record in one table, one artifact (key ``fleet-live``).

The per-service ``<service>-live`` artifacts answer "what runs in production
for this service"; this one answers it for all of them in one look, and names
the services left half-way. It is rebuilt whenever a live record is published
(tasks/release/live_view.py turns each record into a ``FleetRow``), from the
latest version of every ``-live`` artifact, read through Prefect's API in one
call: no AWS call for any other service, whatever the fleet's size (bounded
to the most recently updated ``FLEET_LIMIT``).

Two releases ending together cannot lose a row: each writer rebuilds the whole
table, puts its own row in even when the API has not shown it yet, and after
writing reads the records again; when one changed meanwhile it writes again,
so the last writer's table holds every record published before it wrote.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from datetime import datetime
from uuid import UUID

from prefect import get_run_logger
from prefect.artifacts import create_markdown_artifact
from prefect.client.orchestration import SyncPrefectClient, get_client
from prefect.client.schemas.filters import ArtifactCollectionFilter, ArtifactCollectionFilterKey
from prefect.client.schemas.sorting import ArtifactCollectionSort
from prefect.exceptions import MissingContextError
from prefect.settings import PREFECT_UI_URL

from tasks.core.report import artifact_key, markdown_text, shorten

FLEET_KEY = "fleet-live"
FLEET_LIMIT = 200  # services shown: the most recently updated records
API_PAGE = 200  # the most one call to Prefect's API answers (PREFECT_API_DEFAULT_LIMIT)
REASON_WIDTH = 40  # characters of a reason in a cell (the UI does not wrap cells); the list below has its line
LINE_WIDTH = 300  # characters of a reason in the list below the table (list items wrap)
REWRITES = 3  # writes per publication at most, when other records keep changing under it
_PERCENT = re.compile(r"(\d+(?:\.\d+)?)\s?%")


@dataclass(frozen=True)
class FleetRow:
    """One service in the fleet view, in the view's words."""

    service: str
    sha: str | None
    since: str | None
    strategy: str | None
    traffic: str  # where production is, e.g. "100% green [app-tg-b]"
    outcome: str | None  # the last attempt's outcome, None when none is known
    reason: str | None
    run: str | None  # "name|url" of the last attempt's run

    @property
    def half_way(self) -> bool:
        """Production neither wholly on one version nor back: a split, or a rollback that did not finish."""
        split = any(0 < float(p) < 100 for p in _PERCENT.findall(self.traffic))
        return split or self.outcome == "Rollback failed"


def run_link(run: str | None) -> str:
    """A ``name|url`` run reference as a markdown link (the name alone without a URL)."""
    if not run:
        return "-"
    name, _, url = run.partition("|")
    return f"[{name}]({url})" if url else name


def one_line(text: str, width: int = REASON_WIDTH) -> str:
    """TEXT's first line (a reason's summary; build output follows it) in at most WIDTH characters, cut after
    a word; `` …`` when anything is left out. A long token (a path, an image) is cut inside rather than lost."""
    return shorten(text, width)


def artifact_url(ui: str | None, key: str) -> str | None:
    """The UI page of an artifact key (its latest version and history)."""
    return f"{ui.rstrip('/')}/artifacts/key/{key}" if ui else None


def fleet_url() -> str | None:
    return artifact_url(PREFECT_UI_URL.value(), FLEET_KEY)


def merge_rows(read: Iterable[FleetRow], own: FleetRow | None) -> list[FleetRow]:
    """The rows read, with OWN (just published, maybe not yet visible to a read) in its service's place."""
    rows = {r.service: r for r in read}
    if own is not None:
        rows[own.service] = own
    return sorted(rows.values(), key=lambda r: r.service)


def short_time(stamp: str | None, today: str) -> str:
    """A record's "%Y-%m-%d %H:%M:%S UTC" as ``14:31 UTC`` on TODAY's date (same form), else ``Dec 6 14:31``
    (``Dec 6 2025 14:31`` in another year); anything else unchanged."""
    if not stamp:
        return "-"
    try:
        at = datetime.strptime(stamp, "%Y-%m-%d %H:%M:%S UTC")
    except ValueError:
        return stamp
    if stamp[:10] == today[:10]:
        return f"{at:%H:%M} UTC"
    year = "" if stamp[:4] == today[:4] else f" {at.year}"
    return f"{at:%b} {at.day}{year} {at:%H:%M}"


def fleet_cell(row: FleetRow, ui: str | None, today: str) -> list[str]:
    """One short line: the UI does not wrap a cell; the reason's whole line is in the list below."""
    live_url = artifact_url(ui, artifact_key(row.service, "live"))
    service = f"[{row.service}]({live_url})" if live_url else row.service
    traffic = markdown_text(row.traffic.removeprefix("production "))  # the column says "production"
    if row.outcome is None:
        attempt = "-"
    else:
        url = (row.run or "").partition("|")[2]
        attempt = f"[{row.outcome}]({url})" if url else row.outcome  # the outcome opens its run
        if row.reason:
            attempt += f": {markdown_text(one_line(row.reason))}"
    return [
        service,
        f"`{row.sha[:7]}`" if row.sha else "unknown",
        short_time(row.since, today),
        row.strategy or "-",
        f"⚠ half-way: {traffic}" if row.half_way else traffic,
        attempt,
    ]


def reason_list(rows: list[FleetRow]) -> list[str]:
    """Below the table, a list item a service (list items wrap): its last attempt's reason, whole line."""
    return [f"- **{r.service}**, {r.outcome} ({run_link(r.run)}): {markdown_text(one_line(r.reason, LINE_WIDTH))}"
            for r in rows if r.outcome and r.reason]


def fleet_headline(rows: list[FleetRow]) -> str:
    halfway = [r.service for r in rows if r.half_way]
    count = f"{len(rows)} service" + ("" if len(rows) == 1 else "s")
    return f"{count}; half-way: {', '.join(halfway)}" if halfway else f"{count}, none half-way"


def fleet_markdown(rows: list[FleetRow], ui: str | None, updated: str, limited: bool = False) -> str:
    """The fleet view's markdown: one row per service, by name; the half-way ones named at the top."""
    head = ["service", "live", "since", "strategy", "production traffic", "last attempt"]
    lines = [f"# Fleet: {fleet_headline(rows)}", "", "| " + " | ".join(head) + " |",
             "|" + "---|" * len(head)]
    lines += ["| " + " | ".join(fleet_cell(r, ui, updated)) + " |" for r in rows]
    reasons = reason_list(rows)
    if reasons:
        lines += ["", "**Last attempts that did not go live, and why** (each outcome opens its run):", "", *reasons]
    source = f"the {FLEET_LIMIT} most recently updated" if limited else "every service's"
    lines += ["", f"_rebuilt {updated} from {source} `-live` record; each service's name opens its own_"]
    return "\n".join(lines)


@dataclass(frozen=True)
class Snapshot:
    """The live records as one read found them: each key's latest version, and the rows they hold."""

    versions: dict[str, UUID]
    rows: list[FleetRow]
    limited: bool


def read_snapshot(
    client: SyncPrefectClient, parse_row: Callable[[str], FleetRow | None], limit: int = FLEET_LIMIT
) -> Snapshot:
    """The latest version of every ``-live`` artifact, in one call (newest LIMIT)."""
    page = min(limit + 2, API_PAGE)  # the fleet view's own key may be among them; one more says if any is left out
    found = client.read_latest_artifacts(
        artifact_filter=ArtifactCollectionFilter(key=ArtifactCollectionFilterKey(like_="-live")),  # contains
        sort=ArtifactCollectionSort.UPDATED_DESC,
        limit=page,
    )
    live = [a for a in found if a.key.endswith("-live") and a.key != FLEET_KEY]
    limited, live = len(live) > limit or len(found) == page, live[:limit]
    rows = [row for a in live if (row := parse_row(str(a.data)))]
    return Snapshot({a.key: a.latest_id for a in live}, rows, limited)


def publish_fleet(own: FleetRow | None, parse_row: Callable[[str], FleetRow | None], updated: str) -> list[FleetRow]:
    """Rewrite the fleet view from the live records (OWN included); the rows it shows."""
    ui = PREFECT_UI_URL.value()
    with get_client(sync_client=True) as client:
        seen = read_snapshot(client, parse_row)
        for _ in range(REWRITES):
            rows = merge_rows(seen.rows, own)
            create_markdown_artifact(
                key=FLEET_KEY, markdown=fleet_markdown(rows, ui, updated, seen.limited),
                description=f"Fleet: {fleet_headline(rows)}",
            )
            again = read_snapshot(client, parse_row)
            if again.versions == seen.versions:
                break
            seen = again  # a record changed while this table was written: write one that has it
    return rows


def run_logger() -> logging.Logger | logging.LoggerAdapter[logging.Logger]:
    try:
        return get_run_logger()
    except MissingContextError:  # published outside a run (a script, a test)
        return logging.getLogger("ecs_pipeline.fleet_view")
