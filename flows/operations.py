"""Day-two commands: status (one service or every one), rollback, render, diff."""

from __future__ import annotations

import contextlib
import time
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime
from typing import Any

from prefect import flow, get_run_logger
from prefect.client.orchestration import get_client
from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterTags
from prefect.client.schemas.objects import State
from prefect.client.schemas.sorting import FlowRunSort
from prefect.logging import get_logger
from prefect.runtime import flow_run
from prefect.settings import PREFECT_UI_URL

from flows.pipeline import deploy_service, stopped_by
from flows.terminal import Seen, read_run
from tasks.aws import ecr, traffic
from tasks.aws import ecs as ecs_ops
from tasks.aws.clients import AwsClients
from tasks.aws.errors import translate
from tasks.config.models import ServiceConfig, find_service, load_all_services
from tasks.config.taskdef import SHA_TAG, diff_task_definitions
from tasks.core.errors import DeployError, NotFound, PipelineError
from tasks.core.report import ReleaseSummary
from tasks.core.settings import Settings
from tasks.core.waits import abort_when
from tasks.release.live_view import read_live
from tasks.release.locks import ServiceBusy, StopWatch, read_heartbeat, service_lock
from tasks.release.manifest import Manifest, ManifestStore, ServiceEntry, record_release_manifest
from tasks.release.manifest_restore import manifest_drift
from tasks.release.outcome import OUTCOME_TYPES, final_state, outcome_of
from tasks.release.runs import ensure_run_tags
from tasks.release.skeleton import roll_back_in_flight
from tasks.release.stages import latest_task_definition, live_release, render
from tasks.strategies.choose import choose_strategy

Manifests = dict[str, tuple[Manifest, ServiceEntry]]
ROLLBACK_LOCK_WAIT = 60.0  # seconds `rollback` waits for a release of the service to end before it refuses


# What `ecs-pipeline status --json`, `rollback --json` and `diff --json` print. Keys are stable (new
# ones may be added, none renamed or removed). Types: "string", "integer", "number", "boolean", "time"
# (an ISO-8601 string with its UTC offset), "url" (a string); a tuple is "one of" (None: null); a list
# [X] is a list of X; a dict is an object with exactly these keys. `status SERVICE --json` prints
# STATUS_ONE_SCHEMA, `status --json` STATUS_ALL_SCHEMA, `rollback --json` ROLLBACK_SCHEMA, `diff --json`
# DIFF_SCHEMA.
RUN_SCHEMA: dict[str, Any] = {
    "id": "string", "name": "string", "outcome": "string", "state": "string",
    "reason": ("string", None), "started_at": ("time", None), "url": ("url", None),
}
# Drift from the last release: what the pipeline last put live (the service's -live record) against what
# AWS says serves now. drifted: they differ (a change by hand, or a release half-way); detail: what
# differs, or "no release recorded" (nothing to compare with), null when they agree; once a release manifest
# names the service, drifted and detail take in MANIFEST_DRIFT_SCHEMA's difference too.
DRIFT_SCHEMA: dict[str, Any] = {"drifted": "boolean", "detail": ("string", None)}
# Drift from the newest release manifest naming the service (`ecs-pipeline manifest`): its run and time, and
# whether what AWS serves differs from it (detail: "differs from manifest of run X at TIME: live app:7,
# manifest app:5", null when the same).
MANIFEST_DRIFT_SCHEMA: dict[str, Any] = {"run_id": ("string", None), "run_url": ("url", None),
                                         "created_at": "time", "drifted": "boolean", "detail": ("string", None)}
