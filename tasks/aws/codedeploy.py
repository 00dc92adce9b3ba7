"""A CodeDeploy deployment group and its deployments, as the pipeline reads them.

What a deployment group says about waiting, which deployments are in flight,
how one ended, and which phase of the ECS blue/green lifecycle it is in: the
reads the CodeDeploy strategy's stages decide from.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from functools import partial
from typing import Any
from urllib.parse import urlsplit

from botocore.exceptions import ClientError
from prefect import get_run_logger

from tasks.aws.clients import AwsClients
from tasks.aws.errors import error_code
from tasks.config import appspec as appspec_mod
from tasks.config.models import ServiceConfig, Traffic
from tasks.core.errors import ConfigError, Conflict, DeployError
from tasks.core.settings import Settings
from tasks.core.waits import poll

ACTIVE = ["Created", "Queued", "InProgress", "Baking", "Ready"]
ENDED = ("Succeeded", "Failed", "Stopped")

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


# Endpoint hosts that are AWS's own (regional, FIPS, dual-stack): their resources are in the AWS console.
AWS_HOSTS = (".amazonaws.com", ".api.aws")


def aws_console(where: Settings | str) -> str | None:
    """The AWS console of WHERE's region, or None when its AWS endpoint is not AWS (the sandbox has no console).

    WHERE: the settings, or a region name (always AWS).
    """
    if isinstance(where, str):
        return f"https://{where}.console.aws.amazon.com"
    host = urlsplit(where.endpoint_url or "").hostname or ""
    if where.endpoint_url and not host.lower().endswith(AWS_HOSTS):
        return None
    return f"https://{where.region}.console.aws.amazon.com"


def console_url(where: Settings | str, deployment_id: str) -> str:
    """The deployment's page in the AWS console; "" when there is no console (see ``aws_console``)."""
    console = aws_console(where)
    region = where if isinstance(where, str) else where.region
    return f"{console}/codesuite/codedeploy/deployments/{deployment_id}?region={region}" if console else ""


def console_link(text: str, url: str) -> str:
    """TEXT linked to URL in markdown; TEXT as code when there is no console to link."""
    return f"[{text}]({url})" if url else f"`{text}`"


def group_settings(cfg: ServiceConfig, cd: Any) -> GroupSettings:
    try:
        info = cd.get_deployment_group(
            applicationName=cfg.codedeploy_application, deploymentGroupName=cfg.codedeploy_group
        )["deploymentGroupInfo"]
    except ClientError as exc:
        code = error_code(exc)
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
    name, routing = deployment_config(cfg.strategy.traffic)
    if name.startswith(appspec_mod.OWN_CONFIG_PREFIX):
        try:
            cd.create_deployment_config(
                deploymentConfigName=name, computePlatform="ECS", trafficRoutingConfig=routing
            )
        except ClientError as exc:
            if error_code(exc) != "DeploymentConfigAlreadyExistsException":
                raise
    return name


def create_deployment(cfg: ServiceConfig, cd: Any, config: str, revision: dict[str, Any], description: str) -> str:
    """CreateDeployment in the service's group; Conflict when another deployment took the group meanwhile."""
    try:
        return str(cd.create_deployment(
            applicationName=cfg.codedeploy_application,
            deploymentGroupName=cfg.codedeploy_group,
            deploymentConfigName=config,
            revision=revision,
            description=description,
        )["deploymentId"])
    except ClientError as exc:
        code = error_code(exc)
        if code == "DeploymentLimitExceededException":
            raise Conflict(
                f"another deployment started in group {cfg.codedeploy_group} meanwhile: "
                f"{exc.response['Error'].get('Message', code)}",
                service=cfg.name,
            ) from exc
        raise


# What ContinueDeployment answers when the deployment is already past the wait it names.
PAST_THE_WAIT = {
    "READY_WAIT": ("DeploymentIsNotInReadyStateException",),
    "TERMINATION_WAIT": ("InvalidDeploymentStatusException", "DeploymentAlreadyCompletedException"),
}


