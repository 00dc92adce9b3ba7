"""appspec.yml rendering: pure, table-driven, on the forms AWS documents."""

from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Any

import pytest

from tasks.aws.codedeploy import deployment_config
from tasks.config.appspec import (
    PLACEHOLDER,
    appspec_content,
    appspec_task_definition,
    content_sha256,
    default_appspec,
    parse_appspec,
    render_appspec,
    shift_minutes,
)
from tasks.config.models import Traffic
from tasks.core.errors import ConfigError

FIXTURES = Path(__file__).parent / "fixtures" / "appspecs"
SAMPLE = Path(__file__).parents[1] / "deployments" / "sample-app" / "appspec.yml"
ARN = "arn:aws:ecs:us-east-1:123456789012:task-definition/sample-app:7"
DOCS_NETWORK = {
    "AwsvpcConfiguration": {
        "Subnets": ["subnet-1234abcd", "subnet-5678abcd"],
        "SecurityGroups": ["sg-12345678"],
        "AssignPublicIp": "ENABLED",
    }
}
DOCS_HOOKS = [
    {"BeforeInstall": "LambdaFunctionToValidateBeforeInstall"},
    {"AfterInstall": "LambdaFunctionToValidateAfterInstall"},
    {"AfterAllowTestTraffic": "LambdaFunctionToValidateAfterTestTrafficStarts"},
    {"BeforeAllowTraffic": "LambdaFunctionToValidateBeforeAllowingProductionTraffic"},
    {"AfterAllowTraffic": "LambdaFunctionToValidateAfterAllowingProductionTraffic"},
]


def props(doc: dict[str, Any]) -> dict[str, Any]:
    return dict(doc["Resources"][0]["TargetService"]["Properties"])


@pytest.mark.parametrize(
    ("fixture", "expected"),
    [
        (
            SAMPLE,
            {"TaskDefinition": ARN, "LoadBalancerInfo": {"ContainerName": "web", "ContainerPort": 8080}},
        ),
        (
            FIXTURES / "docs-full.yml",
            {
                "TaskDefinition": ARN,
                "LoadBalancerInfo": {"ContainerName": "SampleApplicationName", "ContainerPort": 80},
                "PlatformVersion": "LATEST",
                "NetworkConfiguration": DOCS_NETWORK,
                "CapacityProviderStrategy": [
                    {"Base": 1, "CapacityProvider": "FARGATE_SPOT", "Weight": 2},
                    {"Base": 0, "CapacityProvider": "FARGATE", "Weight": 1},
                ],
            },
        ),
        (
            FIXTURES / "docs-full.json",
            {
                "TaskDefinition": ARN,
                "LoadBalancerInfo": {"ContainerName": "SampleApplicationName", "ContainerPort": 80},
                "PlatformVersion": "LATEST",
                "NetworkConfiguration": DOCS_NETWORK,
            },
        ),
        (
            FIXTURES / "pipeline-placeholder.yml",
            {"TaskDefinition": ARN, "LoadBalancerInfo": {"ContainerName": "api", "ContainerPort": 3000}},
        ),
        (
            FIXTURES / "pipeline-placeholder.json",
            {
                "TaskDefinition": ARN,
                "LoadBalancerInfo": {"ContainerName": "api", "ContainerPort": "3000"},
                "CapacityProviderStrategy": [
                    {"CapacityProvider": "FARGATE_SPOT", "Base": 0, "Weight": 4},
                    {"CapacityProvider": "FARGATE", "Base": 1, "Weight": 1},
                ],
            },
        ),
        (
            FIXTURES / "hooks-only.yaml",
            {
                "TaskDefinition": ARN,
                "LoadBalancerInfo": {"ContainerName": "web", "ContainerPort": 8080},
                "PlatformVersion": "1.4.0",
            },
        ),
    ],
    ids=lambda v: v.name if isinstance(v, Path) else "",
)
def test_render_sets_the_task_definition_and_keeps_the_rest(fixture: Path, expected: dict[str, Any]) -> None:
    text = fixture.read_text()
    parsed = parse_appspec(text, str(fixture))
    before = copy.deepcopy(parsed)
    info = expected["LoadBalancerInfo"]
    container, port = info["ContainerName"], int(info["ContainerPort"])
    doc = render_appspec(parsed, ARN, container=container, port=port, source=str(fixture))
    assert props(doc) == expected
    assert parsed == before, "the template must not be modified"
    assert doc["version"] == 0.0
    assert doc.get("Hooks") == parsed.get("Hooks")
    assert PLACEHOLDER not in appspec_content(doc)
    # Rendering the text gives the same as rendering the parsed mapping.
    assert render_appspec(text, ARN, container, port, str(fixture)) == doc


