"""release-fleet: many services released as child runs of deploy-service, in waves.

Each service is an ordinary ``deploy-service`` flow run (its own lock,
superseding, rollback), a child of the fleet run; this flow only orders them
in waves of ``max_parallel``, holds the later waves after a failure when asked,
and writes one summary artifact: per service the outcome, SHA, time and reason.

Where the children run (``children``):

* ``threads`` (default): in this process, one thread per service of the wave.
  A child costs no process start and no second import of the pipeline (on a
  loaded host that was most of a release), and twenty copies of one app share
  the one image build (tasks/build/image.py). A retry of the fleet run resumes each
  service (every stage checks the real state first).
* ``deployment``: each child is a run of the deploy-service deployment, so
  whichever worker is free runs it (spread over hosts, each with its own Retry
  button), at the price of one flow-run process per service.

Migrations (``migrate:``): with threads, a wave's services all pass their
migrations before any of them moves production (tasks/release/fleet_plan.WaveGate).
As deployment runs, each service's migration gates its own shift only.
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Sequence
from typing import Any, Literal
from uuid import UUID

from prefect import flow, get_run_logger, task
from prefect.artifacts import create_markdown_artifact
from prefect.cache_policies import NO_CACHE
from prefect.client.orchestration import get_client
from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterId
from prefect.client.schemas.objects import FlowRun, State
from prefect.deployments import run_deployment
from prefect.futures import PrefectFuture
from prefect.runtime import flow_run
from prefect.states import Completed, Failed
from prefect.task_runners import TaskRunner, ThreadPoolTaskRunner

from flows.pipeline import deploy_service
from tasks.build.source import redact_url, resolve_heads
from tasks.config.models import ServiceConfig, load_all_services
from tasks.core.errors import PipelineError
from tasks.core.settings import Settings
from tasks.core.waits import stop_every_release
from tasks.release.fleet_plan import (
    FleetSummary,
    ServiceResult,
    WaveGate,
    classify,
    gate_seconds,
    in_wave,
    plan_waves,
    select_services,
)
from tasks.release.outcome import outcome_of, reason_in
from tasks.release.runs import DEPLOY_DEPLOYMENT, ensure_run_tags, fleet_run_name, run_tags
from tasks.release.skeleton import sigterm_deferred
from tasks.triggers.repositories import group_by_repo

FLEET_ARTIFACT = "fleet-release"
MAX_THREADS = 32  # children released at once in this process (a larger wave waits for a thread)
Children = Literal["threads", "deployment"]


THREADS: TaskRunner[PrefectFuture[Any]] = ThreadPoolTaskRunner(max_workers=MAX_THREADS)  # type: ignore[assignment]


def named_after_selection() -> str:
    """The fleet run's name as it starts (``fleet sample-app,api @head``); ``name_fleet_run`` makes it exact."""
    params = flow_run.get_parameters()
    services, sha = params.get("services"), params.get("sha")
    return fleet_run_name(services, [sha], len(services) if services else None)


def name_fleet_run(patterns: list[str] | None, shas: dict[str, str], count: int) -> None:
    """Once the services and their commits are known: ``fleet 20 services @a1b2c3d``."""
    run_id = flow_run.get_id()
    if not run_id:
        return
    name = fleet_run_name(patterns, shas.values(), count)
    if name != flow_run.get_name():
        with get_client(sync_client=True) as client:
            client.update_flow_run(UUID(str(run_id)), name=name)


