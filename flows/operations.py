"""Day-two commands: status, rollback, render, diff."""

from __future__ import annotations

import time
from typing import Any

from botocore.exceptions import ClientError
from prefect.client.orchestration import get_client
from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterTags
from prefect.client.schemas.sorting import FlowRunSort

from tasks.aws import ecs as ecs_ops
from tasks.aws import traffic
from tasks.aws.clients import AwsClients
from tasks.config.models import find_service
from tasks.config.taskdef import SHA_TAG, diff_task_definitions
from tasks.core.errors import DeployError, error_code
from tasks.core.settings import Settings
from tasks.release.locks import read_heartbeat
from tasks.release.outcome import outcome_of
from tasks.release.stages import latest_task_definition, live_release, render


def service_status(service: str) -> dict[str, Any]:
    clients = AwsClients(Settings())
    cfg = find_service(service, clients.settings.deployments)
    ecs = clients.get("ecs")
    svc = ecs_ops.describe_service(ecs, cfg.ecs.cluster, cfg.ecs.service)
    live = live_release(cfg, clients)
    info: dict[str, Any] = {
        "service": cfg.name,
        "controller": ecs_ops.controller_type(svc),
        "task definition": live.task_definition or "none (never deployed)",
        "git sha": live.sha or "-",
        "image": live.image or "-",
        "running": f"{svc.get('runningCount', 0)} of {svc.get('desiredCount', 0)}",
    }
    if cfg.load_balancer is not None:
        routing = traffic.resolve_routing(clients.get("elbv2"), cfg.load_balancer)
        names = dict(zip(routing.target_groups, routing.target_group_names, strict=True))
        weights = traffic.get_weights(clients.get("elbv2"), routing.production_listener)
        info["production traffic"] = ", ".join(f"{names.get(a, a)} {w}%" for a, w in weights.items()) or "-"
        info["production url"] = routing.production_url
    info["task sets"] = [
        f"{ts['id']} {ts['status']} {ts['taskDefinition'].rsplit('/', 1)[-1]} running {ts.get('runningCount', 0)}"
        for ts in svc.get("taskSets", [])
    ]
    holder = slot_holder(cfg.name, clients.settings.lock_stale_seconds)
    info["release in flight"] = holder["text"]
    others = [ts for ts in svc.get("taskSets", []) if ts.get("status") == "ACTIVE"]
    if others and not holder["live"]:
        ids = ", ".join(ts["id"] for ts in others)
        info["left by a dead run"] = (f"task set(s) {ids} beside the primary; the next release reconciles them, "
                                      f"or `ecs-pipeline rollback {cfg.name}` now")
    info["last runs"] = [
        f"{line} (no heartbeat: its process is gone)" if holder["stale_run"] and holder["stale_run"] in line else line
        for line in last_runs(cfg.name)
    ]
    return info


def slot_holder(service: str, stale_after: float) -> dict[str, Any]:
    """Who holds the service's release slot, and whether that run is alive (its heartbeat is fresh)."""
    with get_client(sync_client=True) as client:
        beat = read_heartbeat(client, service)
    if beat is None:
        return {"live": False, "stale_run": None, "text": "none"}
    age = time.time() - float(beat.get("at", 0))
    run = str(beat.get("run") or "unknown")
    if age < stale_after:
        return {"live": True, "stale_run": None, "text": f"run {run} (heartbeat {age:.0f} s ago)"}
    return {"live": False, "stale_run": run,
            "text": f"none live: run {run} stopped {age:.0f} s ago without finishing; the next release takes over"}


def last_runs(service: str, limit: int = 5) -> list[str]:
    with get_client(sync_client=True) as client:
        runs = client.read_flow_runs(
            flow_run_filter=FlowRunFilter(tags=FlowRunFilterTags(all_=[f"service:{service}"])),
            sort=FlowRunSort.START_TIME_DESC,
            limit=limit,
        )
    return [
        f"{r.name} {outcome_of(r.state)} {r.start_time or ''} {r.id}" for r in runs
    ]


def previous_release_sha(clients: AwsClients, live_task_definition: str, live_sha: str | None) -> str:
    """The SHA of the newest earlier revision in the family that runs another commit."""
    ecs = clients.get("ecs")
    family, revision = live_task_definition.rsplit("/", 1)[-1].rsplit(":", 1)
    for rev in range(int(revision) - 1, 0, -1):
        try:
            found = ecs.describe_task_definition(taskDefinition=f"{family}:{rev}", include=["TAGS"])
        except ClientError as exc:
            if error_code(exc) in ("ClientException", "InvalidParameterException"):
                continue  # a deleted revision: look further back
            raise  # a throttle must not make the rollback skip to an older commit
        tags = {t["key"]: t["value"] for t in found.get("tags", [])}
        if tags.get(SHA_TAG) and tags[SHA_TAG] != live_sha:
            return str(tags[SHA_TAG])
    raise DeployError(f"no earlier revision of {family} with a git SHA to roll back to")