SERVICE_STATUS_SCHEMA: dict[str, Any] = {
    "service": "string",
    "strategy": "string",  # the service file's strategy.type
    "controller": ("string", None),  # the ECS service's deployment controller
    "live": {"sha": ("string", None), "image": ("string", None), "task_definition": ("string", None),
             "since": ("time", None)},
    "running": ("integer", None),
    "desired": ("integer", None),
    # The production listener's split. role: "blue" (what production ran before the release in flight,
    # or before the last one), "green" (what that release brings), null where neither applies (rolling).
    "traffic": [{"role": ("string", None), "target_group": "string", "weight": "integer"}],
    "production_url": ("url", None),
    "task_sets": [{"id": "string", "status": "string", "task_definition": "string", "running": "integer",
                   "target_group": ("string", None)}],
    "release_in_flight": ({"run_id": "string", "run_name": ("string", None), "url": ("url", None),
                           "alive": "boolean", "heartbeat_age_seconds": "number", "stage": ("string", None),
                           "green_percent": ("number", None)}, None),
    "left_by_dead_run": ("string", None),
    "last_outcome": (RUN_SCHEMA, None),  # the newest run that has finished
    "last_runs": [RUN_SCHEMA],  # newest first
    "drift": (DRIFT_SCHEMA, None),  # null when the service could not be read
    "manifest_drift": (MANIFEST_DRIFT_SCHEMA, None),  # null when no manifest names it (or it could not be read)
    "error": ("string", None),  # why the service could not be read (the other keys are then mostly null)
}
SERVING_SCHEMA: dict[str, Any] = {"deployment": "string", "ready": ("boolean", None), "detail": "string"}
STATUS_ONE_SCHEMA: dict[str, Any] = {**SERVICE_STATUS_SCHEMA, "deploy_service": SERVING_SCHEMA}
STATUS_ALL_SCHEMA: dict[str, Any] = {
    "generated_at": "time", "deployments": "string", "services": [SERVICE_STATUS_SCHEMA],
    "deploy_service": SERVING_SCHEMA,
}
# `rollback SERVICE --json`: the rollback run's outcome. production_restored: production is back on the
# previous release (the command then exits 0).
ROLLBACK_SCHEMA: dict[str, Any] = {
    "service": "string", "outcome": "string", "state": "string", "reason": ("string", None),
    "production_restored": "boolean", "run_id": ("string", None), "url": ("url", None),
    "finished_at": ("time", None),
}
# `diff SERVICE --json`: the task definition a release would register against the live revision.
# kind: "added", "removed" or "changed"; line: the change as `diff` prints it (secret values hidden).
DIFF_SCHEMA: dict[str, Any] = {
    "service": "string", "task_definition": ("string", None), "image": ("string", None), "differs": "boolean",
    "changes": [{"path": "string", "kind": "string", "line": "string"}],
}
FINISHED = ("COMPLETED", "FAILED", "CANCELLED", "CRASHED")


def service_status(service: str) -> dict[str, Any]:
    """One service as SERVICE_STATUS_SCHEMA describes it; an unknown service or a failed read raises."""
    clients = AwsClients(Settings())
    cfg = find_service(service, clients.settings.deployments)
    return read_status(cfg, clients, newest_manifests([cfg.name], clients))


def all_services_status(parallel: int = 8) -> dict[str, Any]:
    """Every service of the deployments folder, read side by side; one that cannot be read carries its
    error instead of failing the others."""
    clients = AwsClients(Settings())
    configs = sorted(load_all_services(clients.settings.deployments), key=lambda cfg: cfg.name)
    manifests = newest_manifests([cfg.name for cfg in configs], clients)
    with ThreadPoolExecutor(max_workers=max(1, min(parallel, len(configs)))) as pool:
        rows = list(pool.map(lambda cfg: status_or_error(cfg, clients, manifests), configs))
    return {"generated_at": datetime.now(UTC).isoformat(timespec="seconds"),
            "deployments": str(clients.settings.deployments), "services": rows}


def newest_manifests(names: list[str], clients: AwsClients) -> Manifests:
    """Each service's newest release manifest entry; none when the store cannot be read (drift then says so)."""
    try:
        return ManifestStore.from_clients(clients).newest_by_service(names)
    except Exception as exc:  # noqa: BLE001 - status shows what AWS serves even when the manifests are away
        get_logger("ecs-pipeline.status").warning("release manifests not read: %s", exc)
        return {}


