"""CodeDeploy ECS blue/green, driven stage by stage.

CodeDeploy starts green and moves the listeners; the pipeline creates the
deployment (or resumes the one already running for this task definition),
waits for Ready, verifies green through the test listener, continues to
production, watches the shift and the alarms, bakes, and lets CodeDeploy remove
blue. Any failure stops the deployment with CodeDeploy's own rollback.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial
from typing import Any

from botocore.exceptions import ClientError
from prefect import get_run_logger, task
from prefect.cache_policies import NO_CACHE

from tasks import appspec as appspec_mod
from tasks import traffic, verify
from tasks.aws import AwsClients
from tasks.errors import ConfigError, DeployError, VerifyFailed
from tasks.models import ServiceConfig
from tasks.retry import retry_kwargs
from tasks.waits import poll

STAGE = dict(cache_policy=NO_CACHE, **retry_kwargs())
ACTIVE = ["Created", "Queued", "InProgress", "Baking", "Ready"]
ENDED = ("Succeeded", "Failed", "Stopped")
MARGIN_SECONDS = 60.0
CAP_SECONDS = 4 * 3600.0


@dataclass(frozen=True)
class GroupSettings:
    """What the deployment group says about waiting, read once per release."""

    config_name: str
    ready_action: str
    ready_wait_minutes: float
    termination_action: str
    termination_wait_minutes: float


@dataclass(frozen=True)
class Deployment:
    id: str
    url: str
    task_definition: str
    group: GroupSettings
    config_name: str
    resumed: bool = False


def console_url(region: str, deployment_id: str) -> str:
    return (
        f"https://{region}.console.aws.amazon.com/codesuite/codedeploy/deployments/"
        f"{deployment_id}?region={region}"
    )


def budget(cfg: ServiceConfig, seconds: float) -> float:
    """A wait's bound: the deployment's own time plus a margin, never beyond the rollout timeout."""
    return min(seconds + MARGIN_SECONDS, float(cfg.timeouts.rollout_seconds), CAP_SECONDS)


def group_settings(cfg: ServiceConfig, cd: Any) -> GroupSettings:
    try:
        info = cd.get_deployment_group(
            applicationName=cfg.codedeploy_application, deploymentGroupName=cfg.codedeploy_group
        )["deploymentGroupInfo"]
    except ClientError as exc:
        code = exc.response["Error"]["Code"]
        if code in ("ApplicationDoesNotExistException", "DeploymentGroupDoesNotExistException"):
            raise ConfigError(
                f"strategy.codedeploy_group: {code}: application {cfg.codedeploy_application}, "
                f"group {cfg.codedeploy_group}; create them or set strategy.codedeploy_application "
                "and strategy.codedeploy_group",
                service=cfg.name,
            ) from exc
        raise
    bg = info.get("blueGreenDeploymentConfiguration") or {}
    ready = bg.get("deploymentReadyOption") or {}
    term = bg.get("terminateBlueInstancesOnDeploymentSuccess") or {}
    return GroupSettings(
        config_name=str(info.get("deploymentConfigName") or "CodeDeployDefault.ECSAllAtOnce"),
        ready_action=str(ready.get("actionOnTimeout") or "CONTINUE_DEPLOYMENT"),
        ready_wait_minutes=float(ready.get("waitTimeInMinutes") or 0),
        termination_action=str(term.get("action") or "TERMINATE"),
        termination_wait_minutes=float(term.get("terminationWaitTimeInMinutes") or 0),
    )


def ensure_deployment_config(cfg: ServiceConfig, cd: Any, group: GroupSettings) -> str:
    """strategy.traffic when the YAML sets it, else the group's own deployment config."""
    if "traffic" not in cfg.strategy.model_fields_set:
        return group.config_name
    name, routing = appspec_mod.deployment_config(cfg.strategy.traffic)
    if name.startswith(appspec_mod.OWN_CONFIG_PREFIX):
        try:
            cd.create_deployment_config(
                deploymentConfigName=name, computePlatform="ECS", trafficRoutingConfig=routing
            )
        except ClientError as exc:
            if exc.response["Error"]["Code"] != "DeploymentConfigAlreadyExistsException":
                raise
    return name


def shift_minutes(cd: Any, config_name: str) -> float:
    """How long the production shift of a deployment config takes, in minutes."""
    found = cd.get_deployment_config(deploymentConfigName=config_name)["deploymentConfigInfo"]
    return appspec_mod.shift_minutes(found.get("trafficRoutingConfig") or {})


