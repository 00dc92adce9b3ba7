"""`ecs-pipeline verify SERVICE`: before a first release, what the strategy needs, one line per check with its fix.

Every test makes its own services (fresh names) in the sandbox, breaks one thing at a
time and reads the lines a person sees: exactly one MISSING / WRONG / cannot check line,
naming the resource and the fix, and exit code 1; a seeded service passes with 0.
"""

from __future__ import annotations

import contextlib
import json
import os
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from botocore.exceptions import ClientError

from flows.cli import main
from harness.services import ServiceUnderTest, aws, edit_config, refuse_next_call, sync_deploy_policy

ROOT = Path(__file__).resolve().parents[1]
TRUST_LAMBDA = {"Version": "2012-10-17", "Statement": [
    {"Effect": "Allow", "Principal": {"Service": "lambda.amazonaws.com"}, "Action": "sts:AssumeRole"}]}


def verify(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, list[str], str]:
    """Exit code, the lines on stdout, and stderr after the command's three environment lines."""
    code = main(["verify", *argv])
    out = capsys.readouterr()
    return code, out.out.splitlines(), "\n".join(out.err.splitlines()[3:])


def not_ok(lines: list[str]) -> list[str]:
    """The report's lines that are not ok (a service's heading, indented checks, a closing count)."""
    return [line.strip() for line in lines if line.startswith("  ") and not line.strip().startswith("ok ")]


def edit_taskdef(sut: ServiceUnderTest, change: Callable[[dict[str, object]], None]) -> None:
    path = sut.yaml_path.parent / sut.name / "taskdef.json"
    taskdef = json.loads(path.read_text())
    change(taskdef)
    path.write_text(json.dumps(taskdef, indent=2))
    sync_deploy_policy(sut)  # the roles it names: verify may read them, releases may pass them


@pytest.fixture
def seeded(new_service: Callable[..., ServiceUnderTest]) -> Iterator[Callable[..., ServiceUnderTest]]:
    """new_service(...) whose task definition logs to a group of its own, created; its log group,
    ECR repository and any role a test made go afterwards."""
    made: list[ServiceUnderTest] = []
    roles: list[str] = []

    def make(**kwargs: object) -> ServiceUnderTest:
        sut = new_service(**kwargs)
        made.append(sut)
        group = f"/ecs/{sut.name}"  # the sample's /ecs/sample-app is every service's: never touched here
        edit_taskdef(sut, lambda td: td["containerDefinitions"][0]["logConfiguration"]["options"]  # type: ignore[index]
                     .__setitem__("awslogs-group", group))
        aws("logs").create_log_group(logGroupName=group)
        return sut

    make.roles = roles  # type: ignore[attr-defined]
    yield make
    for sut in made:
        with contextlib.suppress(ClientError):
            aws("logs").delete_log_group(logGroupName=f"/ecs/{sut.name}")
        with contextlib.suppress(ClientError):
            aws("ecr").delete_repository(repositoryName=sut.name, force=True)
        with contextlib.suppress(ClientError):  # a codedeploy service's application, its group with it
            aws("codedeploy").delete_application(applicationName=f"AppECS-{sut.name}-cluster-{sut.name}")
    for role in roles:
        with contextlib.suppress(ClientError):
            aws("iam").delete_role(RoleName=role)


def test_a_seeded_service_passes_every_check(seeded: Callable[..., ServiceUnderTest],
                                             capsys: pytest.CaptureFixture[str]) -> None:
    sut = seeded()
    code, lines, err = verify(capsys, sut.name)
    assert code == 0, "\n".join(lines) + err
    assert lines[0] == f"{sut.name} (task-sets, {sut.name}-cluster/{sut.name}):"
    assert not_ok(lines) == []
    n = sut.name
    assert lines[1:-1] == [
        f"  ok      cluster {n}-cluster: ACTIVE",
        f"  ok      service {n}: ACTIVE",
        f"  ok      deployment controller {n}: EXTERNAL",
        "  ok      execution role ecsTaskExecutionRole: trusts ecs-tasks.amazonaws.com",
        f"  ok      log group /ecs/{n}",
        f"  ok      ECR repository {n}",
        f"  ok      alarm {n}-5xx",
        f"  ok      target group {n}-a: ip, HTTP:8080",
        f"  ok      target group {n}-b: ip, HTTP:8080",
        f"  ok      production listener {n}-alb:{sut.prod_url.rsplit(':', 1)[1]}: {n}-a 100%",
        f"  ok      test listener {n}-alb:{sut.test_url.rsplit(':', 1)[1]}: {n}-a 100%",
    ], lines
    assert lines[-1] == "11 ok, 0 MISSING, 0 WRONG, 0 cannot check"


