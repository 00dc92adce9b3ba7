"""Rendering and diffing task definitions: pure functions, table-driven, on real-world shapes."""

from __future__ import annotations

import json
from pathlib import Path

import boto3
import pytest

from tasks.config.taskdef import (
    ACCOUNT_PLACEHOLDER,
    PLACEHOLDER,
    REGION_PLACEHOLDER,
    SHA_TAG,
    check_aws_rules,
    check_execution_role,
    check_register_input,
    container_named,
    diff_task_definitions,
    load_template,
    parse_template,
    register_input_keys,
    render_task_definition,
    uses_account,
)
from tasks.core.errors import ConfigError

FIXTURES = Path(__file__).parent / "fixtures" / "taskdefs"
SAMPLE = Path(__file__).parents[1] / "deployments" / "sample-app" / "taskdef.json"
IMAGE = "127.0.0.1:5000/app@sha256:" + "a" * 64
ROLE = "arn:aws:iam::<AWS_ACCOUNT_ID>:role/ecsTaskExecutionRole"


def images(td: dict) -> dict[str, str]:
    return {c["name"]: c["image"] for c in td["containerDefinitions"]}


@pytest.mark.parametrize(
    ("template", "container", "expected_images"),
    [
        (SAMPLE, "web", {"web": IMAGE}),
        (FIXTURES / "secrets.json", "api", {"api": IMAGE}),
        (
            FIXTURES / "sidecars.json",
            "web",
            {
                "envoy": "public.ecr.aws/appmesh/aws-appmesh-envoy:v1.27.0.0-prod",
                "web": IMAGE,
                "log-router": "public.ecr.aws/aws-observability/aws-for-fluent-bit:stable",
            },
        ),
        (FIXTURES / "described.json", "worker", {"worker": IMAGE}),
    ],
)
def test_render_sets_only_the_named_image(template: Path, container: str, expected_images: dict) -> None:
    raw = load_template(template)
    before = json.dumps(raw, sort_keys=True)
    td = render_task_definition(raw, image=IMAGE, container=container, sha="f" * 40, service="svc")
    assert images(td) == expected_images
    assert json.dumps(raw, sort_keys=True) == before, "the template must not be modified"
    assert PLACEHOLDER not in json.dumps(td)
    assert {"key": SHA_TAG, "value": "f" * 40} in td["tags"]
    # Every key is one RegisterTaskDefinition accepts, per botocore's own service model.
    assert set(td) <= register_input_keys()


def test_render_keeps_secrets_logging_healthcheck_and_dependencies() -> None:
    td = render_task_definition(load_template(FIXTURES / "sidecars.json"), image=IMAGE, container="web")
    by_name = {c["name"]: c for c in td["containerDefinitions"]}
    assert by_name["envoy"]["healthCheck"]["retries"] == 3
    assert by_name["web"]["logConfiguration"]["options"]["awslogs-group"] == "/ecs/web"
    assert by_name["web"]["dependsOn"] == [{"containerName": "envoy", "condition": "HEALTHY"}]
    secrets = render_task_definition(load_template(FIXTURES / "secrets.json"), image=IMAGE, container="api")
    assert [s["name"] for s in secrets["containerDefinitions"][0]["secrets"]] == ["DB_PASSWORD", "API_KEY"]


def test_described_output_drops_read_only_fields() -> None:
    td = render_task_definition(load_template(FIXTURES / "described.json"), image=IMAGE, container="worker")
    for key in ("taskDefinitionArn", "revision", "status", "compatibilities", "registeredAt", "registeredBy"):
        assert key not in td


def test_register_input_keys_come_from_botocore() -> None:
    shape = boto3.client("ecs", region_name="us-east-1").meta.service_model.operation_model(
        "RegisterTaskDefinition"
    ).input_shape
    assert register_input_keys() == frozenset(shape.members)


