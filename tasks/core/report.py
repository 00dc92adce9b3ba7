"""What people and automations see: Prefect events, the release summary, shift progress."""

from __future__ import annotations

import re
import time
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any
from uuid import UUID

from prefect.artifacts import (
    create_markdown_artifact,
    create_progress_artifact,
    update_progress_artifact,
)
from prefect.events import emit_event
from prefect.runtime import flow_run

EVENT_PREFIX = "ecs-pipeline.deploy"


def resource(service: str) -> dict[str, str]:
    return {
        "prefect.resource.id": f"ecs-pipeline.service.{service}",
        "prefect.resource.name": service,
    }


def related(payload: dict[str, Any]) -> list[dict[str, str]]:
    """The commit, the reason and the traffic as related resources, readable on the UI's event pages.

    The UI (3.9) shows a related resource of its own kinds (flow run, deployment)
    by name and any other by its id, so the id carries the text
    (``ecs-pipeline.reason: GET / returned 500 ...``): the event list and page
    show the reason without the Raw tab.
    """
    found = []
    sha = payload.get("sha")
    if sha:
        found.append({"prefect.resource.id": f"ecs-pipeline.commit.{sha}",
                      "prefect.resource.role": "commit", "prefect.resource.name": str(sha)[:7]})
    for role in ("reason", "traffic"):
        text = " ".join(str(payload.get(role) or "").split())[:300]
        if text:
            found.append({"prefect.resource.id": f"ecs-pipeline.{role}: {text}",
                          "prefect.resource.role": role, "prefect.resource.name": text})
    return found


def emit(service: str, what: str, **payload: Any) -> None:
    """``ecs-pipeline.deploy.<what>`` on resource ``ecs-pipeline.service.<service>``.

    The payload keeps every detail for automations; the reason, commit and
    traffic are also resource labels and related resources (see ``related``).
    """
    labels = resource(service)
    for key in ("sha", "reason", "traffic"):
        if payload.get(key):
            labels[f"ecs-pipeline.{key}"] = str(payload[key])[:300]
    emit_event(event=f"{EVENT_PREFIX}.{what}", resource=labels, payload=payload, related=related(payload))


# Characters that make a link, an image, HTML, a code span or a table cell of plain text inline.
_MARKDOWN = re.compile(r"([\\`\[\]|<>])")


def markdown_text(text: str) -> str:
    """TEXT (a build's output, an AWS message: anything a repository or a service wrote) as plain text in
    markdown: one line, every character that would make a link, an image, HTML or a table cell escaped."""
    return _MARKDOWN.sub(r"\\\1", " ".join(text.split()))


def artifact_key(service: str, kind: str) -> str:
    """Artifact keys allow lowercase letters, digits and dashes only."""
    safe = "".join(c if c.isalnum() else "-" for c in service.lower())
    return f"{safe}-{kind}"


def junit_artifact_key(service: str, group: str, taken: Iterable[str] = ()) -> str:
    """``<service>-tests``, then what the report group's name adds to that: group ``unit`` of sample-app is
    ``sample-app-tests-unit``; ``sample-app-tests`` (and ``tests``) is ``sample-app-tests``, not the name twice.

    TAKEN: the keys of the build's other groups; a group whose key one of them has already gets a number (``-2``).
    """
    words = [w for w in "".join(c if c.isalnum() else "-" for c in group.lower()).split("-") if w]
    own = [w for w in "".join(c if c.isalnum() else "-" for c in service.lower()).split("-") if w]
    if own and words[:len(own)] == own:
        words = words[len(own):]
    key = artifact_key(service, "-".join(["tests", *[w for w in words if w not in ("test", "tests")]]))
    used, found, n = set(taken), key, 1
    while found in used:
        n += 1
        found = f"{key}-{n}"
    return found


ELLIPSIS = " …"


def shorten(text: str, limit: int, more: str = "") -> str:
    """TEXT's first line in at most LIMIT characters, cut after a clause (``; ``) or else at a word, never
    inside one; when anything is left out, `` …`` and MORE (where the rest is) follow. A word that would leave
    less than half of LIMIT (a long path or image name) is cut inside rather than lost."""
    lines = text.strip().splitlines() or [""]
    first = " ".join(lines[0].split())
    if len(first) <= limit and len(lines) == 1:
        return first
    if len(first) > limit:
        room = first[:limit + 1]
        clause, word = room.rfind("; "), room.rfind(" ")
        cut = clause if clause > limit // 2 else word if word >= limit // 2 else limit  # a long token: cut inside
        first = first[:cut].rstrip(" ,;:(")
    return first + ELLIPSIS + (f" {more}" if more else "")