def delete_group(sut: ServiceUnderTest) -> None:
    elbv2 = aws("elbv2")
    arn = elbv2.describe_target_groups(Names=[f"{sut.name}-b"])["TargetGroups"][0]["TargetGroupArn"]
    elbv2.delete_target_group(TargetGroupArn=arn)


def instance_group(sut: ServiceUnderTest) -> None:
    delete_group(sut)
    aws("elbv2").create_target_group(Name=f"{sut.name}-b", Protocol="HTTP", Port=8080, TargetType="instance",
                                     VpcId=sut.seeded["vpc_id"])


def rolling_yaml(sut: ServiceUnderTest) -> None:
    def change(config: dict[str, object]) -> None:
        config["strategy"] = {"type": "rolling"}  # type: ignore[assignment]
        config.pop("network")
    edit_config(sut, change)


def missing_task_role(sut: ServiceUnderTest) -> None:
    edit_taskdef(sut, lambda td: td.__setitem__("taskRoleArn", f"arn:aws:iam::<AWS_ACCOUNT_ID>:role/{sut.name}-task"))


def lambda_task_role(sut: ServiceUnderTest, roles: list[str]) -> None:
    roles.append(f"{sut.name}-task")
    aws("iam").create_role(RoleName=f"{sut.name}-task", AssumeRolePolicyDocument=json.dumps(TRUST_LAMBDA))
    missing_task_role(sut)


BROKEN = {
    "deleted target group": (
        delete_group,
        "MISSING target group {n}-b: not found; fix: aws elbv2 create-target-group --name {n}-b --target-type ip "
        "--protocol HTTP --port 8080 --vpc-id <the tasks' VPC>, or fix load_balancer.target_groups"),
    "target group of type instance": (
        instance_group,
        "WRONG   target group {n}-b: target type instance; awsvpc (Fargate) tasks register by IP; fix: a target "
        "group's type cannot change: create one with --target-type ip (HTTP, port 8080) and name it in "
        "load_balancer.target_groups"),
    "controller the YAML does not fit": (
        rolling_yaml,
        "WRONG   deployment controller {n}: EXTERNAL, but strategy.type rolling needs ECS (strategy ROLLING); fix: "
        "set strategy.type: task-sets in the YAML, or create the service with deploymentController ECS "
        "(strategy ROLLING)"),
    "task role missing": (
        missing_task_role,
        "MISSING task role {n}-task: IAM has no such role; fix: create it trusting ecs-tasks.amazonaws.com, "
        "or fix taskRoleArn in {n}/taskdef.json"),
    "task role ECS tasks cannot assume": (
        lambda_task_role,
        "WRONG   task role {n}-task: its trust policy does not let ecs-tasks.amazonaws.com assume it; fix: add a "
        "trust statement: Allow, Principal Service ecs-tasks.amazonaws.com, Action sts:AssumeRole"),
    "ECR repository missing": (
        lambda sut: aws("ecr").delete_repository(repositoryName=sut.name, force=True),
        "MISSING ECR repository {n}: not found; fix: aws ecr create-repository --repository-name {n} "
        "--image-scanning-configuration scanOnPush=true (a release's push creates it when its identity may call "
        "ecr:CreateRepository)"),
    "log group missing": (
        lambda sut: aws("logs").delete_log_group(logGroupName=f"/ecs/{sut.name}"),
        "MISSING log group /ecs/{n}: CloudWatch Logs has no such group (tasks fail to start); fix: aws logs "
        "create-log-group --log-group-name /ecs/{n}, or set awslogs-create-group \"true\""),
    "alarm missing": (
        lambda sut: aws("cloudwatch").delete_alarms(AlarmNames=[f"{sut.name}-5xx"]),
        "MISSING alarm {n}-5xx: CloudWatch has no such alarm; fix: create it (aws cloudwatch put-metric-alarm), "
        "or remove it from verify.alarms"),
    "a read AWS denies": (
        lambda sut: refuse_next_call("DescribeTargetGroups", "AccessDenied", f"{sut.name}-b", service="elbv2"),
        "cannot check: AWS denied elasticloadbalancing:DescribeTargetGroups on {n}-b (target group); fix: grant "
        "elasticloadbalancing:DescribeTargetGroups on {n}-b to the identity that runs verify and deploy"),
}


