"""AppSpec lifecycle hooks of CodeDeploy ECS deployments: invoked, waited for, timed out.

CodeDeploy invokes the Lambda function an appspec names for a lifecycle event
and then waits until someone calls PutLifecycleEventHookExecutionStatus with
that execution's id, Succeeded or Failed. The sandbox runs no Lambda: a hook
function is modelled by ``/_sandbox/hooks`` (``{"function": name, "seconds":
AWS seconds (time-scaled), "status": "Succeeded" | "Failed" | null}``; null
never reports, so a test reports through the API itself). A function nobody
configured reports Succeeded at once. A hook nobody reports fails the
deployment after HOOK_TIMEOUT_SECONDS (time-scaled).
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from typing import Any

from .ecr_api import ApiError
from .world import codedeploy, now, scaled

# CodeDeploy documents no other limit for an ECS hook; one hour is its longest lifecycle-hook timeout.
HOOK_TIMEOUT_SECONDS = 3600.0
REPORTABLE = ("Succeeded", "Failed")


def function_name(function: str) -> str:
    """`name` of `name`, `name:alias` or `arn:aws:lambda:<region>:<account>:function:name[:alias]`."""
    return function.split(":function:")[-1].split(":")[0]


@dataclass
class HookRun:
    """One invocation of a hook's function, as the function sees it (its event payload) and after."""

    execution_id: str
    deployment_id: str
    event: str
    function: str
    deadline: float
    report_at: float | None
    report_status: str | None
    status: str = "InProgress"

    def payload(self) -> dict[str, Any]:
        return {"DeploymentId": self.deployment_id, "LifecycleEventHookExecutionId": self.execution_id,
                "lifecycleEvent": self.event, "function": self.function, "status": self.status}


class Hooks:
    """Hook invocations of every deployment, and how each modelled function behaves."""

    def __init__(self) -> None:
        self.behaviours: dict[str, dict[str, Any]] = {}
        self.runs: dict[str, HookRun] = {}

    def configure(self, spec: dict[str, Any]) -> dict[str, Any]:
        name = function_name(str(spec.get("function") or ""))
        if not name:
            raise ValueError("a hook needs 'function' (the Lambda name or ARN the appspec names)")
        status = spec.get("status", "Succeeded")
        if status is not None and status not in REPORTABLE:
            raise ValueError("status must be Succeeded, Failed or null (never reports)")
        self.behaviours[name] = {"function": name, "seconds": float(spec.get("seconds") or 0), "status": status}
        return self.behaviours[name]

    def listing(self) -> dict[str, Any]:
        return {"functions": list(self.behaviours.values()),
                "invocations": [r.payload() for r in self.runs.values()]}

    def status(self, deployment_id: str, hooks: dict[str, str], event: str) -> str | None:
        """Succeeded, Failed or TimedOut once EVENT's hook is over (Succeeded without one); None meanwhile."""
        function = hooks.get(event)
        if not function:
            return "Succeeded"  # "If an event hook is not present, no operation is executed for that event."
        run = next((r for r in self.runs.values()
                    if r.deployment_id == deployment_id and r.event == event), None)
        if run is None:
            run = self._invoke(deployment_id, event, function)
        if run.status in REPORTABLE:
            return run.status
        if run.report_at is not None and now() >= run.report_at and run.report_status:
            run.status = run.report_status
            return run.status
        if now() >= run.deadline:
            run.status = "Failed"
            return "TimedOut"
        return None

    def _invoke(self, deployment_id: str, event: str, function: str) -> HookRun:
        behaviour = self.behaviours.get(function_name(function), {"seconds": 0.0, "status": "Succeeded"})
        status = behaviour["status"]
        run = HookRun(str(uuid.uuid4()), deployment_id, event, function,
                      deadline=now() + scaled(HOOK_TIMEOUT_SECONDS, floor=1.0),
                      report_at=now() + scaled(behaviour["seconds"], floor=0.0) if status else None,
                      report_status=status)
        self.runs[run.execution_id] = run
        return run

    def put_status(self, params: dict[str, Any]) -> dict[str, Any]:
        """PutLifecycleEventHookExecutionStatus: a hook's function reports how its event went."""
        dep_id = params.get("deploymentId")
        if not dep_id:
            raise ApiError("DeploymentIdRequiredException", "The deployment ID was not specified.")
        if dep_id not in codedeploy().deployments:
            raise ApiError("DeploymentDoesNotExistException", f"The deployment {dep_id} could not be found.")
        exec_id = str(params.get("lifecycleEventHookExecutionId") or "")
        run = self.runs.get(exec_id)
        if run is None or run.deployment_id != dep_id:
            raise ApiError("InvalidLifecycleEventHookExecutionIdException",
                           f"The lifecycle event hook execution id {exec_id} is not valid.")
        status = params.get("status")
        if status not in REPORTABLE:
            raise ApiError("InvalidLifecycleEventHookExecutionStatusException",
                           f"The status {status} is not valid: only Succeeded and Failed can be set.")
        if run.status in REPORTABLE:
            raise ApiError("LifecycleEventAlreadyCompletedException",
                           f"The lifecycle event {run.event} of deployment {dep_id} has already completed.")
        run.status = str(status)
        return {"lifecycleEventHookExecutionId": exec_id}