REASON_CELL = 100  # characters of the reason in the summary's table: a table cell is one line, cut at the page
DESCRIPTION_CHARS = 200


@dataclass
class ReleaseSummary:
    """Everything the release summary artifact shows; filled in as stages finish."""

    service: str
    strategy: str
    sha: str | None = None
    image: str | None = None
    task_definition: str | None = None
    previous_task_definition: str | None = None
    traffic: str = "unchanged"
    outcome: str = "in progress"
    reason: str | None = None
    live_sha: str | None = None  # the commit production serves once this run is over
    stage_seconds: dict[str, float] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)

    @contextmanager
    def stage(self, name: str) -> Iterator[None]:
        started = time.perf_counter()
        try:
            yield
        finally:
            self.stage_seconds[name] = round(time.perf_counter() - started, 3)

    def markdown(self) -> str:
        rows = [
            ("Service", self.service),
            ("Outcome", self.outcome),
            ("Git SHA", f"`{self.sha}`" if self.sha else "-"),
            ("Image", f"`{self.image}`" if self.image else "-"),
            ("Task definition", f"`{self.task_definition}`" if self.task_definition else "-"),
            (
                "Previous",
                f"`{self.previous_task_definition}`" if self.previous_task_definition else "-",
            ),
            ("Strategy", self.strategy),
            ("Production traffic", self.traffic),
            ("Live commit", f"`{self.live_sha[:12]}`" if self.live_sha else "-"),
        ]
        cell = shorten(self.reason or "", REASON_CELL, "(reason below)")
        if self.reason:
            rows.insert(2, ("Reason", markdown_text(cell)))
        release = f"{self.service}@{self.sha[:7]}" if self.sha else self.service
        lines = [f"# {release}: {self.outcome}", "", "| | |", "|---|---|"]
        lines += [f"| {k} | {v} |" for k, v in rows]
        if self.reason and cell != " ".join(self.reason.split()):
            lines += ["", "**Reason**", "", *reason_lines(self.reason)]
        lines += ["", "| stage | seconds |", "|---|---:|"]
        lines += [f"| {k} | {v:.2f} |" for k, v in self.stage_seconds.items()]
        if self.notes:
            lines += ["", *[f"- {n}" for n in self.notes]]  # the pipeline's own words (and links)
        return "\n".join(lines)

    def publish(self) -> None:
        markdown = self.markdown()
        create_markdown_artifact(
            key=artifact_key(self.service, "release"),
            markdown=markdown,
            description=self.description(),
        )
        run_id = flow_run.get_id()
        if run_id:
            if len(_PUBLISHED) >= _PUBLISHED_KEPT:
                _PUBLISHED.clear()
            _PUBLISHED[str(run_id)] = markdown

    def description(self) -> str:
        """One line for artifact lists: the outcome and the reason's first line, cut at a word."""
        head = f"{self.service}@{(self.sha or '?')[:7]}: {self.outcome}"
        if not self.reason:
            return head
        return markdown_text(f"{head}: {shorten(self.reason, DESCRIPTION_CHARS, '(full reason in the summary)')}")


def reason_lines(reason: str) -> list[str]:
    """A long reason below the summary's table, a list item a line: table cells do not wrap, list items do."""
    return [f"- {markdown_text(line)}" for line in reason.strip().splitlines() if line.strip()]


class ShiftProgress:
    """A progress artifact that follows green's share of production traffic."""

    def __init__(self, service: str) -> None:
        self.id: UUID | None = None
        self.service = service

    def update(self, percent: float, target_group: str | None = None) -> None:
        """TARGET_GROUP: green's, named in the artifact's description (``on green [app-tg-b]``)."""
        if self.id is None:
            green = f"green [{target_group}]" if target_group else "green"
            self.id = create_progress_artifact(  # type: ignore[assignment]
                progress=percent,
                key=artifact_key(self.service, "traffic-shift"),
                description=f"{self.service}: production traffic on {green} (%)",
            )
        else:
            update_progress_artifact(artifact_id=self.id, progress=percent)


# The summary each run of this process published last, by run id: what the CLI prints when its
# release ends, without reading back the artifact it has just written.
_PUBLISHED: dict[str, str] = {}
_PUBLISHED_KEPT = 1000


def published_summary(run_id: Any) -> str | None:
    """The release summary RUN_ID published last in this process; None when it published none here."""
    return _PUBLISHED.get(str(run_id))
