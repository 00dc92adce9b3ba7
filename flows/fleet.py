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
import inspect
import time
from collections.abc import Collection, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal, cast
from uuid import UUID

import prefect.client.schemas.actions
import prefect.client.schemas.filters
import prefect.client.schemas.objects
import prefect.client.schemas.responses
import pydantic
from prefect import flow, get_run_logger, task
from prefect.artifacts import create_markdown_artifact
from prefect.cache_policies import NO_CACHE
from prefect.client.orchestration import get_client
from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterId
from prefect.client.schemas.objects import FlowRun, State
from prefect.deployments import run_deployment
from prefect.futures import PrefectConcurrentFuture, PrefectFuture
from prefect.runtime import flow_run
from prefect.states import Completed, Failed
from prefect.task_runners import TaskRunner, ThreadPoolTaskRunner

from flows.pipeline import deploy_service
from tasks.aws.clients import AwsClients
from tasks.build.source import redact_url, resolve_heads
from tasks.config.models import ServiceConfig, load_all_services
from tasks.core.errors import ConfigError, PipelineError, reason_of
from tasks.core.settings import Settings
from tasks.core.waits import stop_every_release
from tasks.release.fleet_order import check_dependencies, waves_in_order, why_held
from tasks.release.fleet_plan import (
    FleetHold,
    FleetSummary,
    ServiceResult,
    WaveGate,
    classify,
    creation_turn,
    gate_seconds,
    held_by,
    in_wave,
    select_services,
)
from tasks.release.manifest import record_fleet_manifest
from tasks.release.outcome import outcome_of, reason_in
from tasks.release.runs import DEPLOY_DEPLOYMENT, ensure_run_tags, fleet_run_name, run_tags
from tasks.release.skeleton import sigterm_deferred
from tasks.release.stages import live_release
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
    atomic: bool = False,
    shas: dict[str, str] | None = None,
    revisions: dict[str, str] | None = None,
) -> State[Any]:
    """Release SERVICES (names or globs; all when empty) at SHA (default: each branch head), in dependency order.

    Args:
        services: Services to release, by name or glob (e.g. shop-*). Empty: every service in deployments/.
        sha: The commit to release in every service. Empty: each service's branch head.
        max_parallel: How many services are released at once (one wave).
        stop_on_first_failure: Hold the later waves once a service failed (they are listed as held).
        deployment_name: The deploy-service deployment that runs each service when children is deployment.
        origin: What started the fleet, kept as each service run's trigger tag (fleet, push, cli).
        children: threads: every service in this run's process; deployment: each as a deploy-service run
            on whichever worker is free.
        atomic: One change, all or nothing: each service waits past its bake with blue warm until every
            service passed; when one fails, every service the fleet moved goes back (threads only).
        shas: One commit per service (a release manifest's, `deploy --manifest`): each is released even when
            live and even when older than the live one. Replaces sha.
        revisions: One task definition revision (ARN) per service, put live as it is when it runs the
            service's commit image (a release manifest's).
    """
    log = get_run_logger()
    everyone = load_all_services(Settings().deployments)
    check_dependencies(everyone)  # a circle or an unknown name: refused before any git or AWS call
    configs = select_services(everyone, services)
    check_atomic(atomic, children, len(configs))
    summary = FleetSummary(max_parallel=max_parallel, stop_on_first_failure=stop_on_first_failure, atomic=atomic)
    step_back = shas is not None  # a manifest's commits: older ones allowed, each released even when live
    shas = {c.name: shas[c.name] for c in configs if c.name in shas} if shas is not None else target_shas(
        configs, sha, summary)
    name_fleet_run(services, shas, len(configs))
    migrating = {c.name: c for c in configs if c.migrate is not None}
    size = max_parallel
    if children == "threads" and migrating and max_parallel > MAX_THREADS:
        size = MAX_THREADS  # a wave's services wait for each other at their migrations: each needs its thread
        log.info("waves of %d, not %d: services with migrations wait for their whole wave", size, max_parallel)
    waves = waves_in_order(configs, [c.name for c in configs if c.name in shas], size)
    before = versions_now(configs, shas) if atomic else {}  # what each runs before the fleet moves anything
    fleet = Fleet(configs, shas, summary, origin, children, deployment_name, FleetHold() if atomic else None,
                  revisions=dict(revisions or {}), step_back=step_back)
    if children == "threads":
        build_prefect_models()
    fleet.run(waves)
    say_ended_on(summary, before, versions_now(configs, before) if atomic else {})
    run_id = flow_run.get_id()
    record_fleet_manifest([c for c in configs if c.name in shas], AwsClients(Settings()), run_id)  # best-effort
    summary.results.sort(key=lambda r: (r.wave or 1_000_000, r.service))
    create_markdown_artifact(key=FLEET_ARTIFACT, markdown=summary.markdown(), description=summary.headline())
    told = summary.headline() + (f". {summary.aftermath()}" if summary.aftermath() else "")
    log.info("fleet: %s", told)
    data = {r.service: r.__dict__ for r in summary.results}
    # Built-in state names (the UI filters by them), the outcome leading the message, as deploy-service does.
    if summary.failed or any(r.outcome in ("held", "reverted") for r in summary.results):
        return Failed(message=f"Fleet failed: {told}", data=data)
    return Completed(message=f"Fleet deployed: {told}", data=data)


