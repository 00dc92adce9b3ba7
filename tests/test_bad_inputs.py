"""The bad-input corpus: every broken config, task definition and appspec fails at load.

Each folder under tests/bad_inputs/ is one case: a service YAML (``service.yaml``,
or several files) with its templates, and ``expected.txt``, the exact message a
person sees (``{dir}`` stands for the case folder). The message names the file,
the field and the fix and quotes nothing from the files: the credentials cases
carry AWS's documented example key, which must never appear. ``ok-*`` folders
are inputs that look odd but are valid. Released cases go through the real
deploy-service flow (and the CLI) and the sandbox's request log shows that not
one mutating AWS call was made and the registry got no image.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import pytest

from flows.cli import main
from flows.pipeline import deploy_service
from harness.services import HTTP
from tasks.config.appspec import PLACEHOLDER_ARN
from tasks.config.models import appspec_for, load_all_services
from tasks.core.errors import ConfigError

CORPUS = Path(__file__).resolve().parent / "bad_inputs"
BAD = sorted(d.name for d in CORPUS.iterdir() if d.is_dir() and not d.name.startswith("ok-"))
GOOD = sorted(d.name for d in CORPUS.iterdir() if d.is_dir() and d.name.startswith("ok-"))
SECRETS = ("AKIAIOSFODNN7EXAMPLE", "wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY")
# One of each kind, released for real: YAML syntax, strict type, cross-field rule,
# path escape (a file, and the build context Docker would send), a secret as template,
# a template AWS would refuse, a port the load balancer could not reach, appspec mismatch, two files.
RELEASED = {
    "yaml-tab": "yaml-tab",
    "desired-count-string": "desired-count-string",
    "rolling-with-traffic": "rolling-with-traffic",
    "taskdef-dotdot": "taskdef-dotdot",
    "credentials-as-taskdef": "credentials-as-taskdef",
    "taskdef-wrong-types": "taskdef-wrong-types",
    "appspec-mismatch": "appspec-mismatch",
    "duplicate-target": "dup-a",
    "build-context-absolute": "build-context-absolute",
    "taskdef-port-not-mapped": "taskdef-port-not-mapped",
}


def expected(case: str) -> str:
    return (CORPUS / case / "expected.txt").read_text().rstrip("\n").replace("{dir}", str(CORPUS / case))


def test_every_case_has_its_expected_message() -> None:
    assert len(BAD) >= 50
    assert [c for c in BAD if not (CORPUS / c / "expected.txt").is_file()] == []


@pytest.mark.parametrize("case", BAD)
def test_bad_input_fails_at_load_with_its_message(case: str) -> None:
    with pytest.raises(ConfigError) as err:
        load_all_services(CORPUS / case)
    message = str(err.value)
    assert message == expected(case)
    assert not any(secret in message for secret in SECRETS)


@pytest.mark.parametrize("case", GOOD)
def test_odd_but_valid_inputs_load(case: str) -> None:
    (cfg,) = load_all_services(CORPUS / case)
    appspec = appspec_for(cfg, PLACEHOLDER_ARN)
    props = appspec["Resources"][0]["TargetService"]["Properties"]
    assert props["TaskDefinition"] == PLACEHOLDER_ARN
    assert props["LoadBalancerInfo"] == {"ContainerName": "web", "ContainerPort": 8080}


def sandbox(path: str) -> Any:
    response = HTTP.get(f"{os.environ['AWS_ENDPOINT_URL']}{path}", timeout=10)
    response.raise_for_status()
    return response.json()


def last_request() -> int:
    return int(sandbox("/_sandbox/requests?since=0")["last"])


def assert_nothing_changed(since: int, repository: str) -> None:
    calls = sandbox(f"/_sandbox/requests?since={since}")["requests"]
    assert [c for c in calls if c["mutating"]] == [], "a refused input made no mutating AWS call"
    assert [c for c in calls if c["service"] == "ecr"] == [], "nor asked ECR anything"
    tags = HTTP.get(f"http://{os.environ['SANDBOX_REGISTRY']}/v2/{repository}/tags/list", timeout=10)
    assert tags.status_code == 404, "no image was pushed"


@pytest.mark.parametrize("case", sorted(RELEASED))
def test_released_bad_input_fails_the_run_and_changes_nothing(case: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ECS_PIPELINE_DEPLOYMENTS", str(CORPUS / case))
    since = last_request()
    state = deploy_service(RELEASED[case], return_state=True)
    assert state.is_failed()
    assert state.message == f"Failed: {expected(case)}"
    assert_nothing_changed(since, f"bad-{RELEASED[case]}")


def test_the_cli_names_the_file_and_changes_nothing(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    case = "credentials-as-appspec"
    monkeypatch.setenv("ECS_PIPELINE_DEPLOYMENTS", str(CORPUS / case))
    since = last_request()
    assert main(["deploy", case]) == 1
    out = capsys.readouterr()
    assert out.out.splitlines()[-1] == f"Failed: {expected(case)}"
    assert not any(secret in out.out + out.err for secret in SECRETS)
    assert_nothing_changed(since, f"bad-{case}")
