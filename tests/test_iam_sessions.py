"""Role sessions under enforced IAM: the role's trust decides who may assume it, the session policy narrows.

AWS's rules, quoted from the IAM User Guide:
- "Policy evaluation logic": a session's permissions are "the intersection of the role's identity-based
  policies and the session policies"; the refusal reads "because no session policy allows the ACTION action".
- AssumeRole (STS API reference): "the trust policy of the role ... specifies who can assume the role",
  and the caller also needs an identity-based policy allowing sts:AssumeRole on it.
- "Temporary security credentials": expired credentials are refused with ExpiredToken.
"""

from __future__ import annotations

import json
from types import SimpleNamespace
from typing import Any

import pytest
from moto.core.utils import utcnow

from harness.iam import ACCOUNT, Client, admin_client, client_factory, refused, user_with_policy
from sandbox.controller.iam_sessions import expired, trust_allows

ROLE = f"arn:aws:iam::{ACCOUNT}:role/narrow-build"
USER = f"arn:aws:iam::{ACCOUNT}:user/assumer"
READS = {"Version": "2012-10-17", "Statement": [
    {"Effect": "Allow", "Action": ["ecs:DescribeClusters", "ecr:DescribeRepositories"], "Resource": "*"}]}


def _trust(principal: Any) -> str:
    return json.dumps({"Version": "2012-10-17", "Statement": [
        {"Effect": "Allow", "Principal": principal, "Action": "sts:AssumeRole"}]})


@pytest.fixture(scope="module")
def assumer(endpoint: str) -> Client:
    """A user allowed sts:AssumeRole on two roles: one trusting it, one trusting someone else."""
    admin = admin_client(endpoint)
    iam = admin("iam")
    iam.create_role(RoleName="narrow-build", AssumeRolePolicyDocument=_trust({"AWS": USER}))
    iam.put_role_policy(RoleName="narrow-build", PolicyName="reads", PolicyDocument=json.dumps(READS))
    iam.create_role(RoleName="not-yours", AssumeRolePolicyDocument=_trust(
        {"AWS": f"arn:aws:iam::{ACCOUNT}:user/someone-else"}))
    key = user_with_policy(admin, "assumer", {"Version": "2012-10-17", "Statement": [
        {"Effect": "Allow", "Action": "sts:AssumeRole", "Resource": [ROLE, f"arn:aws:iam::{ACCOUNT}:role/not-yours"]}]})
    return client_factory(endpoint, key["AccessKeyId"], key["SecretAccessKey"])


def test_a_role_that_does_not_exist_cannot_be_assumed_even_by_the_admin(endpoint: str, assumer: Client) -> None:
    """AWS answers AccessDenied ("is not authorized to perform: sts:AssumeRole") for a role that is not there,
    whoever asks; credentials for it would fail every later call instead, retried as a server error."""
    missing = f"arn:aws:iam::{ACCOUNT}:role/no-such-role"
    error = refused(lambda: admin_client(endpoint)("sts").assume_role(RoleArn=missing, RoleSessionName="probe"))
    assert error.response["Error"]["Code"] == "AccessDenied"
    assert error.response["Error"]["Message"].endswith(f"is not authorized to perform: sts:AssumeRole on resource: "
                                                       f"{missing}")
    admin_client(endpoint)("sts").assume_role(RoleArn=ROLE, RoleSessionName="probe")  # an existing one: as before


def _session(endpoint: str, assumer: Client, policy: dict[str, Any] | None = None) -> Client:
    args: dict[str, Any] = {"RoleArn": ROLE, "RoleSessionName": "build-1", "DurationSeconds": 900}
    if policy is not None:
        args["Policy"] = json.dumps(policy)
    creds = assumer("sts").assume_role(**args)["Credentials"]
    return client_factory(endpoint, creds["AccessKeyId"], creds["SecretAccessKey"], creds["SessionToken"])


def test_a_role_whose_trust_does_not_name_the_caller_cannot_be_assumed(assumer: Client) -> None:
    error = refused(lambda: assumer("sts").assume_role(RoleArn=f"arn:aws:iam::{ACCOUNT}:role/not-yours",
                                                       RoleSessionName="probe"))
    assert error.response["Error"]["Code"] == "AccessDenied"
    assert error.response["Error"]["Message"] == (
        f"User: {USER} is not authorized to perform: sts:AssumeRole on resource: "
        f"arn:aws:iam::{ACCOUNT}:role/not-yours")


def test_a_session_policy_narrows_what_the_role_may_do(endpoint: str, assumer: Client) -> None:
    whole = _session(endpoint, assumer)
    whole("ecs").describe_clusters()
    whole("ecr").describe_repositories()
    narrowed = _session(endpoint, assumer, {"Version": "2012-10-17", "Statement": [
        {"Effect": "Allow", "Action": "ecr:DescribeRepositories", "Resource": "*"}]})
    narrowed("ecr").describe_repositories()
    error = refused(lambda: narrowed("ecs").describe_clusters())
    assert error.response["Error"]["Code"] == "AccessDeniedException"
    message = error.response["Error"]["Message"]
    assert message.startswith(f"User: arn:aws:sts::{ACCOUNT}:assumed-role/narrow-build/build-1 is not authorized "
                              "to perform: ecs:DescribeClusters on resource: ")
    assert message.endswith("because no session policy allows the ecs:DescribeClusters action")
    # and a session policy cannot add what the role lacks
    wider = _session(endpoint, assumer, {"Version": "2012-10-17", "Statement": [
        {"Effect": "Allow", "Action": "ecs:*", "Resource": "*"}]})
    error = refused(lambda: wider("ecs").list_clusters())
    assert "because no identity-based policy allows the ecs:ListClusters action" in error.response["Error"]["Message"]


@pytest.mark.parametrize(("principal", "allowed"), [
    ({"AWS": USER}, True),
    ({"AWS": [f"arn:aws:iam::{ACCOUNT}:user/other", USER]}, True),
    ({"AWS": ACCOUNT}, True),  # the account: its identity policies decide
    ({"AWS": f"arn:aws:iam::{ACCOUNT}:root"}, True),
    ("*", True),
    ({"AWS": f"arn:aws:iam::{ACCOUNT}:user/other"}, False),
    ({"Service": "codebuild.amazonaws.com"}, False),
    ({"AWS": "arn:aws:iam::210987654321:root"}, False),
])
def test_trust_names_the_caller(principal: Any, allowed: bool) -> None:
    role = SimpleNamespace(assume_role_policy_document=_trust(principal))
    assert trust_allows(role, USER, ACCOUNT, "aws") is allowed


def test_a_trust_statement_with_a_condition_the_sandbox_does_not_read_does_not_apply() -> None:
    document = json.loads(_trust({"AWS": USER}))
    document["Statement"][0]["Condition"] = {"StringEquals": {"sts:ExternalId": "x"}}
    assert not trust_allows(SimpleNamespace(assume_role_policy_document=json.dumps(document)), USER, ACCOUNT, "aws")


def test_expired_sessions_are_recognised() -> None:
    import datetime

    assert expired(SimpleNamespace(expiration=utcnow() - datetime.timedelta(seconds=1)))
    assert not expired(SimpleNamespace(expiration=utcnow() + datetime.timedelta(seconds=900)))