PREFECT_SCHEMAS = (prefect.client.schemas.actions, prefect.client.schemas.filters, prefect.client.schemas.objects,
                   prefect.client.schemas.responses)


def unbuilt_prefect_models() -> list[type[pydantic.BaseModel]]:
    """The models of Prefect's client schemas whose validators are not built yet."""
    return [model for module in PREFECT_SCHEMAS for model in vars(module).values()
            if inspect.isclass(model) and issubclass(model, pydantic.BaseModel)
            and model.__module__ == module.__name__ and not model.__pydantic_complete__]


def build_prefect_models() -> None:
    """Every model of Prefect's client schemas built now, in this thread, before the fleet's threads use them.

    Prefect's models build their validators on first use (pydantic's ``defer_build``), and in the pydantic
    this installs a model being built by one thread is used with its parent's validator by another
    (pydantic/pydantic#13438, fixed in 2.14): two children entering their deploy-service runs at once
    failed one with "parent_task_run_id: Extra inputs are not permitted" from ``_FlowRunFilterBaseModel``.
    About 0.1 s, once per process. A model that cannot be built yet is left to its first use, as before.
    """
    for model in unbuilt_prefect_models():
        model.model_rebuild(raise_errors=False)


def versions_now(configs: Sequence[ServiceConfig], names: Collection[str]) -> dict[str, str]:
    """What each of NAMES runs now, as ``family:revision @commit``, read from ECS and ECR."""
    clients = AwsClients(Settings())
    found: dict[str, str] = {}
    for cfg in configs:
        if cfg.name not in names:
            continue
        try:
            live = live_release(cfg, clients.for_service(cfg))
        except Exception as exc:  # noqa: BLE001 - a report: the releases themselves say what failed
            found[cfg.name] = f"unknown ({reason_of(exc)})"
            continue
        found[cfg.name] = f"{str(live.task_definition).rsplit('/', 1)[-1]} @{(live.sha or 'unknown commit')[:7]}"
    return found


def say_ended_on(summary: FleetSummary, before: dict[str, str], after: dict[str, str]) -> None:
    """Each line's ``ended on``: read after an atomic fleet (and whether it is what ran before), else the commit."""
    for r in summary.results:
        if r.service in after:
            same = after[r.service] == before.get(r.service)
            r.ended_on = f"{after[r.service]} ({'as before the fleet' if same else 'new'})"
            if r.outcome == "reverted" and not same:  # its rollback ended elsewhere (AWS had removed blue)
                r.outcome, r.reason = "failed", f"did not go back to {before.get(r.service)}: {r.reason}"
        elif r.outcome == "ok" and r.sha:
            r.ended_on = f"new version @{r.sha[:7]}"


def check_atomic(atomic: bool, children: Children, count: int) -> None:
    """An atomic fleet holds every service's release open in this process (each keeps a thread): say so first."""
    if not atomic:
        return
    if children != "threads":
        raise ConfigError("atomic keeps every service's blue warm inside the fleet run until all have passed; "
                          "deployment children end on their own: use children threads (the default) with atomic")
    if count > MAX_THREADS:
        raise ConfigError(f"atomic holds all {count} services open at once and the fleet runs {MAX_THREADS}: "
                          f"release at most {MAX_THREADS} services as one change (select fewer)")


