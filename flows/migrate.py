"""`ecs-pipeline migrate SERVICE --to ecs-native`: a CODE_DEPLOY service onto ECS's own blue/green.

Follows AWS's migration guide: the CodeDeploy deployment group's target group
pair becomes the service's ``loadBalancers[].advancedConfiguration`` (production
group from where the production listener forwards now, the other as the
alternate), on listener rules that hold both target groups ("Both targetGroup and
alternateTargetGroup must be associated with the productionListenerRule or
testListenerRule", else ECS rolls the deployment back): after a CodeDeploy
deployment each listener's default rule forwards to one group only, so migrate
uses a rule of each listener that forwards to both, or creates one. The
infrastructure role ECS assumes to move those rules comes from
``strategy.infrastructure_role`` and must exist (IAM GetRole) before anything
changes. One UpdateService switches ``deploymentController`` to ECS with
strategy BLUE_GREEN. Refused while a CodeDeploy deployment is in flight. A dry
run (the default) prints what it would create and send.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

from tasks.aws import ecs as ecs_ops
from tasks.aws import iam as iam_ops
from tasks.aws import traffic
from tasks.aws.clients import AwsClients
from tasks.config.models import ServiceConfig, find_service
from tasks.core.errors import ConfigError, DeployError
from tasks.core.settings import Settings
from tasks.core.waits import poll

IN_FLIGHT = ["Created", "Queued", "InProgress", "Ready", "Baking"]
RULE_PENDING = "<the rule migrate creates>"
CLOCK_SKEW = timedelta(minutes=5)
TARGET = "ecs-native"
NEXT_STEP = "set strategy.type: ecs-native in the YAML"

# What `ecs-pipeline migrate SERVICE --json` prints, in the convention of the schemas in flows/operations.py
# (stable snake_case keys; "time" is ISO-8601 with its UTC offset; a tuple is "one of", None: null).
# applied: false for a dry run (nothing changed). listener_rules: the production and the test listener's rule
# ECS is to move, one each; created: migrate makes that rule (a dry run: would make it; rule is then null).
# service_deployment and finished_at: the ECS service deployment that did the move, once it succeeded.
MIGRATE_SCHEMA: dict[str, Any] = {
    "service": "string", "to": "string", "applied": "boolean", "cluster": "string", "ecs_service": "string",
    "task_definition": ("string", None), "production_target_group": "string", "alternate_target_group": "string",
    "role_arn": "string",
    "listener_rules": [{"use": "string", "listener": "string", "rule": ("string", None), "created": "boolean"}],
    "service_deployment": ("string", None), "finished_at": ("time", None), "next_step": "string",
}
RULE_USES = {"productionListenerRule": "production", "testListenerRule": "test"}


@dataclass
class Migration:
    """The UpdateService request, the listener rules to create before it, and once applied what was done."""

    request: dict[str, Any]
    create_rules: dict[str, dict[str, int]] = field(default_factory=dict)  # listener ARN → weights
    listeners: dict[str, str] = field(default_factory=dict)  # advancedConfiguration key → listener ARN
    service: str = ""  # the service's name in deployments/
    created: dict[str, str] = field(default_factory=dict)  # listener ARN → the rule migrate created there
    service_deployment: str | None = None  # the ECS service deployment that moved it (SUCCESSFUL)
    finished_at: datetime | None = None


def forwards_to(rule: dict[str, Any]) -> set[str]:
    """Target groups a rule's forward action names (a weight of 0 counts: ECS re-weights them)."""
    out: set[str] = set()
    for action in rule.get("Actions") or []:
        if action.get("Type") != "forward":
            continue
        groups = (action.get("ForwardConfig") or {}).get("TargetGroups") or []
        out |= {g["TargetGroupArn"] for g in groups}
        if action.get("TargetGroupArn"):
            out.add(action["TargetGroupArn"])
    return out


def rule_with_both(elbv2: Any, listener_arn: str, groups: set[str]) -> str | None:
    """A rule of the listener (the default one included) that forwards to both target groups."""
    for rule in elbv2.describe_rules(ListenerArn=listener_arn)["Rules"]:
        if groups <= forwards_to(rule):
            return str(rule["RuleArn"])
    return None