def describe(cd: Any, deployment_id: str) -> dict[str, Any]:
    return cd.get_deployment(deploymentId=deployment_id)["deploymentInfo"]  # type: ignore[no-any-return]


def ended(cd: Any, deployment_id: str) -> dict[str, Any] | None:
    info = describe(cd, deployment_id)
    return info if info["status"] in ENDED else None


def error_text(info: dict[str, Any]) -> str:
    """CodeDeploy's own words for how a deployment ended."""
    err = info.get("errorInformation") or {}
    message = err.get("message") or err.get("code") or "no error information"
    return f"CodeDeploy deployment {info.get('deploymentId')} {info.get('status')}: {message}"


def raise_if_ended(cfg: ServiceConfig, info: dict[str, Any]) -> None:
    if info.get("status") in ("Failed", "Stopped"):
        raise DeployError(error_text(info), service=cfg.name, deployment_id=info.get("deploymentId"))


def deployed_task_definition(info: dict[str, Any]) -> str | None:
    revision = info.get("revision") or {}
    content = (revision.get("appSpecContent") or {}).get("content") or (
        revision.get("string") or {}
    ).get("content")
    return appspec_mod.appspec_task_definition(content) if content else None


def active_deployments(cfg: ServiceConfig, cd: Any) -> list[dict[str, Any]]:
    """Deployments of the group that have not ended."""
    ids: list[str] = []
    pages = cd.get_paginator("list_deployments").paginate(
        applicationName=cfg.codedeploy_application,
        deploymentGroupName=cfg.codedeploy_group,
        includeOnlyStatuses=ACTIVE,
    )
    for page in pages:
        ids += page.get("deployments", [])
    infos = [describe(cd, i) for i in ids]
    return [i for i in infos if i.get("status") in ACTIVE]


def wait_for_others(cfg: ServiceConfig, clients: AwsClients, others: list[dict[str, Any]]) -> None:
    """Never race another deployment of the group: wait a bounded time for it, then fail naming it."""
    log = get_run_logger()
    cd = clients.get("codedeploy")
    for other in others:
        dep_id = other["deploymentId"]
        what = deployed_task_definition(other) or "another revision"
        log.warning("deployment %s (%s) is %s in group %s: waiting for it to end",
                    dep_id, what, other.get("status"), cfg.codedeploy_group)
        try:
            poll(partial(ended, cd, dep_id), timeout=cfg.timeouts.green_healthy_seconds,
                 what=f"deployment {dep_id} to end", log=log.info, cap=clients.settings.poll_cap())
        except DeployError as exc:
            raise DeployError(
                f"deployment {dep_id} ({what}) is still {describe(cd, dep_id)['status']} in group "
                f"{cfg.codedeploy_group} and blocks this release; let it finish or stop it "
                f"(aws deploy stop-deployment --deployment-id {dep_id})",
                service=cfg.name,
                deployment_id=dep_id,
            ) from exc


@task(name="codedeploy create", task_run_name="codedeploy create {cfg.name}@{sha:.7}", **STAGE)
def create(cfg: ServiceConfig, clients: AwsClients, appspec: dict[str, Any], sha: str) -> Deployment:
    """Create the deployment, or resume the one already running this task definition."""
    log = get_run_logger()
    cd = clients.get("codedeploy")
    region = clients.settings.region
    group = group_settings(cfg, cd)
    content = appspec_mod.appspec_content(appspec)
    task_definition = appspec_mod.appspec_task_definition(content) or ""
    active = active_deployments(cfg, cd)
    digest = appspec_mod.content_sha256(content)
    mine = [
        i for i in active
        if deployed_task_definition(i) == task_definition
        or ((i.get("revision") or {}).get("appSpecContent") or {}).get("sha256") == digest
    ]
    if mine:
        dep_id = mine[0]["deploymentId"]
        log.info("deployment %s for %s is already %s: resumed; %s", dep_id, task_definition,
                 mine[0]["status"], console_url(region, dep_id))
        config = str(mine[0].get("deploymentConfigName") or group.config_name)
        return Deployment(dep_id, console_url(region, dep_id), task_definition, group, config, True)
    wait_for_others(cfg, clients, active)
    config = ensure_deployment_config(cfg, cd, group)
    revision = {
        "revisionType": "AppSpecContent",
        "appSpecContent": {"content": content, "sha256": digest},
    }
    try:
        dep_id = cd.create_deployment(
            applicationName=cfg.codedeploy_application,
            deploymentGroupName=cfg.codedeploy_group,
            deploymentConfigName=config,
            revision=revision,
            description=f"ecs-pipeline {cfg.name}@{sha[:12]}",
        )["deploymentId"]
    except ClientError as exc:
        code = exc.response["Error"]["Code"]
        if code == "DeploymentLimitExceededException":
            raise DeployError(
                f"another deployment started in group {cfg.codedeploy_group} meanwhile: "
                f"{exc.response['Error'].get('Message', code)}",
                service=cfg.name,
            ) from exc
        raise
    url = console_url(region, dep_id)
    log.info("CodeDeploy deployment %s created (%s): %s", dep_id, config, url)
    return Deployment(dep_id, url, task_definition, group, config)


