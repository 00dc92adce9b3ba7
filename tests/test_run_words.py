"""The words a run shows in the Prefect UI's lists and pages, as tables (no sandbox, no Prefect server).

The runs list shows a run's name and state, not its state message: the verdict
goes at the end of the name. A deployment's parameter table shows each
parameter's ``type`` only. Console links go only to consoles that exist.
"""

from __future__ import annotations

from typing import Any

import pytest
from prefect.states import Cancelled, Completed, Failed
from prefect.utilities.callables import parameter_schema

from flows.fleet import release_fleet
from flows.pipeline import deploy_service
from flows.serve import typed_parameters
from tasks.aws.codedeploy import console_link
from tasks.aws.codedeploy import console_url as codedeploy_console
from tasks.config.models import parse_service
from tasks.core.settings import Settings
from tasks.release.outcome import (
    outcome_of,
    outcome_tag,
    reason_in,
    release_name,
    verdict_run_name,
    verdict_words,
)
from tasks.release.runs import fleet_run_name
from tasks.strategies.ecs_native import console_url as native_console


@pytest.mark.parametrize(
    ("outcome", "stage", "words"),
    [("Failed", "build", "Build failed"), ("Failed", "push", "Push failed"),
     ("Failed", "check permissions", "Failed"), ("Failed", None, "Failed"),
     ("Rolled back", "shift traffic", "Rolled back"), ("Deployed", "teardown blue", "Deployed")],
)  # fmt: skip
def test_a_failure_says_which_stage_when_that_is_where_to_look(outcome: str, stage: str | None, words: str) -> None:
    assert verdict_words(outcome, stage) == words


@pytest.mark.parametrize(
    ("name", "verdict", "named"),
    [("deploy sample-app@1a2b3c4", "Rolled back", "deploy sample-app@1a2b3c4 · rolled back"),
     ("deploy sample-app@1a2b3c4 · rolled back", "Deployed", "deploy sample-app@1a2b3c4 · deployed"),
     ("deploy sample-app@1a2b3c4", "Build failed", "deploy sample-app@1a2b3c4 · build failed"),
     ("rollback sample-app", "Rolled back", "rollback sample-app · rolled back")],
)  # fmt: skip
def test_the_run_name_ends_with_the_verdict_once(name: str, verdict: str, named: str) -> None:
    """A retried run replaces its earlier attempt's verdict."""
    assert verdict_run_name(name, verdict) == named
    assert release_name(named) == release_name(name) == name.split(" · ")[0]


@pytest.mark.parametrize(
    ("state", "outcome", "reason"),
    [(Failed(message="Build failed: phase pre_build exited 1"), "Failed", "phase pre_build exited 1"),
     (Failed(message="Push failed: denied"), "Failed", "denied"),
     (Failed(message="Rolled back: GET / returned 500 (production on blue)"), "Rolled back",
      "GET / returned 500 (production on blue)"),
     (Completed(message="Deployed: a@1a2b3c4 serves 100% of production"), "Deployed",
      "a@1a2b3c4 serves 100% of production"),
     (Cancelled(message="Superseded: by newer run x"), "Superseded", "by newer run x"),
     (Failed(message="Engine: something else"), "Failed", "Engine: something else")],
)  # fmt: skip
def test_the_verdict_words_read_back_as_their_outcome(state: Any, outcome: str, reason: str) -> None:
    assert (outcome_of(state), reason_in(state)) == (outcome, reason)


@pytest.mark.parametrize("words", ["Build failed", "Push failed"])
def test_a_stage_verdict_tag_is_still_the_one_the_ui_lists_show(words: str) -> None:
    tags = ["service:sample-app", "sha:" + "a" * 40, "trigger:webhook", "ecs-pipeline", outcome_tag(words)]
    assert sorted(tags, key=str.casefold)[-1] == outcome_tag(words) == "verdict:" + words.lower().replace(" ", "-")


SHA = "a1b2c3d" + "0" * 33


