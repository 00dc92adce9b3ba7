"""A fleet in dependency order, against the sandbox: who starts after whom, and a circle refused first.

Four copies of one service (``sandbox seed --copies``), built from one
repository: 02 depends on 01, 04 on 01 and 03 (two layers, two services each). The fleet is seeded and
released once (v1) for the whole session: tests/test_atomic.py goes on from
that release (``shared_fleet``), so the two modules pay for one seeding.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator
from datetime import datetime
from pathlib import Path
from typing import Any
from uuid import UUID

import pytest
import yaml
from prefect.client.orchestration import get_client

from flows.fleet import release_fleet
from harness import services
from harness.faults import PIPELINE_AGENT, control
from harness.fleet_repo import base_yaml, commit, monorepo, remove_fleet
from sandbox.seed_fleet import seed_fleet

DEPENDS = {"01": [], "02": ["01"], "03": [], "04": ["01", "03"]}  # layers: 01 03, then 02 04
ENV = "ECS_PIPELINE_DEPLOYMENTS"
_SHARED: dict[str, Any] = {}


def set_depends_on(folder: Path, name: str, depends_on: list[str]) -> None:
    path = folder / f"{name}.yaml"
    data = yaml.safe_load(path.read_text())
    data["depends_on"] = depends_on
    path.write_text(yaml.safe_dump(data, sort_keys=False))


def shared_fleet(tmp_path_factory: pytest.TempPathFactory, config: pytest.Config) -> dict[str, Any]:
    """The four seeded services with their dependencies, released once at v1 (made at its first use)."""
    if _SHARED:
        return _SHARED
    base = tmp_path_factory.mktemp("ordered-fleet")
    repo = monorepo(base)
    commit(repo, "v1")
    folder = base / "deployments"
    made = seed_fleet(base_yaml(base, repo), 4, folder)
    config.add_cleanup(lambda: remove_fleet(made))
    services.KEPT.update(m["name"] for m in made)  # test_atomic releases them after this module ended
    names = {m["name"][-2:]: m["name"] for m in made}
    for short, deps in DEPENDS.items():
        set_depends_on(folder, names[short], [names[d] for d in deps])
    _SHARED.update(folder=folder, repo=repo, services=made, names=[names[k] for k in sorted(names)])
    with deployments(folder):
        _SHARED["v1"] = release_fleet(max_parallel=4, return_state=True)
    return _SHARED


@pytest.fixture(scope="module")
def fleet(tmp_path_factory: pytest.TempPathFactory, request: pytest.FixtureRequest) -> Iterator[dict[str, Any]]:
    shared = shared_fleet(tmp_path_factory, request.config)
    with deployments(shared["folder"]):
        yield shared


class deployments:
    """ECS_PIPELINE_DEPLOYMENTS set to FOLDER inside the block, as it was after."""

    def __init__(self, folder: Path) -> None:
        self.folder, self.before = folder, os.environ.get(ENV)

    def __enter__(self) -> None:
        self.before = os.environ.get(ENV)
        os.environ[ENV] = str(self.folder)

    def __exit__(self, *_: object) -> None:
        if self.before is None:
            os.environ.pop(ENV, None)
        else:
            os.environ[ENV] = self.before


def fleet_rows(state: Any) -> dict[str, dict[str, Any]]:
    """The fleet run's lines by service (its state's data, a Failed one's too)."""
    rows: dict[str, dict[str, Any]] = state.result(raise_on_failure=False)
    return rows


def run_times(rows: dict[str, dict[str, Any]]) -> dict[str, tuple[datetime, datetime]]:
    """Each service's deploy-service run: when it started and ended, as the Prefect server recorded them."""
    found: dict[str, tuple[datetime, datetime]] = {}
    with get_client(sync_client=True) as client:
        for name, row in rows.items():
            run = client.read_flow_run(UUID(row["flow_run_id"]))
            assert run.start_time is not None and run.end_time is not None, run
            found[name] = (run.start_time, run.end_time)
    return found


@pytest.mark.timeout(300)
def test_four_services_release_in_dependency_order(fleet: dict[str, Any]) -> None:
    one, two, three, four = fleet["names"]
    state = fleet["v1"]
    rows = fleet_rows(state)
    assert state.is_completed(), state.message
    assert [rows[n]["wave"] for n in fleet["names"]] == [1, 2, 1, 2], rows
    times = run_times(rows)
    # A dependent starts after what it depends on ended Deployed (blue torn down), not merely shifted.
    assert times[two][0] >= times[one][1], times
    assert times[four][0] >= max(times[one][1], times[three][1]), times
    assert rows[three]["wave"] == rows[one]["wave"], "independent services share a wave"


def pipeline_calls_since(seq: int) -> list[str]:
    found = control("GET", f"/_sandbox/requests?since={seq}&agent={PIPELINE_AGENT}")["requests"]
    return [f"{r['service']}:{r['operation']}" for r in found]


def test_a_circle_is_refused_before_any_aws_call(fleet: dict[str, Any], tmp_path: Path) -> None:
    folder = tmp_path / "deployments"
    shutil.copytree(fleet["folder"], folder)
    one, two, three, _ = fleet["names"]
    set_depends_on(folder, three, [two])  # 02 already depends on 01: 01 → 03 → 02 → 01
    set_depends_on(folder, one, [three])
    seq = int(control("GET", "/_sandbox/requests?since=0")["last"])
    with deployments(folder):
        state = release_fleet(return_state=True)
    assert state.is_failed()
    message = str(state.message)
    assert f"depends_on goes round in a circle: {one} → {three} → {two} → {one}" in message, message
    assert "remove one of these dependencies" in message
    assert pipeline_calls_since(seq) == [], "refused before any AWS call"
