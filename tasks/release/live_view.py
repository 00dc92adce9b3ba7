"""The per-service live view: what runs in production now, put there by which run, and the last failure.

One markdown artifact per service (key ``<service>-live``), published on every
outcome, so its latest version always answers "what runs now" whatever the
last release did. The record it shows travels inside the markdown as a hidden
HTML comment: the next run reads it back to keep "since" and "put there by"
when it changes nothing (a rollback, a refusal).
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from typing import Any

from prefect.artifacts import create_markdown_artifact
from prefect.client.orchestration import get_client
from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterKey
from prefect.client.schemas.sorting import ArtifactSort

from tasks.core.report import artifact_key, markdown_text

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

    def markdown(self) -> str:
        rows = [
            ("Live commit", f"`{self.sha[:12]}`" if self.sha else "unknown"),
            ("Image", f"`{self.image}`" if self.image else "-"),
            ("Task definition", f"`{self.task_definition}`" if self.task_definition else "-"),
            ("Production traffic", self.traffic),
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
        lines += ["", f"_updated {self.updated}_", "", f"{_MARK}{record} -->"]
        return "\n".join(lines)


def now() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%d %H:%M:%S UTC")


def run_link(run: str | None) -> str:
    if not run:
        return "-"
    name, _, url = run.partition("|")
    return f"[{name}]({url})" if url else name


def parse_record(markdown: str) -> LiveRecord | None:
    """The record a live artifact carries; None when it has none (or an older shape)."""
    start = markdown.rfind(_MARK)
    if start < 0:
        return None
    raw = markdown[start + len(_MARK):].removesuffix("-->").strip()
    try:
        data: dict[str, Any] = json.loads(raw)
        failure = data.pop("last_failure", None)
        return LiveRecord(**data, last_failure=Failure(**failure) if failure else None)
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


def publish_live(record: LiveRecord) -> None:
    record.updated = now()
    create_markdown_artifact(
        key=artifact_key(record.service, "live"),
        markdown=record.markdown(),
        description=f"{record.service}: live {record.sha[:7] if record.sha else 'unknown'}",
    )
