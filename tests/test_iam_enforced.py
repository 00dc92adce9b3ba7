"""The sandbox enforcing IAM (SANDBOX_ENFORCE_IAM=1): the generated deploy policy, judged call by call.

A sandbox server of this module's own runs with enforcement on. Two task-sets
services are created with the sandbox's own (admin) keys; a deploy user gets
the policy `ecs-pipeline iam` generates for the first one. Real boto3 calls
signed by that user then show what AWS would do: the service's own resources
answer, the other service's refuse with the service's own error
(AccessDeniedException for ECS/ECR/CloudWatch, AccessDenied for ELBv2),
removing one statement refuses exactly its calls, and passing a role the
policy does not list is refused (iam:PassRole, iam:PassedToService).

Sources the sandbox plays: the IAM User Guide's "Policy evaluation logic" (an
explicit deny overrides an allow; without an allow the request is implicitly
denied; a missing condition key does not match), its "Troubleshoot access
denied error messages" ("User: arn:aws:iam::...:user/X is not authorized to
perform: ACTION on resource: ARN because no identity-based policy allows the
ACTION action"), and botocore's service models for how each protocol carries
the error (ECS/ECR/CloudWatch: JSON ``__type``; ELBv2: query XML ``Code``).
"""

from __future__ import annotations

import functools
import json
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import boto3
import pytest
from botocore import UNSIGNED
from botocore.config import Config
from botocore.exceptions import ClientError

from harness.iam import CONFIG as IAM_CONFIG
from harness.iam import (
    Client,
    client_factory,
    put_policy,
    refused,
    requests_seen,
    seeding_env,
    user_with_policy,
    without,
)
from sandbox.controller.iam_enforce import enabled
from sandbox.controller.iam_eval import ALLOW, EXPLICIT_DENY, IMPLICIT_DENY, Need, decide
from sandbox.controller.iam_resources import Where, needs
from sandbox.layout import free_ports
from tasks.config.models import ServiceConfig, parse_service
from tasks.release.permissions import Scope, deploy_policy

ROOT = Path(__file__).resolve().parents[1]
ACCOUNT, REGION = "123456789012", "us-east-1"
EXECUTION_ROLE = f"arn:aws:iam::{ACCOUNT}:role/ecsTaskExecutionRole"


# --- the evaluation rules, as tables (pure) ---------------------------------------------------------------

def _doc(*statements: dict[str, Any]) -> list[dict[str, Any]]:
    return [{"Version": "2012-10-17", "Statement": list(statements)}]


SERVICE_A = f"arn:aws:ecs:{REGION}:{ACCOUNT}:service/a/web"
PASS = {"Effect": "Allow", "Action": "iam:PassRole", "Resource": EXECUTION_ROLE,
        "Condition": {"StringEquals": {"iam:PassedToService": "ecs-tasks.amazonaws.com"}}}


