"""The fleet view (artifact ``fleet-live``): every service's live record in one table.

Table tests of the rows and the markdown from records (no Prefect, no AWS), and
one test through the session's real Prefect server: a record published while
another service's run is writing the fleet view still ends up in it, and each
service's view links to it.
"""

from __future__ import annotations

import re
import uuid

import pytest
from prefect import flow
from prefect.artifacts import create_markdown_artifact
from prefect.client.orchestration import SyncPrefectClient
from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterKey, FlowRunFilter, FlowRunFilterId
from prefect.client.schemas.sorting import ArtifactSort

from tasks.release.fleet_view import (
    FLEET_KEY,
    FleetRow,
    fleet_markdown,
    merge_rows,
    one_line,
    publish_fleet,
    read_snapshot,
    short_time,
)
from tasks.release.live_view import Failure, LiveRecord, now, parse_record, publish_live, row_of

SHA1, SHA2 = "a" * 40, "b" * 40
UI = "http://127.0.0.1:4200"
RUN1, RUN2 = "deploy app@aaaaaaa|http://ui/runs/flow-run/1", "deploy app@bbbbbbb|http://ui/runs/flow-run/2"


def live(**changes: object) -> LiveRecord:
    """app went live at 10:00 by RUN1 (task-sets)."""
    record = LiveRecord("app", SHA1, traffic="100% of production", since="2026-12-06 10:00:00 UTC", run=RUN1,
                        strategy="task-sets")
    for name, value in changes.items():
        setattr(record, name, value)
    return record


def failed(at: str, outcome: str = "Rolled back", reason: str = "GET / returned 500 on 3 of 3 checks") -> Failure:
    return Failure(SHA2, outcome, reason, RUN2, at)


@pytest.mark.parametrize(
    ("record", "traffic", "outcome", "run"),
    [
        (live(), "100% green", "Deployed", RUN1),
        (live(last_failure=failed("2026-12-06 11:00:00 UTC")), "100% blue", "Rolled back", RUN2),
        (live(last_failure=failed("2026-12-06 09:00:00 UTC")), "100% green", "Deployed", RUN1),  # failed before
        (live(last_failure=failed("2026-12-06 11:00:00 UTC", "Failed", "build failed")), "100% blue", "Failed", RUN2),
        (live(target_group="app-tg-b"), "100% green [app-tg-b]", "Deployed", RUN1),
        (live(target_group="app-tg-a", last_failure=failed("2026-12-06 11:00:00 UTC")), "100% blue [app-tg-a]",
         "Rolled back", RUN2),  # the failed attempt's blue: the release that stayed live, on its target group
        (live(strategy="rolling"), "100% of production", "Deployed", RUN1),  # no blue/green to name
        # Live before the pipeline (or by hand): nothing attempted, nothing to call blue or green.
        (LiveRecord("app", SHA1, traffic="100% of production"), "100% of production", None, None),
        (live(traffic="production split 50% app-tg-a / 50% app-tg-b",
              last_failure=failed("2026-12-06 11:00:00 UTC", "Rollback failed")),
         "production split 50% app-tg-a / 50% app-tg-b", "Rollback failed", RUN2),
    ],
)
def test_a_records_row_names_the_last_attempt_and_where_production_is(
    record: LiveRecord, traffic: str, outcome: str | None, run: str | None,
) -> None:
    row = record.fleet_row()
    assert (row.traffic, row.outcome, row.run) == (traffic, outcome, run)
    assert (row.service, row.sha, row.since) == (record.service, record.sha, record.since)


@pytest.mark.parametrize(
    ("traffic", "outcome", "half_way"),
    [
        ("100% green", "Deployed", False),
        ("production split 50% app-tg-a / 50% app-tg-b", "Rollback failed", True),
        ("production split 90% app-tg-a / 10% app-tg-b", "Cancelled", True),
        ("production split 100% app-tg-a / 0% app-tg-b", "Rolled back", False),
        ("unknown", "Rollback failed", True),  # a rollback that did not finish, wherever traffic is
        ("unknown", None, False),
    ],
)
def test_half_way_is_a_split_or_an_unfinished_rollback(traffic: str, outcome: str | None, half_way: bool) -> None:
    assert FleetRow("app", SHA1, None, None, traffic, outcome, None, None).half_way is half_way


