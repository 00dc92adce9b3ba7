"""Attack: a pusher's buildspec reads the pipeline's AWS identity from its environment.

The pipeline holds the deploy identity (here the sandbox's keys in this process's
environment). A build gets none of it: no keys, no profile, no credential files;
with ``build.role_arn`` it gets the build role's short-lived keys instead, masked
in its log, narrowed to the service's own repository and the names its buildspec
reads.
"""

from __future__ import annotations

import contextlib
import json
import os
from pathlib import Path

import pytest

from harness.services import aws
from tasks.build.build_identity import session_policy
from tasks.config.buildspec import parse_buildspec
from tasks.config.models import ServiceConfig
from tests.attacks.builds import Build, service

PRINT = ('echo "id=${AWS_ACCESS_KEY_ID:-none} key=${AWS_SECRET_ACCESS_KEY:-none} '
         'token=${AWS_SESSION_TOKEN:-none} profile=${AWS_PROFILE:-none} files=$AWS_SHARED_CREDENTIALS_FILE"')


def build(cfg: ServiceConfig, tmp_path: Path, commands: list[str]) -> list[str]:
    run = Build(cfg, tmp_path)
    run(commands)
    return run.output()


def test_a_build_without_a_role_gets_no_aws_identity(tmp_path: Path) -> None:
    deploy_key = os.environ["AWS_ACCESS_KEY_ID"]  # the pipeline's own identity is in this process
    assert deploy_key and os.environ.get("AWS_SECRET_ACCESS_KEY")
    printed = build(service(tmp_path), tmp_path, [PRINT, "env | grep -c '^AWS_.*KEY' || true"])
    assert printed == ["id=none key=none token=none profile=none files=/dev/null", "0"]


def test_a_build_with_a_role_gets_that_roles_short_lived_keys_masked(tmp_path: Path) -> None:
    iam = aws("iam")  # the role must exist: AWS refuses to assume one that does not
    trust = {"Version": "2012-10-17", "Statement": [
        {"Effect": "Allow", "Principal": {"AWS": "arn:aws:iam::123456789012:root"}, "Action": "sts:AssumeRole"}]}
    with contextlib.suppress(iam.exceptions.EntityAlreadyExistsException):
        iam.create_role(RoleName="shop-build", AssumeRolePolicyDocument=json.dumps(trust))
    cfg = service(tmp_path, role_arn="arn:aws:iam::123456789012:role/shop-build")
    printed = build(cfg, tmp_path, [PRINT])
    (line,) = printed
    fields = dict(part.split("=", 1) for part in line.split())
    assert fields["id"] not in ("none", os.environ["AWS_ACCESS_KEY_ID"])  # not the deploy identity
    assert fields["key"] == "***" and fields["token"] == "***"  # the build's own secret never in its log
    assert os.environ["AWS_SECRET_ACCESS_KEY"] not in line


@pytest.mark.parametrize(("env", "extra_sids"), [
    ({}, []),
    ({"parameter-store": {"DB": "/shop/db"}}, ["NamedParameters"]),
    ({"secrets-manager": {"TOKEN": "shop/api:token"}}, ["NamedSecrets"]),
])
def test_the_build_role_session_reaches_only_its_repository_and_named_values(
    tmp_path: Path, env: dict[str, object], extra_sids: list[str],
) -> None:
    cfg = service(tmp_path)
    spec = parse_buildspec({"version": 0.2, "env": env, "phases": {"build": {"commands": ["true"]}}}, "b.yml")
    policy = session_policy(cfg, spec, "123456789012", "eu-west-1", "aws")
    sids = [s["Sid"] for s in policy["Statement"]]
    assert sids == ["EcrLogin", "PushOwnRepository", *extra_sids]
    push = policy["Statement"][1]
    assert push["Resource"] == f"arn:aws:ecr:eu-west-1:123456789012:repository/{cfg.ecr.repository}"
    assert not any(a.startswith(("ecs:", "iam:", "elasticloadbalancing:", "codedeploy:"))
                   for s in policy["Statement"] for a in s["Action"])
    if extra_sids == ["NamedParameters"]:
        assert policy["Statement"][2]["Resource"] == ["arn:aws:ssm:eu-west-1:123456789012:parameter/shop/db"]
    if extra_sids == ["NamedSecrets"]:
        secret = "arn:aws:secretsmanager:eu-west-1:123456789012:secret:shop/api-??????"
        assert policy["Statement"][2]["Resource"] == [secret]
