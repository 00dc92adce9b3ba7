"""Listener forward actions as CodeDeploy writes them (weighted target groups)."""

from __future__ import annotations

from typing import Any

from moto.elbv2.models import FakeAction

from .proxy import _find_listener


def forward_weights(listener_arn: str) -> dict[str, int]:
    """Target group ARN -> weight of the listener's default forward action."""
    listener = _find_listener(listener_arn)
    if listener is None:
        return {}
    for action in listener.default_actions:
        data = getattr(action, "data", {}) or {}
        if data.get("Type") != "forward":
            continue
        groups = (data.get("ForwardConfig") or {}).get("TargetGroups") or []
        if groups:
            return {g["TargetGroupArn"]: int(g.get("Weight", 1) or 0) for g in groups}
        if data.get("TargetGroupArn"):
            return {data["TargetGroupArn"]: 1}
    return {}


def set_forward(listener_arn: str, weights: dict[str, int]) -> None:
    """Replace the listener's default action with a (weighted) forward."""
    listener = _find_listener(listener_arn)
    if listener is None:
        return
    live = {arn: w for arn, w in weights.items() if w > 0} or weights
    data: dict[str, Any] = {"Type": "forward", "Order": 1}
    if len(live) == 1:
        data["TargetGroupArn"] = next(iter(live))
    data["ForwardConfig"] = {
        "TargetGroups": [{"TargetGroupArn": arn, "Weight": int(w)} for arn, w in live.items()],
    }
    action = FakeAction(data)
    listener.default_actions = [action]
    listener._default_rule[0].actions = [action]
