"""CodeDeploy operations moto lacks (ContinueDeployment, StopDeployment, targets,
deployment configs) and the fields its responses leave empty.

Shapes and error codes follow botocore's CodeDeploy service model.
"""

from __future__ import annotations

import hashlib
import uuid
from collections.abc import Callable
from datetime import datetime
from typing import TYPE_CHECKING, Any

from moto.codedeploy.models import DeploymentGroup, DeploymentInfo

from .codedeploy import DONE, Play
from .codedeploy_configs import CUSTOM_CONFIGS, PREDEFINED, epoch
from .ecr_api import ApiError
from .world import codedeploy

if TYPE_CHECKING:
    from .codedeploy import CodeDeployController

UPDATABLE = {
    "deploymentConfigName": "deployment_config_name", "serviceRoleArn": "service_role_arn",
    "alarmConfiguration": "alarm_configuration", "autoRollbackConfiguration": "auto_rollback_configuration",
    "deploymentStyle": "deployment_style", "loadBalancerInfo": "load_balancer_info",
    "blueGreenDeploymentConfiguration": "blue_green_deployment_configuration",
    "ecsServices": "ecs_services", "triggerConfigurations": "trigger_configurations",
}
_orig_dep_to_dict = DeploymentInfo.to_dict
_orig_group_to_dict = DeploymentGroup.to_dict


def _answered_revision(revision: Any) -> Any:
    """The revision as GetDeployment answers it: "The content property of the appSpecContent object in
    the returned revision is always null" (botocore's GetDeployment documentation); its sha256 stays."""
    if not isinstance(revision, dict) or not isinstance(revision.get("appSpecContent"), dict):
        return revision
    spec = dict(revision["appSpecContent"])
    content = spec.pop("content", None)
    if content and not spec.get("sha256"):
        spec["sha256"] = hashlib.sha256(str(content).encode()).hexdigest()
    return {**revision, "appSpecContent": spec}


def _dep_to_dict(self: DeploymentInfo) -> dict[str, Any]:
    out = _orig_dep_to_dict(self)
    out["revision"] = _answered_revision(out.get("revision"))
    out["errorInformation"] = getattr(self, "error_information", None) or {}
    out["rollbackInfo"] = getattr(self, "rollback_info", None) or {}
    out["instanceTerminationWaitTimeStarted"] = bool(self.instance_termination_wait_time_started)
    out["deploymentConfigName"] = str(self.deployment_config_name or "CodeDeployDefault.ECSAllAtOnce")
    out["createTime"] = _as_epoch(out.get("createTime"))  # moto writes an ISO string; AWS an epoch
    return {k: v for k, v in out.items() if v is not None}


def _as_epoch(value: Any) -> Any:
    if isinstance(value, str):
        try:
            return datetime.fromisoformat(value.replace("Z", "+00:00")).timestamp()
        except ValueError:
            return value
    return value


def _last(group: DeploymentGroup, statuses: tuple[str, ...]) -> dict[str, Any]:
    """The group's newest deployment in one of STATUSES, as lastSuccessful/AttemptedDeployment shows it."""
    mine = [d for d in codedeploy().deployments.values()
            if d.deployment_group_name == group.deployment_group_name
            and d.application_name == group.application.application_name and d.status in statuses]
    if not mine:
        return {}
    dep = max(mine, key=lambda d: _as_epoch(d.create_time) or 0)
    return {"deploymentId": dep.deployment_id, "status": dep.status,
            "endTime": dep.complete_time, "createTime": _as_epoch(dep.create_time)}


def _group_to_dict(self: DeploymentGroup) -> dict[str, Any]:
    out = _orig_group_to_dict(self)
    alarms = self.alarm_configuration
    out["alarmConfiguration"] = alarms if isinstance(alarms, dict) else {}
    out["lastSuccessfulDeployment"] = _last(self, ("Succeeded",))
    out["lastAttemptedDeployment"] = _last(self, ("Succeeded", "Failed", "Stopped"))
    return {k: v for k, v in out.items() if v is not None}


def install_patches() -> None:
    DeploymentInfo.to_dict = _dep_to_dict  # type: ignore[method-assign]
    DeploymentGroup.to_dict = _group_to_dict  # type: ignore[method-assign]


