"""Day-two commands: status, rollback, render, diff."""

from __future__ import annotations

import time
from typing import Any

from prefect import flow, get_run_logger
from prefect.client.orchestration import get_client
from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterTags
from prefect.client.schemas.objects import State
from prefect.client.schemas.sorting import FlowRunSort
from prefect.runtime import flow_run

from flows.pipeline import deploy_service, stopped_by
from tasks.aws import ecs as ecs_ops
from tasks.aws import traffic
from tasks.aws.clients import AwsClients
from tasks.config.models import ServiceConfig, find_service
from tasks.config.taskdef import SHA_TAG, diff_task_definitions
from tasks.core.errors import DeployError, NotFound, PipelineError
from tasks.core.report import ReleaseSummary
from tasks.core.settings import Settings
from tasks.core.waits import abort_when
from tasks.release.locks import ServiceBusy, StopWatch, read_heartbeat, service_lock
from tasks.release.outcome import OUTCOME_TYPES, final_state, outcome_of
from tasks.release.runs import ensure_run_tags
from tasks.release.skeleton import roll_back_in_flight
from tasks.release.stages import latest_task_definition, live_release, render
from tasks.strategies.choose import choose_strategy

ROLLBACK_LOCK_WAIT = 60.0  # seconds `rollback` waits for a release of the service to end before it refuses


def service_status(service: str) -> dict[str, Any]:
    clients = AwsClients(Settings())
    cfg = find_service(service, clients.settings.deployments)
    clients = clients.for_service(cfg)
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
        # None for a deleted revision: look further back. A throttle raises: it must not
        # make the rollback skip to an older commit.
        found = ecs_ops.describe_revision(ecs, f"{family}:{rev}")
        if found is None:
            continue
        tags = {t["key"]: t["value"] for t in found.get("tags", [])}
        if tags.get(SHA_TAG) and tags[SHA_TAG] != live_sha:
            return str(tags[SHA_TAG])
    raise DeployError(f"no earlier revision of {family} with a git SHA to roll back to")


def rollback_service(service: str, wait_seconds: float = ROLLBACK_LOCK_WAIT) -> State[Any]:
    """`ecs-pipeline rollback`: its run's final state (the outcome leads the message)."""
    return rollback_flow(service, wait_seconds, return_state=True)


@flow(name="rollback-service", flow_run_name="rollback {service}", log_prints=True)
def rollback_flow(service: str, wait_seconds: float = ROLLBACK_LOCK_WAIT) -> State[Any]:
    """Production back on the last verified version, under the service's lock, never beside a live release.

    A release left half-way goes back through the release skeleton's own rollback; with nothing
    in flight, the commit before the live one is released (deploy-service, allow_older).
    """
    clients = AwsClients(Settings())
    try:
        cfg = find_service(service, clients.settings.deployments)
        clients = clients.for_service(cfg)
        run_id = flow_run.get_id()
        if run_id:
            ensure_run_tags(run_id, cfg.name, None)
        return roll_back_under_lock(cfg, clients, str(run_id) if run_id else None, wait_seconds)
    except ServiceBusy as busy:
        reason = f"{busy.message}; run the rollback again once it ends, or cancel it (it then rolls itself back)"
        get_run_logger().error("Failed: %s", reason)
        return final_state("Failed", reason)
    except PipelineError as exc:  # a broken file, or nothing to roll back to: refused, production untouched
        get_run_logger().error("Failed: %s", exc)
        return final_state("Failed", str(exc))


