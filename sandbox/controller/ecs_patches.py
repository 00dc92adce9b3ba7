"""Small corrections to moto's ECS API so it answers like ECS does.

- CreateService keeps deploymentConfiguration; CODE_DEPLOY services get their
  initial PRIMARY task set, ECS services a rolling deployment with rolloutState.
- UpdateService with a new task definition (or forceNewDeployment) starts a
  new PRIMARY deployment instead of editing the old one in place.
- CreateTaskSet no longer fakes tasks (the controller starts real ones) and honours
  clientToken: a repeated token answers the task set it made (moto ignored it).
- EXTERNAL services and CreateTaskSet follow ECS's documented rules (ecs_task_sets.py):
  no task-set fields on the service before a primary task set, networkConfiguration
  required for awsvpc, launch type or capacity provider strategy as ECS resolves them.
- StopTask deregisters and drains; ListTasks honours serviceName/desiredStatus.
- RunTask is checked as ECS checks it (run_task.py) and starts real containers once (standalone
  tasks are never restarted); StopTask of an unknown task is ECS's error, of a stopped one a no-op.
- ECS-native blue/green (strategy BLUE_GREEN, LINEAR, CANARY): UpdateService starts a
  service deployment in ecs_native.py; AWS_LAMBDA lifecycle hooks are refused (no Lambda
  here); UpdateService from CODE_DEPLOY to ECS migrates, keeping the running task set.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from moto.core.responses import ActionResult
from moto.core.utils import utcnow
from moto.ecs.exceptions import ECSException, InvalidParameterException
from moto.ecs.models import EC2ContainerServiceBackend
from moto.ecs.responses import EC2ContainerServiceResponse
from moto.moto_api._internal import mock_random

from . import ecs_task_sets, run_task
from .ecs_native_model import HOOKABLE, NATIVE, STAGES, check_advanced, is_native, lambda_hooks
from .fleets import Fleet
from .rolling import DEFAULT_CONFIG

if TYPE_CHECKING:
    from .containers import TaskRunner
    from .ecs_native import NativeController

_RUNNER: TaskRunner | None = None
_NATIVE: NativeController | None = None


def _check_native(config: dict[str, Any] | None) -> None:
    """Refuse what the sandbox cannot play, in ECS's error shape, instead of pretending."""
    config = config or {}
    strategy = config.get("strategy")
    if strategy is not None and strategy not in ("ROLLING", *NATIVE):
        raise InvalidParameterException(f"deploymentConfiguration.strategy {strategy} is not one of "
                                        "ROLLING, BLUE_GREEN, LINEAR, CANARY.")
    unplayed = sorted({stage for hook in config.get("lifecycleHooks") or []
                       for stage in hook.get("lifecycleStages") or [] if stage not in HOOKABLE})
    if unplayed:
        raise ECSException("UnsupportedFeatureException", f"The sandbox does not play lifecycle stage(s) "
                           f"{', '.join(unplayed)}: a hook there would never run. Hooks can wait at "
                           f"{', '.join(s for s in STAGES if s in HOOKABLE)}.")
    stages = lambda_hooks(config)
    if stages:
        raise ECSException("UnsupportedFeatureException", "The sandbox cannot run AWS Lambda: the "
                           f"AWS_LAMBDA lifecycle hook(s) at {'; '.join(stages)} would never be invoked. "
                           "Use targetType PAUSE (ContinueServiceDeployment answers it) in the sandbox.")


def new_deployment(service: Any, task_definition: str) -> dict[str, Any]:
    dep_id = f"ecs-svc/{mock_random.randint(0, 32**12)}"
    return {
        "id": dep_id, "status": "PRIMARY", "taskDefinition": task_definition,
        "desiredCount": service.desired_count, "pendingCount": 0, "runningCount": 0,
        "failedTasks": 0, "createdAt": utcnow(), "updatedAt": utcnow(),
        "launchType": service.launch_type, "platformFamily": "Linux",
        "rolloutState": "IN_PROGRESS", "rolloutStateReason": f"ECS deployment {dep_id} in progress.",
    }


_orig_create_service = EC2ContainerServiceResponse.create_service