def rollback_service(service: str) -> str:
    """Instant while blue is still up (production back to it), else a release of the previous SHA."""
    clients = AwsClients(Settings())
    cfg = find_service(service, clients.settings.deployments)
    ecs = clients.get("ecs")
    svc = ecs_ops.describe_service(ecs, cfg.ecs.cluster, cfg.ecs.service)
    primary = ecs_ops.primary_task_set(svc)
    green = [ts for ts in svc.get("taskSets", []) if ts.get("status") == "ACTIVE"]
    if cfg.load_balancer is not None and primary is not None and green:
        # Blue is still the primary task set (a release between deploy green and teardown,
        # running or left by a dead run): put every listener back on it and remove green.
        routing = traffic.resolve_routing(clients.get("elbv2"), cfg.load_balancer)
        tg = ecs_ops.task_set_target_group(primary)
        if tg:
            elbv2 = clients.get("elbv2")
            traffic.set_weights(elbv2, routing.production_listener, {tg: 100})
            traffic.set_weights(elbv2, routing.test_listener, {tg: 100})
            for ts in green:
                ecs_ops.delete_task_set(ecs, cfg.ecs.cluster, cfg.ecs.service, ts["taskSetArn"])
            removed = ", ".join(f"{ts['id']} ({ts['taskDefinition'].rsplit('/', 1)[-1]})" for ts in green)
            return (f"production back to 100% on {primary['taskDefinition'].rsplit('/', 1)[-1]} "
                    f"(blue was still up); removed task set(s) {removed}")
    live = live_release(cfg, clients)
    if live.task_definition is None:
        raise DeployError(f"{service} has never been deployed: nothing to roll back to")
    sha = previous_release_sha(clients, live.task_definition, live.sha)
    from flows.pipeline import deploy_service

    state = deploy_service(service, sha=sha, force=True, allow_older=True, return_state=True)
    return str(state.message or state.name)


def plan_release(service: str, sha: str | None) -> list[str]:
    """What `deploy` would do, without changing anything (the --dry-run)."""
    from tasks.aws import ecr
    from tasks.build import source
    clients = AwsClients(Settings())
    cfg = find_service(service, clients.settings.deployments)
    full = source.resolve_commit(
        cfg.repo_location, cfg.source.branch, sha, cache_dir=clients.settings.cache / "git"
    )
    live = live_release(cfg, clients)
    lines = [f"service {cfg.name}: release {full} (live: {live.sha or 'nothing'})"]
    if live.sha == full:
        return [*lines, "no change: production already runs this commit"]
    ecr_client = clients.get("ecr")
    try:
        digest = ecr.find_image_digest(ecr_client, cfg.ecr.repository, full)
    except ClientError as exc:
        if error_code(exc) != "RepositoryNotFoundException":
            raise
        digest = None
        lines.append("ECR: RepositoryNotFoundException; the build stage would create the repository")
    lines.append("build + push: skipped, image in ECR" if digest else "build + push: would run")
    image = digest if digest else f"<{cfg.ecr.repository}@digest>"
    desired = render(cfg, image, full)
    current = latest_task_definition(clients.get("ecs"), desired["family"])
    changes = diff_task_definitions(current or {}, desired)
    lines.append(f"task definition {desired['family']}: {len(changes)} change(s) from the latest revision")
    lines += [f"  {c}" for c in changes]
    steps = " → ".join(f"{w}%" for w in cfg.strategy.traffic.steps())
    lines.append(f"strategy {cfg.strategy.type}: production {steps}, bake {cfg.bake_seconds}s, then blue removed")
    return lines


def render_service(service: str, image: str, sha: str | None) -> dict[str, Any]:
    return render(find_service(service, Settings().deployments), image, sha)


def diff_service(service: str, image: str | None) -> list[str]:
    clients = AwsClients(Settings())
    cfg = find_service(service, clients.settings.deployments)
    live = live_release(cfg, clients)
    current: dict[str, Any] | None = None
    sha = live.sha
    if live.task_definition:
        found = clients.get("ecs").describe_task_definition(taskDefinition=live.task_definition, include=["TAGS"])
        current = {**found["taskDefinition"], "tags": found.get("tags", [])}
        # render as the live revision was rendered: with the commit its tag records
        sha = next((t["value"] for t in current["tags"] if t["key"] == SHA_TAG), sha)
    desired = render(cfg, image or live.image or "<IMAGE>", sha)
    if current is None:
        current = latest_task_definition(clients.get("ecs"), desired["family"])
    return [str(c) for c in diff_task_definitions(current or {}, desired)]