def status_or_error(cfg: ServiceConfig, clients: AwsClients, manifests: Manifests | None = None) -> dict[str, Any]:
    try:
        return read_status(cfg, clients, manifests)
    except Exception as exc:  # noqa: BLE001 - one service's refusal or outage is that row's news, not the table's
        reason = translate(exc)
        text = str(reason) if isinstance(reason, PipelineError) else f"{type(exc).__name__}: {exc}"
        return {**empty_status(cfg), "error": text}


def empty_status(cfg: ServiceConfig) -> dict[str, Any]:
    return {"service": cfg.name, "strategy": cfg.strategy.type, "controller": None,
            "live": {"sha": None, "image": None, "task_definition": None, "since": None},
            "running": None, "desired": None, "traffic": [], "production_url": None, "task_sets": [],
            "release_in_flight": None, "left_by_dead_run": None, "last_outcome": None, "last_runs": [],
            "drift": None, "manifest_drift": None, "error": None}


def read_status(cfg: ServiceConfig, clients: AwsClients, manifests: Manifests | None = None) -> dict[str, Any]:
    clients = clients.for_service(cfg)
    svc = ecs_ops.describe_service(clients.get("ecs"), cfg.ecs.cluster, cfg.ecs.service)
    live = live_release(cfg, clients, svc)
    info = empty_status(cfg)
    runs = last_runs(cfg.name)
    holder = slot_holder(cfg.name, clients.settings.lock_stale_seconds)
    info.update(
        controller=ecs_ops.controller_type(svc),
        live={"sha": live.sha, "image": live.image, "task_definition": live.task_definition,
              "since": live_since(svc, live.task_definition)},
        running=int(svc.get("runningCount", 0)), desired=int(svc.get("desiredCount", 0)),
        release_in_flight=holder, last_runs=runs,
        last_outcome=next((r for r in runs if r["state"] in FINISHED and r["id"] != (holder or {}).get("run_id")),
                          None),
    )
    record = read_live(cfg.name)
    recorded = None if record is None else {
        "sha": record.sha, "image": record.image, "task_definition": record.task_definition}
    info["drift"] = drift_of(recorded, info["live"], bool(holder and holder["alive"]))
    add_manifest_drift(info, (manifests or {}).get(cfg.name), bool(holder and holder["alive"]))
    if record is not None and record.since and not info["drift"]["drifted"] and record.task_definition:
        # When the pipeline put it live (verified, traffic moved), rather than when its ECS deployment or task
        # set was made: for an ECS-native service that is the whole deployment, bake included.
        went_live = datetime.strptime(record.since, "%Y-%m-%d %H:%M:%S UTC").replace(tzinfo=UTC)
        info["live"]["since"] = went_live.isoformat(timespec="seconds")
    names: dict[str, str] = {}
    if cfg.load_balancer is not None:
        routing = traffic.resolve_routing(clients.get("elbv2"), cfg.load_balancer)
        names = dict(zip(routing.target_groups, routing.target_group_names, strict=True))
        weights = traffic.get_weights(clients.get("elbv2"), routing.production_listener)
        primary = ecs_ops.primary_task_set(svc)
        blue = ecs_ops.task_set_target_group(primary) if primary else None
        in_flight = bool(holder and holder["alive"]) or len(svc.get("taskSets", [])) > 1
        settled = None if cfg.strategy.type == "rolling" else settled_role(runs)
        info["traffic"] = [
            {**side, "target_group": names.get(side["target_group"], side["target_group"])}
            for side in label_sides(weights, blue, settled, in_flight)
        ]
        info["production_url"] = routing.production_url
    info["task_sets"] = [
        {"id": ts["id"], "status": ts["status"], "task_definition": ts["taskDefinition"].rsplit("/", 1)[-1],
         "running": int(ts.get("runningCount", 0)),
         "target_group": names.get(tg, tg) if (tg := ecs_ops.task_set_target_group(ts)) else None}
        for ts in svc.get("taskSets", [])
    ]
    others = [ts["id"] for ts in svc.get("taskSets", []) if ts.get("status") == "ACTIVE"]
    if others and not (holder and holder["alive"]):
        info["left_by_dead_run"] = (f"task set(s) {', '.join(others)} beside the primary; the next release "
                                    f"reconciles them, or run: ecs-pipeline rollback {cfg.name}")
    return info


