"""A missing permission fails a release before anything moves, naming the action, the resource and the statement.

The sandbox answers iam:SimulatePrincipalPolicy as AWS's API reference
(botocore's IAM model carries its words) documents it:

- "Simulate how a set of IAM policies attached to an IAM entity works with a
  list of API operations and Amazon Web Services resources to determine the
  policies' effective permissions. The entity can be an IAM user, group, or
  role. If you specify a user, then the simulation also includes all of the
  policies that are attached to groups that the user belongs to."
- ActionNames: "Each operation is evaluated for each resource." ResourceArns:
  "If this parameter is not provided, then the value defaults to * (all resources)."
- ContextEntries: "Whenever a context key is evaluated in one of the simulated
  IAM permissions policies, the corresponding value is supplied."
  MissingContextValues: "A list of context keys that are required by the
  included input policies but that were not provided by one of the input parameters."
- EvalDecision: allowed | explicitDeny | implicitDeny. EvalResourceName: "The
  ARN template for the simulated resource type ..., or * if no ARN format is
  defined for the action. This is not a specific customer-provided resource
  ARN. To find the decision for a specific resource, use ResourceSpecificResults."
- MaxItems: "If additional items exist beyond the maximum you specify, the
  IsTruncated response element is true", with a Marker for the next call.
- NoSuchEntity (404): "The request was rejected because it referenced a
  resource entity that does not exist."

Then releases (flows.pipeline.deploy_service) of one task-sets service in a
sandbox of this module's own that enforces IAM, signed by a user holding what
``ecs-pipeline iam SERVICE --role deploy --principal ARN`` prints: v1 goes live
once; then, for one statement after another, the user loses it and the release
of v2 fails at its permission preflight, naming the action, the statement's
Sid and JSON and the command that prints the policy, with no call of that
release changing anything and production still on v1. Without the simulation
statement the preflight is skipped with one log line, and the refused call
itself is explained the same way.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import pytest

from harness.iam import (
    ACCOUNT,
    Client,
    client_factory,
    generated_deploy_policy,
    put_policy,
    refused,
    requests_seen,
    seeding_env,
    user_with_policy,
    without,
)
from harness.services import ServiceUnderTest

USERS = f"arn:aws:iam::{ACCOUNT}:user"
SERVICE = f"arn:aws:ecs:us-east-1:{ACCOUNT}:service/c/web"
OTHER = f"arn:aws:ecs:us-east-1:{ACCOUNT}:service/c/api"
ROLE = f"arn:aws:iam::{ACCOUNT}:role/ecsTaskExecutionRole"
SUBJECT_POLICY = {"Version": "2012-10-17", "Statement": [
    {"Sid": "ReadWeb", "Effect": "Allow", "Action": "ecs:DescribeServices", "Resource": SERVICE},
    {"Sid": "PassToTasks", "Effect": "Allow", "Action": "iam:PassRole", "Resource": ROLE,
     "Condition": {"StringEquals": {"iam:PassedToService": "ecs-tasks.amazonaws.com"}}},
    {"Sid": "AnyEcs", "Effect": "Allow", "Action": "ecs:*", "Resource": "*"},
    {"Sid": "NeverDelete", "Effect": "Deny", "Action": "ecs:DeleteService", "Resource": "*"},
]}


# --- pure parts: whose policies are simulated, what an AccessDenied names --------------------------------------------

@pytest.mark.parametrize(("caller", "principal"), [
    (f"{USERS}/deployer", f"{USERS}/deployer"),
    (f"{USERS}/team/deployer", f"{USERS}/team/deployer"),  # a user's ARN carries its path
    (f"arn:aws:sts::{ACCOUNT}:assumed-role/deploy/ecs-pipeline", f"arn:aws:iam::{ACCOUNT}:role/deploy"),
    (f"arn:aws-cn:sts::{ACCOUNT}:assumed-role/deploy/s", f"arn:aws-cn:iam::{ACCOUNT}:role/deploy"),
    (f"arn:aws:iam::{ACCOUNT}:root", None),  # the root user: nothing to simulate
    (f"arn:aws:sts::{ACCOUNT}:federated-user/bob", None),
    (f"arn:aws:sts::{ACCOUNT}:user/moto", None),  # an answer no IAM identity gives
])
def test_the_principal_simulated_for_a_caller(caller: str, principal: str | None) -> None:
    from tasks.aws.iam import principal_of

    assert principal_of(caller) == principal


@pytest.mark.parametrize(("message", "operation", "action", "resource"), [
    (f"User: {USERS}/d is not authorized to perform: iam:PassRole on resource: {ROLE} because no identity-based "
     "policy allows the iam:PassRole action", "RegisterTaskDefinition", "iam:PassRole", ROLE),
    (f"User: {USERS}/d is not authorized to perform: ecs:DescribeServices on resource: {SERVICE}",
     "DescribeServices", "ecs:DescribeServices", SERVICE),
    ("not allowed", "CreateTaskSet", "ecs:CreateTaskSet", ""),  # AWS named nothing: the call's own action
])
def test_an_access_denied_names_what_aws_refused(message: str, operation: str, action: str, resource: str) -> None:
    from botocore.exceptions import ClientError

    from tasks.aws.errors import translate
    from tasks.core.errors import AccessDenied

    exc = ClientError({"Error": {"Code": "AccessDeniedException", "Message": message, "IamPrefix": "ecs"}}, operation)
    typed = translate(exc)
    assert isinstance(typed, AccessDenied)
    assert (typed.action, typed.resource) == (action, resource)
    expired = translate(ClientError({"Error": {"Code": "ExpiredTokenException", "Message": "expired"}}, operation))
    assert isinstance(expired, AccessDenied) and expired.action == ""  # no permission to add for a stale key


def test_the_enforcer_judges_a_simulation_on_the_principal_simulated() -> None:
    from sandbox.controller.iam_eval import Need
    from sandbox.controller.iam_resources import Where, needs

    params = {"Action": "SimulatePrincipalPolicy", "PolicySourceArn": f"{USERS}/deployer",
              "ActionNames.member.1": "ecs:DescribeServices"}
    assert needs("iam", "SimulatePrincipalPolicy", params, Where("us-east-1", ACCOUNT)) == [
        Need("iam:SimulatePrincipalPolicy", f"{USERS}/deployer")]


# --- the sandbox's SimulatePrincipalPolicy, through real boto3 ------------------------------------------------------

@pytest.fixture(scope="module")
def subject(admin: Client) -> dict[str, str]:
    """A user with SUBJECT_POLICY, in a group whose policy allows reading alarms; its key."""
    key = user_with_policy(admin, "subject", SUBJECT_POLICY)
    iam = admin("iam")
    iam.create_group(GroupName="readers")
    iam.put_group_policy(GroupName="readers", PolicyName="alarms", PolicyDocument=json.dumps({
        "Version": "2012-10-17", "Statement": [{"Effect": "Allow", "Action": "cloudwatch:DescribeAlarms",
                                                "Resource": "*"}]}))
    iam.add_user_to_group(GroupName="readers", UserName="subject")
    return key


def by_resource(result: dict[str, Any]) -> dict[str, str]:
    return {r["EvalResourceName"]: r["EvalResourceDecision"] for r in result["ResourceSpecificResults"]}


def test_simulation_judges_each_action_on_each_resource(admin: Client, subject: dict[str, str]) -> None:
    results = admin("iam").simulate_principal_policy(
        PolicySourceArn=f"{USERS}/subject", ActionNames=["ecs:DescribeServices", "ecs:DeleteService", "s3:GetObject"],
        ResourceArns=[SERVICE, OTHER])["EvaluationResults"]
    assert [r["EvalActionName"] for r in results] == ["ecs:DescribeServices", "ecs:DeleteService", "s3:GetObject"]
    read, delete, s3 = results
    assert by_resource(read) == {SERVICE: "allowed", OTHER: "allowed"}  # AnyEcs allows the other service too
    assert read["EvalDecision"] == "allowed"
    assert {m["SourcePolicyId"] for m in read["MatchedStatements"]} == {"deploy"}
    assert by_resource(delete) == {SERVICE: "explicitDeny", OTHER: "explicitDeny"}  # the Deny wins over ecs:*
    assert delete["EvalDecision"] == "explicitDeny"
    assert [m["SourcePolicyType"] for m in delete["MatchedStatements"]] == ["user"]
    assert by_resource(s3) == {SERVICE: "implicitDeny", OTHER: "implicitDeny"} and s3["MatchedStatements"] == []
    for result in results:  # a resource type's ARN template, never the resource itself
        assert result["EvalResourceName"] not in (SERVICE, OTHER)
        assert "${" in result["EvalResourceName"]


def test_group_policies_count_for_a_user_and_no_resources_means_star(admin: Client, subject: dict[str, str]) -> None:
    result = admin("iam").simulate_principal_policy(
        PolicySourceArn=f"{USERS}/subject", ActionNames=["cloudwatch:DescribeAlarms"])["EvaluationResults"][0]
    assert (result["EvalResourceName"], result["EvalDecision"]) == ("*", "allowed")
    assert result["MatchedStatements"] == [{"SourcePolicyId": "alarms", "SourcePolicyType": "group"}]
    assert "ResourceSpecificResults" not in result


def test_a_context_key_is_supplied_or_reported_missing(admin: Client, subject: dict[str, str]) -> None:
    iam = admin("iam")

    def passing(**context: Any) -> dict[str, Any]:
        return dict(iam.simulate_principal_policy(
            PolicySourceArn=f"{USERS}/subject", ActionNames=["iam:PassRole"], ResourceArns=[ROLE],
            **context)["EvaluationResults"][0]["ResourceSpecificResults"][0])

    to_tasks = passing(ContextEntries=[{"ContextKeyName": "iam:PassedToService", "ContextKeyType": "string",
                                        "ContextKeyValues": ["ecs-tasks.amazonaws.com"]}])
    assert (to_tasks["EvalResourceDecision"], to_tasks["MissingContextValues"]) == ("allowed", [])
    to_lambda = passing(ContextEntries=[{"ContextKeyName": "iam:PassedToService", "ContextKeyType": "string",
                                         "ContextKeyValues": ["lambda.amazonaws.com"]}])
    assert to_lambda["EvalResourceDecision"] == "implicitDeny"
    unsaid = passing()
    assert unsaid["EvalResourceDecision"] == "implicitDeny"
    assert unsaid["MissingContextValues"] == ["iam:PassedToService"]


def test_results_come_in_pages_of_max_items(admin: Client, subject: dict[str, str]) -> None:
    iam = admin("iam")
    actions = ["ecs:DescribeServices", "ecs:UpdateService", "ecs:DeleteService"]
    first = iam.simulate_principal_policy(PolicySourceArn=f"{USERS}/subject", ActionNames=actions, MaxItems=2)
    assert first["IsTruncated"] is True and len(first["EvaluationResults"]) == 2
    rest = iam.simulate_principal_policy(PolicySourceArn=f"{USERS}/subject", ActionNames=actions, MaxItems=2,
                                         Marker=first["Marker"])
    assert rest["IsTruncated"] is False and "Marker" not in rest
    assert [r["EvalActionName"] for r in first["EvaluationResults"] + rest["EvaluationResults"]] == actions
    pages = list(iam.get_paginator("simulate_principal_policy").paginate(
        PolicySourceArn=f"{USERS}/subject", ActionNames=actions, PaginationConfig={"PageSize": 1}))
    assert [p["EvaluationResults"][0]["EvalDecision"] for p in pages] == ["allowed", "allowed", "explicitDeny"]


def test_a_role_and_an_unknown_principal(admin: Client) -> None:
    iam = admin("iam")
    trust = json.dumps({"Version": "2012-10-17", "Statement": [
        {"Effect": "Allow", "Principal": {"Service": "ecs-tasks.amazonaws.com"}, "Action": "sts:AssumeRole"}]})
    role = iam.create_role(RoleName="simulated", Path="/team/", AssumeRolePolicyDocument=trust)["Role"]["Arn"]
    managed = iam.create_policy(PolicyName="read-web", PolicyDocument=json.dumps({
        "Version": "2012-10-17", "Statement": [{"Effect": "Allow", "Action": "ecs:DescribeServices",
                                                "Resource": SERVICE}]}))["Policy"]["Arn"]
    iam.attach_role_policy(RoleName="simulated", PolicyArn=managed)
    result = iam.simulate_principal_policy(PolicySourceArn=role, ActionNames=["ecs:DescribeServices"],
                                           ResourceArns=[SERVICE])["EvaluationResults"][0]
    assert result["EvalDecision"] == "allowed"
    assert result["MatchedStatements"] == [{"SourcePolicyId": "read-web", "SourcePolicyType": "user-managed"}]
    for unknown in (f"{USERS}/nobody", f"arn:aws:iam::{ACCOUNT}:role/simulated"):  # without its path: not it
        error = refused(lambda arn=unknown: iam.simulate_principal_policy(  # type: ignore[misc]
            PolicySourceArn=arn, ActionNames=["ecs:DescribeServices"]))
        assert error.response["Error"]["Code"] == "NoSuchEntity"
        assert error.response["ResponseMetadata"]["HTTPStatusCode"] == 404


def test_simulating_needs_the_permission_on_the_principal_simulated(endpoint: str, admin: Client,
                                                                   subject: dict[str, str]) -> None:
    """With enforcement on, iam:SimulatePrincipalPolicy is judged on the PolicySourceArn."""
    own = {"Sid": "SimulateOwn", "Effect": "Allow", "Action": "iam:SimulatePrincipalPolicy",
           "Resource": f"{USERS}/subject"}
    iam = client_factory(endpoint, subject["AccessKeyId"], subject["SecretAccessKey"])("iam")
    error = refused(lambda: iam.simulate_principal_policy(PolicySourceArn=f"{USERS}/subject",
                                                          ActionNames=["ecs:DescribeServices"]))
    assert error.response["Error"]["Code"] == "AccessDenied"
    assert f"iam:SimulatePrincipalPolicy on resource: {USERS}/subject" in error.response["Error"]["Message"]
    put_policy(admin, "subject", {**SUBJECT_POLICY, "Statement": [*SUBJECT_POLICY["Statement"], own]})
    try:
        assert iam.simulate_principal_policy(PolicySourceArn=f"{USERS}/subject", ActionNames=[
            "ecs:DescribeServices"])["EvaluationResults"][0]["EvalDecision"] == "allowed"
        error = refused(lambda: iam.simulate_principal_policy(PolicySourceArn=f"{USERS}/nobody",
                                                              ActionNames=["ecs:DescribeServices"]))
        assert error.response["Error"]["Code"] == "AccessDenied"  # another principal's permissions stay unread
    finally:
        put_policy(admin, "subject", SUBJECT_POLICY)


# --- releases under the enforced deploy policy ----------------------------------------------------------------------

@dataclass
class Released:
    """The module's service, live on v1, v2 committed; its releaser and the policy it holds when complete."""

    endpoint: str
    admin: Client
    sut: ServiceUnderTest
    document: dict[str, Any]


