"""Attack: a buildspec prints the secrets it was given in another form than the plain one.

A pusher's build gets Parameter Store and Secrets Manager values; printing them
base64-, URL- or JSON-encoded (at any offset inside a longer encoded text) must
not put them in the build log, the failure message or the test report.
"""

from __future__ import annotations

import base64
import json
import urllib.parse
import uuid
from pathlib import Path

import pytest
from prefect import flow

from harness.services import aws
from tasks.aws.clients import AwsClients
from tasks.build.buildspec_runner import BuildRun, run_buildspec
from tasks.config.buildspec import parse_buildspec
from tasks.config.models import parse_service
from tasks.core.errors import BuildError
from tasks.core.settings import Settings


def forms(secret: str) -> list[str]:
    """What an attacker's build could print, and what must not be found anywhere."""
    raw = secret.encode()
    return [
        base64.b64encode(raw).decode(),
        base64.b64encode(b"x" + raw).decode(),
        base64.b64encode(b"xy" + raw + b"tail").decode(),
        base64.urlsafe_b64encode(b"xyz" + raw).decode(),
        urllib.parse.quote(secret, safe=""),
        json.dumps({"k": secret}),
    ]


def test_encoded_secrets_are_masked_in_log_failure_and_report(tmp_path: Path) -> None:
    name = "atk" + uuid.uuid4().hex[:8]
    cfg = parse_service(
        {"name": name, "source": {"repo": "https://git.example.com/org/app"}, "ecr": {"repository": name},
         "ecs": {"cluster": "c", "service": name, "container": "web", "container_port": 80},
         "task_definition": "taskdef.json", "strategy": {"type": "rolling"}},
        source="test.yaml", base_dir=tmp_path,
    )
    secret = "s3cr3t/" + uuid.uuid4().hex + "+&=\"x"
    aws("ssm").put_parameter(Name=f"/{name}/db", Value=secret, Type="SecureString")
    src = tmp_path / "src"
    src.mkdir()
    printed = forms(secret)
    (src / "leak.txt").write_text("\n".join(printed) + "\n")
    (src / "report.xml").write_text(
        '<testsuite name="t"><testcase name="leak"><failure message="'
        + " ".join(p.replace('"', "&quot;") for p in printed) + '"/></testcase></testsuite>')
    spec = parse_buildspec({"version": 0.2, "env": {"parameter-store": {"DB": f"/{name}/db"}},
                            "phases": {"build": {"commands": [
                                'test "$DB" = "$(sed -n 1p leak.txt | base64 -d)"',  # the build really has it
                                "cat leak.txt", "cat leak.txt >&2; exit 1"]}},
                            "reports": {"unit": {"files": ["report.xml"]}}}, "buildspec.yml")
    lines: list[str] = []
    clients = AwsClients(Settings(artifacts_dir=tmp_path / "artifacts"))

    @flow(name="attack-masking", persist_result=False)
    def build() -> BuildRun:
        return run_buildspec(cfg, clients, spec, "d" * 40, src, "127.0.0.1:1/repo", lines.append)

    with pytest.raises(BuildError) as err:
        build()
    seen = "\n".join([*lines, err.value.message, str(err.value)])
    assert seen.count("***") >= len(printed)
    for leaked in [secret, *printed]:
        assert leaked not in seen
    # the core of every base64 form is gone, not only the exact strings above
    assert base64.b64encode(secret.encode()).decode()[:12] not in seen