@pytest.mark.parametrize(("documents", "need", "verdict"), [
    (_doc({"Effect": "Allow", "Action": "ecs:DescribeServices", "Resource": SERVICE_A}),
     Need("ecs:DescribeServices", SERVICE_A), ALLOW),
    (_doc({"Effect": "Allow", "Action": "ecs:describeservices", "Resource": SERVICE_A}),  # actions ignore case
     Need("ecs:DescribeServices", SERVICE_A), ALLOW),
    (_doc({"Effect": "Allow", "Action": "ecs:DescribeServices", "Resource": SERVICE_A.upper()}),  # ARNs do not
     Need("ecs:DescribeServices", SERVICE_A), IMPLICIT_DENY),
    (_doc({"Effect": "Allow", "Action": "ecs:Describe*", "Resource": f"arn:aws:ecs:*:{ACCOUNT}:service/a/*"}),
     Need("ecs:DescribeServices", SERVICE_A), ALLOW),
    (_doc({"Effect": "Allow", "Action": "ecs:Describe*", "Resource": "arn:aws:ecs:*:*:service/a/we?"}),
     Need("ecs:DescribeServices", SERVICE_A), ALLOW),
    (_doc({"Effect": "Allow", "Action": "ecs:*", "Resource": "arn:aws:ecs:*:*:service/b/*"}),
     Need("ecs:DescribeServices", SERVICE_A), IMPLICIT_DENY),
    (_doc({"Effect": "Allow", "Action": "*", "Resource": "*"},
          {"Effect": "Deny", "Action": "ecs:DescribeServices", "Resource": "*"}),
     Need("ecs:DescribeServices", SERVICE_A), EXPLICIT_DENY),
    (_doc({"Effect": "Allow", "NotAction": "ecs:Delete*", "Resource": "*"}),
     Need("ecs:DeleteService", SERVICE_A), IMPLICIT_DENY),
    (_doc({"Effect": "Allow", "Action": "ecs:*", "NotResource": SERVICE_A}),
     Need("ecs:DeleteService", SERVICE_A), IMPLICIT_DENY),
    # an action AWS cannot scope is allowed only by Resource "*"
    (_doc({"Effect": "Allow", "Action": "ecs:DescribeTaskDefinition", "Resource": SERVICE_A}),
     Need("ecs:DescribeTaskDefinition", "*"), IMPLICIT_DENY),
    (_doc(PASS), Need("iam:PassRole", EXECUTION_ROLE, {"iam:PassedToService": "ecs-tasks.amazonaws.com"}), ALLOW),
    (_doc(PASS), Need("iam:PassRole", EXECUTION_ROLE, {"iam:PassedToService": "lambda.amazonaws.com"}),
     IMPLICIT_DENY),
    (_doc(PASS), Need("iam:PassRole", EXECUTION_ROLE), IMPLICIT_DENY),  # a missing key does not match
    (_doc({**PASS, "Condition": {"StringEqualsIfExists": {"iam:PassedToService": "ecs-tasks.amazonaws.com"}}}),
     Need("iam:PassRole", EXECUTION_ROLE), ALLOW),
    (_doc({"Effect": "Allow", "Action": "ecs:ListTasks", "Resource": "*",
           "Condition": {"ArnEquals": {"ecs:cluster": f"arn:aws:ecs:{REGION}:{ACCOUNT}:cluster/a"}}}),
     Need("ecs:ListTasks", "*", {"ecs:cluster": f"arn:aws:ecs:{REGION}:{ACCOUNT}:cluster/b"}), IMPLICIT_DENY),
    # an operator the sandbox does not know: the Allow does not apply
    (_doc({**PASS, "Condition": {"ForAnyValue:StringEquals": {"iam:PassedToService": "ecs-tasks.amazonaws.com"}}}),
     Need("iam:PassRole", EXECUTION_ROLE, {"iam:PassedToService": "ecs-tasks.amazonaws.com"}), IMPLICIT_DENY),
], ids=lambda v: v if isinstance(v, str) else None)
def test_policy_evaluation(documents: list[dict[str, Any]], need: Need, verdict: str) -> None:
    assert decide(documents, need) == verdict


ARN = f"arn:aws:ecs:{REGION}:{ACCOUNT}"
LISTENER = f"arn:aws:elasticloadbalancing:{REGION}:{ACCOUNT}:listener/app/a-alb/1/2"