@flow(name="release-fleet", flow_run_name=named_after_selection, log_prints=True, task_runner=THREADS)
def release_fleet(
    services: list[str] | None = None,
    sha: str | None = None,
    max_parallel: int = 4,
    stop_on_first_failure: bool = False,
    deployment_name: str = DEPLOY_DEPLOYMENT,
    origin: str = "fleet",
    children: Children = "threads",
) -> State[Any]:
    """Release SERVICES (names or globs; all when empty) at SHA (default: each branch head), in waves.

    Args:
        services: Services to release, by name or glob (e.g. shop-*). Empty: every service in deployments/.
        sha: The commit to release in every service. Empty: each service's branch head.
        max_parallel: How many services are released at once (one wave).
        stop_on_first_failure: Hold the later waves once a service failed (they are listed as held).
        deployment_name: The deploy-service deployment that runs each service when children is deployment.
        origin: What started the fleet, kept as each service run's trigger tag (fleet, push, cli).
        children: threads: every service in this run's process; deployment: each as a deploy-service run
            on whichever worker is free.
    """
    log = get_run_logger()
    configs = select_services(load_all_services(Settings().deployments), services)
    summary = FleetSummary(max_parallel=max_parallel, stop_on_first_failure=stop_on_first_failure)
    shas = target_shas(configs, sha, summary)
    name_fleet_run(services, shas, len(configs))
    ready = [c.name for c in configs if c.name in shas]
    run_id, attempt = flow_run.get_id(), flow_run.get_run_count()
    migrating = {c.name: c for c in configs if c.migrate is not None}
    size = max_parallel
    if children == "threads" and migrating and max_parallel > MAX_THREADS:
        size = MAX_THREADS  # a wave's services wait for each other at their migrations: each needs its thread
        log.info("waves of %d, not %d: services with migrations wait for their whole wave", size, max_parallel)
    for number, wave in enumerate(plan_waves(ready, size), start=1):
        if stop_on_first_failure and summary.failed:
            for name in wave:
                summary.results.append(ServiceResult(name, shas[name], number, "held", "Held",
                                                     reason=f"held: {', '.join(summary.failed)} failed first"))
            continue
        log.info("wave %d (%s): %s", number, children, ", ".join(wave))
        if children == "deployment":
            key = f"{run_id}:{attempt}" if run_id else None
            started = {name: start_child(deployment_name, name, shas[name], origin, key) for name in wave}
            for name, run in wait_final(started).items():
                summary.results.append(result_of(name, shas[name], number, run))
        else:
            gated = [migrating[n] for n in wave if n in migrating]
            gate = WaveGate(wave, gate_seconds(gated)) if gated else None  # no migration: nothing to order
            futures = [release_here.submit(name, shas[name], number, origin, gate) for name in wave]
            try:
                summary.results.extend(f.result() for f in futures)
            except BaseException:
                # Cancelled, or SIGTERM to the worker: it arrives in this thread only. Every child
                # rolls back at its next wait; the process ends once they have.
                stop_every_release("the fleet run is stopping (cancelled, or its worker shuts down)")
                with sigterm_deferred():
                    for future in futures:
                        future.wait()
                raise
    summary.results.sort(key=lambda r: (r.wave or 1_000_000, r.service))
    create_markdown_artifact(key=FLEET_ARTIFACT, markdown=summary.markdown(), description=summary.headline())
    log.info("fleet: %s", summary.headline())
    data = {r.service: r.__dict__ for r in summary.results}
    # Built-in state names (the UI filters by them), the outcome leading the message, as deploy-service does.
    if summary.failed or any(r.outcome == "held" for r in summary.results):
        return Failed(message=f"Fleet failed: {summary.headline()}", data=data)
    return Completed(message=f"Fleet deployed: {summary.headline()}", data=data)


def target_shas(configs: Sequence[ServiceConfig], sha: str | None, summary: FleetSummary) -> dict[str, str]:
    """Each service's commit: SHA for all, or its branch head (one ``git ls-remote`` per repository).

    A repository that does not answer fails its services in the summary; the others go on.
    """
    if sha:
        return {c.name: sha for c in configs}
    found: dict[str, str] = {}
    for group in group_by_repo(configs).values():
        repo = group[0].repo_location
        try:
            heads = resolve_heads(repo, sorted({c.source.branch for c in group}))
        except PipelineError as exc:
            for c in group:
                summary.results.append(ServiceResult(c.name, None, 0, "failed", "Not started", reason=str(exc)))
            continue
        for c in group:
            if c.source.branch in heads:
                found[c.name] = heads[c.source.branch]
            else:
                why = f"branch {c.source.branch} not found in {redact_url(repo)}"
                summary.results.append(ServiceResult(c.name, None, 0, "failed", "Not started", reason=why))
    return found


