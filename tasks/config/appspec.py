"""What CodeDeploy ECS blue/green is given: pure rendering, no boto3, docker or Prefect.

The template is the service's own appspec.yml (YAML or JSON, as CodePipeline
takes it): ``<TASK_DEFINITION>`` where CodePipeline puts the task definition
ARN, or any TaskDefinition value, which the registered ARN replaces. The
container, port, platform version, network configuration, capacity provider
strategy and hooks stay as written. Without a file, a minimal one is made from
the service config. The deployment config (how production traffic moves) comes
from the service's strategy.traffic.
"""

from __future__ import annotations

import copy
import hashlib
import json
import math
from typing import Any

import yaml

from tasks.config.inputs import parse_yaml_or_json, shown_key
from tasks.core.errors import ConfigError

PLACEHOLDER = "<TASK_DEFINITION>"
# What load-time checks render with: any ARN-shaped value proves the template takes one.
PLACEHOLDER_ARN = "arn:aws:ecs:us-east-1:000000000000:task-definition/placeholder:1"
TOP_LEVEL = frozenset({"version", "Resources", "Hooks"})
SERVICE_TYPE = "AWS::ECS::Service"
OWN_CONFIG_PREFIX = "EcsPipeline."
PROPERTIES = frozenset(
    {
        "TaskDefinition",
        "LoadBalancerInfo",
        "PlatformVersion",
        "NetworkConfiguration",
        "CapacityProviderStrategy",
    }
)
HOOK_EVENTS = frozenset(
    {
        "BeforeInstall",
        "AfterInstall",
        "AfterAllowTestTraffic",
        "BeforeAllowTraffic",
        "AfterAllowTraffic",
    }
)


def default_appspec(container: str, port: int) -> dict[str, Any]:
    """What a service without an appspec.yml gets: its container and port behind the load balancer."""
    return {
        "version": 0.0,
        "Resources": [
            {
                "TargetService": {
                    "Type": SERVICE_TYPE,
                    "Properties": {
                        "TaskDefinition": PLACEHOLDER,
                        "LoadBalancerInfo": {"ContainerName": container, "ContainerPort": port},
                    },
                }
            }
        ],
    }


def parse_appspec(text: str, source: str = "appspec") -> dict[str, Any]:
    """JSON or YAML text to a mapping; errors name the file and never quote it."""
    doc = parse_yaml_or_json(text, source, "appspec")
    if not isinstance(doc, dict):
        raise ConfigError(f"{source}: expected a mapping with version and Resources")
    unknown = sorted({shown_key(k) for k in set(doc) - TOP_LEVEL})
    if unknown:
        raise ConfigError(
            f"{source}: unknown top-level field(s) {', '.join(unknown)}; "
            f"an ECS appspec has {', '.join(sorted(TOP_LEVEL))}"
        )
    return doc


def _target(doc: dict[str, Any], source: str) -> dict[str, Any]:
    """The one AWS::ECS::Service resource's Properties (the mapping inside ``doc``)."""
    resources = doc.get("Resources")
    if not isinstance(resources, list) or len(resources) != 1 or not isinstance(resources[0], dict):
        raise ConfigError(f"{source}: Resources must list exactly one ECS service (TargetService)")
    entry = resources[0]
    if len(entry) != 1:
        raise ConfigError(f"{source}: Resources[0] must be one named resource, e.g. TargetService")
    key, resource = next(iter(entry.items()))
    name = shown_key(key)
    if not isinstance(resource, dict) or resource.get("Type") != SERVICE_TYPE:
        raise ConfigError(f"{source}: Resources[0].{name}.Type must be {SERVICE_TYPE}")
    props = resource.get("Properties")
    if not isinstance(props, dict):
        raise ConfigError(f"{source}: Resources[0].{name}.Properties is missing")
    unknown = sorted({shown_key(k) for k in set(props) - PROPERTIES})
    if unknown:
        raise ConfigError(
            f"{source}: Resources[0].{name}.Properties: unknown field(s) {', '.join(unknown)}; "
            f"CodeDeploy accepts {', '.join(sorted(PROPERTIES))}"
        )
    return props