@pytest.mark.parametrize("case", list(BROKEN))
def test_one_thing_broken_gives_exactly_its_line_and_fix(
    case: str, seeded: Callable[..., ServiceUnderTest], capsys: pytest.CaptureFixture[str]
) -> None:
    sut = seeded()
    breaks, expected = BROKEN[case]
    if breaks is lambda_task_role:
        lambda_task_role(sut, seeded.roles)  # type: ignore[attr-defined]
    else:
        breaks(sut)  # type: ignore[operator]
    code, lines, err = verify(capsys, sut.name)
    assert not_ok(lines) == [expected.format(n=sut.name)], "\n".join(lines) + err
    assert code == 1


def test_json_lists_every_check_and_the_exit_code_says_missing(
    seeded: Callable[..., ServiceUnderTest], tmp_path: Path
) -> None:
    """In a process of its own, as a person runs it: --json on stdout alone, exit 1 for a missing log group."""
    sut = seeded()
    aws("logs").delete_log_group(logGroupName=f"/ecs/{sut.name}")
    env = {**os.environ, "ECS_PIPELINE_DEPLOYMENTS": str(sut.yaml_path.parent)}
    done = subprocess.run([sys.executable, "-m", "flows.cli", "verify", sut.name, "--json"], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=300, check=False)
    assert done.returncode == 1, done.stdout + done.stderr
    report = json.loads(done.stdout)
    assert all({"check", "status", "resource", "fix"} <= set(item) for item in report), report
    assert {item["status"] for item in report} == {"ok", "MISSING"}
    [missing] = [item for item in report if item["status"] != "ok"]
    assert (missing["check"], missing["resource"], missing["service"]) == ("log group", f"/ecs/{sut.name}", sut.name)
    assert missing["fix"].startswith(f"aws logs create-log-group --log-group-name /ecs/{sut.name}")
    assert {"check": "ECR repository", "status": "ok", "resource": sut.name, "fix": "", "detail": "",
            "service": sut.name} in report


def test_all_checks_every_service_of_the_folder(seeded: Callable[..., ServiceUnderTest],
                                                capsys: pytest.CaptureFixture[str]) -> None:
    sut = seeded()
    code, lines, err = verify(capsys, "--all")
    assert code == 0, "\n".join(lines) + err
    assert lines[0].startswith(f"{sut.name} (task-sets")


def test_a_bad_yaml_is_exit_2_naming_the_file_and_field(
    new_service: Callable[..., ServiceUnderTest], capsys: pytest.CaptureFixture[str]
) -> None:
    sut = new_service()
    good = sut.yaml_path.read_text()
    edit_config(sut, lambda c: c["ecs"].__setitem__("container_port", "8080"))
    try:
        code, lines, err = verify(capsys, sut.name)
    finally:
        sut.yaml_path.write_text(good)  # its clean-up reads it
    assert (code, lines) == (2, []), err
    assert f"error: {sut.yaml_path}: invalid service config" in err
    assert "ecs.container_port: expected a whole number, written without quotes" in err


