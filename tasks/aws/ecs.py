"""ECS services and task sets: the live release, green task sets, waits that check truth."""

from __future__ import annotations

import hashlib
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from botocore.exceptions import ClientError

from tasks.aws import shared_reads
from tasks.aws.errors import error_code
from tasks.config.taskdef import SHA_TAG
from tasks.core.errors import ConfigError, DeployError, VerifyFailed
from tasks.core.waits import poll

# Stopped reasons that no amount of waiting fixes.
FATAL_STOP_REASONS = (
    "CannotPullContainerError",
    "ResourceInitializationError",
    "CannotStartContainerError",
)


def describe_service(ecs: Any, cluster: str, service: str) -> dict[str, Any]:
    """SERVICE of CLUSTER as DescribeServices answers it now (a call shared with the process's other
    releases reading the cluster, tasks/aws/shared_reads.py)."""
    try:
        found = shared_reads.services(ecs, cluster, [service]).get(service, [])
    except ClientError as exc:
        if error_code(exc) == "ClusterNotFoundException":
            raise ConfigError(f"ecs.cluster: cluster {cluster!r} does not exist") from exc
        raise
    live = [s for s in found if s.get("status") != "INACTIVE"]
    if not live:
        raise ConfigError(
            f"ecs.service: service {service!r} not found in cluster {cluster!r}; "
            "create it first (Terraform, or `ecs-pipeline sandbox seed` in the sandbox)"
        )
    return live[0]


def controller_type(service: dict[str, Any]) -> str:
    return str(service.get("deploymentController", {}).get("type", "ECS"))


def primary_task_set(service: dict[str, Any]) -> dict[str, Any] | None:
    for ts in service.get("taskSets", []):
        if ts.get("status") == "PRIMARY":
            return ts  # type: ignore[no-any-return]
    return None


def task_set_target_group(task_set: dict[str, Any]) -> str | None:
    lbs = task_set.get("loadBalancers") or []
    return lbs[0].get("targetGroupArn") if lbs else None


def live_task_definition(ecs: Any, service: dict[str, Any]) -> str | None:
    """The task definition serving production: primary task set, else the PRIMARY deployment."""
    if controller_type(service) == "EXTERNAL":
        ts = primary_task_set(service)
        return ts["taskDefinition"] if ts else None
    if (service.get("deploymentConfiguration") or {}).get("strategy") in ("BLUE_GREEN", "LINEAR", "CANARY"):
        serving = native_serving_task_definition(ecs, service)
        if serving:
            return serving
    for dep in service.get("deployments", []):
        if dep.get("status") == "PRIMARY":
            return dep.get("taskDefinition")  # type: ignore[no-any-return]
    return service.get("taskDefinition")


def native_serving_task_definition(ecs: Any, service: dict[str, Any]) -> str | None:
    """ECS-native blue/green: the revision production goes to, not the PRIMARY (newest) deployment's."""
    arn = service.get("currentServiceDeployment")
    if not arn:
        return None
    found = ecs.describe_service_deployments(serviceDeploymentArns=[arn])["serviceDeployments"]
    revs = [r for r in [*(found[0].get("sourceServiceRevisions") or []), found[0].get("targetServiceRevision")]
            if r] if found else []
    serving = max(revs, key=lambda r: r.get("requestedProductionTrafficWeight") or 0.0, default=None)
    if serving is None or not serving.get("requestedProductionTrafficWeight"):
        return None
    described = ecs.describe_service_revisions(serviceRevisionArns=[serving["arn"]])["serviceRevisions"]
    return str(described[0]["taskDefinition"]) if described else None


@dataclass(frozen=True)
class LiveRelease:
    """What production runs; ``family_latest``: the family's newest ACTIVE revision (with tags) when read."""

    task_definition: str | None
    sha: str | None
    image: str | None
    family_latest: dict[str, Any] | None = field(default=None, compare=False, repr=False)


def describe_revision(ecs: Any, task_definition: str) -> dict[str, Any] | None:
    """A task definition (family, ``family:revision`` or ARN) with its tags; None when ECS has no such one.

    A deleted revision reads as None too; a throttle or a denied call still raises.
    """
    try:
        found = ecs.describe_task_definition(taskDefinition=task_definition, include=["TAGS"])
    except ClientError as exc:
        if error_code(exc) in ("ClientException", "InvalidParameterException"):
            return None
        raise
    return {**found["taskDefinition"], "tags": found.get("tags", [])}