@pytest.fixture(scope="module")
def released(endpoint: str, admin: Client, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Released]:
    """v1 live, released by ``releaser`` under the generated deploy policy with its own simulation statement."""
    from flows.pipeline import deploy_service
    from harness import services
    from sandbox import seed

    seeding = seeding_env(endpoint)  # seeded in the enforcing sandbox, as its admin
    sut = services.make_service(tmp_path_factory.mktemp("iam-preflight"),
                                seed=lambda cfg: seed.seed_service(cfg, env=seeding))
    services.MADE.remove(sut)  # its containers go with this module's sandbox
    document = generated_deploy_policy(sut.cfg, principal=f"{USERS}/releaser")
    key = user_with_policy(admin, "releaser", document)
    with pytest.MonkeyPatch.context() as env:
        for var, value in (("AWS_ENDPOINT_URL", endpoint), ("AWS_ACCESS_KEY_ID", key["AccessKeyId"]),
                           ("AWS_SECRET_ACCESS_KEY", key["SecretAccessKey"]),
                           ("ECS_PIPELINE_DEPLOYMENTS", str(sut.yaml_path.parent))):
            env.setenv(var, value)
        env.delenv("AWS_SESSION_TOKEN", raising=False)
        env.delenv("AWS_PROFILE", raising=False)
        state = deploy_service(sut.name, return_state=True)
        assert state.is_completed(), state.message
        assert all("sample-app v1" in sut.get("/").text for _ in range(3))
        simulated = [r for r in requests_seen(endpoint, 0, "releaser") if r["operation"] == "SimulatePrincipalPolicy"]
        assert simulated and {r["status"] for r in simulated} == {200}, simulated  # the preflight ran, and passed
        sut.commit("v2")
        yield Released(endpoint, admin, sut, document)


