"""`ecs-pipeline status` without a service: one row per service of the deployments folder, and its --json.

The words (blue/green with the target group, local times with "ago") are pure functions, tested with
tables; the command itself runs against the sandbox on the repository's own service files, which the
test sandbox has not seeded: every row then carries its error and the table still prints.
"""

from __future__ import annotations

import json
import os
import shutil
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from flows.operations import DRIFT_SCHEMA, STATUS_ALL_SCHEMA, drift_of, label_sides, settled_role
from flows.terminal import ago, drift_text, local_time, run_line, traffic_text

ROOT = Path(__file__).resolve().parents[1]
TYPES: dict[str, type | tuple[type, ...]] = {
    "string": str, "url": str, "time": str, "integer": int, "number": (int, float), "boolean": bool,
}


def schema_errors(value: Any, schema: Any, where: str = "$") -> list[str]:
    """Where VALUE departs from SCHEMA (the convention documented beside the schemas in flows/operations.py)."""
    if isinstance(schema, tuple):
        tries = [schema_errors(value, option, where) for option in schema]
        return [] if any(not t for t in tries) else min(tries, key=len)
    if schema is None:
        return [] if value is None else [f"{where}: {value!r} is not null"]
    if isinstance(schema, dict):
        if not isinstance(value, dict):
            return [f"{where}: {value!r} is not an object"]
        if set(value) != set(schema):
            return [f"{where}: keys {sorted(set(value) ^ set(schema))} differ from the schema"]
        return [e for key in schema for e in schema_errors(value[key], schema[key], f"{where}.{key}")]
    if isinstance(schema, list):
        if not isinstance(value, list):
            return [f"{where}: {value!r} is not a list"]
        return [e for i, item in enumerate(value) for e in schema_errors(item, schema[0], f"{where}[{i}]")]
    kind = TYPES[schema]
    if not isinstance(value, kind) or (schema in ("integer", "number") and isinstance(value, bool)):
        return [f"{where}: {value!r} is not a {schema}"]
    if schema == "time":
        parsed = datetime.fromisoformat(value)
        if parsed.utcoffset() is None:
            return [f"{where}: {value!r} has no UTC offset"]
    if schema == "url" and not value.startswith(("http://", "https://")):
        return [f"{where}: {value!r} is not a URL"]
    return []


def keys_are_snake_case(value: Any) -> bool:
    if isinstance(value, dict):
        return all(k.replace("_", "").isalnum() and k == k.lower() and keys_are_snake_case(v) for k, v in value.items())
    if isinstance(value, list):
        return all(keys_are_snake_case(v) for v in value)
    return True


A, B = "arn:tg/app-a", "arn:tg/app-b"


@pytest.mark.parametrize(
    ("weights", "blue", "settled", "in_flight", "roles"),
    [
        ({A: 100, B: 0}, A, "green", False, ["green", None]),  # the last release went live on A
        ({A: 100, B: 0}, A, "blue", False, ["blue", None]),  # the last release rolled back to A
        ({A: 100}, None, None, False, [None]),  # rolling, or history unknown: no role
        ({A: 80, B: 20}, A, "green", True, ["blue", "green"]),  # mid-shift: blue is the primary's group
        ({A: 100, B: 0}, A, "green", True, ["blue", "green"]),  # green started, no traffic yet
        ({A: 0, B: 100}, A, "green", True, ["blue", "green"]),  # baking: green has it all, blue still up
        ({A: 50, B: 50}, None, "green", False, [None, None]),  # split, blue's group unknown: not guessed
    ],
)
def test_sides_are_named_blue_and_green(
    weights: dict[str, int], blue: str | None, settled: str | None, in_flight: bool, roles: list[str | None]
) -> None:
    sides = label_sides(weights, blue, settled, in_flight)
    assert [s["role"] for s in sides] == roles
    assert [(s["target_group"], s["weight"]) for s in sides] == list(weights.items())


ARN = "arn:aws:ecs:us-east-1:123456789012:task-definition/"
RELEASED = {"sha": "1a2b3c4d5e6f7a8b", "image": "repo@sha256:aa", "task_definition": f"{ARN}app:5"}