@pytest.mark.parametrize(
    ("selection", "shas", "count", "name"),
    [(["sample-app", "api"], [None], 2, "fleet sample-app,api @head"),
     (["sample-app", "api"], [SHA, SHA], 2, "fleet sample-app,api @a1b2c3d"),
     (None, [None], None, "fleet all services @head"),
     (None, [SHA] * 20, 20, "fleet 20 services @a1b2c3d"),
     (None, [SHA, "f" * 40], 2, "fleet 2 services @head"),
     ([f"service-{n:02d}" for n in range(20)], [SHA], 20, "fleet 20 services @a1b2c3d"),
     (["shop-*"], [SHA], 1, "fleet shop-* @a1b2c3d"),
     ([f"service-{n:02d}" for n in range(9)], [None], None, "fleet 9 selections @head")],
)  # fmt: skip
def test_a_fleet_run_is_named_after_what_it_releases(
    selection: list[str] | None, shas: list[str | None], count: int | None, name: str
) -> None:
    assert fleet_run_name(selection, shas, count) == name


def native_service() -> Any:
    return parse_service({
        "name": "api", "source": {"repo": "https://github.com/acme/api.git"}, "ecr": {"repository": "api"},
        "ecs": {"cluster": "prod", "service": "api", "container": "web", "container_port": 80},
        "task_definition": "taskdef.json", "strategy": {"type": "rolling"},
    }, source="api.yaml")  # fmt: skip


@pytest.mark.parametrize(
    ("endpoint", "console"),
    [(None, True), ("https://ecs.eu-west-3.amazonaws.com", True), ("https://ecs-fips.eu-west-3.api.aws", True),
     ("http://127.0.0.1:4566", False), ("http://localhost:4566", False), ("https://aws.example.internal", False)],
)  # fmt: skip
def test_console_links_only_where_a_console_exists(endpoint: str | None, console: bool) -> None:
    settings = Settings(endpoint_url=endpoint, region="eu-west-3")
    cd, native = codedeploy_console(settings, "d-ABC123"), native_console(settings, native_service())
    if console:
        assert cd == "https://eu-west-3.console.aws.amazon.com/codesuite/codedeploy/deployments/d-ABC123?region=eu-west-3"
        assert native == ("https://eu-west-3.console.aws.amazon.com/ecs/v2/clusters/prod/services/api/deployments"
                          "?region=eu-west-3")
        assert console_link("x", native) == f"[x]({native})"
    else:
        assert (cd, native, console_link("x", native)) == ("", "", "`x`")


@pytest.mark.parametrize("flow", [deploy_service, release_fleet], ids=["deploy-service", "release-fleet"])
def test_every_parameter_has_a_description_and_a_type_the_ui_shows(flow: Any) -> None:
    """The UI's parameter table reads each property's ``type``; its run form shows the description."""
    schema = typed_parameters(parameter_schema(flow.fn).model_dump())
    shown = {k: (p.get("type"), bool(p.get("description"))) for k, p in schema["properties"].items()}
    assert all(kind and described for kind, described in shown.values()), shown
    assert schema["properties"]["sha"]["type"] == "string"


def test_an_optional_parameter_written_as_its_type_still_takes_null() -> None:
    """Prefect's own validation of a run's parameters (the server's, with enforce_parameter_schema)."""
    from prefect.utilities.schema_tools.validation import ValidationError, validate  # jsonschema: 0.4 s to load

    schema = typed_parameters(parameter_schema(deploy_service.fn).model_dump())
    for params in ({"service": "a"}, {"service": "a", "sha": None}, {"service": "a", "sha": "1a2b3c4"}):
        validate(params, schema, raise_on_error=True)
    with pytest.raises(ValidationError, match="sha"):
        validate({"service": "a", "sha": 7}, schema, raise_on_error=True)
    fleet = typed_parameters(parameter_schema(release_fleet.fn).model_dump())
    assert fleet["properties"]["services"]["items"] == {"type": "string"}
    validate({"services": None}, fleet, raise_on_error=True)
    validate({"services": ["shop-*"]}, fleet, raise_on_error=True)