@pytest.mark.parametrize(("service", "operation", "params", "wanted"), [
    ("ecs", "DescribeServices", {"cluster": "a", "services": ["web", f"{ARN}:service/a/api"]},
     [Need("ecs:DescribeServices", f"{ARN}:service/a/web"), Need("ecs:DescribeServices", f"{ARN}:service/a/api")]),
    ("ecs", "DescribeServices", {"cluster": f"{ARN}:cluster/a", "services": [f"{ARN}:service/web"]},
     [Need("ecs:DescribeServices", f"{ARN}:service/a/web")]),  # an old-format service ARN names no cluster
    ("ecs", "CreateTaskSet", {"cluster": "a", "service": "web"},
     [Need("ecs:CreateTaskSet", f"{ARN}:task-set/a/web/*")]),
    ("ecs", "DeleteTaskSet", {"cluster": "a", "service": "web", "taskSet": "ecs-svc/1"},
     [Need("ecs:DeleteTaskSet", f"{ARN}:task-set/a/web/ecs-svc/1")]),
    ("ecs", "UpdateServicePrimaryTaskSet", {"cluster": "a", "service": "web", "primaryTaskSet": "x"},
     [Need("ecs:UpdateServicePrimaryTaskSet", f"{ARN}:service/a/web")]),
    ("ecs", "ListTasks", {"cluster": "a"}, [Need("ecs:ListTasks", "*", {"ecs:cluster": f"{ARN}:cluster/a"})]),
    ("ecs", "DescribeTasks", {"cluster": "a", "tasks": ["abc"]}, [Need("ecs:DescribeTasks", f"{ARN}:task/a/abc")]),
    ("ecs", "DescribeTaskDefinition", {"taskDefinition": "web"}, [Need("ecs:DescribeTaskDefinition", "*")]),
    ("ecs", "RegisterTaskDefinition", {"family": "iam-table-never-registered", "executionRoleArn": "execRole",
                                       "tags": [{"key": "k", "value": "v"}]},
     [Need("ecs:RegisterTaskDefinition", f"{ARN}:task-definition/iam-table-never-registered:1"),
      Need("ecs:TagResource", f"{ARN}:task-definition/iam-table-never-registered:1",
           {"ecs:CreateAction": "RegisterTaskDefinition"}),
      Need("iam:PassRole", f"arn:aws:iam::{ACCOUNT}:role/execRole",
           {"iam:PassedToService": "ecs-tasks.amazonaws.com"})]),
    ("elbv2", "ModifyListener", {"Action": "ModifyListener", "ListenerArn": LISTENER},
     [Need("elasticloadbalancing:ModifyListener", LISTENER)]),
    ("elbv2", "DescribeTargetHealth", {"TargetGroupArn": "x"},
     [Need("elasticloadbalancing:DescribeTargetHealth", "*")]),
    ("ecr", "DescribeImages", {"repositoryName": "web"},
     [Need("ecr:DescribeImages", f"arn:aws:ecr:{REGION}:{ACCOUNT}:repository/web")]),
    ("cloudwatch", "DescribeAlarms", {"AlarmNames": ["web-5xx"]},
     [Need("cloudwatch:DescribeAlarms", f"arn:aws:cloudwatch:{REGION}:{ACCOUNT}:alarm:web-5xx")]),
    ("codedeploy", "CreateDeployment", {"applicationName": "app", "deploymentGroupName": "grp"},
     [Need("codedeploy:CreateDeployment", f"arn:aws:codedeploy:{REGION}:{ACCOUNT}:deploymentgroup:app/grp")]),
    ("sts", "AssumeRole", {"RoleArn": f"arn:aws:iam::{ACCOUNT}:role/build"},
     [Need("sts:AssumeRole", f"arn:aws:iam::{ACCOUNT}:role/build")]),
    ("sts", "GetCallerIdentity", {}, []),  # AWS: no permission is required
    ("ssm", "GetParameter", {"Name": "/web/token"},
     [Need("ssm:GetParameter", f"arn:aws:ssm:{REGION}:{ACCOUNT}:parameter/web/token")]),
    ("logs", "GetLogEvents", {"logGroupName": "x"}, [Need("logs:GetLogEvents", None)]),  # not named: action only
], ids=lambda v: v if isinstance(v, str) and ":" not in v else None)
def test_each_call_names_its_resource(service: str, operation: str, params: dict[str, Any],
                                      wanted: list[Need]) -> None:
    assert needs(service, operation, params, Where(REGION, ACCOUNT)) == wanted


def test_enforcement_is_opt_in() -> None:
    assert not enabled({})
    assert not enabled({"SANDBOX_ENFORCE_IAM": "0"})
    assert enabled({"SANDBOX_ENFORCE_IAM": "1"})


# --- an enforcing sandbox of this module's own ----------------------------------------------------------------