def roll_back_under_lock(cfg: ServiceConfig, clients: AwsClients, run_id: str | None, wait: float) -> State[Any]:
    """In flight: back through the skeleton's rollback, under the lock; else the previous commit's release,
    after the lock is let go (the release takes it itself)."""
    summary = ReleaseSummary(service=cfg.name, strategy=cfg.strategy.type)
    stop = StopWatch(run_id)
    lock = service_lock(cfg.name, run_id, clients.settings.lock_stale_seconds, give_up_after=wait)
    with abort_when(stop), lock as held:
        stop.held = held
        try:
            state = roll_back_in_flight(cfg, clients, summary, choose_strategy)
        except BaseException as exc:  # noqa: BLE001 - stopped_by re-raises what is no release outcome
            return stopped_by(exc, summary)
        if state is not None:
            return state
        live = live_release(cfg, clients)
        if live.task_definition is None:
            raise DeployError(f"{cfg.name} has never been deployed: nothing to roll back to", service=cfg.name)
        sha = previous_release_sha(clients, live.task_definition, live.sha)
    # The release takes the slot itself; a run that gets it first is one the release then waits for.
    get_run_logger().info("nothing in flight: releasing %s, the commit before the live one", sha[:12])
    released: State[Any] = deploy_service(cfg.name, sha=sha, force=True, allow_older=True, return_state=True)
    # This run ends as its release did (a child's own state would only count as "one state completed").
    outcome = outcome_of(released)
    text = (released.message or "").removeprefix(f"{outcome}: ")
    return final_state(outcome if outcome in OUTCOME_TYPES else "Failed", text)


def plan_release(service: str, sha: str | None) -> list[str]:
    """What `deploy` would do, without changing anything (the --dry-run)."""
    from tasks.aws import ecr
    from tasks.build import source
    clients = AwsClients(Settings())
    cfg = find_service(service, clients.settings.deployments)
    clients = clients.for_service(cfg)
    full = source.resolve_commit(
        cfg.repo_location, cfg.source.branch, sha, cache_dir=clients.settings.cache / "git"
    )
    live = live_release(cfg, clients)
    lines = [f"service {cfg.name}: release {full} (live: {live.sha or 'nothing'})"]
    if live.sha == full:
        return [*lines, "no change: production already runs this commit"]
    ecr_client = clients.get("ecr")
    try:
        digest = ecr.find_image_digest_for_plan(ecr_client, cfg.ecr.repository, full)
    except NotFound as missing:
        digest = None
        lines.append(f"ECR: {missing}; the build stage would create the repository")
    lines.append("build + push: skipped, image in ECR" if digest else "build + push: would run")
    image = digest if digest else f"<{cfg.ecr.repository}@digest>"
    desired = render(cfg, image, full, clients)
    current = latest_task_definition(clients.get("ecs"), desired["family"])
    changes = diff_task_definitions(current or {}, desired)
    lines.append(f"task definition {desired['family']}: {len(changes)} change(s) from the latest revision")
    lines += [f"  {c}" for c in changes]
    steps = " → ".join(f"{w}%" for w in cfg.strategy.traffic.steps())
    lines.append(f"strategy {cfg.strategy.type}: production {steps}, bake {cfg.bake_seconds}s, then blue removed")
    return lines


def render_service(service: str, image: str, sha: str | None) -> dict[str, Any]:
    """The template rendered offline: no AWS call, so <AWS_ACCOUNT_ID> and <AWS_REGION> stay as written
    (a release fills them from STS and the settings); `diff` shows them filled against the live revision."""
    return render(find_service(service, Settings().deployments), image, sha)


def diff_service(service: str, image: str | None) -> list[str]:
    clients = AwsClients(Settings())
    cfg = find_service(service, clients.settings.deployments)
    clients = clients.for_service(cfg)
    live = live_release(cfg, clients)
    current: dict[str, Any] | None = None
    sha = live.sha
    if live.task_definition:
        found = clients.get("ecs").describe_task_definition(taskDefinition=live.task_definition, include=["TAGS"])
        current = {**found["taskDefinition"], "tags": found.get("tags", [])}
        # render as the live revision was rendered: with the commit its tag records
        sha = next((t["value"] for t in current["tags"] if t["key"] == SHA_TAG), sha)
    desired = render(cfg, image or live.image or "<IMAGE>", sha, clients)
    if current is None:
        current = latest_task_definition(clients.get("ecs"), desired["family"])
    return [str(c) for c in diff_task_definitions(current or {}, desired)]
