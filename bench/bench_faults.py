"""Failure benchmarks on the sandbox, one table each, in one run.

1. rolling: `ecs-pipeline deploy` (CLI process) vs fabfuel `ecs deploy` on the same
   sandbox, alternating rounds: median wall time and AWS calls per release (sandbox request log),
   and a same-shaped Prefect flow run that does no work (what Prefect alone costs a CLI release).
   Each timed run starts on a quiet machine (bench/cost.py wait_quiet): the run before it leaves
   work behind (old tasks draining, the Prefect server storing its events) that would bill the next.
2. task-sets: one release without and one with weather (20 % throttling + 10 % 500 on
   every pipeline AWS call).
3. kill -9 matrix: a task-sets release killed at each point, then released again: seconds
   from the kill to the service being free (the dead run marked Crashed by the rerun), the
   rerun's outcome, images and revisions it made, failed production requests, and whether a
   `succeeded` event for the commit was stored. At "teardown" blue's DeleteTaskSet answers
   slowly so the kill lands inside the teardown (a release otherwise ends it before the kill).

    uv run python -m bench.bench_faults      (or `make bench`, which runs every benchmark)
    BENCH_FAULTS_PARTS=rolling uv run python -m bench.bench_faults   (only some tables: rolling,weather,kills)
    BENCH_OURS_ROOT=/tmp/main-export ...   (time another checkout's `ecs-pipeline deploy` in the rolling table)
"""

from __future__ import annotations

import os
import re
import statistics
import subprocess
import sys
import sysconfig
import tempfile
import time
from collections import Counter
from collections.abc import Callable
from datetime import datetime
from pathlib import Path
from typing import Any

from bench import figures
from bench.bench_pipeline import ensure_peer, load_sandbox, outcome_of, retag
from bench.cost import wait_quiet
from bench.figures import table

ROUNDS = int(os.environ.get("BENCH_ROUNDS", "7"))  # rounds of the rolling table: a median of 7 (5 swung 0.3 s)
PARTS = ("rolling", "weather", "kills")
STALE = 10.0  # ECS_PIPELINE_LOCK_STALE_SECONDS for the kill matrix (the default is 30)
TEARDOWN_SLOW = 5.0  # seconds blue's DeleteTaskSet takes to answer at the "teardown" kill point
ROOT = Path(__file__).resolve().parents[1]
# The checkout whose `ecs-pipeline deploy` the rolling table times (another one's flows/ and tasks/, e.g. an
# export of main, gives a before/after on one sandbox).
OURS_ROOT = Path(os.environ.get("BENCH_OURS_ROOT") or ROOT)


def cli_release(deployments: Path) -> Callable[[str], tuple[float, dict[str, float]]]:
    """Run `ecs-pipeline deploy NAME` as a person would: (wall s, the summary's stage seconds)."""

    def run(name: str) -> tuple[float, dict[str, float]]:
        env = {**os.environ, "ECS_PIPELINE_DEPLOYMENTS": str(deployments)}
        started = time.perf_counter()
        out = subprocess.run([sys.executable, "-m", "flows.cli", "deploy", name], cwd=OURS_ROOT, env=env, check=True,
                             stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True).stdout
        took = time.perf_counter() - started
        rows = re.findall(r"^\| ([a-z ]+) \| ([0-9.]+) \|$", out, flags=re.MULTILINE)
        return took, {stage: float(sec) for stage, sec in rows}

    return run


