"""The lines a person sees from `ecs-pipeline`: deploy, --dry-run, status, render, diff, rollback."""

from __future__ import annotations

import json
from collections.abc import Callable

import pytest

from flows.cli import main
from tests.release_helpers import ServiceUnderTest


@pytest.fixture
def service(new_service: Callable[..., ServiceUnderTest]) -> ServiceUnderTest:
    return new_service()


def run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str]:
    code = main(list(argv))
    out = capsys.readouterr()
    return code, out.out + out.err


def test_dry_run_deploy_status_render_diff_and_rollback(
    service: ServiceUnderTest, capsys: pytest.CaptureFixture[str]
) -> None:
    sha1 = service.commit("v1b")
    code, out = run(capsys, "deploy", service.name, "--dry-run")
    assert code == 0
    assert f"release {sha1} (live: nothing)" in out
    assert "build + push: would run" in out
    assert "strategy task-sets: production 100%" in out
    assert service.task_sets() == [], "a dry run changes nothing"

    code, out = run(capsys, "deploy", service.name)
    assert (code, out.strip().splitlines()[-1].split(":")[0]) == (0, "Deployed"), out

    code, out = run(capsys, "deploy", service.name, "--dry-run")
    assert "no change: production already runs this commit" in out

    code, out = run(capsys, "status", service.name)
    assert code == 0
    assert f"git sha: {sha1}" in out
    assert f"production traffic: {service.name}-a 100%" in out
    assert "PRIMARY" in out

    code, out = run(capsys, "render", service.name, "--image", "example/app:1")
    rendered = json.loads(out)
    assert rendered["family"] == service.name
    assert rendered["containerDefinitions"][0]["image"] == "example/app:1"

    code, out = run(capsys, "diff", service.name)
    assert out.strip() == "no differences", out

    service.commit("v2")
    code, out = run(capsys, "deploy", service.name)
    assert code == 0, out
    assert "v2" in service.get("/").text

    code, out = run(capsys, "rollback", service.name)
    assert code == 0, out
    assert out.startswith("Deployed"), out
    assert "v1b" in service.get("/").text


def test_unknown_service_is_a_clear_error(service: ServiceUnderTest, capsys: pytest.CaptureFixture[str]) -> None:
    code, out = run(capsys, "status", "no-such-service")
    assert code == 2
    assert "error: no service named 'no-such-service'" in out
    assert service.name in out, "the known services are listed"
