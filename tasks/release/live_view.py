"""The per-service live view: what runs in production now, put there by which run, and the last failure.

One markdown artifact per service (key ``<service>-live``), published on every
outcome, so its latest version always answers "what runs now" whatever the
last release did. The record it shows travels inside the markdown as a hidden
HTML comment: the next run reads it back to keep "since" and "put there by"
when it changes nothing (a rollback, a refusal). Publishing one also rebuilds
the fleet view (tasks/release/fleet_view.py) from every service's record, and
each service's view links to it.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field, fields
from datetime import UTC, datetime
from typing import Any

from prefect.artifacts import create_markdown_artifact
from prefect.client.orchestration import get_client
from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterKey
from prefect.client.schemas.sorting import ArtifactSort

from tasks.core.errors import reason_of
from tasks.core.report import artifact_key, markdown_text
from tasks.release.fleet_view import FleetRow, fleet_headline, fleet_url, publish_fleet, run_link, run_logger

_MARK = "<!-- ecs-pipeline-live "


@dataclass
class Failure:
    """The last attempt that did not reach production, and why."""

    sha: str | None
    outcome: str
    reason: str
    run: str | None
    at: str


@dataclass
class LiveRecord:
    """What serves production for one service, as the pipeline last saw it."""

    service: str
    sha: str | None = None
    image: str | None = None
    task_definition: str | None = None
    traffic: str = "unknown"
    since: str | None = None
    run: str | None = None  # "name|url" of the run that put this release live
    last_failure: Failure | None = None
    updated: str = field(default_factory=lambda: now())
    strategy: str | None = None  # the service's strategy type, for the fleet view
    target_group: str | None = None  # the target group production is on, when the strategy has one

    def markdown(self, fleet: str | None = None) -> str:
        """The service's view; FLEET: the URL of the fleet view, linked below the table."""
        rows = [
            ("Live commit", f"`{self.sha[:12]}`" if self.sha else "unknown"),
            ("Image", f"`{self.image}`" if self.image else "-"),
            ("Task definition", f"`{self.task_definition}`" if self.task_definition else "-"),
            ("Production traffic", self.fleet_row().traffic),  # blue or green [its target group]
            ("Live since", self.since or "unknown (before this pipeline)"),
            ("Put there by", run_link(self.run)),
        ]
        failed = self.last_failure
        what = f"`{failed.sha[:7]}`" if failed and failed.sha else "-"
        if failed is not None:
            rows.append(("Last failed attempt", f"{what} {failed.outcome} at {failed.at} ({run_link(failed.run)})"))
        head = f"# {self.service}: `{self.sha[:7]}` is live" if self.sha else f"# {self.service}: live release unknown"
        lines = [head, "", "| | |", "|---|---|", *[f"| {k} | {v} |" for k, v in rows]]
        if failed is not None:  # below the table: the UI does not wrap a table cell, a long reason was cut off
            lines += ["", f"**Why {what} did not go live:** {markdown_text(failed.reason)}"]
        # < and > only occur inside JSON strings: as \u escapes, no text can close the comment early.
        record = json.dumps(asdict(self)).replace("<", "\\u003c").replace(">", "\\u003e")
        if fleet:
            lines += ["", f"[Every service: the fleet view]({fleet})"]
        lines += ["", f"_updated {self.updated}_", "", f"{_MARK}{record} -->"]
        return "\n".join(lines)

    def fleet_row(self) -> FleetRow:
        """This service's row in the fleet view: the last attempt is the newer of going live and failing."""
        outcome, reason, run = None, None, self.run
        if self.since:
            outcome = "Deployed"
        failed = self.last_failure
        if failed is not None and (not self.since or failed.at >= self.since):  # both "%Y-%m-%d %H:%M:%S UTC"
            outcome, reason, run = failed.outcome, failed.reason, failed.run
        traffic = self.traffic
        if traffic == "100% of production" and outcome and self.strategy != "rolling":
            # The live release serves it all: green when the last attempt put it there, else blue (it stayed).
            traffic = "100% green" if outcome == "Deployed" else "100% blue"
        if self.target_group and "[" not in traffic:
            traffic += f" [{self.target_group}]"
        return FleetRow(self.service, self.sha, self.since, self.strategy, traffic, outcome, reason, run)


def now() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%d %H:%M:%S UTC")


def parse_record(markdown: str) -> LiveRecord | None:
    """The record a live artifact carries; None when it has none (or an older shape)."""
    start = markdown.rfind(_MARK)
    if start < 0:
        return None
    raw = markdown[start + len(_MARK):].removesuffix("-->").strip()
    try:
        data: dict[str, Any] = json.loads(raw)
        failure = data.pop("last_failure", None)
        known = {f.name for f in fields(LiveRecord)}  # a record written by a newer release may carry more
        kept = {k: v for k, v in data.items() if k in known}
        return LiveRecord(**kept, last_failure=Failure(**failure) if failure else None)
    except (ValueError, TypeError):
        return None


def read_live(service: str) -> LiveRecord | None:
    """The latest published live record of SERVICE, if any."""
    key = artifact_key(service, "live")
    with get_client(sync_client=True) as client:
        found = client.read_artifacts(
            artifact_filter=ArtifactFilter(key=ArtifactFilterKey(any_=[key])),
            sort=ArtifactSort.CREATED_DESC,
            limit=1,
        )
    return parse_record(str(found[0].data)) if found else None


def row_of(markdown: str) -> FleetRow | None:
    record = parse_record(markdown)
    return record.fleet_row() if record else None


def publish_live(record: LiveRecord) -> None:
    """The service's live view, then the fleet view rebuilt with it; the fleet's link logged last."""
    record.updated = now()
    fleet = fleet_url()
    create_markdown_artifact(
        key=artifact_key(record.service, "live"),
        markdown=record.markdown(fleet),
        description=f"{record.service}: live {record.sha[:7] if record.sha else 'unknown'}",
    )
    try:
        rows = publish_fleet(record.fleet_row(), row_of, record.updated)
    except Exception as exc:  # noqa: BLE001 - the service's own view is out; the fleet's is a convenience
        run_logger().warning("fleet view not updated: %s", reason_of(exc))
        return
    run_logger().info("Fleet view (%s): %s", fleet_headline(rows), fleet or "artifact fleet-live")
