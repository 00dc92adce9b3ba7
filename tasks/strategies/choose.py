"""Which strategy a service releases with: one table, keyed by how the live service deploys.

The release skeleton (tasks/release/skeleton.py) is handed ``choose_strategy``
and calls it once per run, under the service's lock, before anything is built.
A new strategy is one row in STRATEGIES.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from tasks.aws import ecs as ecs_ops
from tasks.core.errors import StrategyMismatch
from tasks.release.contract import Release, Steps
from tasks.strategies.codedeploy import CodeDeploySteps
from tasks.strategies.ecs_native import EcsNativeSteps, check_native, live_strategy
from tasks.strategies.rolling import RollingSteps
from tasks.strategies.task_sets import TaskSetSteps

# deploymentController.type (for ECS, with deploymentConfiguration.strategy) → (strategy.type, its steps).
STRATEGIES: dict[str, tuple[str, Callable[[Release], Steps]]] = {
    "EXTERNAL": ("task-sets", TaskSetSteps),
    "CODE_DEPLOY": ("codedeploy", CodeDeploySteps),
    "ECS/ROLLING": ("rolling", RollingSteps),
    "ECS/BLUE_GREEN|LINEAR|CANARY": ("ecs-native", EcsNativeSteps),
}


def controller_key(service: dict[str, Any]) -> tuple[str, str]:
    """(row of STRATEGIES, how the service deploys in words) for the live service."""
    controller = ecs_ops.controller_type(service)
    if controller != "ECS":
        return controller, f"the {controller} deployment controller"
    strategy = live_strategy(service)
    row = next((k for k in STRATEGIES if k.startswith("ECS/") and strategy in k[4:].split("|")), f"ECS/{strategy}")
    return row, f"the ECS deployment controller with strategy {strategy}"


def choose_strategy(release: Release) -> Steps:
    """The steps for the live service's controller; a config asking for another fails before any change."""
    cfg = release.cfg
    service = ecs_ops.describe_service(release.clients.get("ecs"), cfg.ecs.cluster, cfg.ecs.service)
    release.service = service
    key, how = controller_key(service)
    expected, steps = STRATEGIES.get(key, (key, None))
    if cfg.strategy.type != expected:
        fix = (f"or run `ecs-pipeline migrate {cfg.name} --to ecs-native` to move it to ECS blue/green"
               if key == "CODE_DEPLOY" and cfg.strategy.type == "ecs-native"
               else f"or change the service to the controller for {cfg.strategy.type}")
        raise StrategyMismatch(
            f"strategy.type is {cfg.strategy.type} but service {cfg.ecs.service} uses {how}, which deploys "
            f"with {expected}; set strategy.type: {expected} {fix}",
            service=cfg.name,
        )
    if steps is None:
        raise StrategyMismatch(f"no strategy for {how}", service=cfg.name)
    if expected == "ecs-native":
        check_native(service, cfg)
    return steps(release)