def continue_deployment(cd: Any, deployment_id: str, wait_type: str) -> bool:
    """ContinueDeployment past WAIT_TYPE; False when the deployment is already past it."""
    try:
        cd.continue_deployment(deploymentId=deployment_id, deploymentWaitType=wait_type)
    except ClientError as exc:
        if error_code(exc) not in PAST_THE_WAIT[wait_type]:
            raise
        return False
    return True


def stop_deployment(cd: Any, deployment_id: str) -> bool:
    """StopDeployment with CodeDeploy's rollback; False when the deployment had already completed."""
    try:
        cd.stop_deployment(deploymentId=deployment_id, autoRollbackEnabled=True)
    except ClientError as exc:
        if error_code(exc) != "DeploymentAlreadyCompletedException":
            raise
        return False
    return True


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


def deployed_task_definition(cd: Any, deployment_id: str, task_sets: list[dict[str, Any]]) -> str | None:
    """The task definition a deployment installs: its replacement (Green) task set's, among TASK_SETS
    (the service's, from DescribeServices); None before CodeDeploy created that task set.

    Never the revision GetDeployment returns: "The content property of the appSpecContent object in
    the returned revision is always null" (GetDeployment's API documentation).
    """
    for info in lifecycle(cd, deployment_id).get("taskSetsInfo", []):
        ident = str(info.get("identifer") or "")  # sic: the API's spelling
        if str(info.get("taskSetLabel", "")).lower() != "green" or not ident:
            continue
        for ts in task_sets:
            if ts.get("id") == ident or str(ts.get("taskSetArn", "")).endswith(f"/{ident}"):
                return str(ts["taskDefinition"])
    return None


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


def wait_for_others(
    cfg: ServiceConfig, clients: AwsClients, others: list[dict[str, Any]], task_sets: list[dict[str, Any]]
) -> None:
    """Never race another deployment of the group: wait a bounded time for it, then fail naming it."""
    log = get_run_logger()
    cd = clients.get("codedeploy")
    for other in others:
        dep_id = other["deploymentId"]
        what = deployed_task_definition(cd, dep_id, task_sets) or "another revision"
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


def lifecycle(cd: Any, deployment_id: str) -> dict[str, Any]:
    """The ECS target of a deployment (lifecycle events, task sets), or {} before it starts."""
    try:
        ids = cd.list_deployment_targets(deploymentId=deployment_id).get("targetIds", [])
        if not ids:
            return {}
        found = cd.get_deployment_target(deploymentId=deployment_id, targetId=ids[0])
    except ClientError as exc:
        if error_code(exc) in ("DeploymentNotStartedException",):
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
    # production moves from BeforeAllowTraffic's hook on (it may hold that event for up to an hour)
    if events.get("AllowTraffic") in ("InProgress", "Succeeded") or events.get("BeforeAllowTraffic") in (
        "InProgress", "Succeeded"
    ):
        return "shifting"
    if status == "Ready":
        return "ready"
    return None


def deployment_config(traffic: Traffic) -> tuple[str, dict[str, Any]]:
    """(deployment config name, trafficRoutingConfig) for a traffic policy; minutes round up."""
    if traffic.type == "all-at-once" or traffic.percent is None:
        return "CodeDeployDefault.ECSAllAtOnce", {"type": "AllAtOnce"}
    minutes = max(1, math.ceil((traffic.interval_seconds or 0) / 60))
    if traffic.type == "canary":
        name = f"{appspec_mod.OWN_CONFIG_PREFIX}ECSCanary{traffic.percent}Percent{minutes}Minutes"
        shape = {"canaryPercentage": traffic.percent, "canaryInterval": minutes}
        return name, {"type": "TimeBasedCanary", "timeBasedCanary": shape}
    name = f"{appspec_mod.OWN_CONFIG_PREFIX}ECSLinear{traffic.percent}PercentEvery{minutes}Minutes"
    shape = {"linearPercentage": traffic.percent, "linearInterval": minutes}
    return name, {"type": "TimeBasedLinear", "timeBasedLinear": shape}