@pytest.mark.parametrize(
    ("template", "container", "message"),
    [
        ({"containerDefinitions": [{"name": "a", "image": "x"}]}, "a", "family is required"),
        ({"family": "f", "containerDefinitions": []}, "a", "containerDefinitions must be a non-empty list"),
        ({"family": "f", "containerDefinitions": [{"name": "a", "image": "x"}]}, "b", "no container named 'b'"),
        (
            {"family": "f", "containerDefinitions": [{"name": "a"}], "colour": "x"},
            "a",
            "unknown task definition field(s) colour",
        ),
        (
            {"family": "f", "containerDefinitions": ["a"]},
            "a",
            "containerDefinitions must be a non-empty list of objects",
        ),
        (
            {"family": "f", "containerDefinitions": [{"name": "a", "image": "x"}], "tags": ["k=v"]},
            "a",
            "tags must be a list of {key, value} objects",
        ),
    ],
)
def test_render_errors_name_the_problem(template: dict, container: str, message: str) -> None:
    with pytest.raises(ConfigError, match=message.replace("(", r"\(").replace(")", r"\)")) as err:
        render_task_definition(template, image=IMAGE, container=container, source="x/taskdef.json")
    assert "x/taskdef.json" in str(err.value)


@pytest.mark.parametrize(
    ("change", "lines"),
    [
        (lambda td: td.update(memory=512), ["  memory: expected a string"]),
        (
            lambda td: td["containerDefinitions"][0].update(essential="yes"),
            ["  containerDefinitions[0].essential: expected true or false"],
        ),
        (
            lambda td: td["containerDefinitions"][0].update(colour="x"),
            ["  containerDefinitions[0]: unknown field colour"],
        ),
        (
            lambda td: td["containerDefinitions"][0].update(portMappings="8080"),
            ["  containerDefinitions[0].portMappings: expected a list"],
        ),
        (
            lambda td: td["containerDefinitions"][0].update(portMappings=[{"containerPort": "8080"}], cpu="1"),
            [
                "  containerDefinitions[0].portMappings[0].containerPort: expected an integer",
                "  containerDefinitions[0].cpu: expected an integer",
            ],
        ),
    ],
)
def test_register_input_is_checked_against_botocore_without_quoting_values(change, lines: list[str]) -> None:  # type: ignore[no-untyped-def]
    """What RegisterTaskDefinition would refuse fails at load; the message has the path and type, not the value."""
    td = render_task_definition(load_template(SAMPLE), image=IMAGE, container="web")
    check_register_input(td, "x/taskdef.json")
    change(td)
    with pytest.raises(ConfigError) as err:
        check_register_input(td, "x/taskdef.json")
    head = "x/taskdef.json: RegisterTaskDefinition would refuse this task definition"
    assert str(err.value).splitlines() == [head, *lines]


def test_template_text_errors_give_line_and_column_only() -> None:
    secret = "AKIAIOSFODNN7EXAMPLE"
    with pytest.raises(ConfigError) as err:
        parse_template(f"[default]\naws_access_key_id = {secret}\n", "x/credentials")
    assert str(err.value) == "x/credentials: not valid JSON at line 1 column 2: Expecting value"
    assert parse_template('\ufeff{"taskDefinition": {"family": "f"}}', "x") == {"family": "f"}
    with pytest.raises(ConfigError, match=r"x: expected a JSON object with family"):
        parse_template("[]", "x")


def test_the_service_container_must_be_in_the_template() -> None:
    td = load_template(FIXTURES / "sidecars.json")
    assert container_named(td, "web", "x")["name"] == "web"
    with pytest.raises(ConfigError, match=r"x: no container named 'api' \(containers: .*web.*\); fix ecs.container"):
        container_named(td, "api", "x")


def test_bad_json_names_file_and_line(tmp_path: Path) -> None:
    bad = tmp_path / "taskdef.json"
    bad.write_text('{\n  "family": "x",\n  "containerDefinitions": [\n}\n')
    with pytest.raises(ConfigError, match=r"taskdef.json: not valid JSON at line 4"):
        load_template(bad)


def test_diff_ignores_aws_defaults() -> None:
    desired = render_task_definition(
        load_template(FIXTURES / "described.json"), image=IMAGE, container="worker", sha="1" * 40
    )
    live = {
        **load_template(FIXTURES / "described.json"),
        "containerDefinitions": [
            {**load_template(FIXTURES / "described.json")["containerDefinitions"][0], "image": IMAGE}
        ],
        "tags": [{"key": SHA_TAG, "value": "1" * 40}],
    }
    assert diff_task_definitions(live, desired) == []


