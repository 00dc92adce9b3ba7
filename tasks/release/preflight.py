"""`ecs-pipeline verify`: every check a service's strategy needs before its first release, in one run.

The account-wide checks are in ``preflight_account``; here are the load balancer's
(target groups, listeners, listener rules) and each strategy's own resources: the
CodeDeploy application and deployment group, or the ECS-native service's
advancedConfiguration. Only reads; every line says what to do.
"""

from __future__ import annotations

from functools import partial
from typing import Any

from tasks.aws.clients import AwsClients
from tasks.aws.traffic import weights_of
from tasks.config.models import ListenerRef, ServiceConfig
from tasks.release.preflight_account import (
    MISSING,
    OK,
    WRONG,
    Check,
    Probe,
    absent,
    check_role,
    live_strategy_type,
    verify_checks,
)

__all__ = ["Check", "passed", "verify_service"]


def verify_service(cfg: ServiceConfig, clients: AwsClients) -> list[Check]:
    """One line per check, for the strategy the YAML names."""
    probe = Probe(cfg, clients)
    verify_checks(probe)
    if cfg.load_balancer is not None:
        check_target_groups(probe)
        check_listeners(probe)
    if cfg.strategy.type == "codedeploy":
        check_codedeploy(probe)
    if cfg.strategy.type == "ecs-native":
        check_native(probe)
    return probe.checks


def passed(checks: list[Check]) -> bool:
    return all(c.status == OK for c in checks)


def tg_name(arn: str) -> str:
    """A target group's name from its ARN (…:targetgroup/NAME/ID)."""
    parts = arn.split(":targetgroup/", 1)
    return parts[1].split("/", 1)[0] if len(parts) == 2 else arn


def our_groups(probe: Probe) -> set[str] | None:
    """The ARNs of load_balancer.target_groups, or None unless both were found."""
    found = [probe.target_groups.get(n) for n in probe.cfg.load_balancer.target_groups] if probe.cfg.load_balancer \
        else []
    return {str(g["TargetGroupArn"]) for g in found if g} if found and all(found) else None


def check_target_groups(probe: Probe) -> None:
    assert probe.cfg.load_balancer is not None
    names = probe.cfg.load_balancer.target_groups
    for name in names:
        probe.guarded("target group", name, partial(check_target_group, probe, name))
    a, b = (probe.target_groups.get(n) for n in names)
    if a and b:
        shape = ["/".join(str(g.get(k)) for k in ("Protocol", "Port", "VpcId")) for g in (a, b)]
        if shape[0] != shape[1]:
            probe.add("target group", WRONG, ", ".join(names),
                      f"not alike ({names[0]} {shape[0]}, {names[1]} {shape[1]})",
                      "blue and green alternate between them: give both the same protocol, port and VPC")


def check_target_group(probe: Probe, name: str) -> None:
    cfg = probe.cfg
    port = cfg.ecs.container_port
    found = absent(probe.clients.get("elbv2").describe_target_groups, Names=[name])
    if not found or not found.get("TargetGroups"):
        probe.add("target group", MISSING, name, "not found",
                  f"aws elbv2 create-target-group --name {name} --target-type ip --protocol HTTP --port {port} "
                  "--vpc-id <the tasks' VPC>, or fix load_balancer.target_groups")
        return
    group = probe.target_groups[name] = found["TargetGroups"][0]
    kind, hc_port = group.get("TargetType"), str(group.get("HealthCheckPort") or "traffic-port")
    wrong = False
    if probe.taskdef.get("networkMode") == "awsvpc" and kind != "ip":
        wrong = True
        probe.add("target group", WRONG, name, f"target type {kind}; awsvpc (Fargate) tasks register by IP",
                  f"a target group's type cannot change: create one with --target-type ip (HTTP, port {port}) "
                  "and name it in load_balancer.target_groups")
    if hc_port not in ("traffic-port", str(port)):
        wrong = True
        probe.add("target group", WRONG, name, f"health checks go to port {hc_port}, the container listens on {port}",
                  f"aws elbv2 modify-target-group --target-group-arn {group['TargetGroupArn']} "
                  "--health-check-port traffic-port")
    if not wrong:
        probe.add("target group", OK, name, f"{kind}, {group.get('Protocol')}:{group.get('Port')}")


def shown(ref: ListenerRef) -> str:
    return ref.arn or f"{ref.load_balancer}:{ref.port}"


def find_listener(elbv2: Any, ref: ListenerRef) -> tuple[dict[str, Any] | None, str]:
    """(the listener, "") or (None, why it is missing)."""
    if ref.arn:
        found = absent(elbv2.describe_listeners, ListenerArns=[ref.arn])
        listeners = (found or {}).get("Listeners") or []
        return (listeners[0], "") if listeners else (None, "no listener with that ARN")
    lbs = (absent(elbv2.describe_load_balancers, Names=[ref.load_balancer]) or {}).get("LoadBalancers") or []
    if not lbs:
        return None, f"load balancer {ref.load_balancer} not found"
    listeners = elbv2.describe_listeners(LoadBalancerArn=lbs[0]["LoadBalancerArn"]).get("Listeners") or []
    matching = [x for x in listeners if x.get("Port") == ref.port]
    if matching:
        return matching[0], ""
    return None, f"{ref.load_balancer} has no listener on port {ref.port} (ports: " \
                 f"{', '.join(str(x.get('Port')) for x in listeners) or 'none'})"