def last_seq(endpoint: str) -> int:
    return max((r["seq"] for r in requests_seen(endpoint, 0, "")), default=0)


# Statements of the task-sets deploy policy, each one a release needs; removing any one fails the preflight.
REMOVED = ("ReadTheService", "RegisterTaskDefinitionRevisions", "PassTaskDefinitionRolesToEcsTasks", "DriveTaskSets",
           "MoveListenerWeights", "MakeGreenPrimary", "FindCreateAndPushOwnRepository",
           "NoResourceLevelPermissionsLoadBalancing")


@pytest.mark.parametrize("sid", REMOVED)
def test_without_one_statement_the_release_fails_before_anything_moves(released: Released, sid: str) -> None:
    from flows.pipeline import deploy_service

    statement = next(s for s in released.document["Statement"] if s["Sid"] == sid)
    put_policy(released.admin, "releaser", without(released.document, sid))
    try:
        seq = last_seq(released.endpoint)
        state = deploy_service(released.sut.name, return_state=True)
        seen = requests_seen(released.endpoint, seq, "")
    finally:
        put_policy(released.admin, "releaser", released.document)
    message = state.message or ""
    assert state.is_failed(), message
    actions = [statement["Action"]] if isinstance(statement["Action"], str) else statement["Action"]
    resources = [statement["Resource"]] if isinstance(statement["Resource"], str) else statement["Resource"]
    assert message.startswith(f"Failed: permission preflight: {USERS}/releaser may not "), message
    assert all(a in message for a in actions), message
    assert all(f" on {r}" in message for r in resources), message
    assert f"statement {sid}: {json.dumps(statement)}" in message, message
    assert f"ecs-pipeline iam {released.sut.name} --role deploy" in message, message
    assert "nothing was changed" in message
    changed = [(r["operation"], r["status"]) for r in seen if r["mutating"]]
    assert changed == [], f"the release changed something: {changed}"
    assert not [r for r in seen if r["denied"]], "a call was refused: the preflight came too late"
    assert all("sample-app v1" in released.sut.get("/").text for _ in range(3)), "production stays on v1"


