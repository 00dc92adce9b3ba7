"""A fleet of twenty outlives its orchestrator's bad minute.

Twenty copies of one service (``sandbox seed --copies 20``) on the sandbox's default Prefect
server (SQLite), released by one ``ecs-pipeline deploy --all`` process whose Prefect API sits
behind weather (sandbox/prefect_weather.py): a seeded share of its requests is answered 503,
502 or 429 before it reaches the server. Prefect's client retries those (the pipeline gives it
seven tries, flows/cli.py), so every service ends Deployed; and a service whose run the
orchestrator does fail outright gets its own line in the summary while the others go on.
"""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from prefect.client.orchestration import get_client
from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterName, FlowRunFilterParentFlowRunId

from harness.fleet_repo import base_yaml, commit, monorepo, remove_fleet
from harness.services import HTTP, ROOT
from sandbox.prefect_weather import PrefectWeather, Refusal
from sandbox.seed_fleet import seed_fleet
from tasks.release.outcome import outcome_of

COPIES = 20
RATE = 0.05  # one API request in twenty answered with a fault: about two per release


@pytest.fixture(scope="module")
def twenty(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    base = tmp_path_factory.mktemp("weather")
    repo = monorepo(base)
    commit(repo, "v1")
    made = seed_fleet(base_yaml(base, repo), COPIES, base / "deployments")
    try:
        yield {"repo": repo, "folder": base / "deployments", "services": made, "base": base}
    finally:
        remove_fleet(made)


def release(folder: Path, api_url: str, log: Path, *select: str) -> subprocess.CompletedProcess[str]:
    """``ecs-pipeline deploy --all`` (or ``--select`` each of SELECT) in its own process, its API at API_URL."""
    env = {**os.environ, "PREFECT_API_URL": api_url, "ECS_PIPELINE_DEPLOYMENTS": str(folder)}
    env.pop("PREFECT_CLIENT_MAX_RETRIES", None)  # the pipeline's own choice, not the test's
    which = [a for name in select for a in ("--select", name)] or ["--all"]
    with log.open("w") as out:
        done = subprocess.run([sys.executable, "-m", "flows.cli", "deploy", *which, "--max-parallel", str(COPIES)],
                              cwd=ROOT, env=env, stdout=out, stderr=subprocess.STDOUT, text=True, timeout=900)
    return done


def children_of(fleet_name: str) -> list[Any]:
    with get_client(sync_client=True) as client:
        fleets = client.read_flow_runs(flow_run_filter=FlowRunFilter(name=FlowRunFilterName(any_=[fleet_name])))
        assert len(fleets) == 1, [f.name for f in fleets]
        parent = FlowRunFilterParentFlowRunId(any_=[fleets[0].id])
        return list(client.read_flow_runs(flow_run_filter=FlowRunFilter(parent_flow_run_id=parent), limit=200))


@pytest.mark.timeout(900)
def test_twenty_services_deploy_through_503_502_and_429_from_the_prefect_api(
    twenty: dict[str, Any], tmp_path: Path
) -> None:
    sha = commit(twenty["repo"], "v2")
    upstream = os.environ["PREFECT_API_URL"].removesuffix("/api")
    log = tmp_path / "fleet.log"
    with PrefectWeather(upstream, RATE, seed=20) as weather:
        done = release(twenty["folder"], f"{weather.url}/api", log)
    output = log.read_text(errors="replace")
    assert done.returncode == 0, output[-4000:]
    assert f"Fleet deployed: {COPIES} of {COPIES} deployed or unchanged" in output, output[-4000:]
    # The weather did reach the fleet, every kind of it, and Prefect's client rode it out.
    assert all(weather.hits[code] >= 3 for code in ("503", "502", "429")), weather.hits
    names = sorted(s["name"] for s in twenty["services"])
    runs = children_of(f"fleet {COPIES} services @{sha[:7]}")
    assert sorted(r.parameters["service"] for r in runs) == names, "one run per service, none twice"
    assert {outcome_of(r.state) for r in runs} == {"Deployed"}, sorted((r.name, r.state.message) for r in runs)
    for svc in twenty["services"]:
        assert "v2" in HTTP.get(svc["production"], timeout=5).text, svc["name"]


def test_a_service_whose_run_the_orchestrator_fails_gets_its_own_line_and_the_others_deploy(
    twenty: dict[str, Any], tmp_path: Path
) -> None:
    first, lost = (s["name"] for s in twenty["services"][:2])
    by_service = {s["name"]: s for s in twenty["services"]}
    untouched = HTTP.get(by_service[lost]["production"], timeout=5).text  # what it serves before this fleet
    sha = commit(twenty["repo"], "v3")
    upstream = os.environ["PREFECT_API_URL"].removesuffix("/api")
    log = tmp_path / "fleet.log"
    # The server fails the creation of LOST's run with a 500, which Prefect's client does not retry.
    refusal = Refusal("POST", "/api/flow_runs/", f'"service":"{lost}"'.encode())
    with PrefectWeather(upstream, 0.0, refuse=[refusal]) as weather:
        done = release(twenty["folder"], f"{weather.url}/api", log, first, lost)
    output = log.read_text(errors="replace")
    assert weather.hits["500 refused"] >= 1, (weather.hits, output[-3000:])
    assert done.returncode == 1, output[-4000:]
    assert "Fleet failed: 1 of 2 deployed or unchanged; failed: " + lost in output, output[-4000:]
    assert f"{lost} failed (Crashed: the Prefect API failed this release's run: " in output, output[-4000:]
    assert "500 Internal Server Error" in output and f"reconciled by the next release of {lost}" in output
    assert "v3" in HTTP.get(by_service[first]["production"], timeout=5).text, first
    assert HTTP.get(by_service[lost]["production"], timeout=5).text == untouched, "nothing of it moved"
    runs = children_of(f"fleet {first},{lost} @{sha[:7]}")
    assert [r.parameters["service"] for r in runs] == [first], "no run of the refused one"