class CodeDeployApi:
    """Handlers for the middleware; each returns the response dict or None (moto answers)."""

    def __init__(self, ctl: CodeDeployController) -> None:
        self.ctl = ctl

    def handlers(self) -> dict[str, Callable[[dict[str, Any]], dict[str, Any] | None]]:
        return {
            "ContinueDeployment": self.continue_deployment,
            "PutLifecycleEventHookExecutionStatus": self.ctl.hooks.put_status,
            "StopDeployment": self.stop_deployment,
            "ListDeploymentTargets": self.list_deployment_targets,
            "GetDeploymentTarget": self.get_deployment_target,
            "BatchGetDeploymentTargets": self.batch_get_deployment_targets,
            "CreateDeploymentConfig": self.create_deployment_config,
            "GetDeploymentConfig": self.get_deployment_config,
            "ListDeploymentConfigs": self.list_deployment_configs,
            "DeleteDeploymentConfig": self.delete_deployment_config,
            "CreateDeployment": self.check_create_deployment,
            "UpdateDeploymentGroup": self.update_deployment_group,
            "DeleteDeploymentGroup": self.delete_deployment_group,
            "DeleteApplication": self.delete_application,
        }

    def hooks_control(self, method: str, spec: dict[str, Any]) -> dict[str, Any]:
        """/_sandbox/hooks: POST models a hook function (delay and answer), GET lists them and invocations."""
        if method == "POST":
            return {"hook": self.ctl.hooks.configure(spec)}
        return self.ctl.hooks.listing()

    def _play(self, params: dict[str, Any]) -> Play:
        dep_id = params.get("deploymentId")
        if not dep_id:
            raise ApiError("DeploymentIdRequiredException", "The deployment ID was not specified.")
        dep = codedeploy().deployments.get(dep_id)
        if dep is None:
            raise ApiError("DeploymentDoesNotExistException",
                           f"The deployment {dep_id} could not be found.")
        return self.ctl.plays.setdefault(dep_id, Play(dep=dep))

    def continue_deployment(self, params: dict[str, Any]) -> dict[str, Any]:
        play = self._play(params)
        wait = params.get("deploymentWaitType") or "READY_WAIT"
        if wait not in ("READY_WAIT", "TERMINATION_WAIT"):
            raise ApiError("InvalidDeploymentWaitTypeException", f"Invalid wait type {wait}.")
        if play.dep.status in DONE:
            raise ApiError("DeploymentAlreadyCompletedException",
                           f"The deployment {play.dep.deployment_id} has already completed.")
        if wait == "READY_WAIT" and play.phase != "ready_wait":
            raise ApiError("DeploymentIsNotInReadyStateException",
                           f"The deployment {play.dep.deployment_id} is not in the Ready state.")
        if wait == "TERMINATION_WAIT" and play.phase != "bake":
            raise ApiError("InvalidDeploymentStatusException",
                           f"The deployment {play.dep.deployment_id} is not waiting for the "
                           f"termination of the original task set.")
        play.continued.add(wait)
        self.ctl.tick_one(play)
        return {}

    def stop_deployment(self, params: dict[str, Any]) -> dict[str, Any]:
        play = self._play(params)
        if play.dep.status in DONE:
            raise ApiError("DeploymentAlreadyCompletedException",
                           f"The deployment {play.dep.deployment_id} has already completed.")
        rollback = bool(params.get("autoRollbackEnabled"))
        self.ctl.stop(play, "MANUAL_STOP", "The deployment was stopped by a user request"
                      + (" and rolled back." if rollback else "."), rollback=rollback)
        return {"status": "Succeeded", "statusMessage": "The deployment was stopped."}

    def _target(self, params: dict[str, Any]) -> dict[str, Any]:
        play = self._play(params)
        if play.service is None:
            raise ApiError("DeploymentNotStartedException",
                           f"The deployment {play.dep.deployment_id} has not started.")
        return self.ctl.target(play)

    def list_deployment_targets(self, params: dict[str, Any]) -> dict[str, Any]:
        return {"targetIds": [self._target(params)["targetId"]]}

    def get_deployment_target(self, params: dict[str, Any]) -> dict[str, Any]:
        target = self._target(params)
        if params.get("targetId") and params["targetId"] != target["targetId"]:
            raise ApiError("DeploymentTargetDoesNotExistException",
                           f"The target {params['targetId']} does not exist in the deployment.")
        return {"deploymentTarget": {"deploymentTargetType": "ECSTarget", "ecsTarget": target}}

    def batch_get_deployment_targets(self, params: dict[str, Any]) -> dict[str, Any]:
        target = self._target(params)
        return {"deploymentTargets": [{"deploymentTargetType": "ECSTarget", "ecsTarget": target}]}

    def create_deployment_config(self, params: dict[str, Any]) -> dict[str, Any]:
        name = params.get("deploymentConfigName")
        if not name:
            raise ApiError("DeploymentConfigNameRequiredException", "Deployment config name is required.")
        if name in CUSTOM_CONFIGS or name in PREDEFINED:
            raise ApiError("DeploymentConfigAlreadyExistsException",
                           f"The deployment configuration {name} already exists.")
        routing = params.get("trafficRoutingConfig") or {"type": "AllAtOnce"}
        if routing.get("type") not in ("AllAtOnce", "TimeBasedCanary", "TimeBasedLinear"):
            raise ApiError("InvalidTrafficRoutingConfigurationException", "Invalid traffic routing type.")
        config_id = str(uuid.uuid4())
        CUSTOM_CONFIGS[name] = {
            "deploymentConfigId": config_id, "deploymentConfigName": name, "createTime": epoch(),
            "computePlatform": params.get("computePlatform") or "Server",
            "trafficRoutingConfig": routing,
            **({"minimumHealthyHosts": params["minimumHealthyHosts"]} if params.get("minimumHealthyHosts") else {}),
        }
        return {"deploymentConfigId": config_id}

    def get_deployment_config(self, params: dict[str, Any]) -> dict[str, Any]:
        name = params.get("deploymentConfigName") or ""
        if name in CUSTOM_CONFIGS:
            return {"deploymentConfigInfo": CUSTOM_CONFIGS[name]}
        if name in PREDEFINED:
            return {"deploymentConfigInfo": {
                "deploymentConfigId": str(uuid.uuid5(uuid.NAMESPACE_DNS, name)),
                "deploymentConfigName": name, "computePlatform": "ECS",
                "trafficRoutingConfig": PREDEFINED[name]}}
        raise ApiError("DeploymentConfigDoesNotExistException",
                       f"The deployment configuration {name} does not exist.")

    def list_deployment_configs(self, params: dict[str, Any]) -> dict[str, Any]:
        return {"deploymentConfigsList": sorted(list(PREDEFINED) + list(CUSTOM_CONFIGS))}

    def delete_deployment_config(self, params: dict[str, Any]) -> dict[str, Any]:
        name = params.get("deploymentConfigName") or ""
        if name in PREDEFINED:
            raise ApiError("InvalidOperationException", "Predefined configurations cannot be deleted.")
        CUSTOM_CONFIGS.pop(name, None)
        return {}

    def update_deployment_group(self, params: dict[str, Any]) -> dict[str, Any]:
        backend = codedeploy()
        app, name = params.get("applicationName", ""), params.get("currentDeploymentGroupName", "")
        group = self._group(app, name)
        for key, attr in UPDATABLE.items():
            if key in params:
                setattr(group, attr, params[key])
        new_name = params.get("newDeploymentGroupName")
        if new_name and new_name != name:
            backend.deployment_groups[app][new_name] = backend.deployment_groups[app].pop(name)
            group.deployment_group_name = new_name
        return {"hooksNotCleanedUp": []}

    def delete_deployment_group(self, params: dict[str, Any]) -> dict[str, Any]:
        app, name = params.get("applicationName", ""), params.get("deploymentGroupName", "")
        self._group(app, name)
        codedeploy().deployment_groups[app].pop(name, None)
        return {"hooksNotCleanedUp": []}

    def delete_application(self, params: dict[str, Any]) -> dict[str, Any]:
        backend = codedeploy()
        app = params.get("applicationName", "")
        backend.applications.pop(app, None)
        backend.deployment_groups.pop(app, None)
        return {}

    @staticmethod
    def _group(app: str, name: str) -> Any:
        backend = codedeploy()
        if app not in backend.applications:
            raise ApiError("ApplicationDoesNotExistException", f"No application found for name: {app}")
        group = backend.deployment_groups.get(app, {}).get(name)
        if group is None:
            raise ApiError("DeploymentGroupDoesNotExistException",
                           f"No Deployment Group found for name: {name}")
        return group

    def check_create_deployment(self, params: dict[str, Any]) -> dict[str, Any] | None:
        """One live deployment per group, like CodeDeploy; otherwise moto creates it."""
        config = params.get("deploymentConfigName")
        if config and config not in PREDEFINED and config not in CUSTOM_CONFIGS \
                and not config.startswith("CodeDeployDefault."):
            raise ApiError("DeploymentConfigDoesNotExistException",
                           f"The deployment configuration {config} does not exist.")
        for dep in codedeploy().deployments.values():
            if (dep.application_name == params.get("applicationName")
                    and dep.deployment_group_name == params.get("deploymentGroupName")
                    and dep.status not in DONE):
                raise ApiError("DeploymentLimitExceededException",
                               f"The Deployment Group '{dep.deployment_group_name}' already has an "
                               f"active Deployment '{dep.deployment_id}'")
        return None
