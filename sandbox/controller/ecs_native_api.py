"""ECS service-deployment operations moto lacks, answered from the native controller.

ListServiceDeployments, DescribeServiceDeployments, StopServiceDeployment,
ContinueServiceDeployment and DescribeServiceRevisions, in botocore's shapes
and with ECS's error codes.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from .ecr_api import ApiError
from .ecs_native_model import ENDED, ServiceDeployment
from .world import ecs, now

if TYPE_CHECKING:
    from .ecs_native import NativeController

Handler = Callable[[dict[str, Any]], "dict[str, Any] | None"]


def _service(params: dict[str, Any]) -> Any:
    from moto.ecs.exceptions import ClusterNotFoundException, ServiceNotFoundException

    name = str(params.get("service") or "").split("/")[-1]
    cluster = str(params.get("cluster") or "default").split("/")[-1]
    try:
        return ecs()._get_service(cluster, name)
    except ClusterNotFoundException as exc:
        raise ApiError("ClusterNotFoundException", "Cluster not found.") from exc
    except ServiceNotFoundException as exc:
        raise ApiError("ServiceNotFoundException", "Service not found.") from exc


def _brief(dep: ServiceDeployment) -> dict[str, Any]:
    out: dict[str, Any] = {"serviceDeploymentArn": dep.arn, "serviceArn": dep.service_arn,
                           "clusterArn": dep.cluster_arn, "createdAt": dep.created,
                           "targetServiceRevisionArn": dep.target.arn, "status": dep.status}
    if dep.started is not None:
        out["startedAt"] = dep.started
    if dep.finished is not None:
        out["finishedAt"] = dep.finished
    if dep.reason:
        out["statusReason"] = dep.reason
    return out


class NativeApi:
    """Handlers for the middleware; each returns the answer dict (ApiError for ECS's errors)."""

    def __init__(self, ctl: NativeController) -> None:
        self.ctl = ctl

    def handlers(self) -> dict[str, Handler]:
        return {
            "ListServiceDeployments": self.list_service_deployments,
            "DescribeServiceDeployments": self.describe_service_deployments,
            "StopServiceDeployment": self.stop_service_deployment,
            "ContinueServiceDeployment": self.continue_service_deployment,
            "DescribeServiceRevisions": self.describe_service_revisions,
        }

    def _deployment(self, params: dict[str, Any]) -> ServiceDeployment:
        arn = str(params.get("serviceDeploymentArn") or "")
        dep = self.ctl.deployments.get(arn)
        if dep is None:
            raise ApiError("ServiceDeploymentNotFoundException",
                           f"The service deployment {arn} does not exist.")
        return dep

    def list_service_deployments(self, params: dict[str, Any]) -> dict[str, Any]:
        service = _service(params)
        wanted = set(params.get("status") or [])
        created = params.get("createdAt") or {}
        deps = [d for d in self.ctl.for_service(f"{service.cluster_name}:{service.name}")
                if d.visible_at <= now()  # a new deployment is listed only after a while (LIST_LAG_SECONDS)
                and (not wanted or d.status in wanted)
                and (created.get("after") is None or d.created >= float(created["after"]))
                and (created.get("before") is None or d.created <= float(created["before"]))]
        deps.sort(key=lambda d: d.created, reverse=True)  # newest first, as ECS lists them
        start = int(params.get("nextToken") or 0)
        size = int(params.get("maxResults") or 20)
        out: dict[str, Any] = {"serviceDeployments": [_brief(d) for d in deps[start:start + size]]}
        if start + size < len(deps):
            out["nextToken"] = str(start + size)
        return out

    def describe_service_deployments(self, params: dict[str, Any]) -> dict[str, Any]:
        found, failures = [], []
        for arn in params.get("serviceDeploymentArns") or []:
            dep = self.ctl.deployments.get(arn)
            if dep is None:
                failures.append({"arn": arn, "reason": "MISSING", "detail": "The service deployment does not exist."})
                continue
            found.append(self._full(dep))
        return {"serviceDeployments": found, "failures": failures}

    def _full(self, dep: ServiceDeployment) -> dict[str, Any]:
        out = _brief(dep)
        out.pop("targetServiceRevisionArn")
        out["updatedAt"] = dep.updated
        if dep.stopped is not None:
            out["stoppedAt"] = dep.stopped
        out["sourceServiceRevisions"] = [self.ctl.summary(dep, r) for r in dep.sources]
        out["targetServiceRevision"] = self.ctl.summary(dep, dep.target)
        out["lifecycleStage"] = dep.stage
        if dep.hooks:
            out["lifecycleHookDetails"] = [h.shape() for h in dep.hooks]
        out["deploymentConfiguration"] = dep.config
        if dep.rollback:
            out["rollback"] = dict(dep.rollback)
        if dep.breaker:
            out["deploymentCircuitBreaker"] = dict(dep.breaker)
        if dep.alarms:
            out["alarms"] = dict(dep.alarms)
        return out

    def _service_of(self, dep: ServiceDeployment) -> Any:
        cluster, name = dep.service_key.split(":", 1)
        return ecs()._get_service(cluster, name)

    def stop_service_deployment(self, params: dict[str, Any]) -> dict[str, Any]:
        dep = self._deployment(params)
        stop_type = str(params.get("stopType") or "ROLLBACK")
        if stop_type not in ("ROLLBACK", "ABORT"):
            raise ApiError("InvalidParameterException", f"stopType {stop_type} is not ROLLBACK or ABORT.")
        if dep.status in ENDED or dep.status.startswith("ROLLBACK") or dep.stage == "CLEAN_UP":
            raise ApiError("ConflictException", f"The service deployment {dep.arn} is {dep.status} in "
                           f"{dep.stage} and cannot be stopped.")
        self.ctl.stop(self._service_of(dep), dep, stop_type)
        return {"serviceDeploymentArn": dep.arn}

    def continue_service_deployment(self, params: dict[str, Any]) -> dict[str, Any]:
        dep = self._deployment(params)
        action = str(params.get("action") or "CONTINUE")
        if action not in ("CONTINUE", "ROLLBACK"):
            raise ApiError("InvalidParameterException", f"action {action} is not CONTINUE or ROLLBACK.")
        hook_id = str(params.get("hookId") or "")
        if dep.status != "IN_PROGRESS" or not self.ctl.continue_hook(self._service_of(dep), dep, hook_id, action):
            waiting = [h.hook_id for h in dep.hooks if h.status == "AWAITING_ACTION"]
            raise ApiError("InvalidParameterException",
                           f"The service deployment {dep.arn} ({dep.status}, {dep.stage}) has no lifecycle hook "
                           f"{hook_id} awaiting action (awaiting: {', '.join(waiting) or 'none'}).")
        return {"serviceDeploymentArn": dep.arn}

    def describe_service_revisions(self, params: dict[str, Any]) -> dict[str, Any]:
        found, failures = [], []
        for arn in params.get("serviceRevisionArns") or []:
            rev = self.ctl.revisions.get(arn)
            if rev is None:
                failures.append({"arn": arn, "reason": "MISSING", "detail": "The service revision does not exist."})
                continue
            found.append({
                "serviceRevisionArn": rev.arn, "serviceArn": rev.service_arn, "clusterArn": rev.cluster_arn,
                "taskDefinition": rev.task_definition, "launchType": rev.launch_type,
                "platformFamily": "Linux", "loadBalancers": rev.load_balancers, "createdAt": rev.created,
                "resolvedConfiguration": {"loadBalancers": [
                    {"targetGroupArn": rev.target_group,
                     "productionListenerRule": (lb.get("advancedConfiguration") or {}).get(
                         "productionListenerRule", "")} for lb in rev.load_balancers[:1]]},
            })
        return {"serviceRevisions": found, "failures": failures}

