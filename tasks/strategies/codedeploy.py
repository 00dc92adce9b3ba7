"""CodeDeploy ECS blue/green, driven stage by stage.

CodeDeploy starts green and moves the listeners; the pipeline creates the
deployment (or resumes the one already running for this task definition),
waits for Ready, verifies green through the test listener, continues to
production, watches the shift and the alarms, bakes, and lets CodeDeploy remove
blue. Any failure stops the deployment with CodeDeploy's own rollback.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

from prefect import get_run_logger

from tasks.aws import ecs as ecs_ops
from tasks.aws import traffic
from tasks.aws.clients import AwsClients
from tasks.aws.codedeploy import (
    ENDED,
    Deployment,
    active_deployments,
    console_link,
    console_url,
    continue_deployment,
    create_deployment,
    deployed_task_definition,
    describe,
    ended,
    ensure_deployment_config,
    error_text,
    group_settings,
    lifecycle,
    phase_of,
    raise_if_ended,
    shift_minutes,
    stop_deployment,
    wait_for_others,
)
from tasks.aws.metrics import Pair
from tasks.aws.retry import stage
from tasks.config import appspec as appspec_mod
from tasks.config.models import ServiceConfig, appspec_for
from tasks.core.errors import DeployError
from tasks.core.report import emit
from tasks.core.waits import poll
from tasks.release import analysis
from tasks.release.contract import LoadBalanced, Reconciled, Release, RollbackResult, Step
from tasks.strategies import budgets, verification
from tasks.strategies.budgets import Budget
from tasks.strategies.verification import Green, verify_green


@stage("codedeploy create", "codedeploy create {cfg.name}@{sha:.7}")
def create(cfg: ServiceConfig, clients: AwsClients, appspec: dict[str, Any], sha: str) -> Deployment:
    """Create the deployment, or resume the one already running this task definition.

    Ours is found by the sha256 of its appspec (GetDeployment returns it, never the content) or
    by its replacement task set's task definition.
    """
    log = get_run_logger()
    cd = clients.get("codedeploy")
    group = group_settings(cfg, cd)
    content = appspec_mod.appspec_content(appspec)
    task_definition = appspec_mod.appspec_task_definition(content) or ""
    active = active_deployments(cfg, cd)
    digest = appspec_mod.content_sha256(content)
    task_sets = _task_sets(cfg, clients)
    mine = [
        i for i in active
        if ((i.get("revision") or {}).get("appSpecContent") or {}).get("sha256") == digest
        or deployed_task_definition(cd, i["deploymentId"], task_sets) == task_definition
    ]
    if mine:
        dep_id = mine[0]["deploymentId"]
        log.info("deployment %s for %s is already %s: resumed; %s", dep_id, task_definition,
                 mine[0]["status"], console_url(clients.settings, dep_id))
        config = str(mine[0].get("deploymentConfigName") or group.config_name)
        return Deployment(dep_id, console_url(clients.settings, dep_id), task_definition, group, config, True)
    wait_for_others(cfg, clients, active, task_sets)
    config = ensure_deployment_config(cfg, cd, group)
    revision = {
        "revisionType": "AppSpecContent",
        "appSpecContent": {"content": content, "sha256": digest},
    }
    dep_id = create_deployment(cfg, cd, config, revision, f"ecs-pipeline {cfg.name}@{sha[:12]}")
    url = console_url(clients.settings, dep_id)
    log.info("CodeDeploy deployment %s created (%s): %s", dep_id, config, url)
    return Deployment(dep_id, url, task_definition, group, config)


def _task_sets(cfg: ServiceConfig, clients: AwsClients) -> list[dict[str, Any]]:
    svc = ecs_ops.describe_service(clients.get("ecs"), cfg.ecs.cluster, cfg.ecs.service)
    return list(svc.get("taskSets") or [])


@stage("wait ready", "wait ready {cfg.name}")
def wait_ready(cfg: ServiceConfig, clients: AwsClients, dep: Deployment, budget: Budget) -> str:
    """Until green runs behind the test listener (Ready), or later when resuming; BUDGET from
    budgets.codedeploy_ready (green's start and health checks, the hooks before Ready)."""
    log = get_run_logger()
    cd = clients.get("codedeploy")
    if dep.group.ready_action != "STOP_DEPLOYMENT":
        log.warning("group %s does not wait in Ready (deploymentReadyOption %s): production moves "
                    "before the test-listener checks can stop it; set actionOnTimeout STOP_DEPLOYMENT",
                    cfg.codedeploy_group, dep.group.ready_action)

    def check() -> str | None:
        info = describe(cd, dep.id)
        raise_if_ended(cfg, info)
        return phase_of(info, lifecycle(cd, dep.id))

    phase = poll(check, timeout=budget.seconds, what=budget.waiting_for(f"deployment {dep.id} to be Ready"),
                 log=log.info, cap=clients.settings.poll_cap())
    log.info("deployment %s: %s", dep.id, phase)
    return phase


def green_target_group(clients: AwsClients, dep: Deployment, routing: traffic.Routing) -> str:
    """The replacement task set's target group: CodeDeploy's Green label, else the test listener's."""
    names = dict(zip(routing.target_group_names, routing.target_groups, strict=True))
    for info in lifecycle(clients.get("codedeploy"), dep.id).get("taskSetsInfo", []):
        arn = names.get((info.get("targetGroup") or {}).get("name", ""))
        if info.get("taskSetLabel") == "Green" and arn:
            return arn
    weights = traffic.get_weights(clients.get("elbv2"), routing.test_listener)
    return max(weights, key=lambda arn: weights[arn]) if weights else routing.target_groups[1]


@stage("continue to production", "continue to production {cfg.name}")
def continue_to_production(cfg: ServiceConfig, clients: AwsClients, dep: Deployment) -> None:
    """ContinueDeployment(READY_WAIT): CodeDeploy starts moving production to green."""
    cd = clients.get("codedeploy")
    info = describe(cd, dep.id)
    raise_if_ended(cfg, info)
    if info["status"] != "Ready":
        get_run_logger().info("deployment %s already continued (%s)", dep.id, info["status"])
        return
    continue_deployment(cd, dep.id, "READY_WAIT")
    get_run_logger().info("deployment %s continued to production (%s)", dep.id, dep.config_name)


@dataclass(frozen=True)
class Watch:
    """What a watch loop looks at: the deployment, alarms and green's share of production."""

    dep: Deployment
    production_listener: str
    green_target_group: str
    hooks: tuple[str, ...] = ()
    blue_target_group: str = ""


def _look(cfg: ServiceConfig, clients: AwsClients, watch: Watch) -> tuple[dict[str, Any], int]:
    """(deployment info, green's production weight); fails on an ended deployment."""
    info = describe(clients.get("codedeploy"), watch.dep.id)
    raise_if_ended(cfg, info)
    weights = traffic.get_weights(clients.get("elbv2"), watch.production_listener)
    return info, weights.get(watch.green_target_group, 0)


@stage("watch shift", "watch shift {cfg.name}")
def watch_shift(
    cfg: ServiceConfig, clients: AwsClients, watch: Watch, on_step: Callable[[int], None]
) -> None:
    """Follow CodeDeploy's production shift until blue's termination wait starts, within the config's
    minutes and the BeforeAllowTraffic/AfterAllowTraffic hooks (budgets.codedeploy_shift). With ``analysis``
    each canary/linear step is judged as it goes (analysis.ShiftAnalysis); a fail stops the deployment
    with CodeDeploy's rollback."""
    log = get_run_logger()
    seen = [-1]
    minutes = shift_minutes(clients.get("codedeploy"), watch.dep.config_name)
    budget = budgets.codedeploy_shift(cfg, clients, minutes, watch.hooks)
    arn = watch.green_target_group
    green = arn.split("/")[1] if arn.count("/") == 2 else arn  # a target group ARN ends targetgroup/<name>/<id>
    steps = analysis.ShiftAnalysis(
        cfg, clients, lambda: Pair(watch.production_listener, arn, watch.blue_target_group),
        deployment_id=watch.dep.id)

    def look() -> str | None:
        info, weight = _look(cfg, clients, watch)
        if weight != seen[0] and weight > 0:
            seen[0] = weight
            log.info("production: %d%% green [%s]", weight, green)
            on_step(weight)
        if watch.blue_target_group:
            steps.see(weight)
        done = info["status"] == "Succeeded" or info.get("instanceTerminationWaitTimeStarted")
        return str(info["status"]) if done else None

    verification.watch(cfg, clients, "the traffic shift", look, deployment_id=watch.dep.id,
                       timeout=budget.seconds,
                       until=budget.waiting_for(f"deployment {watch.dep.id} to move production to green"))
    steps.close()
    if seen[0] != 100:
        on_step(100)


@stage("bake", "bake {cfg.name}")
def bake(cfg: ServiceConfig, clients: AwsClients, watch: Watch) -> None:
    """Keep blue while green carries production; an alarm or an ended deployment still rolls back."""
    log = get_run_logger()
    seconds = cfg.bake_seconds
    group = watch.dep.group
    if group.termination_action == "TERMINATE" and seconds > group.termination_wait_minutes * 60:
        log.warning("bake_seconds %s exceeds the group's terminationWaitTimeInMinutes %s: CodeDeploy "
                    "removes blue then, so the bake ends there", seconds, group.termination_wait_minutes)
        seconds = group.termination_wait_minutes * 60
    log.info("baking for %ss (time-scaled: %.1fs)", seconds, clients.settings.scaled(seconds))

    def look() -> str | None:
        info, _ = _look(cfg, clients, watch)
        return "Succeeded" if info["status"] == "Succeeded" else None

    verification.watch(cfg, clients, "the bake", look, seconds=seconds, deployment_id=watch.dep.id)


@stage("finish", "finish {cfg.name}")
def finish(cfg: ServiceConfig, clients: AwsClients, dep: Deployment) -> None:
    """ContinueDeployment(TERMINATION_WAIT): CodeDeploy removes blue; done when Succeeded."""
    cd = clients.get("codedeploy")
    info = describe(cd, dep.id)
    if info["status"] != "Succeeded" and info.get("instanceTerminationWaitTimeStarted"):
        continue_deployment(cd, dep.id, "TERMINATION_WAIT")

    def check() -> str | None:
        now = describe(cd, dep.id)
        raise_if_ended(cfg, now)
        return "done" if now["status"] == "Succeeded" else None

    budget = budgets.codedeploy_termination(clients, dep.group.termination_wait_minutes)
    poll(check, timeout=budget.seconds, what=budget.waiting_for(f"deployment {dep.id} to remove blue"),
         log=get_run_logger().info, cap=clients.settings.poll_cap())
    get_run_logger().info("deployment %s Succeeded: blue removed", dep.id)


@dataclass(frozen=True)
class Ended:
    """How a rolled-back deployment ended, in CodeDeploy's words, and who stopped it."""

    text: str
    stopped_here: bool
    on_blue: bool = True


@stage("roll back", "roll back {cfg.name}")
def roll_back(cfg: ServiceConfig, clients: AwsClients, dep: Deployment) -> Ended:
    """StopDeployment with CodeDeploy's rollback (unless CodeDeploy already ended it) and wait."""
    log = get_run_logger()
    cd = clients.get("codedeploy")
    stopped_here = False
    if describe(cd, dep.id)["status"] not in ENDED and stop_deployment(cd, dep.id):
        stopped_here = True
        log.info("deployment %s stopped with rollback", dep.id)
    wait = budgets.codedeploy_termination(clients, dep.group.termination_wait_minutes)
    info = poll(lambda: ended(cd, dep.id), timeout=wait.seconds, what=wait.waiting_for(f"deployment {dep.id} to stop"),
                log=log.info, cap=clients.settings.poll_cap())
    rollback_id = (info.get("rollbackInfo") or {}).get("rollbackDeploymentId")
    if info["status"] == "Succeeded":
        text = f"CodeDeploy deployment {dep.id} had already Succeeded: production stays on green"
        return Ended(text, stopped_here, on_blue=False)
    if rollback_id:
        done = poll(lambda: ended(cd, rollback_id), timeout=wait.seconds,
                    what=wait.waiting_for(f"rollback deployment {rollback_id}"), log=log.info,
                    cap=clients.settings.poll_cap())
        log.info("rollback deployment %s %s", rollback_id, done["status"])
        # The rollback removes the replacement task set after the deployments have ended, not with
        # them: production is back on blue alone once the service holds no other task set.
        try:
            poll(lambda: None if any(ts["status"] != "PRIMARY" for ts in _task_sets(cfg, clients)) else "gone",
                 timeout=wait.seconds, what=wait.waiting_for(f"deployment {dep.id}'s replacement task set to go"),
                 log=log.info, cap=clients.settings.poll_cap())
        except DeployError as exc:
            if done["status"] != "Succeeded":
                raise
            # The rollback deployment succeeded: the listeners are back on blue. A replacement task set
            # CodeDeploy has not removed yet takes no traffic; the summary says it stands, not "failed".
            left = (f"production is back on blue (rollback deployment {rollback_id} Succeeded), but {exc.message}: "
                    "green's task set still stands beside blue, without traffic, until CodeDeploy removes it")
            log.warning(left)
            return Ended(f"{error_text(info)}; {left}", stopped_here)
    return Ended(error_text(info), stopped_here)


def with_codedeploy_words(reason: str, ended: Ended) -> str:
    """Our reason and CodeDeploy's; CodeDeploy's leads when it stopped the deployment first."""
    if ended.text in reason:
        return reason
    return f"{reason}; {ended.text}" if ended.stopped_here else f"{ended.text} (then: {reason})"


class CodeDeploySteps(LoadBalanced):
    """Blue/green on a CODE_DEPLOY-controller service through its deployment group.

    CodeDeploy moves traffic; the pipeline creates the deployment, verifies green
    through the test listener while CodeDeploy waits in Ready, then continues,
    watches, bakes and finishes. A resumed deployment skips what already happened.
    """

    def __init__(self, release: Release) -> None:
        super().__init__(release)
        self.dep: Deployment | None = None
        self.phase: str | None = None
        self.green_tg = ""

    def before_production(self) -> Iterator[Step]:
        yield "codedeploy create", self._create
        yield "wait ready", self._wait_ready
        if self.phase == "ready":
            yield "verify", self._verify

    def _create(self) -> None:
        r = self.release
        appspec = appspec_for(self.cfg, r.task_definition)
        self.dep = dep = create(self.cfg, self.clients, appspec, r.sha)
        resumed = ", resumed" if dep.resumed else ""
        r.note(f"CodeDeploy deployment {console_link(dep.id, dep.url)} ({dep.config_name}{resumed})")
        emit(self.cfg.name, "codedeploy-created", sha=r.sha, deployment_id=dep.id, url=dep.url)

    def _wait_ready(self) -> None:
        assert self.dep is not None
        hooks = budgets.hook_events(self.cfg)
        budget = budgets.codedeploy_ready(self.cfg, self.clients, self.routing.target_groups, hooks)
        self.phase = wait_ready(self.cfg, self.clients, self.dep, budget)
        self.green_tg = green_target_group(self.clients, self.dep, self.routing)

    def _verify(self) -> None:
        assert self.dep is not None
        green = Green(None, self.green_tg, self.dep.task_definition, None, None)
        self.release.note(*verify_green(self.cfg, self.clients, self.routing, green))

    def pauses_for_approval(self) -> bool:
        return self.phase == "ready"

    def to_production(self) -> Iterator[Step]:
        dep = self.dep
        assert dep is not None
        blue = next((tg for tg in self.routing.target_groups if tg != self.green_tg), "")
        watch = Watch(dep, self.routing.production_listener, self.green_tg, tuple(budgets.hook_events(self.cfg)), blue)
        if self.phase == "ready":
            yield "continue to production", lambda: continue_to_production(self.cfg, self.clients, dep)
        if self.phase in ("ready", "shifting"):
            yield "watch shift", lambda: self._watch_shift(watch)
        if self.phase != "succeeded":
            yield "bake", lambda: bake(self.cfg, self.clients, watch)

    def _watch_shift(self, watch: Watch) -> None:
        def on_step(weight: int) -> None:
            self.release.on_step(weight, deployment_id=watch.dep.id, target_group=self.group_name(self.green_tg))

        watch_shift(self.cfg, self.clients, watch, on_step)

    def after_bake(self) -> Iterator[Step]:
        dep = self.dep
        assert dep is not None
        yield "finish", lambda: finish(self.cfg, self.clients, dep)

    def roll_back(self, reason: str) -> RollbackResult | None:
        if self.dep is None:
            return None  # no deployment was created: nothing moved
        done = roll_back(self.cfg, self.clients, self.dep)
        where = self.on_group("production on blue" if done.on_blue else "production on green")
        return RollbackResult(where, with_codedeploy_words(reason, done))

    def reconcile(self) -> Reconciled | None:
        """An earlier run stopped in the termination wait of the live release: let CodeDeploy finish.

        The deployment's release is its replacement task set's task definition (GetDeployment's
        appspec content is always null on AWS).
        """
        cfg, clients = self.cfg, self.clients
        cd = clients.get("codedeploy")
        svc = ecs_ops.describe_service(clients.get("ecs"), cfg.ecs.cluster, cfg.ecs.service)
        live = ecs_ops.live_task_definition(clients.get("ecs"), svc) or ""
        task_sets = list(svc.get("taskSets") or [])
        for info in active_deployments(cfg, cd):
            if not info.get("instanceTerminationWaitTimeStarted"):
                continue
            if live and deployed_task_definition(cd, info["deploymentId"], task_sets) == live:
                dep_id = info["deploymentId"]
                get_run_logger().warning("finishing deployment %s, in flight when this run started", dep_id)
                group = group_settings(cfg, cd)
                url = console_url(clients.settings, dep_id)
                finish(cfg, clients, Deployment(dep_id, url, live, group, group.config_name))
                return Reconciled("forward", live, f"finished CodeDeploy deployment {dep_id} from its termination wait")
        return None

    def adopt_in_flight(self) -> str | None:
        """A deployment of the group still in progress: roll_back stops it with CodeDeploy's rollback."""
        cd = self.clients.get("codedeploy")
        task_sets = _task_sets(self.cfg, self.clients)
        for info in active_deployments(self.cfg, cd):
            dep_id, group = info["deploymentId"], group_settings(self.cfg, cd)
            td = deployed_task_definition(cd, dep_id, task_sets) or ""
            config = str(info.get("deploymentConfigName") or group.config_name)
            self.dep = Deployment(dep_id, console_url(self.clients.settings, dep_id), td, group, config, True)
            self.release.task_definition = td
            revision = td.rsplit("/", 1)[-1] or "a revision not installed yet"
            return f"CodeDeploy deployment {dep_id} of {revision} was {info['status']}"
        return None
