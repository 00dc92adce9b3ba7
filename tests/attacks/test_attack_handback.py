"""Attacks through what a build hands back: artifact names, exported variables, links, the pushed image.

Each test is a pusher's buildspec (or the files its build writes) meeting the real
code path, and shows the attack fails with an error naming the field while nothing
outside the service's own folder changes.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from prefect import flow

from tasks.aws.clients import AwsClients
from tasks.build.buildspec_runner import BuildRun, copy_artifacts, run_buildspec
from tasks.build.pushed_image import adopt_image
from tasks.config.buildspec import Files, parse_buildspec
from tasks.config.models import ServiceConfig
from tasks.core.errors import BuildError, ConfigError
from tasks.core.settings import Settings
from tests.attacks.builds import service

SHA = "c" * 40


@pytest.fixture
def cfg(tmp_path: Path) -> ServiceConfig:
    return service(tmp_path, timeout_seconds=60)


@pytest.fixture
def layout(tmp_path: Path) -> dict[str, Path]:
    """The source a build runs in, the artifacts folder with another service's files, a worker file."""
    src, out, home = tmp_path / "src", tmp_path / "artifacts", tmp_path / "home"
    src.mkdir()
    (out / "billing" / "build").mkdir(parents=True)
    (out / "billing" / "build" / "imagedefinitions.json").write_text('[{"name":"web","imageUri":"billing@sha256:1"}]')
    (home / ".ssh").mkdir(parents=True)
    (home / ".ssh" / "id_ed25519").write_text("PRIVATE KEY OF THE WORKER\n")
    return {"src": src, "out": out, "home": home}


def snapshot(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def run(cfg: ServiceConfig, src: Path, out: Path, data: dict[str, object]) -> BuildRun:
    spec = parse_buildspec({"version": 0.2, **data}, "buildspec.yml")
    clients = AwsClients(Settings(artifacts_dir=out))

    @flow(name="attack-build", persist_result=False)
    def in_flow() -> BuildRun:
        return run_buildspec(cfg, clients, spec, SHA, src, "127.0.0.1:1/repo", lambda _line: None)

    return in_flow()


@pytest.mark.parametrize("name", ["../billing", "../../home/.ssh", "..", "a/b", "/tmp/x"])
def test_artifacts_name_cannot_leave_the_services_folder(name: str, layout: dict[str, Path]) -> None:
    before = {d: snapshot(layout[d]) for d in ("out", "home")}
    with pytest.raises(ConfigError, match=r"buildspec.yml: artifacts.name: must be one folder name"):
        parse_buildspec({"version": 0.2, "phases": {"build": {"commands": ["true"]}},
                         "artifacts": {"files": ["*"], "name": name}}, "buildspec.yml")
    assert {d: snapshot(layout[d]) for d in ("out", "home")} == before


def test_a_forged_artifacts_name_is_refused_at_copy_too(cfg: ServiceConfig, layout: dict[str, Path]) -> None:
    """Defence in depth: whatever name reaches the copy, it removes and writes nothing outside."""
    (layout["src"] / "imagedefinitions.json").write_text("[]")
    spec = parse_buildspec({"version": 0.2, "phases": {"build": {"commands": ["true"]}},
                            "artifacts": {"files": ["*"]}}, "buildspec.yml")
    forged = spec.__class__(spec.env, spec.phases, spec.reports,
                            Files(files=("*",), name="../billing"))
    before = snapshot(layout["out"])
    refused = re.escape("artifacts.name '../billing' leaves the service's artifacts folder")
    with pytest.raises(BuildError, match=refused):
        copy_artifacts(cfg, forged, layout["src"], layout["out"], BuildRun())
    assert snapshot(layout["out"]) == before


def test_exported_variable_names_are_never_shell_code(tmp_path: Path) -> None:
    marker = tmp_path / "pwned"
    with pytest.raises(ConfigError, match=r"env.exported-variables\[1\]: not a shell variable name"):
        parse_buildspec({"version": 0.2, "env": {"exported-variables": ["IMAGE_TAG", f"X;touch {marker}"]},
                         "phases": {"build": {"commands": ["true"]}}}, "buildspec.yml")
    assert not marker.exists()


def test_an_artifact_linked_to_a_worker_file_fails_the_build(cfg: ServiceConfig, layout: dict[str, Path]) -> None:
    key = layout["home"] / ".ssh" / "id_ed25519"
    before = snapshot(layout["out"])
    assert key.is_file()  # the worker's file the link names exists, so the glob can match the link
    with pytest.raises(BuildError) as err:
        run(cfg, layout["src"], layout["out"], {
            "phases": {"build": {"commands": [f"ln -s {key} key.txt", "mkdir -p out && ln -s / out/root"]}},
            "artifacts": {"files": ["key.txt"]},
        })
    assert "artifacts.files: key.txt is a symbolic link" in err.value.message
    assert snapshot(layout["out"]) == before  # nothing copied, another service's files untouched
    assert "PRIVATE KEY" not in str(err.value)


def test_artifacts_that_match_nothing_fail_the_build_as_codebuild_does(cfg: ServiceConfig,
                                                                      layout: dict[str, Path]) -> None:
    """CodeBuild ends UPLOAD_ARTIFACTS with "CLIENT_ERROR: no matching artifact paths found" when the
    file list is empty: a build whose output went missing fails rather than releasing without it."""
    with pytest.raises(BuildError) as err:
        run(cfg, layout["src"], layout["out"], {
            "phases": {"build": {"commands": ["echo built > elsewhere.txt"]}},
            "artifacts": {"files": ["dist/**/*"]},
        })
    assert "artifacts.files: no matching artifact paths found (dist/**/* under .)" in err.value.message


def test_a_report_read_through_a_linked_folder_fails_the_build(cfg: ServiceConfig, layout: dict[str, Path]) -> None:
    with pytest.raises(BuildError) as err:
        run(cfg, layout["src"], layout["out"], {
            "phases": {"build": {"commands": [f"ln -s {layout['home']} reports"]}},
            "reports": {"unit": {"files": ["**/*"], "base-directory": "reports"}},
        })
    assert "reports.unit.files" in err.value.message
    assert "PRIVATE KEY" not in str(err.value)


@pytest.mark.parametrize("named", [
    "evil.example.com/attacker/{repo}:latest",  # ends like the repository
    "evil.example.com/{repo}:latest",
    "127.0.0.1:1/other/{repo}@sha256:" + "0" * 64,
    "127.0.0.1:2/{repo}:latest",  # another registry host, same path
])
def test_the_pushed_image_must_be_exactly_the_services_repository(cfg: ServiceConfig, named: str) -> None:
    uri = f"127.0.0.1:1/{cfg.ecr.repository}"
    clients = AwsClients(Settings())
    definitions = [{"name": "web", "imageUri": named.format(repo=cfg.ecr.repository)}]
    with pytest.raises(BuildError, match=r"imagedefinitions.json: imageUri .* is not in the service's ECR repository"):
        adopt_image(cfg, clients, SHA, uri, definitions, lambda _line: None)