def describe_latest(ecs: Any, family: str) -> dict[str, Any] | None:
    """The family's newest ACTIVE revision with its tags, or None when it has none."""
    return describe_revision(ecs, family)


def service_deployments_since(ecs: Any, cluster: str, service: str, since: datetime) -> list[dict[str, Any]]:
    """Briefs of the service's deployments created after SINCE (every page), newest first."""
    out: list[dict[str, Any]] = []
    token: str | None = None
    while True:
        kwargs: dict[str, Any] = {"cluster": cluster, "service": service, "createdAt": {"after": since},
                                  "maxResults": 100}
        if token:
            kwargs["nextToken"] = token
        page = ecs.list_service_deployments(**kwargs)
        out.extend(page.get("serviceDeployments") or [])
        token = page.get("nextToken")
        if not token:
            return sorted(out, key=lambda b: b.get("createdAt") or since, reverse=True)


def revision_task_definitions(ecs: Any, revision_arns: list[str]) -> dict[str, str]:
    """Service revision ARN → its task definition (DescribeServiceRevisions takes 20 ARNs a call)."""
    out: dict[str, str] = {}
    for i in range(0, len(revision_arns), 20):
        found = ecs.describe_service_revisions(serviceRevisionArns=revision_arns[i:i + 20])
        out.update({r["serviceRevisionArn"]: str(r["taskDefinition"]) for r in found.get("serviceRevisions") or []})
    return out


def find_service_deployment(ecs: Any, cluster: str, service: str, task_definition: str, since: datetime,
                            known: frozenset[str] = frozenset()) -> dict[str, Any] | None:
    """The service deployment an UpdateService to TASK_DEFINITION started, or None while ECS lists none.

    Found as kayac/ecspresso finds it (ListServiceDeployments, newest by createdAt) and narrowed to the
    one that is ours: created after SINCE, not one of KNOWN (listed before the call), and targeting a
    service revision whose task definition is ours. UpdateService's ``currentServiceDeployment`` is not
    used: nothing documents that it already names the deployment the call started.
    """
    briefs = [b for b in service_deployments_since(ecs, cluster, service, since)
              if b["serviceDeploymentArn"] not in known]
    if not briefs:
        return None
    tds = revision_task_definitions(ecs, sorted({str(b["targetServiceRevisionArn"]) for b in briefs
                                                 if b.get("targetServiceRevisionArn")}))
    for brief in briefs:
        if tds.get(str(brief.get("targetServiceRevisionArn"))) == task_definition:
            found = ecs.describe_service_deployments(serviceDeploymentArns=[brief["serviceDeploymentArn"]])
            deps = found.get("serviceDeployments") or []
            return dict(deps[0]) if deps else None
    return None


def roll_back_service_deployment(ecs: Any, arn: str, hook: str | None) -> bool:
    """Ask ECS to roll a service deployment back: at its PAUSE hook HOOK, else by stopping it.

    False when ECS answers that it can no longer take the request (the deployment has
    ended or is already rolling back): the caller waits for how it ends either way.
    """
    try:
        if hook:
            ecs.continue_service_deployment(serviceDeploymentArn=arn, hookId=hook, action="ROLLBACK")
        else:
            ecs.stop_service_deployment(serviceDeploymentArn=arn, stopType="ROLLBACK")
    except ClientError as exc:
        if error_code(exc) not in ("ConflictException", "InvalidParameterException"):
            raise
        return False
    return True


def describe_release(ecs: Any, task_definition: str | None, container: str) -> LiveRelease:
    """The git SHA and image of a task definition, read from its tags.

    The family's latest revision is read first: it is usually the live one (one call for both
    what runs and what register compares against), else the live revision is read as well.
    """
    if not task_definition:
        return LiveRelease(None, None, None)
    latest = describe_latest(ecs, task_definition.rsplit("/", 1)[-1].split(":", 1)[0])
    td = latest
    if td is None or td.get("taskDefinitionArn") != task_definition:
        out = ecs.describe_task_definition(taskDefinition=task_definition, include=["TAGS"])
        td = {**out["taskDefinition"], "tags": out.get("tags", [])}
    tags = {t["key"]: t["value"] for t in td.get("tags", [])}
    images = [
        c.get("image") for c in td.get("containerDefinitions", []) if c.get("name") == container
    ]
    return LiveRelease(td["taskDefinitionArn"], tags.get(SHA_TAG), images[0] if images else None, latest)