@pytest.mark.parametrize(
    ("change", "path"),
    [
        (lambda td: td["containerDefinitions"][0].update(image="other"), "containerDefinitions[worker].image"),
        (lambda td: td.update(memory="1024"), "memory"),
        (
            lambda td: td["containerDefinitions"][0].update(environment=[{"name": "A", "value": "1"}]),
            "containerDefinitions[worker].environment",
        ),
    ],
)
def test_diff_reports_real_changes(change, path: str) -> None:  # type: ignore[no-untyped-def]
    base = render_task_definition(load_template(FIXTURES / "described.json"), image=IMAGE, container="worker")
    other = json.loads(json.dumps(base))
    change(other)
    changes = diff_task_definitions(base, other)
    assert [c.path for c in changes] == [path]
    assert str(changes[0]).startswith(("~", "+", "-"))


def test_diff_never_prints_a_value_named_like_a_secret() -> None:
    """render prints what would be registered; a diff (deploy --dry-run, diff) is for reading, often in CI logs."""
    base = render_task_definition(load_template(FIXTURES / "described.json"), image=IMAGE, container="worker")
    env = [{"name": "DB_PASSWORD", "value": "hunter2-live"}, {"name": "GREETING", "value": "hi"}]
    base["containerDefinitions"][0]["environment"] = env
    changed = json.loads(json.dumps(base))
    changed["containerDefinitions"][0]["environment"] = [{**e, "value": e["value"] + "-new"} for e in env]
    lines = [str(c) for c in diff_task_definitions(base, changed)]
    assert lines == [
        '~ containerDefinitions[worker].environment[DB_PASSWORD].value: "<hidden: the variable\'s name says secret>"'
        ' -> "<hidden: the variable\'s name says secret>"',
        '~ containerDefinitions[worker].environment[GREETING].value: "hi" -> "hi-new"',
    ]
    changed["containerDefinitions"][0]["environment"].append({"name": "API_TOKEN", "value": "tok-123"})
    whole = "\n".join(str(c) for c in diff_task_definitions(base, changed))
    assert "hunter2" not in whole and "tok-123" not in whole and '"GREETING", "value": "hi-new"' in whole


def fargate(cpu: object, memory: object, **extra: object) -> dict:
    web = {"name": "web", "image": IMAGE, "portMappings": [{"containerPort": 8080}]}
    return {"family": "shop", "networkMode": "awsvpc", "requiresCompatibilities": ["FARGATE"],
            "cpu": cpu, "memory": memory, "containerDefinitions": [web], "executionRoleArn": ROLE, **extra}


@pytest.mark.parametrize(
    ("td", "message"),
    [
        (fargate("256", "512"), None),
        (fargate("0.25 vCPU", "0.5 GB"), None),  # AWS's other spelling
        (fargate("1 vcpu", "8GB"), None),
        (fargate("16384", "122880"), None),
        (fargate("256", "1536"), "no task size with cpu 256 and memory 1536 MiB; with cpu 256, memory is one of"),
        (fargate("300", "1024"), "cpu is one of 256, 512, 1024, 2048, 4096, 8192, 16384"),
        (fargate(None, None), "FARGATE needs task-level cpu and memory"),
        (fargate("256", "512", networkMode="bridge"), "FARGATE needs networkMode awsvpc"),
        ({**fargate("256", "512"), "requiresCompatibilities": ["EC2"], "cpu": "300"}, None),
        (fargate("256", "512", family="shop/web"), "family must be 1-255 letters"),
        (fargate("256", "512", family="x" * 256), "family must be 1-255 letters"),
        (fargate("256", "512", containerDefinitions=[{"name": "web", "image": IMAGE, "essential": False,
                                                       "portMappings": [{"containerPort": 8080}]}]),
         "no container is essential"),
        (fargate("256", "512", containerDefinitions=[{"name": "web", "image": IMAGE}]),
         "container web has no portMappings entry with containerPort 8080"),
        (fargate("256", "512", containerDefinitions=[{"name": "web", "image": IMAGE, "portMappings": [
            {"containerPort": 8080}]}, {"name": "log router"}]), r"containerDefinitions\[1\].name must be"),
        (fargate("256", "512", containerDefinitions=[{"name": "web", "image": IMAGE, "portMappings": [
            {"containerPort": 8080}]}, {"name": "sidecar"}]), r"containerDefinitions\[1\] \(sidecar\) has no image"),
    ],
)
def test_what_aws_refuses_beyond_types_is_found_at_load(td: dict, message: str | None) -> None:
    if message is None:
        check_aws_rules(td, "web", 8080, "taskdef.json")
        return
    with pytest.raises(ConfigError, match=message):
        check_aws_rules(td, "web", 8080, "taskdef.json")