def create_rule(elbv2: Any, listener_arn: str, weights: dict[str, int]) -> str:
    """A catch-all rule after the listener's other rules, forwarding to both groups (live 100, other 0)."""
    taken = [int(r["Priority"]) for r in elbv2.describe_rules(ListenerArn=listener_arn)["Rules"]
             if str(r.get("Priority", "")).isdigit()]
    made = elbv2.create_rule(
        ListenerArn=listener_arn, Priority=max(taken, default=0) + 1,
        Conditions=[{"Field": "path-pattern", "Values": ["/*"]}],
        Actions=[{"Type": "forward", "ForwardConfig": {"TargetGroups": [
            {"TargetGroupArn": arn, "Weight": w} for arn, w in weights.items()]}}])
    return str(made["Rules"][0]["RuleArn"])


def infrastructure_role(cfg: ServiceConfig, clients: AwsClients) -> str:
    """The ARN of strategy.infrastructure_role, checked to exist."""
    role = cfg.strategy.infrastructure_role
    if not role:
        raise ConfigError("strategy.infrastructure_role: ECS blue/green needs the IAM role ECS assumes to move the "
                          "listener rules (trust ecs.amazonaws.com, policy AmazonECSInfrastructureRolePolicyFor"
                          "LoadBalancers); create it and name it here", service=cfg.name)
    arn = iam_ops.role_arn(clients.get("iam"), role)
    if arn is None:
        raise ConfigError(f"strategy.infrastructure_role: IAM has no role {role}; create it (trust "
                          "ecs.amazonaws.com, policy AmazonECSInfrastructureRolePolicyForLoadBalancers) first",
                          service=cfg.name)
    return arn


def plan_migration(service_name: str, clients: AwsClients) -> Migration:
    """What moves the service; raises when it cannot move now. Nothing is changed."""
    cfg = find_service(service_name, clients.settings.deployments)
    ecs, cd, elbv2 = clients.get("ecs"), clients.get("codedeploy"), clients.get("elbv2")
    svc = ecs_ops.describe_service(ecs, cfg.ecs.cluster, cfg.ecs.service)
    if ecs_ops.controller_type(svc) != "CODE_DEPLOY":
        raise ConfigError(f"service {cfg.ecs.service} uses the {ecs_ops.controller_type(svc)} controller; "
                          "migrate moves CODE_DEPLOY services only", service=cfg.name)
    role = infrastructure_role(cfg, clients)
    busy = cd.list_deployments(applicationName=cfg.codedeploy_application, deploymentGroupName=cfg.codedeploy_group,
                               includeOnlyStatuses=IN_FLIGHT)["deployments"]
    if busy:
        raise DeployError(f"CodeDeploy deployment {', '.join(busy)} is in flight in {cfg.codedeploy_group}; "
                          "migrate after it ends", service=cfg.name)
    group = cd.get_deployment_group(applicationName=cfg.codedeploy_application,
                                    deploymentGroupName=cfg.codedeploy_group)["deploymentGroupInfo"]
    pair = group["loadBalancerInfo"]["targetGroupPairInfoList"][0]
    names = [t["name"] for t in pair["targetGroups"]]
    arns = {g["TargetGroupName"]: g["TargetGroupArn"]
            for g in elbv2.describe_target_groups(Names=names)["TargetGroups"]}
    prod_listener = pair["prodTrafficRoute"]["listenerArns"][0]
    test_listener = (pair.get("testTrafficRoute") or {}).get("listenerArns", [prod_listener])[0]
    weights = traffic.get_weights(elbv2, prod_listener)
    production = max((arns[n] for n in names), key=lambda a: weights.get(a, 0))
    alternate = next(arns[n] for n in names if arns[n] != production)
    migration = Migration({}, service=cfg.name)
    rules = {}
    for name, listener in (("productionListenerRule", prod_listener), ("testListenerRule", test_listener)):
        rules[name] = rule_with_both(elbv2, listener, {production, alternate})
        migration.listeners[name] = listener
        if rules[name] is None:
            migration.create_rules[listener] = {production: 100, alternate: 0}
    primary = ecs_ops.primary_task_set(svc) or {}
    migration.request = {
        "cluster": cfg.ecs.cluster, "service": cfg.ecs.service,
        "deploymentController": {"type": "ECS"},
        "taskDefinition": primary.get("taskDefinition") or svc.get("taskDefinition"),
        "deploymentConfiguration": {"strategy": "BLUE_GREEN", "bakeTimeInMinutes": 0,
                                    "deploymentCircuitBreaker": {"enable": True, "rollback": True}},
        "loadBalancers": [{"targetGroupArn": production, "containerName": cfg.ecs.container,
                           "containerPort": cfg.ecs.container_port, "advancedConfiguration": {
                               "alternateTargetGroupArn": alternate,
                               "productionListenerRule": rules["productionListenerRule"] or RULE_PENDING,
                               "testListenerRule": rules["testListenerRule"] or RULE_PENDING,
                               "roleArn": role}}],
    }
    return migration


