"""A fleet's order from depends_on: layers, waves within them, and what is refused before any AWS call.

The rules as tables (pure functions); the fleet flow uses ``waves_in_order``.
"""

from __future__ import annotations

from typing import Any

import pytest

from tasks.config.models import parse_service
from tasks.core.errors import ConfigError
from tasks.release.fleet_order import (
    blocked_by,
    check_dependencies,
    dependency_layers,
    find_cycle,
    waves_in_order,
    why_held,
)
from tasks.release.fleet_plan import FleetSummary, Outcome, ServiceResult


def config(name: str, *depends_on: str) -> Any:
    data = {"name": name, "source": {"repo": "https://github.com/acme/mono.git"}, "ecr": {"repository": name},
            "ecs": {"cluster": "c", "service": name, "container": "web", "container_port": 80},
            "task_definition": "taskdef.json", "strategy": {"type": "rolling"},
            "depends_on": list(depends_on)}  # fmt: skip
    return parse_service(data, source=f"{name}.yaml")


# queue-schema ← api ← web; workers ← queue-schema; billing alone.
SHOP = [config("api", "queue-schema"), config("billing"), config("queue-schema"),
        config("web", "api"), config("workers", "queue-schema")]  # fmt: skip


def test_layers_put_every_service_after_what_it_depends_on() -> None:
    assert dependency_layers(SHOP) == [["billing", "queue-schema"], ["api", "workers"], ["web"]]


def test_waves_cut_each_layer_by_max_parallel_and_never_mix_layers() -> None:
    ready = [c.name for c in SHOP]
    assert waves_in_order(SHOP, ready, 1) == [["billing"], ["queue-schema"], ["api"], ["workers"], ["web"]]
    assert waves_in_order(SHOP, ready, 4) == [["billing", "queue-schema"], ["api", "workers"], ["web"]]
    # A service with nothing to release (not ready) leaves its place empty, not its dependents' order.
    assert waves_in_order(SHOP, ["web", "api", "billing"], 4) == [["billing"], ["api"], ["web"]]


def test_a_dependency_outside_the_selection_orders_nothing() -> None:
    web_only = [c for c in SHOP if c.name in ("web", "workers")]
    assert dependency_layers(web_only) == [["web", "workers"]]


def test_a_cycle_is_named_whole_and_refused() -> None:
    ring = [config("a", "c"), config("b", "a"), config("c", "b"), config("d")]
    assert find_cycle({c.name: c.depends_on for c in ring}) == ["a", "c", "b", "a"]
    with pytest.raises(ConfigError, match="depends_on goes round in a circle: a → c → b → a"):
        check_dependencies(ring)
    with pytest.raises(ConfigError, match="a → c → b → a"):
        waves_in_order(ring, ["a", "b", "c", "d"], 2)


def test_an_unknown_name_is_refused_with_the_services_that_exist() -> None:
    with pytest.raises(ConfigError, match=r"web: depends_on names apii, which is not a service in deployments/"):
        check_dependencies([config("api"), config("web", "apii")])


def test_depending_on_itself_or_twice_is_a_config_error() -> None:
    with pytest.raises(ConfigError, match=r"depends_on names the service itself \(api\)"):
        config("api", "api")
    with pytest.raises(ConfigError, match="depends_on names a service twice"):
        config("web", "api", "api")


def test_blocked_by_follows_dependencies_through_the_chain() -> None:
    assert blocked_by(SHOP, "web", {"queue-schema"}) == ["queue-schema"]
    assert blocked_by(SHOP, "web", {"billing"}) == []
    assert blocked_by(SHOP, "billing", {"api"}) == []


@pytest.mark.parametrize(
    ("name", "ended", "stop", "atomic", "why"),
    [
        ("web", {"queue-schema": "ok", "api": "ok"}, False, False, None),
        ("web", {"queue-schema": "ok", "api": "failed"}, False, False, "held: depends on api, which did not deploy"),
        ("web", {"queue-schema": "held", "api": "held"}, False, False,
         "held: depends on api, queue-schema, which did not deploy"),
        ("billing", {"api": "failed"}, False, False, None),  # not its dependency: it goes on
        ("billing", {"api": "failed"}, True, False, "held: api failed first"),
        ("billing", {"api": "failed"}, False, True, "held: the fleet goes back (api failed)"),
        ("web", {"queue-schema": "skipped"}, False, False, "held: depends on queue-schema, which did not deploy"),
    ],
)  # fmt: skip
def test_why_a_service_is_held(name: str, ended: dict[str, str], stop: bool, atomic: bool, why: str | None) -> None:
    assert why_held(SHOP, name, ended, stop_on_first_failure=stop, atomic=atomic) == why


def test_the_outcome_names_the_failure_and_where_every_other_service_ended() -> None:
    def summary(atomic: bool, others: Outcome) -> FleetSummary:
        return FleetSummary(atomic=atomic, results=[
            ServiceResult("api", "1" * 40, 1, others, "Rolled back" if others == "reverted" else "Deployed"),
            ServiceResult("web", "1" * 40, 2, "failed", "Rolled back", reason="GET / returned 500"),
            ServiceResult("workers", "1" * 40, 3, "held", "Held", reason="held: the fleet goes back (web failed)"),
        ])  # fmt: skip

    atomic = summary(True, "reverted")
    assert atomic.aftermath() == ("atomic: web failed (Rolled back: GET / returned 500); api went back to what they "
                                  "ran before the fleet")
    assert atomic.headline() == ("0 of 3 deployed or unchanged; failed: web; held: workers; "
                                 "went back with the fleet: api")
    assert "| api | 1 | reverted | Rolled back |" in atomic.markdown()
    plain = summary(False, "ok")
    assert plain.aftermath() == "not atomic: web failed (Rolled back: GET / returned 500); api stay on the new version"
    assert FleetSummary(results=[ServiceResult("api", None, 1, "ok", "Deployed")]).aftermath() == ""