def _create_service(self: EC2ContainerServiceResponse) -> Any:
    _check_native(self._get_param("deploymentConfiguration"))
    if (self._get_param("deploymentController") or {}).get("type", "ECS") == "ECS":
        check_advanced(self._get_param("deploymentConfiguration"), self._get_param("loadBalancers"))
    external = (self._get_param("deploymentController") or {}).get("type") == "EXTERNAL"
    if external:
        ecs_task_sets.check_external_service({p: self._get_param(p) for p in ecs_task_sets.CREATE_SERVICE_PARAMS})
    result = _orig_create_service(self)
    backend = self.ecs_backend
    service: Any = backend._get_service(self._get_param("cluster", "default"),
                                        self._get_param("serviceName"))
    cfg = dict(DEFAULT_CONFIG)
    cfg.update(self._get_param("deploymentConfiguration") or {})
    service.deployment_configuration = cfg
    service.health_check_grace_period_seconds = self._get_param("healthCheckGracePeriodSeconds")
    service.created_at = utcnow()
    service.running_count = service.pending_count = 0
    if external:
        ecs_task_sets.clear_task_set_fields(service)
    ctype = service.deployment_controller.get("type", "ECS")
    if _NATIVE is not None and is_native(service) and service.task_definition:
        _NATIVE.start(service)
    elif ctype == "ECS" and service.task_definition:
        service.deployments = [new_deployment(service, service.task_definition)]
    elif ctype == "CODE_DEPLOY" and service.task_definition:
        ts: Any = backend.create_task_set(service.name, service.cluster_name, service.task_definition,
                                     load_balancers=service.load_balancers,
                                     launch_type=service.launch_type,
                                     network_configuration=self._get_param("networkConfiguration"))
        ts.status = "PRIMARY"
        ts.started_by = "CodeDeploy"
    return result


def _create_task_set_api(self: EC2ContainerServiceResponse) -> Any:
    """Only EXTERNAL services take task sets from callers (CodeDeploy makes its own)."""
    service = self.ecs_backend._get_service(self._get_param("cluster", "default"),
                                            self._get_param("service"))
    if service.deployment_controller.get("type", "ECS") != "EXTERNAL":
        raise InvalidParameterException(
            "Amazon ECS only supports task set management on services configured to use "
            "external deployment controllers.")
    p = self._get_param
    launch = ecs_task_sets.check_task_set(self.ecs_backend, service.cluster_name, {
        k: p(k) for k in ("taskDefinition", "launchType", "capacityProviderStrategy", "networkConfiguration")})
    task_set: Any = self.ecs_backend.create_task_set(
        p("service"), p("cluster", "default"), p("taskDefinition"), external_id=p("externalId"),
        network_configuration=p("networkConfiguration"), load_balancers=p("loadBalancers"),
        service_registries=p("serviceRegistries"), launch_type=launch["launch_type"],
        capacity_provider_strategy=launch["capacity_provider_strategy"],
        platform_version=p("platformVersion"), scale=p("scale"), client_token=p("clientToken"), tags=p("tags"))
    if launch["launch_type"] is None and task_set.capacity_provider_strategy:
        task_set.launch_type = None  # a capacity provider strategy, not a launch type
    return ActionResult({"taskSet": task_set})


_orig_update_service = EC2ContainerServiceBackend.update_service


def _update_service(self: EC2ContainerServiceBackend, props: dict[str, Any]) -> Any:
    force = bool(props.pop("force_new_deployment", False))
    service = self._get_service(props.get("cluster", "default"), props["service"].split("/")[-1])
    before = service.task_definition
    td = props.get("task_definition")
    before_ctype = service.deployment_controller.get("type", "ECS")
    ctype = (props.get("deployment_controller") or {}).get("type", before_ctype)
    _check_native(props.get("deployment_configuration"))
    migrated = _migrating(service, before_ctype, ctype)
    if td and ctype == "CODE_DEPLOY":
        raise InvalidParameterException(
            "Unable to update task definition on services with a CODE_DEPLOY deployment "
            "controller. Use AWS CodeDeploy to trigger a new deployment.")
    if td and ctype == "EXTERNAL":
        raise InvalidParameterException(
            "Unable to update task definition on services with an EXTERNAL deployment "
            "controller. Create a new task set instead.")
    if td:
        props["task_definition"] = self.describe_task_definition(td).arn
    cfg = props.get("deployment_configuration")
    if cfg:
        merged = dict(getattr(service, "deployment_configuration", None) or DEFAULT_CONFIG)
        merged.update(cfg)
        props["deployment_configuration"] = merged
    if ctype == "ECS":
        check_advanced(props.get("deployment_configuration") or getattr(service, "deployment_configuration", None),
                       props.get("load_balancers") or service.load_balancers)
    running, pending = service.running_count, service.pending_count
    result = _orig_update_service(self, props)
    service.running_count, service.pending_count = running, pending
    changed = bool(service.task_definition) and (force or service.task_definition != before or bool(migrated))
    if changed and _NATIVE is not None and is_native(service):
        _NATIVE.start(service, migrated)
    elif ctype == "ECS" and changed:
        service.deployments = [d for d in service.deployments if d["status"] != "INACTIVE"]
        for dep in service.deployments:
            dep["status"] = "ACTIVE"
        service.deployments.insert(0, new_deployment(service, str(service.task_definition)))
    return result