def test_the_record_a_writer_published_is_in_its_table_even_when_the_read_missed_it() -> None:
    other = LiveRecord("billing", SHA2, traffic="100% of production").fleet_row()
    stale = live(sha=SHA2).fleet_row()  # the API still shows app's previous record
    own = live().fleet_row()
    assert merge_rows([stale, other], own) == [own, other]
    assert merge_rows([other], own) == [own, other]  # not shown at all yet
    assert merge_rows([other, stale], None) == [stale, other]  # by service name


def test_the_table_has_one_line_per_service_with_links_and_names_the_half_way_ones_at_the_top() -> None:
    reason = "GET / returned 500 on 3 of 3 checks | table breaker [x](http://evil) <img src=x> " + "and more " * 12
    rows = [
        live(last_failure=failed("2026-12-06 11:00:00 UTC", reason=reason)).fleet_row(),
        live(service="billing", traffic="production split 50% billing-a / 50% billing-b",
             last_failure=failed("2026-12-06 11:00:00 UTC", "Rollback failed", "DescribeListeners throttled"))
        .fleet_row(),
    ]
    rows.append(live(service="old", since="2026-12-05 09:07:00 UTC").fleet_row())
    text = fleet_markdown(merge_rows(rows, None), UI, "2026-12-06 11:00:01 UTC")
    lines = text.splitlines()
    assert lines[0] == "# Fleet: 3 services; half-way: billing"
    assert lines[2] == "| service | live | since | strategy | production traffic | last attempt |"
    app = next(line for line in lines if line.startswith("| [app]"))
    billing = next(line for line in lines if line.startswith("| [billing]"))
    assert lines.index(app) < lines.index(billing), "rows by service name"
    # Short cells, the page's width (the UI does not wrap a cell): today's time, the reason cut at a word.
    assert app == (f"| [app]({UI}/artifacts/key/app-live) | `aaaaaaa` | 10:00 UTC | task-sets | 100% blue | "
                   "[Rolled back](http://ui/runs/flow-run/2): GET / returned 500 on 3 of 3 checks \\| … |"), app
    assert len(re.findall(r"(?<!\\)\|", app)) == 7, "six cells: a reason's | is escaped"
    assert "| ⚠ half-way: split 50% billing-a / 50% billing-b | [Rollback failed](http://ui/runs/flow-run/2): " \
           "DescribeListeners throttled |" in billing
    assert "| Dec 5 09:07 | task-sets | 100% green | [Deployed](http://ui/runs/flow-run/1) |" in text, "another day"
    # Below the table, each reason's whole first line (list items wrap): plain text, no HTML, no links.
    why = lines[lines.index("**Last attempts that did not go live, and why** (each outcome opens its run):") + 2:]
    assert why[0] == ("- **app**, Rolled back ([deploy app@bbbbbbb](http://ui/runs/flow-run/2)): GET / returned 500 "
                      "on 3 of 3 checks \\| table breaker \\[x\\](http://evil) \\<img src=x\\> "
                      + "and more " * 11 + "and more"), why[0]
    assert why[1] == "- **billing**, Rollback failed ([deploy app@bbbbbbb](http://ui/runs/flow-run/2)): " \
                     "DescribeListeners throttled"
    assert len(why) == 4 and why[2] == "", "a Deployed row has no reason to list"
    assert lines[-1].startswith("_rebuilt 2026-12-06 11:00:01 UTC from every service's `-live` record")
    assert fleet_markdown([], None, "now").startswith("# Fleet: 0 services, none half-way")
    assert "_rebuilt now from the 200 most recently updated `-live` record" in fleet_markdown([], None, "now", True)


@pytest.mark.parametrize(
    ("text", "cut"),
    [
        ("short one", "short one"), ("ten chars!", "ten chars!"),
        ("one two three four", "one two …"),  # width 10: "one two th" would cut a word
        ("one two\n  three", "one two …"),  # the first line: build output follows it
        ("ten chars!\n  | output", "ten chars! …"),
        ("abcdefghijklmnop", "abcdefghij …"),  # one word longer than the width: cut where it must
        ("ab cdefghijklmnop", "ab cdefghi …"),  # a long token after a short word: cut inside, not lost
        ("abcdef ghijklmnop", "abcdef …"),
    ],
)
def test_a_reason_in_a_cell_is_one_line_cut_at_a_word(text: str, cut: str) -> None:
    assert one_line(text, 10) == cut


@pytest.mark.parametrize(
    ("stamp", "short"),
    [
        ("2026-12-06 14:31:09 UTC", "14:31 UTC"),  # the day the view is rebuilt
        ("2026-12-05 14:31:09 UTC", "Dec 5 14:31"),
        ("2025-12-06 04:05:00 UTC", "Dec 6 2025 04:05"),
        (None, "-"),
        ("yesterday", "yesterday"),  # not a record's time: as it is
    ],
)
def test_a_time_in_a_cell_is_short(stamp: str | None, short: str) -> None:
    assert short_time(stamp, "2026-12-06 16:00:00 UTC") == short


