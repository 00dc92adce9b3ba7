"""An atomic fleet: when its last service fails, the three it already moved go back, without a failed request.

The four services of tests/test_fleet_order_release.py (02 depends on 01, 04
on 01 and 03), released at v1 once for both modules. Here 04 is built
from Dockerfile.broken (its / answers 500, so its green fails verification):
v2 as an atomic fleet, with steady load on every production listener, then v3
not atomic (02 and 04 only: one wave, as neither depends on the other).
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from contextlib import ExitStack
from pathlib import Path
from types import SimpleNamespace
from typing import Any, cast

import pytest
import yaml

from flows.fleet import release_fleet
from harness.faults import Load, version_of
from harness.fleet_repo import commit
from harness.services import HTTP, ServiceUnderTest, aws
from tests.test_fleet_order_release import deployments, fleet_rows, run_times, shared_fleet


@pytest.fixture(scope="module")
def fleet(tmp_path_factory: pytest.TempPathFactory, request: pytest.FixtureRequest) -> Iterator[dict[str, Any]]:
    shared = shared_fleet(tmp_path_factory, request.config)
    with deployments(shared["folder"]):
        yield shared


def break_last(fleet: dict[str, Any]) -> str:
    """The last service builds from Dockerfile.broken from now on."""
    name = str(fleet["names"][-1])
    path = Path(fleet["folder"]) / f"{name}.yaml"
    data = yaml.safe_load(path.read_text())
    data["build"] = {**data.get("build", {}), "dockerfile": "Dockerfile.broken"}
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return name


def live(fleet: dict[str, Any]) -> dict[str, tuple[str, str, int]]:
    """Per service, as ECS shows it: the primary task set's task definition, its image, and how many task sets."""
    found = {}
    for svc in fleet["services"]:
        cfg = yaml.safe_load(Path(svc["yaml"]).read_text())
        service = aws("ecs").describe_services(cluster=cfg["ecs"]["cluster"], services=[cfg["ecs"]["service"]])
        sets = service["services"][0]["taskSets"]
        primary = next(ts for ts in sets if ts["status"] == "PRIMARY")
        taskdef = aws("ecs").describe_task_definition(taskDefinition=primary["taskDefinition"])["taskDefinition"]
        found[svc["name"]] = (primary["taskDefinition"], taskdef["containerDefinitions"][0]["image"], len(sets))
    return found


def loads(fleet: dict[str, Any]) -> dict[str, Load]:
    return {s["name"]: Load(cast(ServiceUnderTest, SimpleNamespace(prod_url=s["production"])))
            for s in fleet["services"]}  # fmt: skip


def serving(fleet: dict[str, Any], name: str) -> str:
    """The version production answers with; a broken one's 500 ("sample-app v3: broken") is no version."""
    url = next(s["production"] for s in fleet["services"] if s["name"] == name)
    resp = HTTP.get(url + "/", timeout=5)
    return str(version_of(resp.text)) if resp.status_code == 200 else f"{resp.status_code} {resp.text.strip()}"


@pytest.mark.timeout(300)
def test_atomic_a_failure_in_the_last_service_puts_the_others_back_with_no_failed_request(
    fleet: dict[str, Any],
) -> None:
    names = fleet["names"]
    last, others = break_last(fleet), names[:-1]
    before, was = live(fleet), {n: serving(fleet, n) for n in names}
    commit(fleet["repo"], "v2")
    load = loads(fleet)
    with ExitStack() as stack:
        for each in load.values():
            stack.enter_context(each)
        state = release_fleet(max_parallel=4, atomic=True, return_state=True)
    for name, each in load.items():
        assert each.failed == [] and each.ok > 20, f"{name}: {each.failed[:5]} failed of {each.ok + len(each.failed)}"
    for name in others:
        assert load[name].versions["v2"] > 0, f"{name} served v2 while the fleet held it: {load[name].versions}"
    message = str(state.message)
    assert state.is_failed() and f"atomic: {last} failed (Rolled back: " in message, message
    went_back = re.search(r"; ([^;]*) went back to what they ran before the fleet", message)
    assert went_back and sorted(went_back.group(1).split(", ")) == others, message
    rows = fleet_rows(state)
    assert rows[last]["outcome"] == "failed" and "500" in rows[last]["reason"], rows[last]
    for name in others:
        assert rows[name]["outcome"] == "reverted" and rows[name]["state"] == "Rolled back", rows[name]
        assert rows[name]["reason"].startswith(f"the fleet goes back: {last} failed"), rows[name]
        assert rows[name]["ended_on"].endswith("(as before the fleet)"), rows[name]
    after = live(fleet)
    for name in names:
        assert after[name][:2] == before[name][:2], f"{name} is back on its previous revision and digest"
        assert after[name][2] == 1, f"{name}: only blue's task set is left"
        assert serving(fleet, name) == was[name]
    # In reverse dependency order: 01 (which 02 depends on) went back only after 02 had.
    ended = run_times({n: rows[n] for n in others})
    assert ended[names[0]][1] >= ended[names[1]][1], ended




@pytest.mark.timeout(300)
def test_without_atomic_the_others_stay_on_the_new_version_and_the_outcome_says_so(fleet: dict[str, Any]) -> None:
    two, last = fleet["names"][1], break_last(fleet)
    sha = commit(fleet["repo"], "v3")
    state = release_fleet(services=[two, last], max_parallel=4, return_state=True)
    message = str(state.message)
    assert state.is_failed() and f"not atomic: {last} failed (Rolled back: " in message, message
    assert f"; {two} stay on the new version" in message, message
    rows = fleet_rows(state)
    assert rows[two]["state"] == "Deployed" and rows[two]["ended_on"] == f"new version @{sha[:7]}", rows[two]
    assert rows[last]["outcome"] == "failed" and rows[last]["ended_on"] == "", rows[last]
    assert serving(fleet, two) == "v3" and serving(fleet, last) == "v1"
