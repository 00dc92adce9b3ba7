"""The codedeploy and rolling strategies, with the same interface as the task-sets one.

CODE_DEPLOY services: CodeDeploy moves traffic; the flow creates the deployment,
verifies green through the test listener while CodeDeploy waits in Ready, then
continues, watches, bakes and finishes. ECS services: UpdateService and a wait
that tells a completed rollout from a circuit-breaker rollback.
"""

from __future__ import annotations

from typing import Any

from prefect import get_run_logger

from flows.base import LoadBalanced, Outcome
from tasks import codedeploy, rolling, tasksets
from tasks import ecs as ecs_ops
from tasks.approval import request_approval
from tasks.appspec import render_appspec
from tasks.aws import AwsClients
from tasks.errors import ConfigError
from tasks.models import ServiceConfig
from tasks.report import ReleaseSummary, ShiftProgress, emit


def _reason(exc: Exception) -> str:
    return getattr(exc, "message", None) or f"{type(exc).__name__}: {exc}"


def render_for(cfg: ServiceConfig, task_definition: str) -> dict[str, Any]:
    """This release's appspec, from strategy.appspec (relative to the YAML) or the default one."""
    text, source = None, "default appspec"
    if cfg.strategy.appspec:
        path = cfg.path(cfg.strategy.appspec)
        source = str(path)
        try:
            text = path.read_text()
        except OSError as exc:
            raise ConfigError(
                f"strategy.appspec: cannot read {path} ({exc.strerror})", service=cfg.name
            ) from exc
    return render_appspec(text, task_definition, cfg.ecs.container, cfg.ecs.container_port, source)


def _with_codedeploy_words(reason: str, ended: codedeploy.Ended) -> str:
    """Our reason and CodeDeploy's; CodeDeploy's leads when it stopped the deployment first."""
    if ended.text in reason:
        return reason
    return f"{reason}; {ended.text}" if ended.stopped_here else f"{ended.text} (then: {reason})"


class CodeDeployStrategy(LoadBalanced):
    """Blue/green on a CODE_DEPLOY-controller service through its deployment group."""

    def release(
        self, task_definition: str, sha: str, summary: ReleaseSummary, progress: ShiftProgress
    ) -> Outcome:
        cfg, clients = self.cfg, self.clients
        appspec = render_for(cfg, task_definition)
        with summary.stage("codedeploy create"):
            dep = codedeploy.create(cfg, clients, appspec, sha)
        resumed = ", resumed" if dep.resumed else ""
        summary.notes.append(f"CodeDeploy deployment [{dep.id}]({dep.url}) ({dep.config_name}{resumed})")
        emit(cfg.name, "codedeploy-created", sha=sha, deployment_id=dep.id, url=dep.url)
        try:
            self._through_bake(dep, sha, summary, progress)
        except Exception as exc:  # noqa: BLE001 - every failure before blue is removed rolls back
            reason = _reason(exc)
            with summary.stage("roll back"):
                ended = codedeploy.roll_back(cfg, clients, dep)
            reason = _with_codedeploy_words(reason, ended)
            where = "production on blue" if ended.on_blue else "production on green"
            summary.outcome, summary.reason, summary.traffic = "Rolled back", reason, where
            return Outcome(task_definition, rolled_back=True, reason=reason, traffic=where)
        with summary.stage("finish"):
            codedeploy.finish(cfg, clients, dep)
        summary.outcome, summary.traffic = "Deployed", "100% green"
        return Outcome(task_definition, traffic="100% green")

    def _through_bake(
        self, dep: codedeploy.Deployment, sha: str, summary: ReleaseSummary, progress: ShiftProgress
    ) -> None:
        cfg, clients, routing = self.cfg, self.clients, self.routing
        with summary.stage("wait ready"):
            phase = codedeploy.wait_ready(cfg, clients, dep)
        green_tg = codedeploy.green_target_group(clients, dep, routing)
        if phase == "ready":
            green = tasksets.Green(None, green_tg, dep.task_definition, None, None)
            with summary.stage("verify"):
                summary.notes += tasksets.verify_green(cfg, clients, routing, green)
            if cfg.approval == "required":
                with summary.stage("approval"):
                    request_approval(cfg.name, summary.markdown(), cfg.approval_timeout_seconds)
            with summary.stage("continue to production"):
                codedeploy.continue_to_production(cfg, clients, dep)

        def on_step(weight: int) -> None:
            summary.traffic = f"{weight}% green"
            progress.update(float(weight))
            emit(cfg.name, "traffic-shifted", sha=sha, green_percent=weight, deployment_id=dep.id)

        watch = codedeploy.Watch(dep, routing.production_listener, green_tg)
        if phase in ("ready", "shifting"):
            with summary.stage("watch shift"):
                codedeploy.watch_shift(cfg, clients, watch, on_step)
        if phase != "succeeded":
            with summary.stage("bake"):
                codedeploy.bake(cfg, clients, watch)

    def finish_leftovers(self) -> None:
        """An earlier run stopped in the termination wait of the live release: let CodeDeploy finish."""
        cfg, clients = self.cfg, self.clients
        cd = clients.get("codedeploy")
        svc = ecs_ops.describe_service(clients.get("ecs"), cfg.ecs.cluster, cfg.ecs.service)
        live = ecs_ops.live_task_definition(clients.get("ecs"), svc)
        for info in codedeploy.active_deployments(cfg, cd):
            waiting = info.get("instanceTerminationWaitTimeStarted")
            if waiting and codedeploy.deployed_task_definition(info) == live:
                get_run_logger().info("finishing deployment %s left by an earlier run", info["deploymentId"])
                group = codedeploy.group_settings(cfg, cd)
                url = codedeploy.console_url(clients.settings.region, info["deploymentId"])
                dep = codedeploy.Deployment(info["deploymentId"], url, live or "", group, group.config_name)
                codedeploy.finish(cfg, clients, dep)


class RollingStrategy:
    """UpdateService on an ECS-controller service; a failed rollout ends on the previous revision."""

    def __init__(self, cfg: ServiceConfig, clients: AwsClients) -> None:
        self.cfg, self.clients = cfg, clients

    def release(
        self, task_definition: str, sha: str, summary: ReleaseSummary, progress: ShiftProgress
    ) -> Outcome:
        cfg, clients = self.cfg, self.clients
        with summary.stage("rolling update"):
            rollout = rolling.update_service(cfg, clients, task_definition, sha)
        try:
            with summary.stage("wait rollout"):
                rolling.wait_rollout(cfg, clients, rollout)
            progress.update(100.0)
            emit(cfg.name, "traffic-shifted", sha=sha, green_percent=100)
            with summary.stage("verify"):
                summary.notes += rolling.verify_production(cfg, clients, rollout)
        except Exception as exc:  # noqa: BLE001 - every failure ends on the previous revision
            reason = _reason(exc)
            with summary.stage("roll back"):
                serving = rolling.roll_back(cfg, clients, rollout)
            summary.outcome, summary.reason, summary.traffic = "Rolled back", reason, serving
            return Outcome(task_definition, rolled_back=True, reason=reason, traffic=serving)
        summary.outcome, summary.traffic = "Deployed", "100% new tasks"
        return Outcome(task_definition, traffic="100% new tasks")

    def finish_leftovers(self) -> None:
        """ECS finishes a rollout on its own; nothing is left for a later run."""