def drift_of(recorded: dict[str, str | None] | None, live: dict[str, Any], in_flight: bool = False) -> dict[str, Any]:
    """DRIFT_SCHEMA: RECORDED (sha, image, task_definition the last release put live; None: no record)
    against LIVE (the same keys, as AWS says now). The task definition decides (family:revision); the image
    only when the record names none. The commits, when both are known, say what the difference means."""
    if recorded is None or not any(recorded.values()):
        return {"drifted": False, "detail": "no release recorded"}
    if recorded.get("task_definition"):
        key, was, now = "task definition", short_revision(recorded["task_definition"]), short_revision(
            live.get("task_definition"))
    else:
        key, was, now = "image", recorded.get("image") or "none", live.get("image") or "none"
    if was == now:
        return {"drifted": False, "detail": None}
    detail = f"live {key} {now}, last release put {was} live"
    old, new = recorded.get("sha"), live.get("sha")
    if old and new and old != new:
        detail += f" (commit {new[:7]} serves, {old[:7]} was released)"
    if in_flight:
        detail += "; a release is in flight"
    return {"drifted": True, "detail": detail}


def add_manifest_drift(info: dict[str, Any], newest: tuple[Manifest, ServiceEntry] | None, in_flight: bool) -> None:
    """INFO's drift with the service's newest manifest entry (NEWEST) compared too."""
    drift = info["drift"]
    info["manifest_drift"] = found = manifest_drift(newest, info["live"], in_flight)
    if found and found["drifted"]:
        drift["detail"] = f"{drift['detail']}; {found['detail']}" if drift["drifted"] else found["detail"]
        drift["drifted"] = True


def short_revision(task_definition: str | None) -> str:
    """family:revision of a task definition ARN (or of family:revision); "none" for no task definition."""
    return task_definition.rsplit("/", 1)[-1] if task_definition else "none"


def label_sides(
    weights: dict[str, int], blue: str | None, settled: str | None, in_flight: bool
) -> list[dict[str, Any]]:
    """Blue is what production ran before the release in flight, green what it brings (BLUE: blue's target
    group, when known). At rest the serving side keeps the name the last release left it with (SETTLED)."""
    serving = [tg for tg, w in weights.items() if w > 0]
    sides = []
    for tg, weight in weights.items():
        if in_flight or len(serving) > 1:
            role = None if blue is None else ("blue" if tg == blue else "green")
        else:
            role = settled if tg in serving else None
        sides.append({"role": role, "target_group": tg, "weight": weight})
    return sides


def settled_role(runs: list[dict[str, Any]]) -> str | None:
    """"green" when the newest release that moved production went live, "blue" when it was rolled back."""
    for run in runs:
        if run["outcome"] == "Deployed":
            return "green"
        if run["outcome"] == "Rolled back":
            return "blue"
    return None


def live_since(svc: dict[str, Any], task_definition: str | None) -> str | None:
    """When the task set (or ECS deployment) running the live task definition was created."""
    for item in [*svc.get("taskSets", []), *svc.get("deployments", [])]:
        created = item.get("createdAt")
        if task_definition and item.get("taskDefinition") == task_definition and isinstance(created, datetime):
            return created.astimezone(UTC).isoformat(timespec="seconds")
    return None


def run_url(run_id: Any) -> str | None:
    """The run's page in the Prefect UI (PREFECT_UI_URL, else the API's address without /api)."""
    ui = (PREFECT_UI_URL.value() or "").rstrip("/")
    return f"{ui}/runs/flow-run/{run_id}" if ui else None