def _check_hooks(doc: dict[str, Any], source: str) -> None:
    hooks = doc.get("Hooks")
    if hooks is None:
        return
    if not isinstance(hooks, list) or not all(isinstance(h, dict) and len(h) == 1 for h in hooks):
        raise ConfigError(f"{source}: Hooks must be a list of single '<event>: <function>' entries")
    for hook in hooks:
        event, function = next(iter(hook.items()))
        if event not in HOOK_EVENTS:
            raise ConfigError(
                f"{source}: Hooks: {shown_key(event)} is not an ECS lifecycle hook "
                f"(use {', '.join(sorted(HOOK_EVENTS))})"
            )
        if not isinstance(function, str) or not function:
            raise ConfigError(f"{source}: Hooks: {event} needs a Lambda function name or ARN")


def _check_load_balancer(props: dict[str, Any], container: str, port: int, source: str) -> None:
    """The container behind the load balancer is the one that gets the new image."""
    info = props["LoadBalancerInfo"]
    if not isinstance(info, dict) or not info.get("ContainerName"):
        raise ConfigError(f"{source}: LoadBalancerInfo needs ContainerName and ContainerPort")
    written = info.get("ContainerPort", "")
    try:
        number = int(written) if not isinstance(written, bool) else 0
    except (TypeError, ValueError):
        number = 0
    if not 1 <= number <= 65535:
        raise ConfigError(f"{source}: LoadBalancerInfo.ContainerPort must be a port number (1-65535)")
    if info["ContainerName"] != container or number != port:
        raise ConfigError(
            f"{source}: LoadBalancerInfo.ContainerName/ContainerPort must be the service config's "
            f"ecs.container ({container}) and ecs.container_port ({port}); "
            "fix the appspec or the service config so they name the same container and port"
        )


def render_appspec(
    template: str | dict[str, Any] | None,
    task_definition_arn: str,
    container: str,
    port: int,
    source: str = "appspec",
) -> dict[str, Any]:
    """The appspec for this release: the template with the registered task definition ARN."""
    if template is None:
        doc = default_appspec(container, port)
    elif isinstance(template, str):
        doc = parse_appspec(template, source)
    else:
        doc = copy.deepcopy(template)
    props = _target(doc, source)
    if "LoadBalancerInfo" not in props:
        props["LoadBalancerInfo"] = {"ContainerName": container, "ContainerPort": port}
    _check_load_balancer(props, container, port, source)
    _check_hooks(doc, source)
    version = doc.get("version", 0.0)
    if isinstance(version, bool) or version not in (0.0, "0.0"):
        raise ConfigError(f"{source}: version must be 0.0, the only appspec version CodeDeploy takes")
    written = str(props.get("TaskDefinition", PLACEHOLDER))
    props["TaskDefinition"] = (
        written.replace(PLACEHOLDER, task_definition_arn)
        if PLACEHOLDER in written
        else task_definition_arn
    )
    doc.setdefault("version", 0.0)
    return doc


def appspec_content(appspec: dict[str, Any]) -> str:
    """The AppSpecContent string CreateDeployment takes (JSON, stable for the same appspec)."""
    return json.dumps(appspec, separators=(",", ":"))


def content_sha256(content: str) -> str:
    return hashlib.sha256(content.encode()).hexdigest()


def appspec_task_definition(content: str) -> str | None:
    """The TaskDefinition an AppSpecContent string deploys, or None when it names none."""
    try:
        doc = yaml.safe_load(content)
        resource = next(iter(doc["Resources"][0].values()))
        value = resource["Properties"]["TaskDefinition"]
    except (yaml.YAMLError, KeyError, IndexError, TypeError, AttributeError, StopIteration):
        return None
    return str(value) if value else None


def shift_minutes(routing: dict[str, Any]) -> float:
    """How long a trafficRoutingConfig takes to move all production traffic, in minutes."""
    if routing.get("type") == "TimeBasedCanary":
        return float(routing["timeBasedCanary"]["canaryInterval"])
    if routing.get("type") == "TimeBasedLinear":
        shape = routing["timeBasedLinear"]
        return float(shape["linearInterval"]) * (math.ceil(100 / int(shape["linearPercentage"])) - 1)
    return 0.0