@pytest.mark.parametrize(
    ("fixture", "hooks"),
    [
        (FIXTURES / "docs-full.yml", DOCS_HOOKS),
        (FIXTURES / "docs-full.json", DOCS_HOOKS),
        (FIXTURES / "pipeline-placeholder.yml", None),
        (
            FIXTURES / "hooks-only.yaml",
            [{"AfterAllowTestTraffic": "arn:aws:lambda:eu-west-1:111222333444:function:smoke-test"}],
        ),
    ],
    ids=lambda v: v.name if isinstance(v, Path) else "",
)
def test_hooks_are_kept_in_order(fixture: Path, hooks: list[dict[str, str]] | None) -> None:
    info = props(parse_appspec(fixture.read_text()))["LoadBalancerInfo"]
    doc = render_appspec(fixture.read_text(), ARN, info["ContainerName"], int(info["ContainerPort"]))
    assert doc.get("Hooks") == hooks


def test_no_appspec_file_gives_a_default_from_the_service_config() -> None:
    doc = render_appspec(None, ARN, container="web", port=8080)
    assert doc == {
        "version": 0.0,
        "Resources": [
            {
                "TargetService": {
                    "Type": "AWS::ECS::Service",
                    "Properties": {
                        "TaskDefinition": ARN,
                        "LoadBalancerInfo": {"ContainerName": "web", "ContainerPort": 8080},
                    },
                }
            }
        ],
    }


def test_missing_load_balancer_info_comes_from_the_service_config() -> None:
    text = "version: 0.0\nResources:\n  - TargetService:\n      Type: AWS::ECS::Service\n" \
           "      Properties:\n        TaskDefinition: <TASK_DEFINITION>\n"
    assert props(render_appspec(text, ARN, "web", 8080))["LoadBalancerInfo"] == {
        "ContainerName": "web",
        "ContainerPort": 8080,
    }