def find_task_set(service: dict[str, Any], task_definition: str) -> dict[str, Any] | None:
    """A non-primary task set already running this task definition (a rerun's green)."""
    for ts in service.get("taskSets", []):
        if ts.get("status") == "ACTIVE" and ts.get("taskDefinition") == task_definition:
            return ts  # type: ignore[no-any-return]
    return None


@dataclass(frozen=True)
class GreenSpec:
    cluster: str
    service: str
    task_definition: str
    target_group: str
    container: str
    container_port: int
    external_id: str
    client_token: str = ""  # the same for every attempt of one run's create: a lost answer makes no twin


def client_token(run_id: str, task_definition: str) -> str:
    """CreateTaskSet's idempotency token for this run and revision (AWS allows 36 characters)."""
    return "ecsp-" + hashlib.sha256(f"{run_id}|{task_definition}".encode()).hexdigest()[:31]


def task_set_placement(
    network: dict[str, Any] | None, capacity_providers: list[dict[str, Any]], primary: dict[str, Any] | None
) -> dict[str, Any]:
    """Where a new task set runs: CreateTaskSet's networkConfiguration and launch settings.

    The config's own (NETWORK, CAPACITY_PROVIDERS) first, else the primary task set's: blue already runs
    where green must. Never DescribeServices' fields: an EXTERNAL service shows them only once a primary
    task set exists, and then they are the primary's. ``launchType`` FARGATE only when no capacity
    provider strategy applies (ECS refuses both at once).
    """
    primary = primary or {}
    out: dict[str, Any] = {}
    net = network or primary.get("networkConfiguration")
    if net:
        out["networkConfiguration"] = net
    strategy = capacity_providers or primary.get("capacityProviderStrategy")
    if strategy:
        out["capacityProviderStrategy"] = strategy
    else:
        out["launchType"] = primary.get("launchType") or "FARGATE"
    if primary.get("platformVersion") and out.get("launchType", "FARGATE") == "FARGATE":
        out["platformVersion"] = primary["platformVersion"]
    if primary.get("serviceRegistries"):
        out["serviceRegistries"] = primary["serviceRegistries"]
    return out


def create_task_set(ecs: Any, spec: GreenSpec, placement: dict[str, Any]) -> dict[str, Any]:
    """Green's task set on its target group, where PLACEMENT (``task_set_placement``) says it runs."""
    kwargs: dict[str, Any] = {
        "cluster": spec.cluster,
        "service": spec.service,
        "taskDefinition": spec.task_definition,
        "externalId": spec.external_id,
        "loadBalancers": [
            {
                "targetGroupArn": spec.target_group,
                "containerName": spec.container,
                "containerPort": spec.container_port,
            }
        ],
        "scale": {"value": 100.0, "unit": "PERCENT"},
        **placement,
    }
    if spec.client_token:
        kwargs["clientToken"] = spec.client_token
    return ecs.create_task_set(**kwargs)["taskSet"]  # type: ignore[no-any-return]


def describe_task_set(ecs: Any, cluster: str, service: str, task_set: str) -> dict[str, Any] | None:
    found = ecs.describe_task_sets(cluster=cluster, service=service, taskSets=[task_set])
    sets = found.get("taskSets", [])
    return sets[0] if sets else None


def stopped_task_reasons(ecs: Any, cluster: str, task_definition: str, since: float) -> list[str]:
    """Why tasks of this task definition stopped after ``since``, as ECS reports it."""
    family = task_definition.rsplit("/", 1)[-1].split(":", 1)[0]
    pages = ecs.get_paginator("list_tasks").paginate(cluster=cluster, desiredStatus="STOPPED", family=family)
    arns = [arn for page in pages for arn in page.get("taskArns", [])]
    tasks = [t for i in range(0, len(arns), 100)
             for t in ecs.describe_tasks(cluster=cluster, tasks=arns[i:i + 100]).get("tasks", [])]
    reasons = []
    for t in tasks:
        if t.get("taskDefinitionArn") != task_definition:
            continue
        created = t.get("createdAt")
        if (
            created is not None
            and hasattr(created, "timestamp")
            and created.timestamp() < since - 5
        ):
            continue
        reasons.append(str(t.get("stoppedReason") or "stopped"))
    return reasons