@pytest.mark.parametrize(
    ("recorded", "live", "in_flight", "drift"),
    [
        (RELEASED, RELEASED, False, {"drifted": False, "detail": None}),
        (None, RELEASED, False, {"drifted": False, "detail": "no release recorded"}),
        ({"sha": None, "image": None, "task_definition": None}, RELEASED, False,
         {"drifted": False, "detail": "no release recorded"}),  # a record of a service never put live
        ({**RELEASED, "task_definition": "app:5"}, RELEASED, False, {"drifted": False, "detail": None}),
        (RELEASED, {"sha": "9f8e7d6c", "image": "repo@sha256:bb", "task_definition": f"{ARN}app:7"}, False,
         {"drifted": True, "detail": "live task definition app:7, last release put app:5 live "
                                     "(commit 9f8e7d6 serves, 1a2b3c4 was released)"}),
        (RELEASED, {**RELEASED, "sha": None, "task_definition": f"{ARN}app:4"}, True,
         {"drifted": True, "detail": "live task definition app:4, last release put app:5 live; "
                                     "a release is in flight"}),
        (RELEASED, {"sha": None, "image": None, "task_definition": None}, False,
         {"drifted": True, "detail": "live task definition none, last release put app:5 live"}),
        ({**RELEASED, "task_definition": None}, {**RELEASED, "image": "other:1"}, False,
         {"drifted": True, "detail": "live image other:1, last release put repo@sha256:aa live"}),
        ({**RELEASED, "sha": "0000000"}, RELEASED, False, {"drifted": False, "detail": None}),  # same revision
    ],
)
def test_drift_compares_the_last_release_with_what_serves(
    recorded: dict[str, str | None] | None, live: dict[str, Any], in_flight: bool, drift: dict[str, Any]
) -> None:
    assert drift_of(recorded, live, in_flight) == drift
    assert schema_errors(drift, DRIFT_SCHEMA) == []


def test_drift_reads_in_one_cell() -> None:
    assert drift_text({"drifted": False, "detail": None}) == "none"
    assert drift_text({"drifted": False, "detail": "no release recorded"}) == "no release recorded"
    assert drift_text({"drifted": True, "detail": "live task definition app:7, last release put app:5 live"}) == (
        "drifted: live task definition app:7, last release put app:5 live")
    assert drift_text(None) == "-", "a service that could not be read"


def test_settled_role_comes_from_the_newest_release_that_moved_production() -> None:
    runs = [{"outcome": o} for o in ("Failed", "No change", "Rolled back", "Deployed")]
    assert settled_role(runs) == "blue"
    assert settled_role(runs[3:]) == "green"
    assert settled_role(runs[:2]) is None


def test_traffic_reads_with_roles_and_target_groups() -> None:
    assert traffic_text([{"role": "green", "target_group": "sample-app-b", "weight": 100},
                         {"role": None, "target_group": "sample-app-a", "weight": 0}]) == "green [sample-app-b] 100 %"
    assert traffic_text([{"role": "blue", "target_group": "a", "weight": 80},
                         {"role": "green", "target_group": "b", "weight": 20}]) == "blue [a] 80 %, green [b] 20 %"
    assert traffic_text([{"role": None, "target_group": "a", "weight": 100}]) == "[a] 100 %"
    assert traffic_text([]) == "-"


@pytest.mark.parametrize(
    ("seconds", "said"),
    [(0, "0 s ago"), (59.9, "59 s ago"), (60, "1 min ago"), (3 * 3600 + 5, "3 h ago"), (86400, "1 day ago"),
     (5 * 86400, "5 days ago"), (-3, "0 s ago")],
)
def test_ago(seconds: float, said: str) -> None:
    assert ago(seconds) == said


def test_times_are_local_to_the_second_with_how_long_ago() -> None:
    now = datetime(2026, 12, 6, 14, 3, 12, 654321, tzinfo=UTC)
    then = (now - timedelta(minutes=3, seconds=1)).isoformat()
    local = (now - timedelta(minutes=3, seconds=1)).astimezone().strftime("%Y-%m-%d %H:%M:%S")
    assert local_time(then, now) == f"{local} (3 min ago)"
    assert local_time(None) == "-"


def test_a_run_that_did_not_deploy_shows_its_link_and_reason() -> None:
    run = {"id": "0b6c", "name": "deploy app@1a2b3c4", "outcome": "Rolled back", "state": "FAILED",
           "reason": "GET / returned 500 on 3 of 3 checks\nmore", "started_at": "2026-12-06T14:00:00+00:00",
           "url": "http://127.0.0.1:4200/runs/flow-run/0b6c"}
    first, reason = run_line(run)
    assert first.endswith("deploy app@1a2b3c4  Rolled back  http://127.0.0.1:4200/runs/flow-run/0b6c")
    assert ".000" not in first and "+00:00" not in first, "local time to the second"
    assert reason == "    GET / returned 500 on 3 of 3 checks"
    assert run_line({**run, "outcome": "Deployed", "reason": "v2 is live"})[1:] == [], "no reason when it deployed"


