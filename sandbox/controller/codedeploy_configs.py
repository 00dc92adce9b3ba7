"""What a CodeDeploy ECS deployment asks for: its traffic routing config and its appspec.

The predefined ``CodeDeployDefault.ECS*`` configs, the custom ones created
through the API, the steps a routing config shifts traffic in, and the
TargetService properties of an appspec revision. Pure data, no moto state.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import yaml

PREDEFINED: dict[str, dict[str, Any]] = {
    "CodeDeployDefault.ECSAllAtOnce": {"type": "AllAtOnce"},
    "CodeDeployDefault.ECSCanary10Percent5Minutes": {
        "type": "TimeBasedCanary", "timeBasedCanary": {"canaryPercentage": 10, "canaryInterval": 5}},
    "CodeDeployDefault.ECSCanary10Percent15Minutes": {
        "type": "TimeBasedCanary", "timeBasedCanary": {"canaryPercentage": 10, "canaryInterval": 15}},
    "CodeDeployDefault.ECSLinear10PercentEvery1Minutes": {
        "type": "TimeBasedLinear", "timeBasedLinear": {"linearPercentage": 10, "linearInterval": 1}},
    "CodeDeployDefault.ECSLinear10PercentEvery3Minutes": {
        "type": "TimeBasedLinear", "timeBasedLinear": {"linearPercentage": 10, "linearInterval": 3}},
}
CUSTOM_CONFIGS: dict[str, dict[str, Any]] = {}


def epoch() -> float:
    return datetime.now(UTC).timestamp()


def routing_for(name: str) -> dict[str, Any] | None:
    if name in CUSTOM_CONFIGS:
        return dict(CUSTOM_CONFIGS[name].get("trafficRoutingConfig") or {"type": "AllAtOnce"})
    return PREDEFINED.get(name)


def shift_steps(routing: dict[str, Any]) -> list[tuple[int, float]]:
    """(percent on green, minutes to wait after) for a traffic routing config."""
    kind = routing.get("type", "AllAtOnce")
    if kind == "TimeBasedCanary":
        c = routing["timeBasedCanary"]
        return [(int(c["canaryPercentage"]), float(c["canaryInterval"])), (100, 0.0)]
    if kind == "TimeBasedLinear":
        c = routing["timeBasedLinear"]
        pct, interval = int(c["linearPercentage"]), float(c["linearInterval"])
        steps = [(p, interval) for p in range(pct, 100, pct)]
        return [*steps, (100, 0.0)]
    return [(100, 0.0)]


def _appspec(revision: dict[str, Any]) -> dict[str, Any]:
    content = ((revision.get("appSpecContent") or {}).get("content")
               or (revision.get("string") or {}).get("content") or "")
    doc = yaml.safe_load(content) if content else None
    if not isinstance(doc, dict):
        raise ValueError("The AppSpec file is not valid YAML or JSON")
    return doc


def appspec_hooks(revision: dict[str, Any]) -> dict[str, str]:
    """{lifecycle event: Lambda function} from the appspec's Hooks list."""
    hooks = _appspec(revision).get("Hooks") or []
    return {str(k): str(v) for hook in hooks if isinstance(hook, dict) for k, v in hook.items()}


def parse_appspec(revision: dict[str, Any]) -> dict[str, Any]:
    """TargetService properties from an AppSpecContent/String revision (YAML or JSON)."""
    doc = _appspec(revision)
    resource = doc["Resources"][0]
    target = next(iter(resource.values())) if "Type" not in resource else resource
    props = dict(target["Properties"])
    if "LoadBalancerInfo" not in props:
        raise ValueError("The AppSpec file has no LoadBalancerInfo for the ECS service")
    return props