class World:
    """Two services' resources, made by the admin: ``mine`` (the deploy user's) and ``other``."""

    def __init__(self, admin: Client, tmp: Path) -> None:
        ec2 = admin("ec2")
        vpc = ec2.create_vpc(CidrBlock="127.121.0.0/16")["Vpc"]["VpcId"]
        self.subnets = [ec2.create_subnet(VpcId=vpc, CidrBlock=f"127.121.{i}.0/24", AvailabilityZone=f"{REGION}{z}")
                        ["Subnet"]["SubnetId"] for i, z in ((1, "a"), (2, "b"))]
        self.sg = ec2.create_security_group(GroupName="iam-enforced", Description="iam", VpcId=vpc)["GroupId"]
        self.vpc = vpc
        iam = admin("iam")
        trust = json.dumps({"Version": "2012-10-17", "Statement": [{
            "Effect": "Allow", "Principal": {"Service": "ecs-tasks.amazonaws.com"}, "Action": "sts:AssumeRole"}]})
        for role in ("ecsTaskExecutionRole", "otherExecutionRole"):
            iam.create_role(RoleName=role, AssumeRolePolicyDocument=trust)
        self.mine = self._service(admin, "m" + uuid.uuid4().hex[:6])
        self.other = self._service(admin, "o" + uuid.uuid4().hex[:6])
        self.cfg = self._config(tmp, self.mine["name"])

    def _service(self, admin: Client, name: str) -> dict[str, Any]:
        ecs, elb = admin("ecs"), admin("elbv2")
        ecs.create_cluster(clusterName=f"{name}-cluster")
        ecs.create_service(cluster=f"{name}-cluster", serviceName=name, desiredCount=0,
                           deploymentController={"type": "EXTERNAL"})
        lb = elb.create_load_balancer(Name=f"{name}-alb", Subnets=self.subnets, Type="application")
        lb_arn = lb["LoadBalancers"][0]["LoadBalancerArn"]
        tgs = [elb.create_target_group(Name=f"{name}-{c}", Protocol="HTTP", Port=80, VpcId=self.vpc,
                                       TargetType="ip")["TargetGroups"][0]["TargetGroupArn"] for c in "ab"]
        ports = free_ports(2)
        listeners = [elb.create_listener(LoadBalancerArn=lb_arn, Protocol="HTTP", Port=port, DefaultActions=[
            {"Type": "forward", "TargetGroupArn": tgs[0]}])["Listeners"][0]["ListenerArn"] for port in ports]
        admin("ecr").create_repository(repositoryName=name)
        admin("cloudwatch").put_metric_alarm(
            AlarmName=f"{name}-5xx", MetricName="HTTPCode_Target_5XX_Count", Namespace="AWS/ApplicationELB",
            Statistic="Sum", Period=60, EvaluationPeriods=1, Threshold=1, ComparisonOperator="GreaterThanThreshold")
        return {"name": name, "cluster": f"{name}-cluster", "lb": lb_arn, "tgs": tgs, "ports": ports,
                "listeners": listeners}

    def _config(self, tmp: Path, name: str) -> ServiceConfig:
        (tmp / "taskdef.json").write_text(json.dumps(self.task_definition(name)))
        ports = self.mine["ports"]
        return parse_service({
            "name": name, "source": {"repo": str(tmp), "branch": "main"}, "ecr": {"repository": name},
            "ecs": {"cluster": f"{name}-cluster", "service": name, "container": "web", "container_port": 8080},
            "task_definition": "taskdef.json",
            "network": {"subnets": self.subnets, "security_groups": [self.sg]},
            "strategy": {"type": "task-sets", "traffic": {"type": "all-at-once"}},
            "load_balancer": {"production_listener": {"load_balancer": f"{name}-alb", "port": ports[0]},
                              "test_listener": {"load_balancer": f"{name}-alb", "port": ports[1]},
                              "target_groups": [f"{name}-a", f"{name}-b"]},
            "verify": {"alarms": [f"{name}-5xx"]},
        }, source="iam-enforced.yaml", base_dir=tmp)

    @staticmethod
    def task_definition(family: str, role: str = EXECUTION_ROLE) -> dict[str, Any]:
        return {"family": family, "networkMode": "awsvpc", "requiresCompatibilities": ["FARGATE"], "cpu": "256",
                "memory": "512", "executionRoleArn": role,
                "containerDefinitions": [{"name": "web", "image": "127.0.0.1:5000/web:v1", "essential": True,
                                          "portMappings": [{"containerPort": 8080, "protocol": "tcp"}]}]}