def test_records_with_more_or_fewer_fields_still_read() -> None:
    record = live(target_group="app-tg-b", last_failure=failed("2026-12-06 11:00:00 UTC"))
    text = record.markdown(f"{UI}/artifacts/key/{FLEET_KEY}")
    assert f"[Every service: the fleet view]({UI}/artifacts/key/fleet-live)" in text
    assert "| Production traffic | 100% blue [app-tg-b] |" in text, "the failed attempt's blue, by target group"
    assert parse_record(text) == record
    older = text.replace(', "strategy": "task-sets", "target_group": "app-tg-b"', "")
    assert older != text and parse_record(older) == live(strategy=None, last_failure=record.last_failure,
                                                          updated=record.updated)
    newer = text.replace('"strategy":', '"health": "ok", "strategy":')
    assert newer != text and parse_record(newer) == record


# -- through the real Prefect server ------------------------------------------------------------------


def latest_markdown(client: SyncPrefectClient, key: str) -> str:
    found = client.read_artifacts(artifact_filter=ArtifactFilter(key=ArtifactFilterKey(any_=[key])),
                                  sort=ArtifactSort.CREATED_DESC, limit=1)
    assert found, f"no artifact {key}"
    return str(found[0].data)


@flow(name="publish-live-views")
def publish_in_a_run(first: LiveRecord, second: LiveRecord) -> None:
    """FIRST's release ends (its live view, then the fleet view rebuilt); then SECOND's ends while FIRST's
    fleet view is being written again, between its read of the records and its write."""
    publish_live(first)
    published: list[str] = []

    def read_while_second_ends(markdown: str) -> FleetRow | None:
        if not published:
            second.updated = now()
            published.append(str(create_markdown_artifact(key=f"{second.service}-live", markdown=second.markdown())))
        return row_of(markdown)

    publish_fleet(first.fleet_row(), read_while_second_ends, now())
    assert published, "the fleet view read the records"


def test_two_services_records_are_both_in_the_fleet_view(client: SyncPrefectClient) -> None:
    tag = uuid.uuid4().hex[:8]
    one = LiveRecord(f"fleet-a-{tag}", SHA1, traffic="100% of production", since="2026-12-06 10:00:00 UTC",
                     run=RUN1, strategy="task-sets", target_group=f"fleet-a-{tag}-tg-2")
    two = LiveRecord(f"fleet-b-{tag}", SHA2, traffic="100% of production", since="2026-12-06 09:00:00 UTC",
                     strategy="codedeploy", last_failure=failed("2026-12-06 10:30:00 UTC"))
    state = publish_in_a_run(one, two, return_state=True)
    assert state.is_completed(), state

    fleet = latest_markdown(client, FLEET_KEY)
    rows = {line.split("]")[0].removeprefix("| ["): line for line in fleet.splitlines() if line.startswith("| [")}
    since = short_time(one.since, now())  # "10:00 UTC" on the day it runs
    assert f"| `aaaaaaa` | {since} | task-sets | 100% green \\[fleet-a-{tag}-tg-2\\] | [Deployed](http://ui/runs/" \
        in rows[one.service], fleet
    assert two.service in rows, "a record published after the view's read is in the view: it was written again"
    assert rows[two.service].endswith("| codedeploy | 100% blue | [Rolled back](http://ui/runs/flow-run/2): GET / "
                                      "returned 500 on 3 of 3 checks |"), fleet
    assert "/artifacts/key/fleet-live)" in latest_markdown(client, f"{one.service}-live"), "each view links the fleet"
    run = FlowRunFilter(id=FlowRunFilterId(any_=[state.state_details.flow_run_id]))
    in_run = client.read_artifacts(artifact_filter=ArtifactFilter(key=ArtifactFilterKey(any_=[FLEET_KEY])),
                                   flow_run_filter=run)
    assert in_run, "the run's Artifacts tab shows the fleet view"

    newest = read_snapshot(client, row_of, limit=1)  # bounded: the most recently updated records only
    assert newest.limited and [r.service for r in newest.rows] == [two.service], newest
    every = read_snapshot(client, row_of)
    assert {one.service, two.service} <= {r.service for r in every.rows} and FLEET_KEY not in every.versions
