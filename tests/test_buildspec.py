"""The buildspec reader: what is accepted, what is refused (naming the key), and CodeBuild's transitions."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from tasks.build.buildspec_runner import BuildRun, Failure
from tasks.build.junit import read_report
from tasks.config.buildspec import Phase, load_buildspec, parse_buildspec
from tasks.config.models import parse_service
from tasks.core.errors import ConfigError

MINIMAL: dict[str, Any] = {"version": 0.2, "phases": {"build": {"commands": ["true"]}}}


def spec(**extra: Any) -> dict[str, Any]:
    return {**MINIMAL, **extra}


def test_a_full_buildspec_is_read() -> None:
    parsed = load_buildspec(
        """
version: 0.2
env:
  shell: bash
  variables: {STAGE: prod, LEVEL: 3}
  parameter-store: {DB_HOST: /app/db-host}
  secrets-manager: {TOKEN: "app/token:api-key"}
  exported-variables: [IMAGE_TAG]
phases:
  install: {commands: [echo install]}
  pre_build: {on-failure: CONTINUE, commands: [echo pre], finally: [echo cleanup]}
  build: {commands: [echo build]}
  post_build: {on-failure: ABORT, commands: [echo post]}
reports:
  unit: {files: ["**/*.xml"], base-directory: reports, discard-paths: yes}