@pytest.fixture(scope="module")
def world(admin: Client, tmp_path_factory: pytest.TempPathFactory) -> World:
    return World(admin, tmp_path_factory.mktemp("iam-enforced"))


@pytest.fixture(scope="module")
def policy(world: World) -> dict[str, Any]:
    return deploy_policy(world.cfg, World.task_definition(world.cfg.name), None, Scope(ACCOUNT, REGION)).document


@pytest.fixture(scope="module")
def deploy_key(admin: Client, policy: dict[str, Any]) -> dict[str, str]:
    """A deploy user holding the generated deploy policy (inline, so a test can replace it), and its key."""
    return user_with_policy(admin, "deployer", policy)


@pytest.fixture(scope="module")
def deployer(endpoint: str, deploy_key: dict[str, str]) -> Client:
    return client_factory(endpoint, deploy_key["AccessKeyId"], deploy_key["SecretAccessKey"])


def grant(admin: Client, document: dict[str, Any]) -> None:
    put_policy(admin, "deployer", document)


# --- the probes: one call per statement of the task-sets deploy policy, on a service's own resources -------------

def probes(aws: Client, svc: dict[str, Any], family: str) -> dict[str, Callable[[], Any]]:
    ecs, elb, ecr, cw = aws("ecs"), aws("elbv2"), aws("ecr"), aws("cloudwatch")
    return {
        "ReadTheService": lambda: ecs.describe_services(cluster=svc["cluster"], services=[svc["name"]]),
        "DriveTaskSets": lambda: ecs.describe_task_sets(cluster=svc["cluster"], service=svc["name"]),
        "MoveListenerWeights": lambda: elb.modify_listener(ListenerArn=svc["listeners"][1], DefaultActions=[
            {"Type": "forward", "TargetGroupArn": svc["tgs"][0]}]),
        "FindCreateAndPushOwnRepository": lambda: ecr.describe_images(repositoryName=svc["name"]),
        "ReadVerifyAlarms": lambda: cw.describe_alarms(AlarmNames=[f"{svc['name']}-5xx"]),
        "ListStoppedTasksOfTheCluster": lambda: ecs.list_tasks(cluster=svc["cluster"], desiredStatus="STOPPED"),
        "NoResourceLevelPermissionsLoadBalancing": lambda: elb.describe_target_groups(TargetGroupArns=svc["tgs"]),
        "RegisterTaskDefinitionRevisions": lambda: ecs.register_task_definition(**World.task_definition(family)),
    }


def test_the_deploy_user_may_release_its_own_service(world: World, deployer: Client) -> None:
    """Every probe answers on the service's own resources, and a task set goes green to primary to gone."""
    for sid, call in probes(deployer, world.mine, world.cfg.name).items():
        call()  # raises on a refusal
        assert sid
    ecs, svc = deployer("ecs"), world.mine
    revision = ecs.register_task_definition(**World.task_definition(world.cfg.name),
                                            tags=[{"key": "git-sha", "value": "0" * 40}])
    task_set = ecs.create_task_set(
        cluster=svc["cluster"], service=svc["name"], launchType="FARGATE",
        taskDefinition=revision["taskDefinition"]["taskDefinitionArn"],
        networkConfiguration={"awsvpcConfiguration": {"subnets": world.subnets, "securityGroups": [world.sg]}},
        scale={"unit": "PERCENT", "value": 0})["taskSet"]
    ecs.update_service_primary_task_set(cluster=svc["cluster"], service=svc["name"],
                                        primaryTaskSet=task_set["taskSetArn"])
    assert ecs.describe_task_sets(cluster=svc["cluster"], service=svc["name"],
                                  taskSets=[task_set["taskSetArn"]])["taskSets"][0]["status"] == "PRIMARY"
    deployer("ecr").get_authorization_token()
    deployer("ecs").describe_task_definition(taskDefinition=world.cfg.name)