def test_a_skipped_preflight_still_names_the_statement_at_the_refused_call(
        released: Released, caplog: pytest.LogCaptureFixture) -> None:
    """Without iam:SimulatePrincipalPolicy the release goes on (one log line says what to grant) and fails
    at the call the policy does not allow, with the same explanation; v1 keeps serving."""
    from flows.pipeline import deploy_service

    caplog.set_level(logging.INFO, logger="prefect")
    cut = without(without(released.document, "SimulateOwnPermissions"), "MoveListenerWeights")
    put_policy(released.admin, "releaser", cut)
    try:
        seq = last_seq(released.endpoint)
        state = deploy_service(released.sut.name, return_state=True)
        seen = requests_seen(released.endpoint, seq, "")
    finally:
        put_policy(released.admin, "releaser", released.document)
    skipped = [r.getMessage() for r in caplog.records if "permission preflight skipped" in r.getMessage()]
    assert len(skipped) == 1, skipped
    assert (f"grant iam:SimulatePrincipalPolicy on {USERS}/releaser (`ecs-pipeline iam {released.sut.name} "
            f"--role deploy --principal {USERS}/releaser` adds that statement)") in skipped[0]
    message = state.message or ""
    assert state.is_failed(), message
    statement = next(s for s in released.document["Statement"] if s["Sid"] == "MoveListenerWeights")
    assert "AWS denied elasticloadbalancing:ModifyListener on arn:aws:elasticloadbalancing:" in message, message
    assert f"statement MoveListenerWeights: {json.dumps(statement)}" in message, message
    assert f"ecs-pipeline iam {released.sut.name} --role deploy" in message, message
    denied = [(r["operation"], r["status"]) for r in seen if r["denied"]]
    assert denied[0] == ("SimulatePrincipalPolicy", 403) and ("ModifyListener", 403) in denied, denied
    assert all("sample-app v1" in released.sut.get("/").text for _ in range(5)), "production stays on v1"