@task(name="release service", task_run_name="release {service}@{sha:.7}", cache_policy=NO_CACHE,
      persist_result=False)  # fmt: skip
def release_here(service: str, sha: str, wave: int, origin: str, gate: WaveGate | None = None) -> ServiceResult:
    """deploy-service for SERVICE as a child flow run in this process; its end, whatever it is, as a line.

    The child gets its tags from deploy-service itself (``service:`` and ``sha:``, before its lock) and
    here (``trigger:``, once over), not from a tags context: Prefect gives a context's tags to every
    task run too, and asks the server for a concurrency slot per tagged task run (a round trip
    through one event loop shared by the whole fleet, before each of the release's tasks).
    """
    started = time.monotonic()
    with in_wave(gate or WaveGate([service], 0), service):  # its wave's migrations before its shift
        state = deploy_service(service=service, sha=sha, return_state=True)
    name = outcome_of(state)
    message = reason_in(state)
    run_id = state.state_details.flow_run_id
    if run_id:
        ensure_run_tags(run_id, service, sha, origin)
    outcome = classify(str(state.type.value), name)
    seconds = time.monotonic() - started
    return ServiceResult(service, sha, wave, outcome, name, seconds, message, str(run_id) if run_id else None)


def start_child(deployment_name: str, service: str, sha: str, origin: str, key: str | None) -> UUID:
    """A deploy-service run for SERVICE, linked to this fleet run; a retried fleet run makes new ones."""
    run = run_deployment(
        deployment_name, parameters={"service": service, "sha": sha}, timeout=0,
        tags=run_tags(service, sha, origin), flow_run_name=f"{service}-{sha[:7]}",
        idempotency_key=f"{key}:{service}" if key else None,
    )  # fmt: skip
    assert isinstance(run, FlowRun)
    return run.id


def wait_final(run_ids: dict[str, UUID], poll_seconds: float = 1.0) -> dict[str, FlowRun]:
    """Block until every run has a final state; one API read per poll for the whole wave."""
    waiting = dict(run_ids)
    done: dict[str, FlowRun] = {}
    by_id = {v: k for k, v in run_ids.items()}
    with get_client(sync_client=True) as client:
        while waiting:
            runs = client.read_flow_runs(
                flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=list(waiting.values()))),
                limit=len(waiting),
            )
            for run in runs:
                if run.state is not None and run.state.is_final():
                    name = by_id[run.id]
                    done[name] = run
                    waiting.pop(name, None)
            if waiting:
                time.sleep(poll_seconds)
    return done


def result_of(service: str, sha: str, wave: int, run: FlowRun) -> ServiceResult:
    state = run.state
    name = outcome_of(state)
    outcome = classify(str(state.type.value) if state is not None else None, name)
    seconds = run.total_run_time.total_seconds() if run.total_run_time else None
    return ServiceResult(service, sha, wave, outcome, name, seconds, reason_in(state), str(run.id))


# -- the CLI: ecs-pipeline deploy --all | --select PATTERN ------------------------


def cmd_fleet(args: argparse.Namespace) -> int:
    """Release the fleet from here; each service in a thread here, or (--children deployment) on a worker."""
    if args.service:
        raise PipelineError("give a SERVICE, or --all / --select, not both")
    patterns = None if args.all else list(args.select)
    if args.dry_run:
        configs = select_services(load_all_services(Settings().deployments), patterns)
        for n, wave in enumerate(plan_waves([c.name for c in configs], args.max_parallel), start=1):
            print(f"wave {n}: {', '.join(wave)}")
        return 0
    state = release_fleet(
        services=patterns, sha=args.sha, max_parallel=args.max_parallel,
        stop_on_first_failure=args.stop_on_first_failure, children=args.children, return_state=True,
    )  # fmt: skip
    print(state.message or state.name)
    return 0 if state.is_completed() else 1