def test_the_same_calls_on_another_service_are_refused_as_aws_refuses_them(world: World, deployer: Client) -> None:
    """Each service answers in its own protocol: AccessDeniedException (JSON), AccessDenied (ELBv2's XML)."""
    other = world.other
    user = f"arn:aws:iam::{ACCOUNT}:user/deployer"
    expected = {  # what the other service's probe is refused for, and the resource AWS names
        "ReadTheService": ("ecs:DescribeServices", f"service/{other['cluster']}/{other['name']}"),
        "DriveTaskSets": ("ecs:DescribeTaskSets", f"task-set/{other['cluster']}/{other['name']}/*"),
        "MoveListenerWeights": ("elasticloadbalancing:ModifyListener", other["listeners"][1]),
        "FindCreateAndPushOwnRepository": ("ecr:DescribeImages", f"repository/{other['name']}"),
        "ReadVerifyAlarms": ("cloudwatch:DescribeAlarms", f"alarm:{other['name']}-5xx"),
        "ListStoppedTasksOfTheCluster": ("ecs:ListTasks", "*"),
        "RegisterTaskDefinitionRevisions": ("ecs:RegisterTaskDefinition", f"task-definition/{other['name']}:1"),
    }
    calls = probes(deployer, other, other["name"])
    for sid, (action, resource) in expected.items():
        error = refused(calls[sid])
        code = "AccessDenied" if action.startswith("elasticloadbalancing:") else "AccessDeniedException"
        assert error.response["Error"]["Code"] == code, (sid, error.response)
        assert error.response["ResponseMetadata"]["HTTPStatusCode"] == (403 if code == "AccessDenied" else 400)
        message = error.response["Error"]["Message"]
        assert message.startswith(f"User: {user} is not authorized to perform: {action} on resource: "), message
        assert resource in message and message.endswith(f"because no identity-based policy allows the {action} action")
    error = refused(lambda: deployer("ecs").create_task_set(
        cluster=other["cluster"], service=other["name"], launchType="FARGATE", taskDefinition=world.cfg.name,
        networkConfiguration={"awsvpcConfiguration": {"subnets": world.subnets, "securityGroups": [world.sg]}}))
    assert error.response["Error"]["Code"] == "AccessDeniedException"
    assert "ecs:CreateTaskSet" in error.response["Error"]["Message"]


REMOVED = ("ReadTheService", "DriveTaskSets", "MoveListenerWeights", "FindCreateAndPushOwnRepository",
           "ReadVerifyAlarms", "ListStoppedTasksOfTheCluster")


@pytest.mark.parametrize("sid", REMOVED)
def test_removing_one_statement_refuses_exactly_its_calls(world: World, admin: Client, deployer: Client,
                                                         policy: dict[str, Any], sid: str) -> None:
    grant(admin, without(policy, sid))
    try:
        failed = set()
        for name, call in probes(deployer, world.mine, world.cfg.name).items():
            try:
                call()
            except ClientError as exc:
                assert exc.response["Error"]["Code"] in ("AccessDenied", "AccessDeniedException"), exc.response
                failed.add(name)
        assert failed == {sid}
    finally:
        grant(admin, policy)


def test_passing_a_role_the_policy_does_not_list_is_refused(world: World, deployer: Client) -> None:
    other_role = f"arn:aws:iam::{ACCOUNT}:role/otherExecutionRole"
    ecs = deployer("ecs")
    for field in ("executionRoleArn", "taskRoleArn"):
        taskdef = {**World.task_definition(world.cfg.name), field: other_role}
        error = refused(functools.partial(ecs.register_task_definition, **taskdef))
        assert error.response["Error"]["Code"] == "AccessDeniedException"
        assert (f"is not authorized to perform: iam:PassRole on resource: {other_role} because no identity-based "
                "policy allows the iam:PassRole action") in error.response["Error"]["Message"]
    ecs.register_task_definition(**World.task_definition(world.cfg.name))  # its own role passes