def test_an_unrouted_service_needs_no_port_mapping() -> None:
    """Rolling without a load balancer: nothing must reach ecs.container_port from outside."""
    check_aws_rules(fargate("256", "512", containerDefinitions=[{"name": "web", "image": IMAGE}]), "web", None, "t")


# -- <AWS_ACCOUNT_ID> / <AWS_REGION> ----------------------------------------------------------------
DEPLOYMENTS = sorted((Path(__file__).parents[1] / "deployments").glob("*/taskdef.json"))


@pytest.mark.parametrize("path", DEPLOYMENTS, ids=lambda p: p.parent.name)
def test_shipped_templates_name_no_account_or_region(path: Path) -> None:
    """One template serves every account: the account and region come from the caller at render time."""
    text = path.read_text()
    assert "123456789012" not in text and "us-east-1" not in text
    td = render_task_definition(load_template(path), image=IMAGE, container="web",
                                account="210987654321", region="eu-west-1")
    assert td["executionRoleArn"] == "arn:aws:iam::210987654321:role/ecsTaskExecutionRole"
    assert td["containerDefinitions"][0]["logConfiguration"]["options"]["awslogs-region"] == "eu-west-1"
    assert "<AWS_" not in json.dumps(td)


@pytest.mark.parametrize(
    ("account", "region", "role", "secret"),
    [
        ("210987654321", "eu-west-1", "arn:aws:iam::210987654321:role/ecsTaskExecutionRole",
         "arn:aws:secretsmanager:eu-west-1:210987654321:secret:db-AbCdEf"),
        (None, "eu-west-1", f"arn:aws:iam::{ACCOUNT_PLACEHOLDER}:role/ecsTaskExecutionRole",
         f"arn:aws:secretsmanager:eu-west-1:{ACCOUNT_PLACEHOLDER}:secret:db-AbCdEf"),
        (None, None, f"arn:aws:iam::{ACCOUNT_PLACEHOLDER}:role/ecsTaskExecutionRole",
         f"arn:aws:secretsmanager:{REGION_PLACEHOLDER}:{ACCOUNT_PLACEHOLDER}:secret:db-AbCdEf"),
    ],
)
def test_placeholders_are_filled_from_the_inputs(account: str | None, region: str | None, role: str,
                                                  secret: str) -> None:
    template = load_template(FIXTURES / "secrets.json")
    before = json.dumps(template, sort_keys=True)
    td = render_task_definition(template, image=IMAGE, container="api", account=account, region=region)
    assert td["executionRoleArn"] == role
    assert td["containerDefinitions"][0]["secrets"][0]["valueFrom"] == secret
    assert json.dumps(template, sort_keys=True) == before, "the template must not be modified"


def test_a_literal_account_and_region_keep_working() -> None:
    """describe-task-definition output names its account and region; nothing is replaced or looked up."""
    assert not uses_account(load_template(FIXTURES / "described.json"))
    text = SAMPLE.read_text().replace(ACCOUNT_PLACEHOLDER, "123456789012").replace(REGION_PLACEHOLDER, "us-east-1")
    template = parse_template(text, "literal.json")
    assert not uses_account(template)
    td = render_task_definition(template, image=IMAGE, container="web", account="210987654321", region="eu-west-1")
    assert td["executionRoleArn"] == "arn:aws:iam::123456789012:role/ecsTaskExecutionRole"
    assert td["containerDefinitions"][0]["logConfiguration"]["options"]["awslogs-region"] == "us-east-1"
    assert uses_account(load_template(SAMPLE))


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (lambda td: td.update(executionRoleArn="arn:aws:iam::<AWS_ACCOUNT>:role/x"),
         r"t.json: executionRoleArn: unknown placeholder <AWS_ACCOUNT>; the pipeline fills "
         r"<AWS_ACCOUNT_ID> and <AWS_REGION> only"),
        (lambda td: td["containerDefinitions"][0]["environment"].append({"name": "R", "value": "<AWS_REGION_NAME>"}),
         r"containerDefinitions\[0\]\.environment\[1\]\.value: unknown placeholder <AWS_REGION_NAME>"),
    ],
)
def test_an_unknown_aws_placeholder_is_refused(change, message: str) -> None:  # type: ignore[no-untyped-def]
    template = load_template(SAMPLE)
    change(template)
    with pytest.raises(ConfigError, match=message):
        render_task_definition(template, image=IMAGE, container="web", source="t.json")