def _migrating(service: Any, before: str, after: str) -> tuple[str, str, str] | None:
    """(fleet key, task definition, target group) of the task set a CODE_DEPLOY → ECS move keeps."""
    if before != "CODE_DEPLOY" or after != "ECS":
        return None
    live = [ts for ts in service.task_sets if ts.status != "DRAINING"]
    if len(live) != 1:
        raise InvalidParameterException(
            f"The service has {len(live)} task sets: a CodeDeploy deployment is in progress. "
            "Wait for it to finish before changing the deployment controller.")
    ts = live[0]
    return ts.task_set_arn, ts.task_definition, (ts.load_balancers or [{}])[0].get("targetGroupArn", "")


_orig_create_task_set = EC2ContainerServiceBackend.create_task_set


def _create_task_set(self: EC2ContainerServiceBackend, *args: Any, **kwargs: Any) -> Any:
    token = kwargs.get("client_token")
    if token:  # ECS answers a repeated clientToken with the task set it already made
        service = self._get_service(args[1] if len(args) > 1 else "default", str(args[0]).split("/")[-1])
        again = next((ts for ts in service.task_sets if getattr(ts, "client_token", "") == token), None)
        if again is not None:
            return again
    scale = kwargs.pop("scale", None)
    ts: Any = _orig_create_task_set(self, *args, **kwargs)
    ts.scale = scale or {"value": 100.0, "unit": "PERCENT"}
    ts.stabilityStatus = "STABILIZING"
    ts.computed_desired_count = ts.running_count = ts.pending_count = 0
    ts.started_by = ""
    return ts


_orig_primary_task_set = EC2ContainerServiceBackend.update_service_primary_task_set


def _update_service_primary_task_set(self: EC2ContainerServiceBackend, cluster: str, service: str,
                                     primary_task_set: str) -> Any:
    """The service shows every field of its new primary task set (moto copied two of them)."""
    ts = _orig_primary_task_set(self, cluster, service, primary_task_set)
    ecs_task_sets.show_primary(self._get_service(cluster, service.split("/")[-1]), ts)
    return ts


_orig_delete_task_set = EC2ContainerServiceBackend.delete_task_set


def _delete_task_set(self: EC2ContainerServiceBackend, cluster: str, service: str, task_set: str,
                     *args: Any) -> Any:
    ts = _orig_delete_task_set(self, cluster or "default", service, task_set)
    ts.status = "DRAINING"
    return ts


_orig_stop_task = EC2ContainerServiceBackend.stop_task


def _stop_task(self: EC2ContainerServiceBackend, cluster_str: str, task_str: str, reason: str) -> Any:
    done = run_task.stop_known_task(self, cluster_str, task_str)  # unknown: ECS's error; stopped: as it is
    if done is not None:
        return done
    if _RUNNER is not None:
        task_id = task_str.split("/")[-1]
        for arn, run in list(_RUNNER.runs.items()):
            if arn.endswith(task_id):
                _RUNNER.request_stop(run, reason or "Task stopped by user", "UserInitiated")
                return run.task
    return _orig_stop_task(self, cluster_str, task_str, reason)


_orig_run_task = EC2ContainerServiceBackend.run_task