def check_listeners(probe: Probe) -> None:
    lb = probe.cfg.load_balancer
    assert lb is not None
    refs = [("production", lb.production_listener)]
    if probe.cfg.strategy.type != "rolling":  # rolling checks production only
        refs.append(("test", lb.test_listener))
    for role, ref in refs:
        probe.guarded(f"{role} listener", shown(ref), partial(check_listener, probe, role, ref))


def check_listener(probe: Probe, role: str, ref: ListenerRef) -> None:
    check, strategy = f"{role} listener", probe.cfg.strategy.type
    assert probe.cfg.load_balancer is not None
    names = probe.cfg.load_balancer.target_groups
    listener, why = find_listener(probe.clients.get("elbv2"), ref)
    if listener is None:
        probe.add(check, MISSING, shown(ref), why, f"create it (aws elbv2 create-listener, forwarding to {names[0]}), "
                  f"or fix load_balancer.{role}_listener")
        return
    probe.listeners[role] = listener
    ours, forwards = our_groups(probe), set(weights_of(listener))
    if strategy == "ecs-native" or ours is None:  # ECS moves rules, not the default action; or a group is missing
        probe.add(check, OK, shown(ref), str(listener.get("Protocol") or ""))
        return
    foreign = sorted(tg_name(a) for a in forwards - ours)
    if foreign:
        probe.add(check, WRONG, shown(ref), f"forwards to {', '.join(foreign)}, not only to {', '.join(names)}",
                  f"point its default action at {names[0]}, or name its target groups in load_balancer.target_groups")
    elif not forwards and strategy != "task-sets":
        probe.add(check, WRONG, shown(ref), "its default action forwards to no target group",
                  f"make its default action forward to {names[0]}")
    else:
        detail = ", ".join(f"{tg_name(a)} {w}%" for a, w in weights_of(listener).items())
        probe.add(check, OK, shown(ref), detail or "no forward action yet: the first release sets one")


def check_codedeploy(probe: Probe) -> None:
    cfg, cd = probe.cfg, probe.clients.get("codedeploy")
    app, group = cfg.codedeploy_application, cfg.codedeploy_group
    exists: list[bool] = []

    def run_application() -> None:
        found = absent(cd.get_application, applicationName=app)
        if found is None:
            probe.add("CodeDeploy application", MISSING, app, "not found",
                      f"aws deploy create-application --application-name {app} --compute-platform ECS, "
                      "or set strategy.codedeploy_application")
            return
        exists.append(True)
        platform = (found.get("application") or {}).get("computePlatform")
        if platform not in (None, "ECS"):
            probe.add("CodeDeploy application", WRONG, app, f"compute platform {platform}",
                      "ECS deployments need an application with compute platform ECS: create one")
        else:
            probe.add("CodeDeploy application", OK, app)

    probe.guarded("CodeDeploy application", app, run_application)
    if exists:
        probe.guarded("CodeDeploy deployment group", group, lambda: check_deployment_group(probe, app, group))


def check_deployment_group(probe: Probe, app: str, group: str) -> None:
    cfg, check = probe.cfg, "CodeDeploy deployment group"
    found = absent(probe.clients.get("codedeploy").get_deployment_group, applicationName=app,
                   deploymentGroupName=group)
    if found is None:
        probe.add(check, MISSING, group, f"not in application {app}",
                  "create an ECS BLUE_GREEN deployment group naming the service, both target groups and the "
                  "production and test listeners, or set strategy.codedeploy_group")
        return
    info = found["deploymentGroupInfo"]
    problems = [(d, f) for d, f in group_problems(probe, info) if d]
    for detail, fix in problems:
        probe.add(check, WRONG, group, detail, fix)
    if not problems and cfg.load_balancer is not None:
        groups = ", ".join(cfg.load_balancer.target_groups)
        probe.add(check, OK, group, f"{cfg.ecs.cluster}/{cfg.ecs.service}, {groups}")
    if info.get("serviceRoleArn"):
        check_role(probe, "CodeDeploy service role", str(info["serviceRoleArn"]), "codedeploy.amazonaws.com",
                   "create it trusting codedeploy.amazonaws.com with the policy AWSCodeDeployRoleForECS")