@dataclass
class Fleet:
    """One fleet run's releases: started wave by wave, each service after those it depends on.

    A wave is a dependency layer's services, at most max_parallel of them, started together (their migrations
    gate their shifts together, fleet_plan.WaveGate); the next wave starts once each service of this one has
    ended, or, in an atomic fleet, passed its bake (it serves, verified; blue waits for the fleet's word).
    Layers keep it simple: a service may wait for an unrelated one of the layer before, never for one after.
    """

    configs: list[ServiceConfig]
    shas: dict[str, str]
    summary: FleetSummary
    origin: str
    children: Children
    deployment_name: str
    hold: FleetHold | None
    revisions: dict[str, str] = field(default_factory=dict)
    in_flight: dict[str, tuple[PrefectConcurrentFuture[ServiceResult], int]] = field(default_factory=dict)
    step_back: bool = False

    def run(self, waves: list[list[str]]) -> None:
        try:
            for number, wave in enumerate(waves, start=1):
                self.run_wave(number, wave)
            if self.hold is not None:
                self.decide(waves)
        except BaseException:
            # Cancelled, or SIGTERM to the worker: it arrives in this thread only. Every child (held ones
            # too) rolls back at its next wait; the process ends once they have.
            stop_every_release("the fleet run is stopping (cancelled, or its worker shuts down)")
            with sigterm_deferred():
                for future, _ in self.in_flight.values():
                    future.wait()
            raise

    def run_wave(self, number: int, wave: list[str]) -> None:
        ended = {r.service: r.outcome for r in self.summary.results}
        go: list[str] = []
        for name in wave:
            why = why_held(self.configs, name, ended, stop_on_first_failure=self.summary.stop_on_first_failure,
                           atomic=self.hold is not None)
            if why:
                self.summary.results.append(ServiceResult(name, self.shas[name], number, "held", "Held", reason=why))
            else:
                go.append(name)
        if not go:
            return
        get_run_logger().info("wave %d (%s): %s", number, self.children, ", ".join(go))
        if self.children == "deployment":
            run_id, attempt = flow_run.get_id(), flow_run.get_run_count()
            key = f"{run_id}:{attempt}" if run_id else None
            started = {n: start_child(self.deployment_name, n, self.shas[n], self.origin, key, self.step_back,
                                      self.revisions.get(n)) for n in go}
            for name, run in wait_final(started).items():
                self.summary.results.append(result_of(name, self.shas[name], number, run))
            return
        gated = [c for c in self.configs if c.name in go and c.migrate is not None]
        gate = WaveGate(go, gate_seconds(gated)) if gated else None  # no migration: nothing to order
        for name in go:
            future = release_here.submit(name, self.shas[name], number, self.origin, gate, self.hold, self.step_back,
                                         self.revisions.get(name))
            self.in_flight[name] = (cast(PrefectConcurrentFuture[ServiceResult], future), number)
        self.settle(go)

    def settle(self, names: list[str], *, to_the_end: bool = False) -> None:
        """Until each of NAMES has ended (its line in the summary) or, in an atomic fleet and unless TO_THE_END,
        passed its bake."""
        passing = self.hold if self.hold is not None and not to_the_end else None
        while True:
            for name in names:
                future, _ = self.in_flight.get(name, (None, 0))
                if future is not None and future.wrapped_future.done():
                    self.summary.results.append(future.result())
                    del self.in_flight[name]
            waiting = [n for n in names if n in self.in_flight and not (passing and passing.has_passed(n))]
            if not waiting:
                return
            self.in_flight[waiting[0]][0].wait(timeout=0.2)

    def decide(self, waves: list[list[str]]) -> None:
        """Every held service on to its teardown, or, when one failed, all back, dependents first."""
        assert self.hold is not None
        failed = [r for r in self.summary.results if r.outcome == "failed"]
        if not failed:
            for name in list(self.in_flight):
                self.hold.decide(name, None)
            self.settle(list(self.in_flight), to_the_end=True)
            return
        first = failed[0]
        back = f"the fleet goes back: {first.service} failed ({first.state}: {first.reason[:200]})"
        get_run_logger().warning("%s; every service it moved goes back, in reverse dependency order", back)
        sent: set[str] = set()
        for wave in reversed(waves):
            names = [n for n in wave if n in self.in_flight]
            for name in names:
                self.hold.decide(name, back)
            sent.update(names)
            self.settle(names, to_the_end=True)
        for r in self.summary.results:
            if r.service in sent and r.state == "Rolled back":
                r.outcome = "reverted"


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
def release_here(
    service: str, sha: str, wave: int, origin: str, gate: WaveGate | None = None, hold: FleetHold | None = None,
    step_back: bool = False, task_definition: str | None = None,
) -> ServiceResult:
    """deploy-service for SERVICE as a child flow run in this process; its end, whatever it is, as a line.

    The child gets its tags from deploy-service itself (``service:`` and ``sha:``, before its lock) and
    here (``trigger:``, once over), not from a tags context: Prefect gives a context's tags to every
    task run too, and asks the server for a concurrency slot per tagged task run (a round trip
    through one event loop shared by the whole fleet, before each of the release's tasks).
    """
    started = time.monotonic()
    try:
        with in_wave(gate or WaveGate([service], 0), service), held_by(hold, service), creation_turn():
            state = deploy_service(service=service, sha=sha, force=step_back, allow_older=step_back,
                                   task_definition=task_definition, return_state=True)
    except Exception as exc:  # noqa: BLE001 - the child's own bookkeeping failed (its API past every retry)
        # A release's own failures end its run with a state; this is the orchestrator failing under it.
        # This service's line says so, and the fleet's other services go on.
        why = (f"the Prefect API failed this release's run: {reason_of(exc)}. What it left is reconciled by "
               f"the next release of {service}")
        get_run_logger().error("%s: %s", service, why)
        return ServiceResult(service, sha, wave, "failed", "Crashed", time.monotonic() - started, why)
    name = outcome_of(state)
    message = reason_in(state)
    run_id = state.state_details.flow_run_id
    if run_id:
        try:
            ensure_run_tags(run_id, service, sha, origin)
        except Exception as exc:  # noqa: BLE001 - a search tag: the release's end stands without it
            get_run_logger().warning("%s: run %s not tagged trigger:%s: %s", service, run_id, origin, reason_of(exc))
    outcome = classify(str(state.type.value), name)
    seconds = time.monotonic() - started
    return ServiceResult(service, sha, wave, outcome, name, seconds, message, str(run_id) if run_id else None)