def _run_task(self: EC2ContainerServiceBackend, cluster_str: str, task_definition_str: str,
              count: int, overrides: dict[str, Any] | None, started_by: str,
              tags: list[dict[str, str]] | None, launch_type: str | None,
              networking_configuration: dict[str, Any] | None = None,
              group: str | None = None, platform_version: str | None = None) -> list[Any]:
    """Standalone tasks run real containers once; nothing restarts them."""
    if _RUNNER is None:
        return _orig_run_task(self, cluster_str, task_definition_str, count, overrides, started_by,
                              tags, launch_type, networking_configuration, group, platform_version)

    cluster = self._get_cluster(cluster_str)
    td = self.describe_task_definition(task_definition_str)
    fleet = Fleet(key=f"run/{mock_random.uuid4()}", cluster=cluster.name, service="",
                  task_definition=td.arn, load_balancers=[], started_by=started_by or "",
                  desired=count, group=group or f"family:{td.family}")
    runs = [_RUNNER.launch(fleet, overrides) for _ in range(max(int(count or 1), 1))]
    for run in runs:
        run.task.tags = tags or []
        run.task.launch_type = launch_type  # as RunTask resolved it (run_task.run_task_api)
        if networking_configuration:
            run.task.network_configuration = networking_configuration
    return [run.task for run in runs]


_orig_list_tasks = EC2ContainerServiceBackend.list_tasks
_orig_list_services = EC2ContainerServiceBackend.list_services


def _list_tasks(self: EC2ContainerServiceBackend, cluster_str: str | None = None,
                container_instance: str | None = None, family: str | None = None,
                started_by: str | None = None, service_name: str | None = None,
                desiredStatus: str | None = None) -> list[Any]:
    tasks = _orig_list_tasks(self, cluster_str, container_instance, family, started_by, None,
                             desiredStatus or "RUNNING")
    if cluster_str:  # moto matches the cluster name as a substring of the task's cluster ARN
        arn = self._get_cluster(cluster_str).arn
        tasks = [t for t in tasks if t.cluster_arn == arn]
    if service_name:
        tasks = [t for t in tasks if t.group == f"service:{service_name.split('/')[-1]}"]
    return tasks


def _list_services(self: EC2ContainerServiceBackend, cluster_str: str, scheduling_strategy: str | None = None,
                   launch_type: str | None = None) -> list[str]:
    """Only this cluster's services (moto's substring match also lists those of "<x>web" for "web")."""
    name = self._get_cluster(cluster_str).name
    arns = _orig_list_services(self, cluster_str, scheduling_strategy, launch_type)
    mine = {s.arn for key, s in self.services.items() if key.startswith(f"{name}:")}
    return [a for a in arns if a in mine]


# DescribeServices' reference (botocore's model, ``services``): "You may specify up to 10 services to describe
# in a single operation." The model sets no maximum, so a client sends more; the sandbox refuses them.
DESCRIBE_SERVICES_MAX = 10
_orig_describe_services = EC2ContainerServiceBackend.describe_services


def _describe_services(self: EC2ContainerServiceBackend, cluster_str: str,
                       service_names_or_arns: list[str]) -> tuple[list[Any], list[dict[str, str]]]:
    if len(service_names_or_arns) > DESCRIBE_SERVICES_MAX:
        raise InvalidParameterException(
            f"You may specify up to {DESCRIBE_SERVICES_MAX} services to describe in a single operation "
            f"({len(service_names_or_arns)} given).")
    return _orig_describe_services(self, cluster_str, service_names_or_arns)


def install(runner: TaskRunner, native: NativeController | None = None) -> None:
    """Apply the ECS corrections; ``runner`` is used by StopTask, ``native`` by UpdateService."""
    global _RUNNER, _NATIVE
    _RUNNER, _NATIVE = runner, native
    EC2ContainerServiceResponse.create_service = _create_service  # type: ignore[method-assign]
    EC2ContainerServiceResponse.create_task_set = _create_task_set_api  # type: ignore[method-assign]
    EC2ContainerServiceBackend.update_service = _update_service  # type: ignore[method-assign,assignment]
    EC2ContainerServiceBackend.create_task_set = _create_task_set  # type: ignore[method-assign]
    EC2ContainerServiceBackend.delete_task_set = _delete_task_set  # type: ignore[method-assign]
    EC2ContainerServiceBackend.update_service_primary_task_set = (  # type: ignore[method-assign]
        _update_service_primary_task_set)
    EC2ContainerServiceBackend.stop_task = _stop_task  # type: ignore[method-assign]
    EC2ContainerServiceBackend.list_tasks = _list_tasks  # type: ignore[method-assign]
    EC2ContainerServiceBackend.list_services = _list_services  # type: ignore[method-assign]
    EC2ContainerServiceBackend.describe_services = _describe_services  # type: ignore[method-assign]
    EC2ContainerServiceBackend.run_task = _run_task  # type: ignore[method-assign]
    run_task.install()
