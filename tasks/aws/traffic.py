"""Listeners and target groups: resolve names to ARNs, read and set forward weights."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from botocore.exceptions import ClientError

from tasks.aws.errors import error_code
from tasks.config.models import ListenerRef, LoadBalancer
from tasks.core.errors import ConfigError
from tasks.core.waits import checkpoint


@dataclass(frozen=True)
class Routing:
    """The ARNs a blue/green switch works on, resolved once per run."""

    production_listener: str
    test_listener: str
    production_url: str
    test_url: str
    target_groups: tuple[str, str]
    target_group_names: tuple[str, str]
    production_internal: bool = False
    test_internal: bool = False


@dataclass(frozen=True)
class Endpoint:
    """One listener: its ARN, base URL (the ALB's DNS name) and whether its ALB is internal."""

    arn: str
    url: str
    internal: bool


def _listener(elbv2: Any, ref: ListenerRef, field: str) -> Endpoint:
    """The listener given by ARN or by load balancer name + port."""
    try:
        if ref.arn:
            listener = elbv2.describe_listeners(ListenerArns=[ref.arn])["Listeners"][0]
            lb_arn = listener["LoadBalancerArn"]
            lb = elbv2.describe_load_balancers(LoadBalancerArns=[lb_arn])["LoadBalancers"][0]
        else:
            lb = elbv2.describe_load_balancers(Names=[ref.load_balancer])["LoadBalancers"][0]
            listeners = elbv2.describe_listeners(LoadBalancerArn=lb["LoadBalancerArn"])["Listeners"]
            matching = [x for x in listeners if x["Port"] == ref.port]
            if not matching:
                ports = ", ".join(str(x["Port"]) for x in listeners) or "none"
                raise ConfigError(
                    f"load_balancer.{field}: {ref.load_balancer} has no listener on port {ref.port} "
                    f"(ports: {ports})"
                )
            listener = matching[0]
    except ClientError as exc:
        code = error_code(exc)
        if code in ("LoadBalancerNotFound", "ListenerNotFound"):
            raise ConfigError(
                f"load_balancer.{field}: {code}: {ref.model_dump(exclude_none=True)}"
            ) from exc
        raise
    scheme = "https" if listener.get("Protocol") == "HTTPS" else "http"
    url = f"{scheme}://{lb['DNSName']}:{listener['Port']}"
    return Endpoint(listener["ListenerArn"], url, lb.get("Scheme") == "internal")


def production_endpoint(elbv2: Any, lb: LoadBalancer) -> Endpoint:
    """Only the production listener (rolling checks production; two calls, not five)."""
    return _listener(elbv2, lb.production_listener, "production_listener")


def production_url(elbv2: Any, lb: LoadBalancer) -> str:
    return production_endpoint(elbv2, lb).url


def resolve_routing(elbv2: Any, lb: LoadBalancer) -> Routing:
    prod = _listener(elbv2, lb.production_listener, "production_listener")
    test = _listener(elbv2, lb.test_listener, "test_listener")
    try:
        groups = elbv2.describe_target_groups(Names=list(lb.target_groups))["TargetGroups"]
    except ClientError as exc:
        if error_code(exc) == "TargetGroupNotFound":
            raise ConfigError(
                f"load_balancer.target_groups: {', '.join(lb.target_groups)}: not all exist; "
                "create both target groups first"
            ) from exc
        raise
    by_name = {g["TargetGroupName"]: g["TargetGroupArn"] for g in groups}
    arns = (by_name[lb.target_groups[0]], by_name[lb.target_groups[1]])
    return Routing(prod.arn, test.arn, prod.url, test.url, arns, lb.target_groups,
                   prod.internal, test.internal)


def get_weights(elbv2: Any, listener_arn: str) -> dict[str, int]:
    """Target group ARN → weight of the listener's default forward action."""
    return weights_of(elbv2.describe_listeners(ListenerArns=[listener_arn])["Listeners"][0])


def weights_of(listener: dict[str, Any]) -> dict[str, int]:
    """Target group ARN → percent of the listener's default forward action (pure: a DescribeListeners item)."""
    weights: dict[str, int] = {}
    for action in listener.get("DefaultActions", []):
        if action.get("Type") != "forward":
            continue
        groups = action.get("ForwardConfig", {}).get("TargetGroups")
        if groups:
            for g in groups:
                weights[g["TargetGroupArn"]] = int(g.get("Weight", 1))
        elif action.get("TargetGroupArn"):
            weights[action["TargetGroupArn"]] = 1
    total = sum(weights.values())
    if total == 0:
        return weights
    return {arn: round(100 * w / total) for arn, w in weights.items()}


def set_weights(elbv2: Any, listener_arn: str, weights: dict[str, int]) -> bool:
    """Set the weights of the listener's default forward action; False when already so.

    ModifyListener replaces the whole list ("to update an item in a list, you must provide
    the entire list"), so every other action (authenticate-oidc/cognito first, in its order)
    and the forward action's stickiness go back as they are.
    """
    listener = elbv2.describe_listeners(ListenerArns=[listener_arn])["Listeners"][0]
    live = {a: w for a, w in weights_of(listener).items() if w}
    if live == {a: w for a, w in weights.items() if w}:
        return False
    elbv2.modify_listener(ListenerArn=listener_arn, DefaultActions=weighted_actions(listener, weights))
    with _CHANGED_LOCK:
        _CHANGED[listener_arn] = time.monotonic()
    return True


# When this process last changed each listener: a change reaches every load balancer node only after
# a while ("rule updates do not take effect immediately"), and until then the old target groups still
# get requests, so their tasks must not go yet.
_CHANGED: dict[str, float] = {}
_CHANGED_LOCK = threading.Lock()


def wait_propagated(listeners: Iterable[str], seconds: float) -> float:
    """Sleep until SECONDS have passed since this process last changed any of LISTENERS; the seconds slept."""
    with _CHANGED_LOCK:
        last = max((_CHANGED.get(arn, float("-inf")) for arn in listeners), default=float("-inf"))
    left = last + seconds - time.monotonic()
    if left > 0:
        checkpoint()
        time.sleep(left)
        checkpoint()
    return max(0.0, left)


def weighted_actions(listener: dict[str, Any], weights: dict[str, int]) -> list[dict[str, Any]]:
    """The listener's default actions with the forward action's target groups set to WEIGHTS (pure)."""
    groups = [{"TargetGroupArn": arn, "Weight": w} for arn, w in weights.items()]
    actions: list[dict[str, Any]] = []
    forwarded = False
    for action in listener.get("DefaultActions", []):
        action = {k: v for k, v in action.items() if k != "TargetGroupArn" or action.get("Type") != "forward"}
        if action.get("Type") == "forward" and not forwarded:
            config = {k: v for k, v in action.get("ForwardConfig", {}).items() if k != "TargetGroups"}
            action["ForwardConfig"] = {"TargetGroups": groups, **config}
            forwarded = True
        elif action.get("Type") == "authenticate-oidc":
            oidc = {k: v for k, v in action.get("AuthenticateOidcConfig", {}).items() if k != "ClientSecret"}
            action["AuthenticateOidcConfig"] = {**oidc, "UseExistingClientSecret": True}
        actions.append(action)
    if not forwarded:  # exactly one routing action, the last: a fixed-response or redirect gives way
        actions = [a for a in actions if a.get("Type") not in ("fixed-response", "redirect")]
        actions.append({"Type": "forward", "ForwardConfig": {"TargetGroups": groups}})
    if len(actions) > 1:  # "This value is required for rules with multiple actions"
        last = max((int(a.get("Order") or 0) for a in actions), default=0)
        for action in actions:
            if not action.get("Order"):
                last += 1
                action["Order"] = last
    return actions


def green_share(weights: dict[str, int], green_tg: str) -> int:
    return weights.get(green_tg, 0)
