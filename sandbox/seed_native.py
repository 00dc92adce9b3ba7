"""Seeding for ECS-native blue/green services: the listener rules ECS moves and advancedConfiguration."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from tasks.config.models import ServiceConfig
from tasks.strategies.ecs_native import deployment_configuration

TRUST_ECS = {
    "Version": "2012-10-17",
    "Statement": [{"Effect": "Allow", "Principal": {"Service": "ecs.amazonaws.com"}, "Action": "sts:AssumeRole"}],
}


def ensure_rule(aws: Any, listener_arn: str, blue: str, green: str) -> str:
    """A catch-all rule (priority 1) forwarding 100/0 to the two groups: what ECS re-weights."""
    for rule in aws.elbv2.describe_rules(ListenerArn=listener_arn)["Rules"]:
        if rule.get("Priority") == "1":
            return str(rule["RuleArn"])
    made = aws.elbv2.create_rule(
        ListenerArn=listener_arn, Priority=1, Conditions=[{"Field": "path-pattern", "Values": ["/*"]}],
        Actions=[{"Type": "forward", "ForwardConfig": {"TargetGroups": [
            {"TargetGroupArn": blue, "Weight": 100}, {"TargetGroupArn": green, "Weight": 0}]}}])
    return str(made["Rules"][0]["RuleArn"])


def native_service_args(aws: Any, cfg: ServiceConfig, seeded: Mapping[str, Any], role_arn: str) -> dict[str, Any]:
    """CreateService arguments that make the service ECS-native blue/green (the strategy of the YAML)."""
    blue, green = seeded["target_group_arns"]
    listeners = seeded["listener_arns"]
    prod = ensure_rule(aws, listeners["production"], blue, green)
    test = ensure_rule(aws, listeners["test"], blue, green)
    config = deployment_configuration(cfg)
    config.pop("lifecycleHooks")  # the pipeline asks for its pause with each release
    return {
        "deploymentConfiguration": {**config, "minimumHealthyPercent": 100, "maximumPercent": 200},
        "loadBalancers": [{"targetGroupArn": blue, "containerName": cfg.ecs.container,
                           "containerPort": cfg.ecs.container_port, "advancedConfiguration": {
                               "alternateTargetGroupArn": green, "productionListenerRule": prod,
                               "testListenerRule": test, "roleArn": role_arn}}],
    }