def test_keys_the_account_does_not_know_or_a_wrong_secret_are_refused(endpoint: str,
                                                                      deploy_key: dict[str, str]) -> None:
    stranger = client_factory(endpoint, "AKIAIOSFODNN7EXAMPLE", "secret")("ecs")
    error = refused(lambda: stranger.describe_clusters())
    assert error.response["Error"]["Code"] == "UnrecognizedClientException"
    forged = client_factory(endpoint, deploy_key["AccessKeyId"], "not-the-secret")("elbv2")
    error = refused(lambda: forged.describe_load_balancers())
    assert error.response["Error"]["Code"] == "SignatureDoesNotMatch"
    unsigned = boto3.client("ecs", endpoint_url=endpoint, region_name=REGION, config=IAM_CONFIG.merge(
        Config(signature_version=UNSIGNED)))
    error = refused(lambda: unsigned.describe_clusters())
    assert error.response["Error"]["Code"] == "MissingAuthenticationTokenException"


# --- a real release under the enforced policy ---------------------------------------------------------------------

def test_a_task_sets_release_passes_under_the_enforced_deploy_policy_and_fails_without_one_statement(
        endpoint: str, admin: Client, world: World, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """flows.pipeline.deploy_service, signed by a user holding only the generated deploy policy, goes live;
    the next release, without the statement that moves listener weights, fails and v1 keeps serving."""
    from flows.pipeline import deploy_service
    from harness import services
    from sandbox import seed
    from tasks.config.taskdef import load_template, render_task_definition

    seeding = seeding_env(endpoint)  # seeded in the enforcing sandbox, as its admin
    sut = services.make_service(tmp_path, seed=lambda cfg: seed.seed_service(cfg, env=seeding))
    services.MADE.remove(sut)  # its containers go with this module's sandbox
    cfg = sut.cfg
    template = load_template(cfg.path(cfg.task_definition))
    rendered = render_task_definition(template, image="<IMAGE>", container=cfg.ecs.container, sha=None,
                                      service=cfg.name, source=str(cfg.task_definition), account=None, region=None)
    document = deploy_policy(cfg, rendered, None, Scope(ACCOUNT, REGION)).document
    iam = admin("iam")
    iam.create_user(UserName="releaser")
    iam.put_user_policy(UserName="releaser", PolicyName="deploy", PolicyDocument=json.dumps(document))
    key = iam.create_access_key(UserName="releaser")["AccessKey"]
    for var, value in (("AWS_ENDPOINT_URL", endpoint), ("AWS_ACCESS_KEY_ID", key["AccessKeyId"]),
                       ("AWS_SECRET_ACCESS_KEY", key["SecretAccessKey"]),
                       ("ECS_PIPELINE_DEPLOYMENTS", str(sut.yaml_path.parent))):
        monkeypatch.setenv(var, value)
    releaser = client_factory(endpoint, key["AccessKeyId"], key["SecretAccessKey"])
    refused(lambda: releaser("ecs").describe_services(cluster=world.other["cluster"],
                                                      services=[world.other["name"]]))  # the key is judged
    state = deploy_service(sut.name, return_state=True)
    assert state.is_completed(), state.message
    assert all("sample-app v1" in sut.get("/").text for _ in range(5))
    made = {r["operation"] for r in requests_seen(endpoint, 0, sut.name) if r["status"] == 200}
    assert {"RegisterTaskDefinition", "CreateTaskSet", "UpdateServicePrimaryTaskSet"} <= made, made
    seq = max(r["seq"] for r in requests_seen(endpoint, 0, ""))

    iam.put_user_policy(UserName="releaser", PolicyName="deploy",
                        PolicyDocument=json.dumps(without(document, "MoveListenerWeights")))
    sut.commit("v2")
    state = deploy_service(sut.name, return_state=True)
    assert state.is_failed(), state.message
    assert "elasticloadbalancing:ModifyListener" in (state.message or ""), state.message
    assert ("ModifyListener", 403) in {(r["operation"], r["status"]) for r in requests_seen(endpoint, seq, sut.name)}
    assert all("sample-app v1" in sut.get("/").text for _ in range(5)), "production stays on v1"