artifacts: {files: [imagedefinitions.json], name: out}
""",
        "buildspec.yml",
    )
    assert [p.name for p in parsed.phases] == ["install", "pre_build", "build", "post_build"]
    assert parsed.env.shell == "bash" and parsed.env.variables == {"STAGE": "prod", "LEVEL": "3"}
    assert parsed.env.exported == ("IMAGE_TAG",)
    assert parsed.phases[1].finally_ == ("echo cleanup",) and parsed.phases[1].on_failure == "CONTINUE"
    assert parsed.reports["unit"].discard_paths is True
    assert parsed.artifacts is not None and parsed.artifacts.name == "out"


@pytest.mark.parametrize(
    ("data", "expected"),
    [
        (spec(batch={"fast-fail": True}), "batch: not supported: batch builds"),
        (spec(cache={"paths": ["x"]}), "cache: not supported"),
        (spec(proxy={"logs": True}), "proxy: not supported"),
        ({**spec(), "run-as": "root"}, "run-as: not supported"),
        ({"version": 0.2, "phases": {"install": {"runtime-versions": {"python": 3.11}, "commands": ["x"]}}},
         "phases.install.runtime-versions: not supported"),
        ({"version": 0.2, "phases": {"build": {"run-as": "me", "commands": ["x"]}}}, "phases.build.run-as"),
        (spec(env={"git-credential-helper": "yes"}), "env.git-credential-helper: not supported"),
        (spec(artifacts={"files": ["a"], "secondary-artifacts": {}}), "artifacts.secondary-artifacts"),
        (spec(reports={"r": {"files": ["a"], "file-format": "CUCUMBERJSON"}}), "only JUNITXML"),
        (spec(reports={"r": {"files": ["a"], "base-directory": "../x"}}), "reports.r.base-directory"),
        (spec(unknown=1), "unknown: unknown or unsupported key"),
        ({**spec(), "version": 0.1}, "version: must be 0.2"),
        ({"version": 0.2, "phases": {"build": {"on-failure": "RETRY", "commands": ["x"]}}},
         "phases.build.on-failure: expected ABORT or CONTINUE"),
        ({"version": 0.2, "phases": {"test": {"commands": ["x"]}}}, "phases.test: unknown or unsupported"),
        ({"version": 0.2, "phases": {"build": {"commands": [{"echo": "a"}]}}}, "phases.build.commands[0]"),
        ({"version": 0.2, "phases": {}}, "no commands in any phase"),
        (spec(env={"variables": {"CODEBUILD_X": "1"}}), "CODEBUILD_ prefix is reserved"),
        (spec(env={"variables": {"A": "1"}, "parameter-store": {"A": "/p"}}), "also set in env.variables"),
        (spec(env={"shell": "powershell.exe"}), "env.shell: supported shells"),
        (spec(env={"secrets-manager": {"S": "s"}, "exported-variables": ["S"]}), "never exported"),
    ],
)
def test_refused_keys_are_named(data: dict[str, Any], expected: str) -> None:
    with pytest.raises(ConfigError) as err:
        parse_buildspec(data, "buildspec.yml")
    assert expected in str(err.value)
    assert str(err.value).startswith("buildspec.yml: ")


@pytest.mark.parametrize(
    ("name", "on_failure", "continues"),
    [
        ("install", None, False),
        ("pre_build", None, False),
        ("build", None, True),  # CodeBuild runs post_build after a failed build
        ("post_build", None, False),
        ("build", "ABORT", False),
        ("pre_build", "CONTINUE", True),
    ],
)
def test_phase_transitions_follow_codebuild(name: str, on_failure: Any, continues: bool) -> None:
    assert Phase(name, ("x",), on_failure=on_failure).continues_after_failure() is continues


@pytest.mark.parametrize(
    ("phases", "stopped_in", "uploads"),
    [
        ([("install", "SUCCEEDED"), ("build", "SUCCEEDED")], None, True),
        ([("pre_build", "FAILED")], "pre_build", False),  # CodeBuild goes on to FINALIZING
        ([("install", "SUCCEEDED"), ("pre_build", "FAILED")], "pre_build", False),
        ([("install", "FAILED")], "install", False),
        ([("pre_build", "FAILED")], None, True),  # on-failure CONTINUE: on to the (empty) BUILD phase
        ([("build", "FAILED"), ("post_build", "SUCCEEDED")], None, True),  # attempted even if BUILD fails
        ([("build", "SUCCEEDED"), ("post_build", "FAILED")], "post_build", True),
        ([("build", "FAILED")], "build", True),  # on-failure ABORT
        ([("build", "TIMED_OUT")], "build", False),
    ],
)
def test_artifacts_are_uploaded_when_codebuild_would(phases: list[tuple[str, str]], stopped_in: str | None,
                                                     uploads: bool) -> None:
    failed = any(state != "SUCCEEDED" for _, state in phases)
    run = BuildRun(phases=phases, failure=Failure("x", "false", 1, ()) if failed else None, stopped_in=stopped_in)
    assert run.uploads_artifacts() is uploads


def service(buildspec: Any) -> dict[str, Any]:
    return {"name": "svc", "source": {"repo": "."}, "ecr": {"repository": "svc"},
            "ecs": {"cluster": "c", "service": "s", "container": "web", "container_port": 80},
            "task_definition": "taskdef.json", "strategy": {"type": "rolling"},
            "build": {"buildspec": buildspec}}


def test_service_yaml_takes_a_path_or_inline_buildspec() -> None:
    assert parse_service(service("ci/buildspec.yml"), source="s.yaml").build.inline_buildspec() is None
    inline = parse_service(service(MINIMAL), source="s.yaml").build.inline_buildspec()
    assert inline is not None and inline.phases[0].commands == ("true",)
    text = "version: 0.2\nphases:\n  build:\n    commands: [make]\n"
    as_text = parse_service(service(text), source="s.yaml").build.inline_buildspec()
    assert as_text is not None and as_text.phases[0].commands == ("make",)


@pytest.mark.parametrize(
    ("buildspec", "expected"),
    [
        ("../other/buildspec.yml", "build.buildspec: '..' leads build.buildspec outside"),
        ("/etc/buildspec.yml", "build.buildspec: absolute paths are refused"),
        (spec(cache={"paths": ["x"]}), "build.buildspec: inline buildspec: cache: not supported"),
    ],
)
def test_service_yaml_refuses_bad_buildspecs_at_load(buildspec: Any, expected: str) -> None:
    with pytest.raises(ConfigError) as err:
        parse_service(service(buildspec), source="s.yaml")
    assert expected in str(err.value)


def test_junit_failures_come_first_with_their_message(tmp_path: Path) -> None:
    xml = tmp_path / "junit.xml"
    xml.write_text(
        '<testsuites><testsuite name="s"><testcase classname="a" name="ok" time="0.5"/>'
        '<testcase classname="a" name="bad"><failure message="expected 200, got 500">trace</failure></testcase>'
        '<testcase name="later"><skipped/></testcase></testsuite></testsuites>'
    )
    (tmp_path / "broken.xml").write_text("<testsuites>")
    report = read_report("unit", [xml, tmp_path / "broken.xml"])
    assert report.headline() == "1 passed, 1 failed, 1 skipped (1 unreadable file(s))"
    first = report.rows()[0]
    assert (first["test"], first["status"], first["message"]) == ("a.bad", "failed", "expected 200, got 500")


def test_keys_that_look_like_secrets_are_not_named() -> None:
    """A buildspec is a file of the commit: a key pasted in by mistake may be a credential."""
    for text, where in (
        ("version: 0.2\nAKIAIOSFODNN7EXAMPLE: x\nphases: {build: {commands: [make]}}\n", "b.yml: <key not shown"),
        ("version: 0.2\nenv: {variables: {wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY: x}}\n"
         "phases: {build: {commands: [make]}}\n", "b.yml: env.variables.<key not shown"),
    ):
        with pytest.raises(ConfigError) as err:
            load_buildspec(text, "b.yml")
        assert str(err.value).startswith(where), str(err.value)
        assert "AKIA" not in str(err.value) and "wJalr" not in str(err.value)