def group_problems(probe: Probe, info: dict[str, Any]) -> list[tuple[str, str]]:
    """(what is wrong, the fix) for each way the deployment group does not match the YAML."""
    cfg = probe.cfg
    assert cfg.load_balancer is not None
    out: list[tuple[str, str]] = []
    services = {(s.get("clusterName"), s.get("serviceName")) for s in info.get("ecsServices") or []}
    if (cfg.ecs.cluster, cfg.ecs.service) not in services:
        out.append((f"names ECS service(s) {sorted(f'{c}/{s}' for c, s in services) or 'none'}, "
                    f"not {cfg.ecs.cluster}/{cfg.ecs.service}", "update the group's ecsServices, or fix the YAML"))
    style = info.get("deploymentStyle") or {}
    if (style.get("deploymentType"), style.get("deploymentOption")) != ("BLUE_GREEN", "WITH_TRAFFIC_CONTROL"):
        out.append((f"deployment style {style.get('deploymentType')}/{style.get('deploymentOption')}",
                    "ECS deployments need BLUE_GREEN with WITH_TRAFFIC_CONTROL"))
    pairs = (info.get("loadBalancerInfo") or {}).get("targetGroupPairInfoList") or [{}]
    pair = pairs[0]
    names = {t.get("name") for t in pair.get("targetGroups") or []}
    if names != set(cfg.load_balancer.target_groups):
        out.append((f"target groups {', '.join(sorted(map(str, names))) or 'none'}, "
                    f"not {', '.join(cfg.load_balancer.target_groups)}",
                    "update the group's target group pair, or fix load_balancer.target_groups"))
    for role, key in (("production", "prodTrafficRoute"), ("test", "testTrafficRoute")):
        listener = probe.listeners.get(role)
        routed = (pair.get(key) or {}).get("listenerArns") or []
        if listener is not None and listener["ListenerArn"] not in routed:
            out.append((f"its {key} is not load_balancer.{role}_listener",
                        f"set the group's {key} to {listener['ListenerArn']}"))
    ready = ((info.get("blueGreenDeploymentConfiguration") or {}).get("deploymentReadyOption") or {})
    if ready.get("actionOnTimeout") != "STOP_DEPLOYMENT":
        out.append(("deploymentReadyOption.actionOnTimeout is not STOP_DEPLOYMENT: production would move "
                    "before the checks", "set actionOnTimeout STOP_DEPLOYMENT with a waitTimeInMinutes"))
    return out


def check_native(probe: Probe) -> None:
    """The service's advancedConfiguration: what ECS moves traffic with, and what the release verifies green by."""
    cfg, svc = probe.cfg, probe.service
    if svc is None or live_strategy_type(svc) != "ecs-native":
        return  # the controller line already says what to fix
    lbs = svc.get("loadBalancers") or [{}]
    adv = lbs[0].get("advancedConfiguration") or {}
    check = "advancedConfiguration"
    for key in ("alternateTargetGroupArn", "productionListenerRule", "testListenerRule", "roleArn"):
        if not adv.get(key):
            probe.add(check, MISSING, f"{cfg.ecs.service} {key}", "not set on the service",
                      f"run `ecs-pipeline migrate {cfg.name} --to ecs-native` or set it with UpdateService")
    ours = our_groups(probe)
    pair = {str(lbs[0].get("targetGroupArn")), str(adv.get("alternateTargetGroupArn"))}
    if ours is not None and adv.get("alternateTargetGroupArn") and pair != ours:
        probe.add(check, WRONG, f"{cfg.ecs.service} target groups", f"{', '.join(sorted(map(tg_name, pair)))}, "
                  f"not load_balancer.target_groups", "fix load_balancer.target_groups or the service's loadBalancers")
    for key, role in (("productionListenerRule", "production"), ("testListenerRule", "test")):
        rule, listener = adv.get(key), probe.listeners.get(role)
        if rule and listener is not None and rule != listener["ListenerArn"]:  # an NLB names the listener itself
            run = partial(check_rule, probe, str(rule), listener, role, ours)
            probe.guarded(f"{role} listener rule", str(rule), run)
    if adv.get("roleArn"):
        check_role(probe, "infrastructure role", str(adv["roleArn"]), "ecs.amazonaws.com",
                   "create it trusting ecs.amazonaws.com with AmazonECSInfrastructureRolePolicyForLoadBalancers")


def check_rule(probe: Probe, rule: str, listener: dict[str, Any], role: str, ours: set[str] | None) -> None:
    check = f"{role} listener rule"
    rules = probe.clients.get("elbv2").describe_rules(ListenerArn=listener["ListenerArn"]).get("Rules") or []
    found = [r for r in rules if r.get("RuleArn") == rule]
    if not found:
        probe.add(check, MISSING, rule, f"not a rule of load_balancer.{role}_listener",
                  f"run `ecs-pipeline migrate {probe.cfg.name} --to ecs-native` to make it, or fix "
                  f"load_balancer.{role}_listener")
        return
    forwards = set(weights_of({"DefaultActions": found[0].get("Actions") or []}))
    if ours is not None and not ours <= forwards:
        probe.add(check, WRONG, rule, f"forwards to {', '.join(sorted(map(tg_name, forwards))) or 'nothing'}; "
                  "ECS needs both target groups in it", "forward to both target groups (weights 100 and 0)")
    else:
        probe.add(check, OK, rule, "forwards to both target groups")