@pytest.mark.parametrize(("argv", "expected"), [
    ((), "error: verify: name one SERVICE, or use --all"),
    (("nobody",), "error: no service named 'nobody'"),
    (("{n}", "--all"), "error: verify: name one SERVICE, or use --all"),
])
def test_bad_arguments_are_exit_2(argv: tuple[str, ...], expected: str, new_service: Callable[..., ServiceUnderTest],
                                  capsys: pytest.CaptureFixture[str]) -> None:
    sut = new_service()
    code, lines, err = verify(capsys, *(a.format(n=sut.name) for a in argv))
    assert (code, lines) == (2, []), err
    assert err.startswith(expected), err



STRATEGY_LINES = {
    "codedeploy": ["  ok      CodeDeploy application AppECS-{n}-cluster-{n}",
                   "  ok      CodeDeploy deployment group DgpECS-{n}-cluster-{n}: {n}-cluster/{n}, {n}-a, {n}-b",
                   "  ok      CodeDeploy service role ecsCodeDeployRole: trusts codedeploy.amazonaws.com"],
    "ecs-native": ["  ok      deployment controller {n}: ECS with strategy BLUE_GREEN",
                   "  ok      production listener rule arn:aws:elasticloadbalancing:",
                   "  ok      test listener rule arn:aws:elasticloadbalancing:",
                   "  ok      infrastructure role ecsInfrastructureRoleForLoadBalancers: trusts ecs.amazonaws.com"],
    "rolling": ["  ok      deployment controller {n}: ECS with strategy ROLLING",
                "  ok      production listener {n}-alb:"],
}


@pytest.mark.parametrize("strategy", list(STRATEGY_LINES))
def test_each_strategy_checks_its_own_resources(strategy: str, seeded: Callable[..., ServiceUnderTest],
                                                capsys: pytest.CaptureFixture[str]) -> None:
    sut = seeded(strategy=strategy)
    code, lines, err = verify(capsys, sut.name)
    assert code == 0, "\n".join(lines) + err
    for line in STRATEGY_LINES[strategy]:
        assert any(seen.startswith(line.format(n=sut.name)) for seen in lines), (line, lines)
    assert not any("test listener " in seen for seen in lines) if strategy == "rolling" else True, lines


def continue_on_timeout(sut: ServiceUnderTest) -> None:
    group = f"DgpECS-{sut.name}-cluster-{sut.name}"
    aws("codedeploy").update_deployment_group(
        applicationName=f"AppECS-{sut.name}-cluster-{sut.name}", currentDeploymentGroupName=group,
        blueGreenDeploymentConfiguration={
            "terminateBlueInstancesOnDeploymentSuccess": {"action": "TERMINATE", "terminationWaitTimeInMinutes": 5},
            "deploymentReadyOption": {"actionOnTimeout": "CONTINUE_DEPLOYMENT"}})


def narrow_test_rule(sut: ServiceUnderTest) -> None:
    """The test rule forwards to blue alone. The new service's first deployment sets both rules when it
    finishes (the sandbox, like ECS, after its bake), so the narrowing is made again until it holds."""
    elbv2, ecs = aws("elbv2"), aws("ecs")
    svc = ecs.describe_services(cluster=f"{sut.name}-cluster", services=[sut.name])["services"][0]
    rule = svc["loadBalancers"][0]["advancedConfiguration"]["testListenerRule"]
    blue = svc["loadBalancers"][0]["targetGroupArn"]

    def narrowed() -> bool:
        found = elbv2.describe_rules(RuleArns=[rule])["Rules"][0]["Actions"][0]
        groups = (found.get("ForwardConfig") or {}).get("TargetGroups") or [{"TargetGroupArn": found.get(
            "TargetGroupArn")}]
        return [g["TargetGroupArn"] for g in groups if g.get("Weight", 1)] == [blue] and len(groups) == 1

    deadline, held_since = time.monotonic() + 90, None
    while held_since is None or time.monotonic() - held_since < 3:
        assert time.monotonic() < deadline, "the test rule's narrowing did not hold"
        if not narrowed():
            elbv2.modify_rule(RuleArn=rule, Actions=[{"Type": "forward", "ForwardConfig": {
                "TargetGroups": [{"TargetGroupArn": blue, "Weight": 100}]}}])
            held_since = time.monotonic()
        time.sleep(0.3)