def lifecycle(cd: Any, deployment_id: str) -> dict[str, Any]:
    """The ECS target of a deployment (lifecycle events, task sets), or {} before it starts."""
    try:
        ids = cd.list_deployment_targets(deploymentId=deployment_id).get("targetIds", [])
        if not ids:
            return {}
        found = cd.get_deployment_target(deploymentId=deployment_id, targetId=ids[0])
    except ClientError as exc:
        if exc.response["Error"]["Code"] in ("DeploymentNotStartedException",):
            return {}
        raise
    return found["deploymentTarget"].get("ecsTarget") or {}


def phase_of(info: dict[str, Any], target: dict[str, Any]) -> str | None:
    """ready | shifting | terminating | succeeded, or None while green is still starting."""
    status = info.get("status")
    if status == "Succeeded":
        return "succeeded"
    if info.get("instanceTerminationWaitTimeStarted"):
        return "terminating"
    events = {e["lifecycleEventName"]: e.get("status") for e in target.get("lifecycleEvents", [])}
    if events.get("AllowTraffic") in ("InProgress", "Succeeded") or events.get("BeforeAllowTraffic") == "Succeeded":
        return "shifting"
    if status == "Ready":
        return "ready"
    return None


@task(name="wait ready", task_run_name="wait ready {cfg.name}", **STAGE)
def wait_ready(cfg: ServiceConfig, clients: AwsClients, dep: Deployment) -> str:
    """Until green runs behind the test listener (Ready), or later when resuming."""
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

    phase = poll(check, timeout=budget(cfg, cfg.timeouts.green_healthy_seconds),
                 what=f"deployment {dep.id} to be Ready", log=log.info, cap=clients.settings.poll_cap())
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


@task(name="continue to production", task_run_name="continue to production {cfg.name}", **STAGE)
def continue_to_production(cfg: ServiceConfig, clients: AwsClients, dep: Deployment) -> None:
    """ContinueDeployment(READY_WAIT): CodeDeploy starts moving production to green."""
    cd = clients.get("codedeploy")
    info = describe(cd, dep.id)
    raise_if_ended(cfg, info)
    if info["status"] != "Ready":
        get_run_logger().info("deployment %s already continued (%s)", dep.id, info["status"])
        return
    try:
        cd.continue_deployment(deploymentId=dep.id, deploymentWaitType="READY_WAIT")
    except ClientError as exc:
        if exc.response["Error"]["Code"] != "DeploymentIsNotInReadyStateException":
            raise
    get_run_logger().info("deployment %s continued to production (%s)", dep.id, dep.config_name)


@dataclass(frozen=True)
class Watch:
    """What a watch loop looks at: the deployment, alarms and green's share of production."""

    dep: Deployment
    production_listener: str
    green_target_group: str


def _look(cfg: ServiceConfig, clients: AwsClients, watch: Watch, what: str) -> tuple[dict[str, Any], int]:
    """(deployment info, green's production weight); fails on an ended deployment or an alarm."""
    info = describe(clients.get("codedeploy"), watch.dep.id)
    raise_if_ended(cfg, info)
    firing = verify.alarms_firing(clients.get("cloudwatch"), cfg.verify.alarms)
    if firing:
        raise VerifyFailed(f"alarm in ALARM during {what}: {'; '.join(firing)}", service=cfg.name,
                           deployment_id=watch.dep.id)
    weights = traffic.get_weights(clients.get("elbv2"), watch.production_listener)
    return info, weights.get(watch.green_target_group, 0)