def stopped_reasons_of(ecs: Any, cluster: str, started_by: str, since: float, seen: dict[str, str]) -> list[str]:
    """Why the tasks STARTED_BY launched (a task set's or deployment's id) stopped after SINCE.

    Only that one task set's tasks are listed, and only tasks not described before (SEEN, task ARN →
    reason, is kept by the caller) are described: a fleet's polls stay within AWS's rates.
    """
    pages = ecs.get_paginator("list_tasks").paginate(cluster=cluster, startedBy=started_by, desiredStatus="STOPPED")
    arns = [arn for page in pages for arn in page.get("taskArns", []) if arn not in seen]
    for i in range(0, len(arns), 100):
        for t in ecs.describe_tasks(cluster=cluster, tasks=arns[i:i + 100]).get("tasks", []):
            created = t.get("createdAt")
            old = created is not None and hasattr(created, "timestamp") and created.timestamp() < since - 5
            seen[t["taskArn"]] = "" if old else str(t.get("stoppedReason") or "stopped")
    return [r for r in seen.values() if r]


DIAGNOSE_EVERY = 15.0  # seconds a task set may stay short of running before its stopped tasks are looked at


def wait_task_set_running(
    ecs: Any,
    spec: GreenSpec,
    task_set_id: str,
    timeout: float,
    log: Callable[[str], None],
) -> dict[str, Any]:
    """Until the task set runs its desired count in a steady state; fails fast on fatal stops.

    Each poll describes the task set alone. Its stopped tasks are listed (by its own id, never the
    family's) only to diagnose: when it has fewer tasks running or pending than it wants (one
    stopped), when it has not run for DIAGNOSE_EVERY seconds (ECS replaces failed tasks, so a failure
    can hide behind a replacement), and to name the reason when the wait runs out.
    """
    started = time.time()
    seen: dict[str, str] = {}
    last = [time.monotonic()]

    def diagnose(ts: dict[str, Any]) -> list[str]:
        last[0] = time.monotonic()
        reasons = stopped_reasons_of(ecs, spec.cluster, str(ts.get("id") or task_set_id), started, seen)
        fatal = [r for r in reasons if r.startswith(FATAL_STOP_REASONS)]
        if fatal:
            raise VerifyFailed(f"green tasks cannot start: {fatal[0]}", service=spec.service,
                               revision=spec.task_definition)
        if len(reasons) >= 3:
            raise VerifyFailed(f"green tasks keep stopping ({len(reasons)} stopped): {reasons[-1]}",
                               service=spec.service, revision=spec.task_definition)
        return reasons

    latest: list[dict[str, Any]] = []

    def check() -> dict[str, Any] | None:
        ts = describe_task_set(ecs, spec.cluster, spec.service, task_set_id)
        if ts is None:
            raise DeployError(f"task set {task_set_id} disappeared", service=spec.service)
        latest[:] = [ts]
        want, running = ts.get("computedDesiredCount", 0), ts.get("runningCount", 0)
        if want and running >= want and ts.get("stabilityStatus") == "STEADY_STATE":
            return ts
        short = want and running + ts.get("pendingCount", 0) < want
        if short or time.monotonic() - last[0] >= DIAGNOSE_EVERY:
            diagnose(ts)
        return None

    try:
        return poll(check, timeout=timeout, what=f"green task set {task_set_id} to run", log=log)
    except DeployError as exc:
        if not latest or isinstance(exc, VerifyFailed):
            raise
        reasons = diagnose(latest[0])
        if not reasons:
            raise
        raise DeployError(f"{exc.message}; stopped tasks: {reasons[-1]}", service=spec.service) from exc


def set_primary(ecs: Any, cluster: str, service: str, task_set_arn: str) -> None:
    ecs.update_service_primary_task_set(
        cluster=cluster, service=service, primaryTaskSet=task_set_arn
    )


def delete_task_set(ecs: Any, cluster: str, service: str, task_set_arn: str) -> bool:
    """Remove a task set; False when it is already gone."""
    try:
        ecs.delete_task_set(cluster=cluster, service=service, taskSet=task_set_arn, force=True)
    except ClientError as exc:
        if error_code(exc) in ("TaskSetNotFoundException",):
            return False
        raise
    return True


def wait_task_set_gone(ecs: Any, cluster: str, service: str, task_set_arn: str, timeout: float) -> bool:
    """Until a deleted task set has drained and is no longer listed; False if it outlasts ``timeout``."""

    def gone() -> bool | None:
        return True if describe_task_set(ecs, cluster, service, task_set_arn) is None else None

    try:
        return poll(gone, timeout=timeout, what=f"task set {task_set_arn.rsplit('/', 1)[-1]} to drain")
    except DeployError:
        return False