STRATEGY_BROKEN = {
    "codedeploy group missing": (
        "codedeploy",
        lambda sut: aws("codedeploy").delete_deployment_group(
            applicationName=f"AppECS-{sut.name}-cluster-{sut.name}",
            deploymentGroupName=f"DgpECS-{sut.name}-cluster-{sut.name}"),
        "MISSING CodeDeploy deployment group DgpECS-{n}-cluster-{n}: not in application AppECS-{n}-cluster-{n}; fix: "
        "create an ECS BLUE_GREEN deployment group naming the service, both target groups and the production and "
        "test listeners, or set strategy.codedeploy_group"),
    "codedeploy group that moves production before the checks": (
        "codedeploy", continue_on_timeout,
        "WRONG   CodeDeploy deployment group DgpECS-{n}-cluster-{n}: deploymentReadyOption.actionOnTimeout is not "
        "STOP_DEPLOYMENT: production would move before the checks; fix: set actionOnTimeout STOP_DEPLOYMENT with a "
        "waitTimeInMinutes"),
    "ecs-native test rule to one target group": (
        "ecs-native", narrow_test_rule,
        "WRONG   test listener rule {rule}: forwards to {n}-a; ECS needs both target groups in it; fix: forward to "
        "both target groups (weights 100 and 0)"),
}


@pytest.mark.parametrize("case", list(STRATEGY_BROKEN))
def test_a_strategy_resource_broken_gives_its_line(case: str, seeded: Callable[..., ServiceUnderTest],
                                                   capsys: pytest.CaptureFixture[str]) -> None:
    strategy, breaks, expected = STRATEGY_BROKEN[case]
    sut = seeded(strategy=strategy)
    breaks(sut)  # type: ignore[operator]
    code, lines, err = verify(capsys, sut.name)
    svc = aws("ecs").describe_services(cluster=f"{sut.name}-cluster", services=[sut.name])["services"][0]
    rule = (svc["loadBalancers"][0].get("advancedConfiguration") or {}).get("testListenerRule", "")
    assert not_ok(lines) == [str(expected).format(n=sut.name, rule=rule)], "\n".join(lines) + err
    assert code == 1


def statement(**fields: object) -> dict[str, object]:
    return {"Version": "2012-10-17", "Statement": [{"Effect": "Allow", "Action": "sts:AssumeRole", **fields}]}


@pytest.mark.parametrize(("document", "trusted"), [
    (statement(Principal={"Service": "ecs-tasks.amazonaws.com"}), True),
    (statement(Principal={"Service": ["lambda.amazonaws.com", "ecs-tasks.amazonaws.com"]}), True),
    (json.dumps(statement(Principal={"Service": "ecs-tasks.amazonaws.com"})), True),  # as IAM's query API sends it
    (statement(Principal={"Service": "ecs.amazonaws.com"}), False),  # ECS itself, not its tasks
    (statement(Principal={"AWS": "arn:aws:iam::123456789012:root"}), False),
    (statement(Principal={"Service": "ecs-tasks.amazonaws.com"}, Effect="Deny"), False),
    (statement(Principal={"Service": "ecs-tasks.amazonaws.com"}, Action=["sts:TagSession"]), False),
    (None, False),
])
def test_trust_policies_read_as_aws_reads_them(document: object, trusted: bool) -> None:
    from tasks.release.preflight_account import trusts

    assert trusts(document, "ecs-tasks.amazonaws.com") is trusted


def test_log_groups_are_the_awslogs_groups_each_once() -> None:
    from tasks.release.preflight_account import log_groups

    def logs(group: str, create: str | None = None) -> dict[str, object]:
        options = {"awslogs-group": group, **({"awslogs-create-group": create} if create else {})}
        return {"logConfiguration": {"logDriver": "awslogs", "options": options}}

    taskdef = {"containerDefinitions": [logs("/a"), logs("/a", "true"), logs("/b"), {"name": "sidecar"},
                                        {"logConfiguration": {"logDriver": "json-file", "options": {}}}]}
    assert log_groups(taskdef) == [("/a", True), ("/b", False)]
