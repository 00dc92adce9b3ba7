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
    """Set the weights of the listener's default forward action; every other action stays."""
    listener = _find_listener(listener_arn)
    if listener is None:
        return
    live = {arn: w for arn, w in weights.items() if w > 0} or weights
    kept = [dict(getattr(a, "data", {}) or {}) for a in listener.default_actions]
    forward = next((a for a in kept if a.get("Type") == "forward"), None)
    data: dict[str, Any] = {"Type": "forward", "Order": (forward or {}).get("Order", len(kept) + 1)}
    if len(live) == 1:
        data["TargetGroupArn"] = next(iter(live))
    config = dict((forward or {}).get("ForwardConfig") or {})
    config["TargetGroups"] = [{"TargetGroupArn": arn, "Weight": int(w)} for arn, w in live.items()]
    data["ForwardConfig"] = config
    actions = [FakeAction(data if a is forward else a) for a in kept] if forward else \
        [*(FakeAction(a) for a in kept if a.get("Type") in AUTHENTICATE), FakeAction(data)]
    listener.default_actions = actions
    listener._default_rule[0].actions = actions

AUTHENTICATE = ("authenticate-oidc", "authenticate-cognito", "jwt-validation")


def _check_actions(actions: list[dict[str, Any]] | None, protocol: str | None,
                   existing: list[Any]) -> None:
    """What ELB refuses and moto accepts: authentication on a non-HTTPS listener, an OIDC action
    without its client secret. A modify that says UseExistingClientSecret keeps the stored one."""
    from moto.elbv2.exceptions import InvalidLoadBalancerActionException, ValidationError

    stored = {str((getattr(a, "data", {}) or {}).get("AuthenticateOidcConfig", {}).get("ClientId")):
              (getattr(a, "data", {}) or {}).get("AuthenticateOidcConfig", {}).get("ClientSecret")
              for a in existing}
    for action in actions or []:
        kind = action.get("Type")
        if kind in AUTHENTICATE and protocol != "HTTPS":
            raise InvalidLoadBalancerActionException(
                f"The action type '{kind}' is supported only on HTTPS listeners")
        oidc = action.get("AuthenticateOidcConfig")
        if kind != "authenticate-oidc" or oidc is None:
            continue
        use_existing = str(oidc.get("UseExistingClientSecret", "")).lower() == "true"
        if oidc.get("ClientSecret"):
            continue
        if not use_existing or not stored.get(str(oidc.get("ClientId"))):
            raise ValidationError("A client secret must be specified in the action of type "
                                  "'authenticate-oidc' unless UseExistingClientSecret is true")
        oidc["ClientSecret"] = stored[str(oidc.get("ClientId"))]


def install_listener_patches() -> None:
    """Listener calls judged as ELB judges them (moto accepts what ELB refuses)."""
    from moto.elbv2.models import ELBv2Backend

    create, modify = ELBv2Backend.create_listener, ELBv2Backend.modify_listener

    def create_listener(self: Any, load_balancer_arn: str, protocol: str, port: str, *args: Any,
                        **kwargs: Any) -> Any:
        actions = kwargs.get("actions", args[2] if len(args) > 2 else None)
        _check_actions(actions, protocol, [])
        return create(self, load_balancer_arn, protocol, port, *args, **kwargs)

    def modify_listener(self: Any, arn: str, port: str | None = None, protocol: str | None = None,
                        ssl_policy: str | None = None, certificates: Any = None,
                        actions: Any = None) -> Any:
        listener = _find_listener(arn)
        if listener is not None:
            _check_actions(actions, protocol or listener.protocol, list(listener.default_actions))
        return modify(self, arn, port, protocol, ssl_policy, certificates, actions)

    ELBv2Backend.create_listener = create_listener  # type: ignore[method-assign]
    ELBv2Backend.modify_listener = modify_listener  # type: ignore[method-assign]