def migrate(service_name: str, to: str, apply: bool, clients: AwsClients | None = None) -> Migration:
    """The plan, and with ``apply`` the move itself, done once the service deployment succeeded."""
    if to != TARGET:
        raise ConfigError(f"migrate --to {to}: only {TARGET} is supported")
    clients = clients or AwsClients(Settings())
    migration = plan_migration(service_name, clients)
    if not apply:
        return migration
    request = migration.request
    elbv2, ecs = clients.get("elbv2"), clients.get("ecs")
    adv = request["loadBalancers"][0]["advancedConfiguration"]
    made = {listener: create_rule(elbv2, listener, weights) for listener, weights in migration.create_rules.items()}
    migration.created = made
    for key, listener in migration.listeners.items():
        if adv[key] == RULE_PENDING:
            adv[key] = made[listener]
    since = datetime.now(UTC) - CLOCK_SKEW
    known = frozenset(b["serviceDeploymentArn"] for b in ecs_ops.service_deployments_since(
        ecs, request["cluster"], request["service"], since))
    ecs.update_service(**request)
    migration.service_deployment = wait_migrated(clients, request, since, known)
    migration.finished_at = datetime.now(UTC)
    return migration


def migration_lines(migration: Migration) -> list[str]:
    """What `migrate` prints: the rules to create, the UpdateService request, and what was done or what to do."""
    request = migration.request
    lines = [f"listener {arn}: create a rule forwarding to both target groups {json.dumps(w)}"
             for arn, w in migration.create_rules.items()]
    lines += [f"UpdateService for {request['service']} in {request['cluster']}:", json.dumps(request, indent=2)]
    if migration.service_deployment is None:
        return [*lines, f"dry run: nothing changed (add --apply); then {NEXT_STEP}"]
    lines += [f"created listener rule {arn}" for arn in migration.created.values()]
    return [*lines, f"migrated: service deployment {migration.service_deployment} SUCCESSFUL; {NEXT_STEP}"]


def migration_document(migration: Migration) -> dict[str, Any]:
    """`migrate --json`, as MIGRATE_SCHEMA describes it."""
    request = migration.request
    balancer = request["loadBalancers"][0]
    adv = balancer["advancedConfiguration"]
    applied = migration.service_deployment is not None
    rules = [{"use": use, "listener": migration.listeners[key],
              "rule": None if adv[key] == RULE_PENDING else adv[key],
              "created": migration.listeners[key] in migration.create_rules}
             for key, use in RULE_USES.items()]
    return {
        "service": migration.service, "to": TARGET, "applied": applied,
        "cluster": request["cluster"], "ecs_service": request["service"],
        "task_definition": request.get("taskDefinition"),
        "production_target_group": balancer["targetGroupArn"], "alternate_target_group": adv["alternateTargetGroupArn"],
        "role_arn": adv["roleArn"], "listener_rules": rules, "service_deployment": migration.service_deployment,
        "finished_at": migration.finished_at.astimezone(UTC).isoformat(timespec="seconds")
        if migration.finished_at else None,
        "next_step": NEXT_STEP if applied else f"add --apply; then {NEXT_STEP}",
    }


def wait_migrated(clients: AwsClients, request: dict[str, Any], since: datetime, known: frozenset[str]) -> str:
    """The migration's service deployment (found by its revision, not UpdateService's answer), once it succeeded."""
    ecs, settings = clients.get("ecs"), clients.settings

    def done() -> str | None:
        dep = ecs_ops.find_service_deployment(ecs, request["cluster"], request["service"], request["taskDefinition"],
                                              since, known)
        if dep is None:
            return None
        arn = dep["serviceDeploymentArn"]
        if dep["status"] in ("STOPPED", "ROLLBACK_SUCCESSFUL", "ROLLBACK_FAILED"):
            raise DeployError(f"migration deployment {arn} {dep['status']}: {dep.get('statusReason')}")
        return str(arn) if dep["status"] == "SUCCESSFUL" else None

    found: str = poll(done, timeout=settings.scaled(1800) + 300, what="the migration's service deployment to finish",
                      cap=settings.poll_cap())
    return found
