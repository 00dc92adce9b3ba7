"""RunTask and StopTask of standalone tasks, held to what ECS documents (moto checks almost none of it).

- The cluster and the task definition must exist: ClusterNotFoundException, and ClientException
  "Unable to describe task definition." (moto's own answers, kept).
- ``count`` is 1 to 10 (RunTask's reference: "You can specify up to 10 tasks for each call").
- ``networkConfiguration``: "This parameter is required for task definitions that use the awsvpc
  network mode to receive their own elastic network interface, and it isn't supported for other
  network modes" (botocore's RunTaskRequest documentation); its subnets and security groups must exist
  and share one VPC; ``launchType`` and ``capacityProviderStrategy`` exclude each other, FARGATE needs a
  FARGATE-compatible task definition (the checks CreateTaskSet makes: ecs_task_sets.check_task_set).
  With neither, the cluster's default strategy applies, else launch type EC2, for which a cluster without
  container instances answers InvalidParameterException "No Container Instances were found in your cluster."
- ``containerOverrides`` may name only containers of the task definition: "Override for container named
  X is not a container in the TaskDefinition." (InvalidParameterException, as ECS words it).
- ``clientToken``: "An identifier that you provide to ensure the idempotency of the request": the same
  token answers the tasks it started instead of starting more.
- StopTask of a task ECS does not know: InvalidParameterException "The referenced task was not found."
  (moto raised a bare exception, an HTTP 500 botocore retries); of a stopped task: the task unchanged.

The tasks themselves run as real containers (ecs_patches._run_task, containers.TaskRunner): the task
definition's image with the command override, on the host network, with only the task definition's
environment (never the sandbox's or the pipeline's credentials, no Docker socket).
"""

from __future__ import annotations

from typing import Any

from moto.core.responses import ActionResult
from moto.ecs.exceptions import InvalidParameterException
from moto.ecs.responses import EC2ContainerServiceResponse

from . import ecs_task_sets
from .world import LOCK

MAX_COUNT = 10
_TOKENS: dict[str, list[str]] = {}  # clientToken -> the task ARNs it started


def check_overrides(td: Any, overrides: dict[str, Any] | None) -> None:
    """containerOverrides name containers of the task definition only."""
    names = {c.get("name") for c in td.container_definitions}
    for override in (overrides or {}).get("containerOverrides") or []:
        name = override.get("name")
        if name not in names:
            raise InvalidParameterException(f"Override for container named {name} is not a container in the "
                                            "TaskDefinition.")


def run_task_api(self: EC2ContainerServiceResponse) -> ActionResult:
    """RunTask: parameters checked as ECS checks them, then the tasks started (once per clientToken)."""
    p = self._get_param
    backend = self.ecs_backend
    cluster = backend._get_cluster(p("cluster", "default"))
    td = backend.describe_task_definition(p("taskDefinition"))
    count = self._get_int_param("count", 1)
    if count < 1 or count > MAX_COUNT:
        raise InvalidParameterException(f"count must be between 1 and {MAX_COUNT}.")
    token = str(p("clientToken") or "")
    with LOCK:
        if token and token in _TOKENS:
            known = backend.tasks.get(cluster.name, {})
            return ActionResult({"tasks": [known[a] for a in _TOKENS[token] if a in known], "failures": []})
    overrides = p("overrides")
    check_overrides(td, overrides)
    launch = ecs_task_sets.check_task_set(backend, cluster.name, {
        "taskDefinition": td.arn, "launchType": p("launchType"),
        "capacityProviderStrategy": p("capacityProviderStrategy"), "networkConfiguration": p("networkConfiguration")})
    if launch["launch_type"] == "EC2" and not backend.container_instances.get(cluster.name):
        raise InvalidParameterException("No Container Instances were found in your cluster.")
    tasks = backend.run_task(cluster.name, td.arn, count, overrides, p("startedBy"), p("tags"),
                             launch["launch_type"], p("networkConfiguration"), p("group"), p("platformVersion"))
    if launch["launch_type"] is None:
        for task in tasks:  # a capacity provider strategy, not a launch type
            placed: Any = task
            placed.launch_type = None
            placed.capacity_provider_name = (launch["capacity_provider_strategy"] or [{}])[0].get("capacityProvider")
    if token:
        with LOCK:
            _TOKENS[token] = [t.task_arn for t in tasks]
    return ActionResult({"tasks": tasks, "failures": []})


def stop_known_task(backend: Any, cluster_str: str, task_str: str) -> Any | None:
    """StopTask's answer for a task that needs no stopping: the stopped task itself; None when it must stop.

    InvalidParameterException when the cluster has no such task.
    """
    cluster = backend._get_cluster(cluster_str)
    task_id = task_str.split("/")[-1]
    for arn, task in (backend.tasks.get(cluster.name) or {}).items():
        if arn.endswith(task_id):
            return task if task.last_status == "STOPPED" else None
    raise InvalidParameterException("The referenced task was not found.")


def install() -> None:
    EC2ContainerServiceResponse.run_task = run_task_api  # type: ignore[method-assign]