def test_an_account_that_is_not_one_is_refused() -> None:
    with pytest.raises(ConfigError, match="'12345' is not a 12-digit AWS account id"):
        render_task_definition(load_template(SAMPLE), image=IMAGE, container="web", account="12345", region="x")


# -- executionRoleArn ---------------------------------------------------------------------------------
# AWS's ECS developer guide, "Amazon ECS task execution IAM role"
# (https://docs.aws.amazon.com/AmazonECS/latest/developerguide/task_execution_IAM_role.html):
#   "The following are common use cases for a task execution IAM role:
#    - Your task is hosted on AWS Fargate, Amazon ECS Managed Instances, or an external instance and:
#      - pulls a container image from an Amazon ECR private repository.
#      - pulls a container image from an Amazon ECR private repository in a different account from the
#        account that runs the task.
#      - sends container logs to CloudWatch Logs using the awslogs log driver.
#    - Your tasks are hosted on either AWS Fargate or Amazon EC2 instances and:
#      - uses private registry authentication. [...]
#      - the task definition references sensitive data using Secrets Manager secrets or AWS Systems
#        Manager Parameter Store parameters."
# The released container's image is always in ECR (the pipeline pushes it there), so on Fargate every
# task definition the pipeline registers needs the role.
def no_role(**extra: object) -> dict:
    td = fargate("256", "512", **extra)
    del td["executionRoleArn"]
    return td


ECR_SIDECAR = {"name": "proxy", "image": "123456789012.dkr.ecr.eu-west-1.amazonaws.com/proxy:1"}
AWSLOGS = {"logDriver": "awslogs", "options": {"awslogs-group": "/ecs/shop", "awslogs-region": "<AWS_REGION>"}}


@pytest.mark.parametrize(
    ("td", "container", "message"),
    [
        (no_role(), "web", "container web pulls its image from Amazon ECR"),
        (no_role(requiresCompatibilities=["EXTERNAL"]), "web", "container web pulls its image from Amazon ECR"),
        (no_role(requiresCompatibilities=None), "web", "container web pulls its image from Amazon ECR"),
        (no_role(containerDefinitions=[{"name": "web", "image": "busybox", "logConfiguration": AWSLOGS}]),
         "other", "container web logs with awslogs"),
        (no_role(containerDefinitions=[{"name": "web", "image": "x"}, ECR_SIDECAR]), "web",
         "container web pulls its image from Amazon ECR; container proxy pulls its image from Amazon ECR"),
        (no_role(requiresCompatibilities=["EC2"], containerDefinitions=[
            {"name": "web", "image": "x", "secrets": [{"name": "A", "valueFrom": "arn:aws:ssm:x"}]}]), "web",
         "container web reads secrets from Secrets Manager or Parameter Store"),
        (no_role(requiresCompatibilities=["EC2"], containerDefinitions=[
            {"name": "web", "image": "x", "repositoryCredentials": {"credentialsParameter": "arn:x"}}]), "web",
         r"container web uses private registry authentication \(repositoryCredentials\)"),
        # the container instance role pulls from ECR and writes awslogs on EC2
        (no_role(requiresCompatibilities=["EC2"], containerDefinitions=[{**ECR_SIDECAR, "logConfiguration": AWSLOGS}]),
         "proxy", None),
        (fargate("256", "512", containerDefinitions=[{**ECR_SIDECAR, "logConfiguration": AWSLOGS}]), "proxy", None),
    ],
)
def test_execution_role_is_required_where_aws_says(td: dict, container: str, message: str | None) -> None:
    if message is None:
        check_execution_role(td, container, "taskdef.json")
        return
    with pytest.raises(ConfigError, match=f"taskdef.json: executionRoleArn is required: {message}") as err:
        check_execution_role(td, container, "taskdef.json")
    assert 'add "executionRoleArn": "arn:aws:iam::<AWS_ACCOUNT_ID>:role/ecsTaskExecutionRole"' in str(err.value)


def test_the_execution_role_is_checked_at_load() -> None:
    with pytest.raises(ConfigError, match="executionRoleArn is required: container web pulls its image from"):
        check_aws_rules(no_role(), "web", 8080, "taskdef.json")