def compile_bytecode() -> None:
    """Our environment's bytecode, as the peer's pip install has it (uv sync does not compile, and with
    PYTHONDONTWRITEBYTECODE every CLI start would compile Prefect again: tens of seconds, not the tool's)."""
    site = Path(sysconfig.get_paths()["purelib"])
    where = [str(site), str(OURS_ROOT / "flows"), str(OURS_ROOT / "tasks")]
    subprocess.run([sys.executable, "-m", "compileall", "-q", *where], check=False,
                   stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


def prebuild(sut: Any, sha: str) -> None:
    """The branch head's image in ECR before the timed release, as the peer's image is before its deploy."""
    from prefect import flow

    from tasks.aws.clients import AwsClients
    from tasks.core.settings import Settings
    from tasks.release import stages

    @flow(name="bench-prebuild")
    def build_and_push(sha: str) -> None:
        cfg, clients = sut.cfg, AwsClients(Settings())
        stages.push(cfg, clients, sha, stages.build(cfg, clients, sha))

    build_and_push(sha)


OURS, BUILT, PEER = ("ecs-pipeline deploy (rolling, build+push)", "ecs-pipeline deploy (rolling, image in ECR)",
                     "fabfuel ecs deploy 1.17.0 (image in registry)")
FLOOR = "Prefect alone: same-shaped flow run, no AWS (bench/prefect_floor.py)"


def prefect_floor(name: str) -> float:
    """Wall s of a fresh process running a flow shaped like a rolling release that does no work."""
    started = time.perf_counter()
    subprocess.run([sys.executable, "-m", "bench.prefect_floor", name], cwd=ROOT, env=os.environ, check=True,
                   stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    return time.perf_counter() - started


def rolling_vs_peer(work: Path) -> tuple[list[tuple[Any, ...]], list[tuple[Any, ...]], list[tuple[Any, ...]]]:
    """Median wall s and AWS calls per tool; median calls per operation; median seconds per stage of ours."""
    from harness.faults import calls_since, last_request
    from harness.services import make_service, seed_serving

    exe = ensure_peer()
    compile_bytecode()
    ours = make_service(work / "ours", strategy="rolling", verify_paths=("/health",))
    peer = make_service(work / "peer", strategy="rolling")
    seed_serving(ours)
    seed_serving(peer)
    release = cli_release(ours.yaml_path.parent)
    times: dict[str, list[float]] = {OURS: [], BUILT: [], PEER: [], FLOOR: []}
    calls: dict[str, list[Counter[str]]] = {k: [] for k in times}
    stages: dict[str, list[dict[str, float]]] = {OURS: [], BUILT: []}
    try:
        for i in range(ROUNDS):
            for kind in (OURS, BUILT):
                sha = ours.commit(f"v{i + 2}{'b' if kind == BUILT else ''}")
                if kind == BUILT:
                    prebuild(ours, sha)
                wait_quiet()
                seq = last_request()
                took, seconds = release(ours.name)
                times[kind].append(took)
                stages[kind].append(seconds)
                calls[kind].append(calls_since(seq))
            image = retag(peer.seeded["image"], f"r{i + 1}")
            wait_quiet()
            seq = last_request()
            started = time.perf_counter()
            subprocess.run([str(exe), "deploy", peer.cfg.ecs.cluster, peer.name, "--image", "web", image,
                            "--timeout", "300", "--no-deregister"], check=True, env=os.environ,
                           stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            times[PEER].append(time.perf_counter() - started)
            calls[PEER].append(calls_since(seq))
            wait_quiet()
            seq = last_request()
            times[FLOOR].append(prefect_floor(ours.name))
            calls[FLOOR].append(calls_since(seq))
    finally:
        ours.cleanup()
        peer.cleanup()
    for k, v in times.items():
        counts = " ".join(str(sum(c.values())) for c in calls[k])
        print(f"{k}: rounds {' '.join(f'{t:.2f}' for t in v)} s; calls {counts}")
    totals: list[tuple[Any, ...]] = [
        (k, statistics.median(v), statistics.median(sum(c.values()) for c in calls[k])) for k, v in times.items()
    ]
    figures.record("rolling vs ecs-deploy", statistics.median(times[BUILT]) / statistics.median(times[PEER]))
    own = statistics.median(b - f for b, f in zip(times[BUILT], times[FLOOR], strict=True))
    totals.append(("image in ECR minus Prefect alone (same round)", own, "-"))
    ops = sorted(set().union(*calls[OURS], *calls[BUILT], *calls[PEER]))
    per_op = [(op, *(statistics.median(c[op] for c in calls[k]) for k in (OURS, BUILT, PEER))) for op in ops]
    return totals, per_op, stage_table(times, stages)


def stage_table(times: dict[str, list[float]], stages: dict[str, list[dict[str, float]]]) -> list[tuple[Any, ...]]:
    """Median seconds per stage of our two rows, and the rest of the wall time (CLI, Prefect, lock, reports)."""
    names = list(dict.fromkeys(n for k in stages for run in stages[k] for n in run))
    rows: list[tuple[Any, ...]] = [(n, *(statistics.median(r.get(n, 0.0) for r in stages[k]) for k in stages))
                                   for n in names]
    rest = [statistics.median(t - sum(r.values()) for t, r in zip(times[k], stages[k], strict=True)) for k in stages]
    return [*rows, ("CLI + Prefect start/exit, lock, artifacts, events", *rest)]


def task_sets_weather(work: Path) -> list[tuple[str, float, int, int, str]]:
    """(case, seconds, AWS calls, calls hit by weather, outcome) for two v(n)->v(n+1) releases."""
    from flows.pipeline import deploy_service
    from harness.faults import Load, calls_since, last_request, weather, weather_hits
    from harness.services import make_service

    sut = make_service(work, verify_paths=("/health",))
    os.environ["ECS_PIPELINE_DEPLOYMENTS"] = str(sut.yaml_path.parent)
    rows = []
    try:
        assert outcome_of(deploy_service(sut.name, return_state=True)) == "Deployed"
        for case, seed in (("task-sets, clear", None), ("task-sets, weather 20% throttle + 10% 500", 5)):
            sut.commit(case)
            seq, hits = last_request(), 0
            with Load(sut) as load:
                started = time.perf_counter()
                if seed is None:
                    state = deploy_service(sut.name, return_state=True)
                else:
                    with weather(f"bench-{sut.name}", seed):
                        state = deploy_service(sut.name, return_state=True)
                        hits = weather_hits(f"bench-{sut.name}")
                took = time.perf_counter() - started
            outcome = f"{outcome_of(state)}, {len(load.failed)} failed of {load.ok + len(load.failed)} requests"
            rows.append((case, took, sum(calls_since(seq).values()), hits, outcome))
    finally:
        sut.cleanup()
    return rows


KILL_POINTS = ("build", "after push", "deploy green", "verify", "mid-shift", "bake", "teardown")


def reached(point: str, sut: Any, run_id: Any) -> bool:
    """Whether the release in flight is at ``point``, read from Prefect's task runs and from AWS."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterId

    from harness.faults import green_weight

    if run_id is None:
        return False
    with get_client(sync_client=True) as client:
        runs = client.read_task_runs(flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=[run_id])))
    state = {r.name.split(" ")[0] + (" " + r.name.split(" ")[1] if " " in r.name else ""): r.state_type.value
             for r in runs if r.state_type is not None}

    def at(prefix: str, kind: str = "RUNNING") -> bool:
        return any(k.startswith(prefix) and v == kind for k, v in state.items())

    checks: dict[str, Callable[[], bool]] = {
        "build": lambda: at("build"),
        "after push": lambda: at("push", "COMPLETED"),
        "deploy green": lambda: len(sut.task_sets()) == 2 and at("deploy green"),
        "verify": lambda: at("verify green"),
        "mid-shift": lambda: green_weight(sut) == 20,
        "bake": lambda: at("bake"),
        "teardown": lambda: torn_down_midway(sut),
    }
    return checks[point]()


def torn_down_midway(sut: Any) -> bool:
    """Green (the newest revision) is primary while blue's task set is still there: teardown under way."""
    sets = sut.task_sets()
    primary = [ts for ts in sets if ts["status"] == "PRIMARY"]
    newest = max((int(ts["taskDefinition"].rsplit(":", 1)[1]) for ts in sets), default=0)
    return len(sets) == 2 and bool(primary) and int(primary[0]["taskDefinition"].rsplit(":", 1)[1]) == newest


def said_succeeded(service: str, sha: str) -> str:
    """Whether a `succeeded` event for SHA was stored (the killed release finished, and said so)."""
    from harness.faults import events, wait_until

    try:
        wait_until(lambda: any(p.get("sha") == sha for name, p in events(service) if name == "succeeded"), 15,
                   "the succeeded event", interval=0.5)
    except AssertionError:
        return "no succeeded event"
    return "succeeded event"


def kill_at(point: str, work: Path) -> tuple[str, float, str, str]:
    """Kill a v2 release at ``point``, release again: (point, s from kill to service free, rerun's outcome)."""
    from flows.pipeline import deploy_service
    from harness.faults import (
        PIPELINE_AGENT,
        Load,
        Released,
        add_fault,
        clear_faults,
        flow_runs,
        image_count,
        serving_versions,
        wait_until,
    )
    from harness.services import make_service

    sut = make_service(work, traffic={"type": "canary", "percent": 20, "interval_seconds": 600},
                       bake_seconds=600, verify_paths=("/health", "/"))
    os.environ["ECS_PIPELINE_DEPLOYMENTS"] = str(sut.yaml_path.parent)
    os.environ["ECS_PIPELINE_LOCK_STALE_SECONDS"] = str(STALE)
    slow = f"slow-teardown-{sut.name}"
    try:
        assert outcome_of(deploy_service(sut.name, return_state=True)) == "Deployed"
        v2 = sut.commit("v2")
        if point == "teardown":
            # Blue's DeleteTaskSet answers after TEARDOWN_SLOW s (then takes effect): a window the kill lands in.
            add_fault(name=slow, rate=1.0, codes=["slow"], slow_seconds=TEARDOWN_SLOW, service="ecs",
                      operation="DeleteTaskSet", match=sut.name, agent=PIPELINE_AGENT)
        with Load(sut) as load:
            release = Released(sut, work / "killed.log")
            run_id = wait_until(lambda: next(iter(r.id for r in flow_runs(sut.name)[1:]), None), 60, "the run")
            try:
                wait_until(lambda: reached(point, sut, run_id), 240, point, interval=0.05)
            except AssertionError:
                release.proc.wait(120)
                return point, float("nan"), "not reached: the release passed this point before it was seen", "-"
            release.kill()
            killed_at = time.time()
            clear_faults(slow)
            images, revisions = image_count(sut), len(sut.revisions())
            rerun = deploy_service(sut.name, return_state=True)
        dead = next(r for r in flow_runs(sut.name) if r.id == run_id)
        crashed = dead.state.timestamp if dead.state and dead.state.type.value == "CRASHED" else None
        free = crashed.timestamp() - killed_at if isinstance(crashed, datetime) else float("nan")
        repeated = (image_count(sut) - images) + (len(sut.revisions()) - revisions)
        versions = ",".join(sorted(serving_versions(sut)))
        outcome = (f"{outcome_of(rerun)}; serving {versions}; {len(sut.task_sets())} task set(s); "
                   f"dead run {dead.state.type.value if dead.state else '?'}; rerun made {repeated} images+revs; "
                   f"{len(load.failed)} failed requests")
        return point, free, outcome, said_succeeded(sut.name, v2)
    finally:
        os.environ.pop("ECS_PIPELINE_LOCK_STALE_SECONDS", None)
        sut.cleanup()


def main() -> int:
    load_sandbox()
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        parts = os.environ.get("BENCH_FAULTS_PARTS", ",".join(PARTS)).split(",")
        if "rolling" in parts:
            totals, per_op, per_stage = rolling_vs_peer(work / "rolling")
            table(f"rolling release, median of {ROUNDS} alternating rounds", ("tool", "wall s", "AWS calls"), totals)
            table("AWS calls per rolling release by operation (median)",
                  ("operation", "ours build+push", "ours image in ECR", "fabfuel"), per_op)
            table("where our rolling release's wall time goes (median s)",
                  ("stage", "build+push", "image in ECR"), per_stage)
        if "weather" in parts:
            table("task-sets release with and without AWS weather",
                  ("case", "wall s", "AWS calls", "faulted", "outcome"), task_sets_weather(work / "weather"))
        if "kills" not in parts:
            return 0
        points = os.environ.get("BENCH_KILL_POINTS", ",".join(KILL_POINTS)).split(",")
        rows = [kill_at(p, work / f"kill-{i}") for i, p in enumerate(points)]
        table(f"kill -9 matrix (lock stale time {STALE:.0f} s): kill → service free, then the rerun",
              ("killed at", "free after s", "rerun", "event"), rows)
    return 0


if __name__ == "__main__":
    sys.exit(main())
