"""`ecs-pipeline migrate SERVICE --to ecs-native`: a CODE_DEPLOY service onto ECS's own blue/green.

Follows AWS's migration guide: the CodeDeploy deployment group's target group
pair and listeners become the service's ``loadBalancers[].advancedConfiguration``
(production group from where the production listener forwards now, the other
as the alternate), and one UpdateService switches ``deploymentController`` to
ECS with strategy BLUE_GREEN. Refused while a CodeDeploy deployment is in
flight. A dry run (the default) prints the UpdateService it would send.
"""

from __future__ import annotations

import json
from typing import Any

from tasks.aws import ecs as ecs_ops
from tasks.aws import traffic
from tasks.aws.clients import AwsClients
from tasks.config.models import find_service
from tasks.core.errors import ConfigError, DeployError
from tasks.core.settings import Settings
from tasks.core.waits import poll

IN_FLIGHT = ["Created", "Queued", "InProgress", "Ready", "Baking"]
ROLE = "ecsInfrastructureRoleForLoadBalancers"


def _default_rule(elbv2: Any, listener_arn: str) -> str:
    rules = elbv2.describe_rules(ListenerArn=listener_arn)["Rules"]
    return str(next(r["RuleArn"] for r in rules if r.get("IsDefault")))


def plan_migration(service_name: str, clients: AwsClients) -> dict[str, Any]:
    """The UpdateService request that moves the service; raises when it cannot move now."""
    cfg = find_service(service_name, clients.settings.deployments)
    ecs, cd, elbv2 = clients.get("ecs"), clients.get("codedeploy"), clients.get("elbv2")
    svc = ecs_ops.describe_service(ecs, cfg.ecs.cluster, cfg.ecs.service)
    if ecs_ops.controller_type(svc) != "CODE_DEPLOY":
        raise ConfigError(f"service {cfg.ecs.service} uses the {ecs_ops.controller_type(svc)} controller; "
                          "migrate moves CODE_DEPLOY services only", service=cfg.name)
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
    primary = ecs_ops.primary_task_set(svc) or {}
    account = svc["serviceArn"].split(":")[4]
    return {
        "cluster": cfg.ecs.cluster, "service": cfg.ecs.service,
        "deploymentController": {"type": "ECS"},
        "taskDefinition": primary.get("taskDefinition") or svc.get("taskDefinition"),
        "deploymentConfiguration": {"strategy": "BLUE_GREEN", "bakeTimeInMinutes": 0,
                                    "deploymentCircuitBreaker": {"enable": True, "rollback": True}},
        "loadBalancers": [{"targetGroupArn": production, "containerName": cfg.ecs.container,
                           "containerPort": cfg.ecs.container_port, "advancedConfiguration": {
                               "alternateTargetGroupArn": alternate,
                               "productionListenerRule": _default_rule(elbv2, prod_listener),
                               "testListenerRule": _default_rule(elbv2, test_listener),
                               "roleArn": f"arn:aws:iam::{account}:role/{ROLE}"}}],
    }


def migrate(service_name: str, to: str, apply: bool, clients: AwsClients | None = None) -> list[str]:
    """Lines for the operator: the plan, and with ``apply`` what ECS did."""
    if to != "ecs-native":
        raise ConfigError(f"migrate --to {to}: only ecs-native is supported")
    clients = clients or AwsClients(Settings())
    request = plan_migration(service_name, clients)
    lines = [f"UpdateService for {request['service']} in {request['cluster']}:", json.dumps(request, indent=2)]
    if not apply:
        return [*lines, "dry run: nothing changed (add --apply); then set strategy.type: ecs-native in the YAML"]
    ecs = clients.get("ecs")
    arn = ecs.update_service(**request)["service"].get("currentServiceDeployment")

    def done() -> str | None:
        dep = ecs.describe_service_deployments(serviceDeploymentArns=[arn])["serviceDeployments"][0]
        if dep["status"] in ("STOPPED", "ROLLBACK_SUCCESSFUL", "ROLLBACK_FAILED"):
            raise DeployError(f"migration deployment {arn} {dep['status']}: {dep.get('statusReason')}")
        return str(dep["status"]) if dep["status"] == "SUCCESSFUL" else None

    poll(done, timeout=1800, what=f"service deployment {arn} to finish", cap=clients.settings.poll_cap())
    return [*lines, f"migrated: service deployment {arn} SUCCESSFUL; set strategy.type: ecs-native in the YAML"]