# -- one-off tasks (the migration gate, tasks/release/migration.py) ---------------------------------------


@dataclass(frozen=True)
class OneOffTask:
    """A RunTask of one revision with one container's command replaced, where PLACEMENT says it runs."""

    cluster: str
    task_definition: str
    container: str
    command: tuple[str, ...]
    started_by: str
    placement: dict[str, Any]
    client_token: str = ""


def run_task_placement(
    network: dict[str, Any] | None, capacity_providers: list[dict[str, Any]], service: dict[str, Any]
) -> dict[str, Any]:
    """Where a one-off task of SERVICE runs: as its tasks do (``task_set_placement``: the config's network and
    capacity providers, else the primary task set's, else the service's own fields, which an ECS-controller
    service shows). RunTask takes no serviceRegistries."""
    placed = task_set_placement(network, capacity_providers, primary_task_set(service) or service)
    placed.pop("serviceRegistries", None)
    return placed


def run_one_off_task(ecs: Any, spec: OneOffTask) -> dict[str, Any]:
    """RunTask; the task as ECS answers it. A placement failure (RunTask's ``failures``) is a DeployError."""
    kwargs: dict[str, Any] = {
        "cluster": spec.cluster, "taskDefinition": spec.task_definition, "count": 1,
        "startedBy": spec.started_by,
        "overrides": {"containerOverrides": [{"name": spec.container, "command": list(spec.command)}]},
        **spec.placement,
    }
    if spec.client_token:
        kwargs["clientToken"] = spec.client_token
    out = ecs.run_task(**kwargs)
    tasks = out.get("tasks") or []
    if not tasks:
        why = "; ".join(f"{f.get('reason')}{' (' + f['detail'] + ')' if f.get('detail') else ''}"
                        for f in out.get("failures") or []) or "ECS started no task and gave no reason"
        raise DeployError(f"RunTask of {spec.task_definition.rsplit('/', 1)[-1]} in cluster {spec.cluster} "
                          f"started nothing: {why}")
    return dict(tasks[0])


def describe_one_task(ecs: Any, cluster: str, task_arn: str) -> dict[str, Any] | None:
    """One task as ECS shows it now; None while DescribeTasks lists it as missing (eventual consistency)."""
    found = ecs.describe_tasks(cluster=cluster, tasks=[task_arn]).get("tasks") or []
    return dict(found[0]) if found else None


def stop_one_task(ecs: Any, cluster: str, task_arn: str, reason: str) -> None:
    """StopTask; a task ECS no longer knows is stopped already."""
    try:
        ecs.stop_task(cluster=cluster, task=task_arn, reason=reason[:255])
    except ClientError as exc:
        if error_code(exc) not in ("InvalidParameterException", "ClientException"):
            raise


def one_off_tasks(ecs: Any, cluster: str, started_by: str) -> list[dict[str, Any]]:
    """Tasks STARTED_BY launched that ECS still lists, running ones first, then the stopped ones it keeps."""
    arns: list[str] = []
    for status in ("RUNNING", "STOPPED"):
        pages = ecs.get_paginator("list_tasks").paginate(cluster=cluster, startedBy=started_by,
                                                         desiredStatus=status)
        arns += [arn for page in pages for arn in page.get("taskArns", []) if arn not in arns]
    return [dict(t) for i in range(0, len(arns), 100)
            for t in ecs.describe_tasks(cluster=cluster, tasks=arns[i:i + 100]).get("tasks", [])]


def read_log_events(logs: Any, group: str, stream: str, token: str | None) -> tuple[list[str], str | None]:
    """New lines of an awslogs stream after TOKEN (None: from its start), every page, and the token to go on
    from. GetLogEvents answers the token it was given once the stream has no more; a stream the log driver
    has not made yet has no lines."""
    lines: list[str] = []
    while True:
        kwargs: dict[str, Any] = {"logGroupName": group, "logStreamName": stream, "startFromHead": True}
        if token:
            kwargs["nextToken"] = token
        try:
            page = logs.get_log_events(**kwargs)
        except ClientError as exc:
            if error_code(exc) == "ResourceNotFoundException":
                return lines, token
            raise
        lines += [str(e.get("message", "")) for e in page.get("events") or []]
        after = page.get("nextForwardToken")
        if not after or after == token:
            return lines, token
        token = after