@task(name="watch shift", task_run_name="watch shift {cfg.name}", **STAGE)
def watch_shift(
    cfg: ServiceConfig, clients: AwsClients, watch: Watch, on_step: Callable[[int], None]
) -> None:
    """Follow CodeDeploy's production shift until blue's termination wait starts."""
    log = get_run_logger()
    seen = [-1]
    minutes = shift_minutes(clients.get("codedeploy"), watch.dep.config_name)

    def check() -> str | None:
        info, weight = _look(cfg, clients, watch, "the traffic shift")
        if weight != seen[0] and weight > 0:
            seen[0] = weight
            log.info("production: %d%% green", weight)
            on_step(weight)
        done = info["status"] == "Succeeded" or info.get("instanceTerminationWaitTimeStarted")
        return str(info["status"]) if done else None

    poll(check, timeout=budget(cfg, clients.settings.scaled(minutes * 60)), what=f"deployment {watch.dep.id} "
         "to move production to green", log=log.info, cap=clients.settings.poll_cap())
    if seen[0] != 100:
        on_step(100)


@task(name="bake", task_run_name="bake {cfg.name}", **STAGE)
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
    deadline = time.monotonic() + clients.settings.scaled(seconds)
    while True:
        info, _ = _look(cfg, clients, watch, "the bake")
        left = deadline - time.monotonic()
        if left <= 0 or info["status"] == "Succeeded":
            return
        time.sleep(min(left, clients.settings.poll_cap()))


@task(name="finish", task_run_name="finish {cfg.name}", **STAGE)
def finish(cfg: ServiceConfig, clients: AwsClients, dep: Deployment) -> None:
    """ContinueDeployment(TERMINATION_WAIT): CodeDeploy removes blue; done when Succeeded."""
    cd = clients.get("codedeploy")
    info = describe(cd, dep.id)
    if info["status"] != "Succeeded" and info.get("instanceTerminationWaitTimeStarted"):
        try:
            cd.continue_deployment(deploymentId=dep.id, deploymentWaitType="TERMINATION_WAIT")
        except ClientError as exc:
            if exc.response["Error"]["Code"] not in (
                "InvalidDeploymentStatusException", "DeploymentAlreadyCompletedException"
            ):
                raise

    def check() -> str | None:
        now = describe(cd, dep.id)
        raise_if_ended(cfg, now)
        return "done" if now["status"] == "Succeeded" else None

    poll(check, timeout=budget(cfg, clients.settings.scaled(dep.group.termination_wait_minutes * 60)),
         what=f"deployment {dep.id} to remove blue", log=get_run_logger().info, cap=clients.settings.poll_cap())
    get_run_logger().info("deployment %s Succeeded: blue removed", dep.id)


@dataclass(frozen=True)
class Ended:
    """How a rolled-back deployment ended, in CodeDeploy's words, and who stopped it."""

    text: str
    stopped_here: bool
    on_blue: bool = True


@task(name="roll back", task_run_name="roll back {cfg.name}", **STAGE)
def roll_back(cfg: ServiceConfig, clients: AwsClients, dep: Deployment) -> Ended:
    """StopDeployment with CodeDeploy's rollback (unless CodeDeploy already ended it) and wait."""
    log = get_run_logger()
    cd = clients.get("codedeploy")
    stopped_here = False
    if describe(cd, dep.id)["status"] not in ENDED:
        try:
            cd.stop_deployment(deploymentId=dep.id, autoRollbackEnabled=True)
            stopped_here = True
            log.info("deployment %s stopped with rollback", dep.id)
        except ClientError as exc:
            if exc.response["Error"]["Code"] != "DeploymentAlreadyCompletedException":
                raise
    wait = budget(cfg, clients.settings.scaled(dep.group.termination_wait_minutes * 60))
    info = poll(lambda: ended(cd, dep.id), timeout=wait, what=f"deployment {dep.id} to stop",
                log=log.info, cap=clients.settings.poll_cap())
    rollback_id = (info.get("rollbackInfo") or {}).get("rollbackDeploymentId")
    if rollback_id:
        done = poll(lambda: ended(cd, rollback_id), timeout=wait,
                    what=f"rollback deployment {rollback_id}", log=log.info, cap=clients.settings.poll_cap())
        log.info("rollback deployment %s %s", rollback_id, done["status"])
    if info["status"] == "Succeeded":
        text = f"CodeDeploy deployment {dep.id} had already Succeeded: production stays on green"
        return Ended(text, stopped_here, on_blue=False)
    return Ended(error_text(info), stopped_here)