def start_child(
    deployment_name: str, service: str, sha: str, origin: str, key: str | None, step_back: bool = False,
    task_definition: str | None = None,
) -> UUID:
    """A deploy-service run for SERVICE, linked to this fleet run; a retried fleet run makes new ones."""
    back: dict[str, Any] = {"force": True, "allow_older": True} if step_back else {}
    if task_definition:
        back["task_definition"] = task_definition
    run = run_deployment(
        deployment_name, parameters={"service": service, "sha": sha, **back}, timeout=0,
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
            try:
                runs = client.read_flow_runs(
                    flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=list(waiting.values()))),
                    limit=len(waiting),
                )
            except Exception as exc:  # noqa: BLE001 - the API's bad minute outlasted its retries: the runs go on
                get_run_logger().warning("reading the wave's runs failed (%s); reading again", reason_of(exc))
                runs = []
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
        everyone = load_all_services(Settings().deployments)
        check_dependencies(everyone)
        configs = select_services(everyone, patterns)
        for n, wave in enumerate(waves_in_order(configs, [c.name for c in configs], args.max_parallel), start=1):
            print(f"wave {n}: {', '.join(wave)}")
        return 0
    state = release_fleet(
        services=patterns, sha=args.sha, max_parallel=args.max_parallel,
        stop_on_first_failure=args.stop_on_first_failure, children=args.children,
        atomic=getattr(args, "atomic", False), return_state=True,
    )  # fmt: skip
    print(state.message or state.name)
    return 0 if state.is_completed() else 1