def slot_holder(service: str, stale_after: float) -> dict[str, Any] | None:
    """The run holding the service's release slot: alive (fresh heartbeat) or not, its stage and progress."""
    with get_client(sync_client=True) as client:
        beat = read_heartbeat(client, service)
    if beat is None:
        return None
    age = max(0.0, time.time() - float(beat.get("at", 0)))
    run = str(beat.get("run") or "unknown")
    held = {"run_id": run, "run_name": None, "url": run_url(run) if beat.get("run") else None,
            "alive": age < stale_after, "heartbeat_age_seconds": round(age, 1), "stage": None, "green_percent": None}
    if held["alive"] and beat.get("run"):
        seen = Seen(run_id=run)
        with contextlib.suppress(Exception):  # a run deleted meanwhile: the slot's own facts stay
            read_run(seen)
        # A stage's task run is named "<stage> <service>"; one still under the name Prefect gave it on
        # creation (its own name reaches the server with a later state) is not shown as a stage yet.
        mine = [(name, kind) for name, kind, _ in seen.stages if name.endswith(f" {service}")]
        running = [name for name, kind in mine if kind == "RUNNING"]
        names = running or [name for name, _ in mine]
        held.update(run_name=seen.name or None, green_percent=seen.green_percent,
                    stage=names[-1].removesuffix(f" {service}") if names else None)
    return held


def last_runs(service: str, limit: int = 5) -> list[dict[str, Any]]:
    """The service's newest runs (releases, rollbacks), newest first."""
    with get_client(sync_client=True) as client:
        runs = client.read_flow_runs(
            flow_run_filter=FlowRunFilter(tags=FlowRunFilterTags(all_=[f"service:{service}"])),
            sort=FlowRunSort.START_TIME_DESC,
            limit=limit,
        )
    found = []
    for r in runs:
        outcome = outcome_of(r.state)
        message = (r.state.message if r.state else None) or None
        found.append({
            "id": str(r.id), "name": r.name, "outcome": outcome,
            "state": r.state.type.value if r.state else "UNKNOWN",
            "reason": message.removeprefix(f"{outcome}: ") if message else None,
            "started_at": r.start_time.astimezone(UTC).isoformat(timespec="seconds") if r.start_time else None,
            "url": run_url(r.id),
        })
    return found


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


def rollback_result(service: str, state: State[Any]) -> dict[str, Any]:
    """A rollback run's final state as ROLLBACK_SCHEMA describes it."""
    outcome = outcome_of(state)
    message = state.message or None
    run_id = state.state_details.flow_run_id
    return {
        "service": service, "outcome": outcome, "state": state.type.value,
        "reason": message.removeprefix(f"{outcome}: ") if message else None,
        "production_restored": outcome in ("Deployed", "Rolled back"),
        "run_id": str(run_id) if run_id else None, "url": run_url(run_id) if run_id else None,
        "finished_at": state.timestamp.astimezone(UTC).isoformat(timespec="seconds") if state.timestamp else None,
    }


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
            if outcome_of(state) in ("Deployed", "Rolled back"):  # production moved: what it runs now, best-effort
                record_release_manifest(cfg, clients, run_id)
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
    """`diff`'s lines: one per change, as DIFF_SCHEMA's "line"."""
    return [change["line"] for change in diff_report(service, image)["changes"]]


def diff_report(service: str, image: str | None) -> dict[str, Any]:
    """The task definition a release would register against the live revision, as DIFF_SCHEMA describes it."""
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
    image = image or live.image
    desired = render(cfg, image or "<IMAGE>", sha, clients)
    if current is None:
        current = latest_task_definition(clients.get("ecs"), desired["family"])
    changes = diff_task_definitions(current or {}, desired)
    arn = (current or {}).get("taskDefinitionArn")
    return {
        "service": cfg.name, "task_definition": str(arn).rsplit("/", 1)[-1] if arn else None, "image": image,
        "differs": bool(changes),
        "changes": [{"path": c.path, "line": str(c),
                     "kind": "added" if c.live is None else "removed" if c.desired is None else "changed"}
                    for c in changes],
    }