def test_the_policy_generator_grants_the_simulation_only_on_a_named_principal(released: Released) -> None:
    statement = next(s for s in released.document["Statement"] if s["Sid"] == "SimulateOwnPermissions")
    assert statement == {"Sid": "SimulateOwnPermissions", "Effect": "Allow",
                         "Action": ["iam:SimulatePrincipalPolicy"], "Resource": f"{USERS}/releaser"}
    unnamed = generated_deploy_policy(released.sut.cfg)
    assert not [s for s in unnamed["Statement"] if "iam:SimulatePrincipalPolicy" in s["Action"]]


def test_a_verdict_asked_before_a_wait_for_the_slot_is_asked_again(
        released: Released, monkeypatch: pytest.MonkeyPatch) -> None:
    """The check is asked while the run takes the slot (``asked_ahead``). A statement removed after it answered:
    read at once, the verdict is that answer; read after a wait longer than FRESH_SECONDS (a run queued behind
    another release), IAM is asked again and refuses."""
    import threading
    import time

    from prefect import flow

    from tasks.aws.clients import AwsClients
    from tasks.core.settings import Settings
    from tasks.release import permission_preflight
    from tasks.release.permission_preflight import Denied, asked_ahead

    document = released.document  # the releaser's: the module's environment signs as it
    answered = threading.Event()
    check = permission_preflight.check_permissions

    def check_and_tell(*args: Any) -> str | None:
        try:
            return check(*args)
        finally:
            answered.set()

    monkeypatch.setattr(permission_preflight, "check_permissions", check_and_tell)

    @flow(name="test-permissions-asked-ahead")
    def ask(waited: float) -> tuple[str | None, str]:
        clients = AwsClients(Settings())
        answered.clear()
        with asked_ahead(released.sut.cfg, clients) as verdict:
            assert answered.wait(60), "the background check never answered"
            put_policy(released.admin, "releaser", without(document, "DriveTaskSets"))
            try:
                time.sleep(waited)
                try:
                    return verdict(), ""
                except Denied as exc:
                    return None, str(exc)
            finally:
                put_policy(released.admin, "releaser", document)

    monkeypatch.setattr(permission_preflight, "FRESH_SECONDS", 30.0)
    assert ask(0.0) == (None, "")  # read within FRESH_SECONDS: the answer from before the removal
    monkeypatch.setattr(permission_preflight, "FRESH_SECONDS", 1.0)
    skipped, refused_message = ask(1.1)  # over 1.1 s after the start: asked again
    assert skipped is None
    assert refused_message.startswith(f"permission preflight: {USERS}/releaser may not "), refused_message
    assert "statement DriveTaskSets: " in refused_message, refused_message
