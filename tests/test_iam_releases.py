"""Every strategy's real release, a rollback and a fleet run pass under the generated policies, enforced.

One sandbox server of this module's own enforces IAM (SANDBOX_ENFORCE_IAM=1).
Each service is seeded by the sandbox's admin; its deploy IAM user holds
exactly what ``ecs-pipeline iam SERVICE --role deploy`` prints for it, and
deploy-service runs with that user's keys: the release completes and none of
its calls is refused. A fleet runs under one user holding the merged policy
(``ecs-pipeline iam --all``). The build identity (``build.role_arn``, assumed
by the deploy user as each build does) cannot call ECS or push to another
service's repository, and a task definition that names a role the policy does
not list is refused at iam:PassRole while production keeps its version.

Each identity is a named profile in a credentials file of the module's own
(AWS_PROFILE): the pipeline's clients are shared per profile and endpoint, so
one process can release as several users.
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from botocore.exceptions import ClientError

from flows.fleet import release_fleet
from flows.iam_cli import rendered, service_buildspec
from flows.pipeline import deploy_service
from harness import services
from harness.iam import (
    ACCOUNT,
    REGION,
    Client,
    client_factory,
    refused,
    seeding_env,
)
from harness.services import HTTP, ServiceUnderTest, edit_config, make_service, seed_serving
from sandbox import seed
from sandbox.identities import build_role_name
from tasks.aws.clients import AwsClients
from tasks.build.build_identity import build_credentials
from tasks.config.models import ServiceConfig
from tasks.core.settings import Settings
from tasks.release.outcome import outcome_of
from tasks.release.permissions import Policy, Scope, build_policy, deploy_policy, merge

SCOPE = Scope(ACCOUNT, REGION)


# --- the module's sandbox, its identities, its services ---------------------------------------------------------

@dataclass
class Identities:
    """IAM users made by the admin, each a profile of one credentials file (what AWS_PROFILE names)."""

    endpoint: str
    admin: Client
    credentials: Path

    def user(self, name: str, document: dict[str, Any]) -> dict[str, str]:
        """A new user holding DOCUMENT (inline) and a profile NAME with its key; returns the key."""
        iam = self.admin("iam")
        iam.create_user(UserName=name)
        iam.put_user_policy(UserName=name, PolicyName="deploy", PolicyDocument=json.dumps(document))
        key = iam.create_access_key(UserName=name)["AccessKey"]
        with self.credentials.open("a") as f:
            f.write(f"[{name}]\naws_access_key_id = {key['AccessKeyId']}\n"
                    f"aws_secret_access_key = {key['SecretAccessKey']}\n")
        return {"AccessKeyId": str(key["AccessKeyId"]), "SecretAccessKey": str(key["SecretAccessKey"])}

    def act_as(self, monkeypatch: pytest.MonkeyPatch, profile: str, deployments: Path) -> None:
        """What follows in this test (the pipeline's flows, Settings()) runs as PROFILE on DEPLOYMENTS."""
        for var in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN"):
            monkeypatch.delenv(var, raising=False)
        for var, value in (("AWS_ENDPOINT_URL", self.endpoint), ("AWS_PROFILE", profile),
                           ("AWS_SHARED_CREDENTIALS_FILE", str(self.credentials)),
                           ("AWS_CONFIG_FILE", str(self.credentials.with_name("config"))),
                           ("ECS_PIPELINE_DEPLOYMENTS", str(deployments)),
                           ("ECS_PIPELINE_ARTIFACTS_DIR", str(deployments.parent / "artifacts"))):
            monkeypatch.setenv(var, value)


@pytest.fixture(scope="module")
def identities(endpoint: str, admin: Client, tmp_path_factory: pytest.TempPathFactory) -> Identities:
    folder = tmp_path_factory.mktemp("iam-identities")
    (folder / "config").write_text("")
    return Identities(endpoint, admin, folder / "credentials")


def user_arn(name: str) -> str:
    return f"arn:aws:iam::{ACCOUNT}:user/{name}"


def deploy_policy_of(cfg: ServiceConfig, user: str) -> Policy:
    """What ``ecs-pipeline iam SERVICE --role deploy --account ACCOUNT --principal USER`` prints for CFG
    (the principal lets each release run its permission preflight as USER)."""
    return deploy_policy(cfg, rendered(cfg, SCOPE), service_buildspec(cfg, None, []), SCOPE, user_arn(user))


@pytest.fixture(scope="module")
def made(endpoint: str, tmp_path_factory: pytest.TempPathFactory) -> Callable[..., ServiceUnderTest]:
    """make_service seeded in this module's sandbox by its admin (serving the seed release when it has one)."""
    seeding = seeding_env(endpoint)

    def make(strategy: str, **kwargs: Any) -> ServiceUnderTest:
        sut = make_service(tmp_path_factory.mktemp(strategy), strategy=strategy,
                           seed=lambda cfg: seed.seed_service(cfg, env=seeding), **kwargs)
        services.MADE.remove(sut)  # its containers go with this module's sandbox
        if strategy != "task-sets":
            seed_serving(sut)
        return sut

    return make


@dataclass
class Released:
    """A service, the profile of its deploy user, and the version production serves."""

    sut: ServiceUnderTest
    profile: str
    serving: str = "seed"


def own_user(identities: Identities, sut: ServiceUnderTest) -> str:
    """A deploy user for SUT holding its generated deploy policy; returns its profile."""
    name = f"{sut.name}-deploy"
    identities.user(name, deploy_policy_of(sut.cfg, name).document)
    return name


@pytest.fixture(scope="module")
def task_sets(made: Callable[..., ServiceUnderTest], identities: Identities) -> Released:
    sut = made("task-sets", traffic={"type": "canary", "percent": 50, "interval_seconds": 60})
    return Released(sut, own_user(identities, sut), serving="")


@pytest.fixture(scope="module")
def codedeploy(made: Callable[..., ServiceUnderTest], identities: Identities) -> Released:
    sut = made("codedeploy", traffic={"type": "canary", "percent": 50, "interval_seconds": 60})
    return Released(sut, own_user(identities, sut))


@pytest.fixture(scope="module")
def ecs_native(made: Callable[..., ServiceUnderTest], identities: Identities) -> Released:
    sut = made("ecs-native", traffic={"type": "canary", "percent": 50, "interval_seconds": 60})
    return Released(sut, own_user(identities, sut))


@pytest.fixture(scope="module")
def rolling(made: Callable[..., ServiceUnderTest], identities: Identities, admin: Client) -> Released:
    """A rolling service whose builds run the sample app's buildspec under its own build role."""
    sut = made("rolling")
    role = build_role_name(sut.name)
    trust = {"Version": "2012-10-17", "Statement": [
        {"Effect": "Allow", "Principal": {"AWS": user_arn(f"{sut.name}-deploy")}, "Action": "sts:AssumeRole"}]}
    iam = admin("iam")
    try:
        arn = iam.create_role(RoleName=role, AssumeRolePolicyDocument=json.dumps(trust))["Role"]["Arn"]
    except iam.exceptions.EntityAlreadyExistsException:  # the seed's stack made it: trusted by its user now
        iam.update_assume_role_policy(RoleName=role, PolicyDocument=json.dumps(trust))
        arn = iam.get_role(RoleName=role)["Role"]["Arn"]
    edit_config(sut, lambda c: c.__setitem__("build", {"buildspec": "buildspec.yml", "role_arn": arn}))
    build = build_policy(sut.cfg, service_buildspec(sut.cfg, None, []), SCOPE)
    iam.put_role_policy(RoleName=role, PolicyName="build", PolicyDocument=json.dumps(build.document))
    return Released(sut, own_user(identities, sut))


# --- what a release asked and was answered ---------------------------------------------------------------------

def last_seq(endpoint: str) -> int:
    return int(HTTP.get(f"{endpoint}/_sandbox/requests", params={"since": 1 << 62}, timeout=10).json()["last"])


def pipeline_calls(endpoint: str, since: int) -> list[dict[str, Any]]:
    """The calls the pipeline's clients (User-Agent ecs-pipeline/...) made after SINCE, as answered."""
    found = HTTP.get(f"{endpoint}/_sandbox/requests", params={"since": since, "agent": "ecs-pipeline"},
                      timeout=10).json()
    return list(found["requests"])


def release(identities: Identities, monkeypatch: pytest.MonkeyPatch, service: Released,
            version: str = "v1", broken: str = "") -> tuple[Any, list[dict[str, Any]]]:
    """Release VERSION (committed first unless it is v1, make_service's) as the service's deploy user:
    the state and the calls it made."""
    identities.act_as(monkeypatch, service.profile, service.sut.yaml_path.parent)
    if version != "v1":
        service.sut.commit(version, broken=broken)
    since = last_seq(identities.endpoint)
    state = deploy_service(service.sut.name, return_state=True)
    return state, pipeline_calls(identities.endpoint, since)


def assert_none_refused(calls: list[dict[str, Any]], *made: str) -> None:
    """No call refused by IAM, and each of the changes MADE answered 200."""
    refusals = [(c["service"], c["operation"], c["status"]) for c in calls if c["denied"]]
    assert refusals == [], refusals
    answered = {c["operation"] for c in calls if c["mutating"] and c["status"] == 200}
    assert set(made) <= answered, answered


def serves(sut: ServiceUnderTest, version: str) -> bool:
    return all(f"sample-app {version}:" in sut.get("/").text for _ in range(5))


def deployed(service: Released, state: Any, version: str) -> None:
    assert state.is_completed() and outcome_of(state) == "Deployed", state.message
    assert serves(service.sut, version)
    service.serving = version


# --- every strategy, a rollback, a fleet ---------------------------------------------------------------------------

def test_task_sets_canary_releases_under_its_generated_policy(
        task_sets: Released, identities: Identities, monkeypatch: pytest.MonkeyPatch) -> None:
    """The first release starts a task set; the next shifts production by the canary's steps."""
    if not task_sets.serving:
        state, calls = release(identities, monkeypatch, task_sets, "v1")
        deployed(task_sets, state, "v1")
        assert_none_refused(calls, "RegisterTaskDefinition", "CreateTaskSet", "UpdateServicePrimaryTaskSet")
    state, calls = release(identities, monkeypatch, task_sets, "v2")
    deployed(task_sets, state, "v2")
    assert_none_refused(calls, "RegisterTaskDefinition", "CreateTaskSet", "UpdateServicePrimaryTaskSet",
                        "ModifyListener", "DeleteTaskSet")  # the canary's steps and blue's removal


def test_a_broken_release_rolls_back_under_the_policy(
        task_sets: Released, identities: Identities, monkeypatch: pytest.MonkeyPatch) -> None:
    if not task_sets.serving:
        deployed(task_sets, release(identities, monkeypatch, task_sets, "v1")[0], "v1")
    state, calls = release(identities, monkeypatch, task_sets, "v-broken", broken="root")
    assert state.is_failed() and outcome_of(state) == "Rolled back", state.message
    assert "GET / failed verification: returned 500" in (state.message or "")
    assert serves(task_sets.sut, task_sets.serving)
    assert_none_refused(calls, "CreateTaskSet", "DeleteTaskSet")  # green made, then removed


def test_codedeploy_canary_release(codedeploy: Released, identities: Identities,
                                   monkeypatch: pytest.MonkeyPatch) -> None:
    state, calls = release(identities, monkeypatch, codedeploy, "v1")
    deployed(codedeploy, state, "v1")
    assert_none_refused(calls, "RegisterTaskDefinition", "CreateDeploymentConfig", "CreateDeployment",
                        "ContinueDeployment")


def test_ecs_native_canary_release(ecs_native: Released, identities: Identities,
                                   monkeypatch: pytest.MonkeyPatch) -> None:
    state, calls = release(identities, monkeypatch, ecs_native, "v1")
    deployed(ecs_native, state, "v1")
    assert_none_refused(calls, "RegisterTaskDefinition", "UpdateService", "ContinueServiceDeployment")


def test_rolling_release_with_a_buildspec_under_its_build_role(
        rolling: Released, identities: Identities, monkeypatch: pytest.MonkeyPatch) -> None:
    cfg = rolling.sut.cfg
    statements = {s["Sid"]: s for s in deploy_policy_of(cfg, rolling.profile).document["Statement"]}
    assert statements["AssumeTheBuildRole"]["Action"] == ["sts:AssumeRole"]
    assert statements["AssumeTheBuildRole"]["Resource"] == cfg.build.role_arn
    state, calls = release(identities, monkeypatch, rolling, "v1")
    deployed(rolling, state, "v1")
    assert_none_refused(calls, "RegisterTaskDefinition", "UpdateService")
    assert ("AssumeRole", 200) in {(c["operation"], c["status"]) for c in calls}, "the build ran as its role"


def test_a_fleet_releases_under_one_user_holding_the_merged_policy(
        codedeploy: Released, ecs_native: Released, identities: Identities, tmp_path: Path,
        monkeypatch: pytest.MonkeyPatch) -> None:
    """Two services of different strategies in one deployments folder, as ``ecs-pipeline iam --all`` sees it."""
    folder = tmp_path / "deployments"
    for service in (codedeploy, ecs_native):
        sut = service.sut
        shutil.copytree(sut.yaml_path.parent / sut.name, folder / sut.name)
        shutil.copy2(sut.yaml_path, folder / sut.yaml_path.name)
        sut.commit("fleet")
    user = f"fleet-{codedeploy.sut.name}"
    merged = merge([deploy_policy_of(s.sut.cfg, user) for s in (codedeploy, ecs_native)])
    identities.user(user, merged.document)
    identities.act_as(monkeypatch, user, folder)
    since = last_seq(identities.endpoint)
    state = release_fleet(max_parallel=2, return_state=True)
    rows: dict[str, dict[str, Any]] = state.result(raise_on_failure=False)
    assert state.is_completed(), (state.message, rows)
    for service in (codedeploy, ecs_native):
        assert rows[service.sut.name]["state"] == "Deployed", rows
        assert serves(service.sut, "fleet")
        service.serving = "fleet"
    assert_none_refused(pipeline_calls(identities.endpoint, since), "CreateDeployment", "UpdateService")


# --- the build identity ------------------------------------------------------------------------------------------

def test_the_build_identity_cannot_call_ecs_or_push_to_another_repository(
        rolling: Released, identities: Identities, admin: Client, monkeypatch: pytest.MonkeyPatch) -> None:
    """The deploy user assumes the build role as each build does; what the build gets is ECR on its own
    repository only."""
    sut, cfg = rolling.sut, rolling.sut.cfg
    other = f"{sut.name}-other"
    admin("ecr").create_repository(repositoryName=other)
    identities.act_as(monkeypatch, rolling.profile, sut.yaml_path.parent)
    spec = service_buildspec(cfg, None, [])
    assert spec is not None
    creds = build_credentials(cfg, AwsClients(Settings()), spec, ACCOUNT, "probe")
    monkeypatch.delenv("AWS_PROFILE")  # the clients below sign with the build's keys alone
    build = client_factory(identities.endpoint, creds["AWS_ACCESS_KEY_ID"], creds["AWS_SECRET_ACCESS_KEY"],
                           creds["AWS_SESSION_TOKEN"])
    ecs, ecr = build("ecs"), build("ecr")
    for call in (lambda: ecs.describe_services(cluster=cfg.ecs.cluster, services=[cfg.ecs.service]),
                 lambda: ecs.register_task_definition(family=cfg.name, containerDefinitions=[
                     {"name": "web", "image": "x", "memory": 64}]),
                 lambda: ecs.update_service(cluster=cfg.ecs.cluster, service=cfg.ecs.service, desiredCount=0)):
        error = refused(call)
        assert error.response["Error"]["Code"] == "AccessDeniedException", error.response
        assert f"assumed-role/{build_role_name(sut.name)}/" in error.response["Error"]["Message"]

    def push_side(repository: str) -> dict[str, Callable[[], Any]]:
        digest = "sha256:" + "0" * 64
        return {"ecr:InitiateLayerUpload": lambda: ecr.initiate_layer_upload(repositoryName=repository),
                "ecr:BatchCheckLayerAvailability": lambda: ecr.batch_check_layer_availability(
                    repositoryName=repository, layerDigests=[digest]),
                "ecr:PutImage": lambda: ecr.put_image(repositoryName=repository, imageTag="probe",
                                                      imageManifest=json.dumps(MANIFEST))}

    for action, call in push_side(other).items():
        error = refused(call)
        assert error.response["Error"]["Code"] == "AccessDeniedException", error.response
        assert f"{action} on resource: arn:aws:ecr:{REGION}:{ACCOUNT}:repository/{other} " in \
            error.response["Error"]["Message"]
    for action, call in push_side(cfg.ecr.repository).items():
        try:
            call()
        except ClientError as exc:  # IAM let it through: ECR's own checks (or the sandbox's gaps) answer
            assert exc.response["Error"]["Code"] in ("UnsupportedOperation", "LayersNotFoundException"), (
                action, exc.response)
    assert ecr.get_authorization_token()["authorizationData"]


MANIFEST = {"schemaVersion": 2, "mediaType": "application/vnd.docker.distribution.manifest.v2+json",
            "config": {"mediaType": "application/vnd.docker.container.image.v1+json", "size": 2,
                       "digest": "sha256:" + "1" * 64},
            "layers": []}


# --- a role the policy does not list -------------------------------------------------------------------------------

def test_a_task_definition_passing_an_unlisted_role_is_refused_and_production_stays(
        rolling: Released, identities: Identities, admin: Client, monkeypatch: pytest.MonkeyPatch) -> None:
    sut, role = rolling.sut, f"{rolling.sut.name}-unlisted"
    admin("iam").create_role(RoleName=role, AssumeRolePolicyDocument=json.dumps({
        "Version": "2012-10-17", "Statement": [{"Effect": "Allow", "Principal": {"Service": "ecs-tasks.amazonaws.com"},
                                                "Action": "sts:AssumeRole"}]}))
    if rolling.serving == "seed":
        deployed(rolling, release(identities, monkeypatch, rolling, "v1")[0], "v1")
    taskdef = sut.yaml_path.parent / sut.name / "taskdef.json"
    written = taskdef.read_text()
    taskdef.write_text(written.replace("role/ecsTaskExecutionRole", f"role/{role}"))
    try:
        state, calls = release(identities, monkeypatch, rolling, "v-unlisted-role")
    finally:
        taskdef.write_text(written)
    arn = f"arn:aws:iam::{ACCOUNT}:role/{role}"
    message = state.message or ""
    assert state.is_failed() and outcome_of(state) != "Rolled back", message
    # The release's permission preflight refuses it before any change; without one, RegisterTaskDefinition is
    # refused by IAM itself ("not authorized to perform: iam:PassRole on resource: ARN").
    assert ("may not iam:PassRole on " + arn in message
            or f"not authorized to perform: iam:PassRole on resource: {arn} " in message), message
    assert [c["operation"] for c in calls if c["denied"]] in ([], ["RegisterTaskDefinition"]), calls
    changed = [c["operation"] for c in calls if c["mutating"] and c["status"] == 200 and c["service"] == "ecs"]
    assert changed == [], changed
    assert serves(sut, rolling.serving)
