"""A service's releases run as its own deploy role (deploy_role_arn), judged by the sandbox's IAM.

The session's sandbox enforces IAM; the tests' own calls are its admin's. harness.services.make_service
gives every service ``deploy_role_arn: ...:role/<name>-deploy``, which its stack (infra/ecs-service.yaml)
makes with the generated deploy policy attached; the pipeline assumes it with the worker's identity
(AssumeRole, renewed before it expires). AWS's rules: a role session's permissions are its role's
policies (IAM User Guide, "Policy evaluation logic"); a managed policy's default version is the one in
force (IAM User Guide, "Versioning IAM policies").
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest

from harness.iam import ACCOUNT
from harness.services import ServiceUnderTest, aws, make_service, policy_document, set_policy_document
from tasks.aws.clients import AwsClients
from tasks.core.settings import Settings


@pytest.fixture(scope="module")
def released(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServiceUnderTest]:
    from flows.pipeline import deploy_service

    sut = make_service(tmp_path_factory.mktemp("deploy-role"))
    with pytest.MonkeyPatch.context() as env:
        env.setenv("ECS_PIPELINE_DEPLOYMENTS", str(sut.yaml_path.parent))
        state = deploy_service(sut.name, return_state=True)
        assert state.is_completed(), state.message
        yield sut


def test_the_stack_makes_the_deploy_role_with_the_generated_policy(released: ServiceUnderTest) -> None:
    from flows.iam_cli import policy_for
    from tasks.release.permissions import Scope

    cfg = released.cfg
    role = f"{released.name}-deploy"
    assert cfg.deploy_role_arn == f"arn:aws:iam::{ACCOUNT}:role/{role}"
    iam = aws("iam")
    trust = iam.get_role(RoleName=role)["Role"]["AssumeRolePolicyDocument"]
    trust = json.loads(trust) if isinstance(trust, str) else trust
    assert trust["Statement"][0]["Principal"] == {"AWS": f"arn:aws:iam::{ACCOUNT}:root"}
    attached = iam.list_attached_role_policies(RoleName=role)["AttachedPolicies"]
    assert sorted(p["PolicyName"] for p in attached) == [f"{released.name}-deploy", f"{released.name}-verify"]
    expected = policy_for(cfg, "deploy", Scope(ACCOUNT, "us-east-1"), None, [], cfg.deploy_role_arn).document
    assert policy_document(f"arn:aws:iam::{ACCOUNT}:policy/{released.name}-deploy") == expected
    assert any(s["Sid"] == "SimulateOwnPermissions" and s["Resource"] == cfg.deploy_role_arn
               for s in expected["Statement"])


def test_the_pipeline_signs_as_the_role_not_as_the_worker(released: ServiceUnderTest) -> None:
    cfg = released.cfg
    worker = AwsClients(Settings())
    assert worker.for_service(cfg).caller()["Arn"] == (
        f"arn:aws:sts::{ACCOUNT}:assumed-role/{released.name}-deploy/ecs-pipeline")
    assert worker.caller()["Arn"] != worker.for_service(cfg).caller()["Arn"]


def test_a_statement_taken_from_the_role_fails_the_next_release_before_anything_moves(
        released: ServiceUnderTest, tmp_path: Path) -> None:
    from flows.pipeline import deploy_service

    cfg = released.cfg
    policy = f"arn:aws:iam::{ACCOUNT}:policy/{released.name}-deploy"
    released.commit("v2")  # before the policy changes: the harness syncs the policy with each commit
    whole = policy_document(policy)
    set_policy_document(policy, {**whole, "Statement": [s for s in whole["Statement"] if s["Sid"] != "DriveTaskSets"]})
    try:
        with pytest.MonkeyPatch.context() as env:
            env.setenv("ECS_PIPELINE_DEPLOYMENTS", str(released.yaml_path.parent))
            state = deploy_service(released.name, return_state=True)
    finally:
        set_policy_document(policy, whole)
    message = state.message or ""
    assert state.is_failed(), message
    assert f"{cfg.deploy_role_arn} may not" in message and "statement DriveTaskSets" in message, message
    assert "ecs:CreateTaskSet" in message
    assert all("sample-app v1" in released.get("/").text for _ in range(3)), "production stays on v1"