def test_status_lists_every_service_and_a_failed_read_is_that_rows_news(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """The repository's services exist in the demo's sandbox, not the tests': each row says why it cannot
    be read (their cluster is not there), and every one is listed."""
    from flows.cli import main
    from tasks.config.models import load_all_services

    folder = tmp_path / "deployments"
    shutil.copytree(ROOT / "deployments", folder)
    for path in folder.glob("*.yaml"):  # read as the tests' identity: the demo's deploy roles are not here either
        path.write_text("".join(line for line in path.read_text().splitlines(keepends=True)
                                if not line.startswith("deploy_role_arn:")))
    monkeypatch.setenv("ECS_PIPELINE_DEPLOYMENTS", str(folder))
    names = sorted(cfg.name for cfg in load_all_services(folder))
    assert len(names) >= 3

    assert main(["status"]) == 0
    out = capsys.readouterr()
    assert "env: using the sandbox (" in out.err, out.err
    rows = {name: line for line in out.out.splitlines() for name in names if line.startswith(f"│ {name} ")}
    assert sorted(rows) == names, out.out
    assert all(f"│ {name} " in rows[name] and "│ error: " in rows[name] for name in names), out.out
    assert out.out.splitlines()[-1].startswith("runs start: deploy-service")

    assert main(["status", "--json"]) == 0
    data = json.loads(capsys.readouterr().out)  # stdout is the JSON alone
    assert schema_errors(data, STATUS_ALL_SCHEMA) == []
    assert keys_are_snake_case(data)
    assert [row["service"] for row in data["services"]] == names
    assert all(row["drift"] is None for row in data["services"]), "an unread service has no drift"
    assert all("cluster 'demo' does not exist" in row["error"] and row["live"]["sha"] is None
               for row in data["services"]), data
    assert data["deployments"] == str(folder) and os.path.isabs(data["deployments"])


def test_one_service_without_task_sets_prints_no_task_sets_heading() -> None:
    """ECS-native and rolling services have no task sets: no empty "task sets:" heading."""
    from flows.terminal import service_lines

    info = {
        "service": "app", "strategy": "ecs-native", "controller": "ECS",
        "live": {"sha": "1a2b3c4d", "image": "repo@sha256:0", "task_definition": "app:3", "since": None},
        "running": 2, "desired": 2, "production_url": "http://alb:80", "task_sets": [],
        "traffic": [{"role": "green", "target_group": "app-b", "weight": 100}],
        "release_in_flight": {"run_id": "0b6c", "run_name": "deploy app@9f8e7d6", "url": None, "alive": True,
                              "heartbeat_age_seconds": 2.0, "stage": "shift traffic", "green_percent": 40.0},
        "left_by_dead_run": None, "last_outcome": None, "last_runs": [],
    }
    lines = service_lines(info)
    assert not any(line.startswith("task sets") for line in lines), lines
    assert "production traffic: green [app-b] 100 %" in lines
    assert "release in flight: deploy app@9f8e7d6, shift traffic, 40 % green" in lines
    assert "last runs: none" in lines
    stale = {**info["release_in_flight"], "alive": False, "heartbeat_age_seconds": 300.0}  # type: ignore[dict-item]
    assert "release in flight: none live: deploy app@9f8e7d6 stopped 5 min ago without finishing; the next " \
           "release takes over" in service_lines({**info, "release_in_flight": stale})


def test_a_release_in_flight_shows_its_run_stage_and_link() -> None:
    """The run holding a service's slot (its heartbeat), named, with the stage it is in and its link."""
    import time
    import uuid

    from prefect import flow, task
    from prefect.client.orchestration import get_client
    from prefect.runtime import flow_run

    from flows.operations import SERVICE_STATUS_SCHEMA, run_url, slot_holder
    from tasks.release.locks import Held, delete_heartbeat, write_heartbeat

    service = f"inflight-{uuid.uuid4().hex[:8]}"

    @task(task_run_name="shift traffic {name}")
    def shift_traffic(name: str) -> dict[str, Any] | None:
        with get_client(sync_client=True) as client:
            write_heartbeat(client, Held(name, uuid.uuid4(), str(flow_run.get_id())))
            try:
                deadline = time.monotonic() + 30
                while True:  # the task run's state reaches the server shortly after it starts
                    held = slot_holder(name, 60)
                    if (held and held["stage"]) or time.monotonic() > deadline:
                        return held
                    time.sleep(0.2)
            finally:
                delete_heartbeat(client, name)

    @flow(flow_run_name="deploy {name}@1a2b3c4")
    def release(name: str) -> tuple[dict[str, Any] | None, str]:
        return shift_traffic(name), str(flow_run.get_id())

    held, run_id = release(service)
    assert held == {"run_id": run_id, "run_name": f"deploy {service}@1a2b3c4", "url": run_url(run_id),
                    "alive": True, "heartbeat_age_seconds": held["heartbeat_age_seconds"] if held else None,
                    "stage": "shift traffic", "green_percent": None}
    assert schema_errors(held, SERVICE_STATUS_SCHEMA["release_in_flight"]) == []
    assert slot_holder(service, 60) is None, "the slot is free again"
