"""The deploy strategy, chosen once from the live service's deployment controller.

EXTERNAL → task-sets (driven here step by step), CODE_DEPLOY → codedeploy,
ECS → rolling. A config asking for a strategy the live service cannot do fails
with a message that says what to change.
"""

from __future__ import annotations

from typing import Any, Protocol

from prefect import get_run_logger

from flows.base import LoadBalanced, Outcome
from flows.strategies_extra import CodeDeployStrategy, RollingStrategy
from tasks import ecs as ecs_ops
from tasks import tasksets, traffic
from tasks.approval import request_approval
from tasks.aws import AwsClients
from tasks.errors import StrategyMismatch
from tasks.models import ServiceConfig
from tasks.report import ReleaseSummary, ShiftProgress, emit


class Strategy(Protocol):
    def release(
        self, task_definition: str, sha: str, summary: ReleaseSummary, progress: ShiftProgress
    ) -> Outcome: ...

    def finish_leftovers(self) -> None: ...


class TaskSetStrategy(LoadBalanced):
    """Blue/green on an EXTERNAL-controller service, one visible task per step."""

    def release(
        self, task_definition: str, sha: str, summary: ReleaseSummary, progress: ShiftProgress
    ) -> Outcome:
        cfg, clients, routing = self.cfg, self.clients, self.routing
        service = ecs_ops.describe_service(clients.get("ecs"), cfg.ecs.cluster, cfg.ecs.service)
        planned = tasksets.plan_green(service, routing, task_definition)
        green = None
        try:
            with summary.stage("deploy green"):
                green = tasksets.deploy_green(cfg, clients, routing, task_definition, sha)
            with summary.stage("verify"):
                summary.notes += tasksets.verify_green(cfg, clients, routing, green)
            if cfg.approval == "required" and not green.already_primary:
                with summary.stage("approval"):
                    request_approval(cfg.name, summary.markdown(), cfg.approval_timeout_seconds)

            def on_step(weight: int) -> None:
                summary.traffic = f"{weight}% green"
                progress.update(float(weight))
                emit(cfg.name, "traffic-shifted", sha=sha, green_percent=weight)

            with summary.stage("shift traffic"):
                tasksets.shift_traffic(cfg, clients, routing, green, on_step)
            with summary.stage("bake"):
                tasksets.bake(cfg, clients, routing, green)
        except Exception as exc:  # noqa: BLE001 - every failure before teardown rolls back
            reason = getattr(exc, "message", None) or f"{type(exc).__name__}: {exc}"
            with summary.stage("roll back"):
                done = tasksets.roll_back(cfg, clients, routing, green or planned)
            summary.outcome, summary.reason, summary.traffic = "Rolled back", reason, done
            return Outcome(task_definition, rolled_back=True, reason=reason, traffic=done)
        with summary.stage("teardown blue"):
            removed = tasksets.teardown_blue(cfg, clients, routing, green)
        summary.outcome = "Deployed"
        summary.notes.append(f"removed task sets: {', '.join(removed) or 'none'}")
        return Outcome(task_definition, traffic="100% green")

    def finish_leftovers(self) -> None:
        """A previous run that stopped after the switch left blue behind: remove it now."""
        service = ecs_ops.describe_service(self.clients.get("ecs"), self.cfg.ecs.cluster, self.cfg.ecs.service)
        primary = ecs_ops.primary_task_set(service)
        others = [ts for ts in service.get("taskSets", []) if ts.get("status") == "ACTIVE"]
        if primary and others:
            get_run_logger().info("removing %d task set(s) left by an earlier run", len(others))
            tg = ecs_ops.task_set_target_group(primary) or self.routing.target_groups[0]
            traffic.set_weights(self.clients.get("elbv2"), self.routing.production_listener, {tg: 100})
            green = tasksets.Green(primary["taskSetArn"], tg, primary["taskDefinition"], None, None)
            tasksets.teardown_blue(self.cfg, self.clients, self.routing, green)


STRATEGY_BY_CONTROLLER: dict[str, type[Any]] = {
    "EXTERNAL": TaskSetStrategy,
    "CODE_DEPLOY": CodeDeployStrategy,
    "ECS": RollingStrategy,
}


def choose_strategy(cfg: ServiceConfig, clients: AwsClients) -> Strategy:
    service = ecs_ops.describe_service(clients.get("ecs"), cfg.ecs.cluster, cfg.ecs.service)
    controller = ecs_ops.controller_type(service)
    expected = ecs_ops.CONTROLLER_STRATEGY.get(controller, controller)
    if cfg.strategy.type != expected:
        raise StrategyMismatch(
            f"strategy.type is {cfg.strategy.type} but service {cfg.ecs.service} uses the {controller} "
            f"deployment controller, which deploys with {expected}; set strategy.type: {expected} "
            f"or recreate the service with the controller for {cfg.strategy.type}",
            service=cfg.name,
        )
    impl = STRATEGY_BY_CONTROLLER.get(controller)
    if impl is None:
        raise StrategyMismatch(f"strategy {expected} is not available yet", service=cfg.name)
    return impl(cfg, clients)  # type: ignore[no-any-return]