def test_content_is_json_stable_and_names_the_task_definition() -> None:
    doc = render_appspec(SAMPLE.read_text(), ARN, "web", 8080)
    content = appspec_content(doc)
    assert json.loads(content) == doc
    again = appspec_content(render_appspec(SAMPLE.read_text(), ARN, "web", 8080))
    assert content_sha256(again) == content_sha256(content)
    assert appspec_task_definition(content) == ARN
    assert appspec_task_definition(SAMPLE.read_text()) == PLACEHOLDER
    assert appspec_task_definition("not: [an appspec") is None


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("- just a list", "expected a mapping with version and Resources"),
        ("version: 0.0\nResources: []\n", "Resources must list exactly one ECS service"),
        (
            "Resources:\n  - TargetService:\n      Type: AWS::Lambda::Function\n      Properties: {}\n",
            "Resources[0].TargetService.Type must be AWS::ECS::Service",
        ),
        (
            "Resources:\n  - TargetService:\n      Type: AWS::ECS::Service\n",
            "Resources[0].TargetService.Properties is missing",
        ),
        (
            ("Resources:\n  - TargetService:\n      Type: AWS::ECS::Service\n      Properties:\n"
            "        TaskDefinition: x\n        LaunchType: FARGATE\n"),
            "unknown field(s) LaunchType",
        ),
        (
            ("Resources:\n  - TargetService:\n      Type: AWS::ECS::Service\n      Properties:\n"
            "        LoadBalancerInfo: {ContainerName: web, ContainerPort: http}\n"),
            "LoadBalancerInfo.ContainerPort must be a port number (1-65535)",
        ),
        (
            ("Resources:\n  - TargetService:\n      Type: AWS::ECS::Service\n      Properties:\n"
            "        LoadBalancerInfo: {ContainerName: api, ContainerPort: 8080}\n"),
            "LoadBalancerInfo.ContainerName/ContainerPort must be the service config's ecs.container (web) "
            "and ecs.container_port (8080); fix the appspec or the service config",
        ),
        (
            ("Resources:\n  - TargetService:\n      Type: AWS::ECS::Service\n      Properties:\n"
            "        LoadBalancerInfo: {ContainerName: web, ContainerPort: 80}\n"),
            "must be the service config's ecs.container (web) and ecs.container_port (8080)",
        ),
        ("version: 0.0\nResources: []\nFiles: []\n", "unknown top-level field(s) Files"),
        (
            ("Resources:\n  - TargetService:\n      Type: AWS::ECS::Service\n      Properties: {}\n"
            "Hooks:\n  - BeforeBlockTraffic: fn\n"),
            "BeforeBlockTraffic is not an ECS lifecycle hook",
        ),
        ("version: 0.0\nResources: [\n", "appspec is not valid YAML at line 3 column 1"),
        ('{"version": 0.0,\n\t"Resources": [}', "appspec is not valid JSON at line 2 column 16: Expecting value"),
    ],
)
def test_wrong_appspecs_fail_naming_the_file_and_field(text: str, message: str) -> None:
    with pytest.raises(ConfigError) as err:
        render_appspec(text, ARN, "web", 8080, source="deployments/svc/appspec.yml")
    assert message in str(err.value)
    assert str(err.value).startswith("deployments/svc/appspec.yml: ")


def test_tab_indented_json_parses_as_json() -> None:
    """AWS's console template is JSON indented with tabs, which YAML refuses."""
    text = json.dumps(default_appspec("web", 8080), indent="\t")
    assert "\t" in text
    assert props(render_appspec(text, ARN, "web", 8080))["TaskDefinition"] == ARN


@pytest.mark.parametrize(
    ("traffic", "name", "routing", "minutes"),
    [
        ({}, "CodeDeployDefault.ECSAllAtOnce", {"type": "AllAtOnce"}, 0.0),
        (
            {"type": "canary", "percent": 10, "interval_seconds": 300},
            "EcsPipeline.ECSCanary10Percent5Minutes",
            {"type": "TimeBasedCanary", "timeBasedCanary": {"canaryPercentage": 10, "canaryInterval": 5}},
            5.0,
        ),
        (
            {"type": "canary", "percent": 20, "interval_seconds": 30},
            "EcsPipeline.ECSCanary20Percent1Minutes",
            {"type": "TimeBasedCanary", "timeBasedCanary": {"canaryPercentage": 20, "canaryInterval": 1}},
            1.0,
        ),
        (
            {"type": "linear", "percent": 25, "interval_seconds": 120},
            "EcsPipeline.ECSLinear25PercentEvery2Minutes",
            {"type": "TimeBasedLinear", "timeBasedLinear": {"linearPercentage": 25, "linearInterval": 2}},
            6.0,
        ),
    ],
)
def test_traffic_policy_becomes_a_codedeploy_deployment_config(
    traffic: dict[str, Any], name: str, routing: dict[str, Any], minutes: float
) -> None:
    assert deployment_config(Traffic(**traffic)) == (name, routing)
    assert shift_minutes(routing) == minutes
