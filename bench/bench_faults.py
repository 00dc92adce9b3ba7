"""Failure benchmarks on the sandbox, one table each, in one run.

1. rolling: `ecs-pipeline deploy` (CLI process) vs fabfuel `ecs deploy` on the same
   sandbox, alternating rounds: median wall time and AWS calls per release (sandbox request log).
2. task-sets: one release without and one with weather (20 % throttling + 10 % 500 on
   every pipeline AWS call).
3. kill -9 matrix: a task-sets release killed at each point, then released again: seconds
   from the kill to the service being free (the dead run marked Crashed by the rerun), the
   rerun's outcome, images and revisions it made, failed production requests, and whether a
   `succeeded` event for the commit was stored. At "teardown" blue's DeleteTaskSet answers
   slowly so the kill lands inside the teardown (a release otherwise ends it before the kill).

    uv run python -m bench.bench_faults      (or `make bench`, which runs every benchmark)
"""

from __future__ import annotations

import os
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from datetime import datetime
from pathlib import Path
from typing import Any

from bench.bench_pipeline import ensure_peer, load_sandbox, outcome_of, retag

ROUNDS = int(os.environ.get("BENCH_ROUNDS", "3"))
STALE = 10.0  # ECS_PIPELINE_LOCK_STALE_SECONDS for the kill matrix (the default is 30)
TEARDOWN_SLOW = 5.0  # seconds blue's DeleteTaskSet takes to answer at the "teardown" kill point
ROOT = Path(__file__).resolve().parents[1]


def cli_release(deployments: Path) -> Callable[[str], float]:
    def run(name: str) -> float:
        env = {**os.environ, "ECS_PIPELINE_DEPLOYMENTS": str(deployments)}
        started = time.perf_counter()
        subprocess.run([sys.executable, "-m", "flows.cli", "deploy", name], cwd=ROOT, env=env, check=True,
                       stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        return time.perf_counter() - started

    return run


def rolling_vs_peer(work: Path) -> list[tuple[str, float, float]]:
    from tests.fault_helpers import calls_since, last_request
    from tests.release_helpers import make_service
    from tests.test_codedeploy import seed_serving

    exe = ensure_peer()
    ours = make_service(work / "ours", strategy="rolling", verify_paths=("/health",))
    peer = make_service(work / "peer", strategy="rolling")
    seed_serving(ours)
    seed_serving(peer)
    release = cli_release(ours.yaml_path.parent)
    times: dict[str, list[float]] = {"ecs-pipeline deploy (rolling)": [], "fabfuel ecs deploy 1.17.0": []}
    calls: dict[str, list[int]] = {k: [] for k in times}
    try:
        for i in range(ROUNDS):
            ours.commit(f"v{i + 2}")
            seq = last_request()
            times["ecs-pipeline deploy (rolling)"].append(release(ours.name))
            calls["ecs-pipeline deploy (rolling)"].append(sum(calls_since(seq).values()))
            image = retag(peer.seeded["image"], f"r{i + 1}")
            seq = last_request()
            started = time.perf_counter()
            subprocess.run([str(exe), "deploy", peer.cfg.ecs.cluster, peer.name, "--image", "web", image,
                            "--timeout", "300", "--no-deregister"], check=True, env=os.environ,
                           stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            times["fabfuel ecs deploy 1.17.0"].append(time.perf_counter() - started)
            calls["fabfuel ecs deploy 1.17.0"].append(sum(calls_since(seq).values()))
    finally:
        ours.cleanup()
        peer.cleanup()
    return [(k, statistics.median(v), statistics.median(calls[k])) for k, v in times.items()]


def task_sets_weather(work: Path) -> list[tuple[str, float, int, int, str]]:
    """(case, seconds, AWS calls, calls hit by weather, outcome) for two v(n)->v(n+1) releases."""
    from flows.pipeline import deploy_service
    from tests.fault_helpers import Load, calls_since, last_request, weather, weather_hits
    from tests.release_helpers import make_service

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

    from tests.fault_helpers import green_weight

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
    from tests.fault_helpers import events, wait_until

    try:
        wait_until(lambda: any(p.get("sha") == sha for name, p in events(service) if name == "succeeded"), 15,
                   "the succeeded event", interval=0.5)
    except AssertionError:
        return "no succeeded event"
    return "succeeded event"


def kill_at(point: str, work: Path) -> tuple[str, float, str, str]:
    """Kill a v2 release at ``point``, release again: (point, s from kill to service free, rerun's outcome)."""
    from flows.pipeline import deploy_service
    from tests.fault_helpers import (
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
    from tests.release_helpers import make_service

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


def table(title: str, header: tuple[str, ...], rows: list[tuple[Any, ...]]) -> None:
    cells = [[f"{c:.2f}" if isinstance(c, float) else str(c) for c in row] for row in rows]
    widths = [max(len(h), *(len(r[i]) for r in cells)) for i, h in enumerate(header)]
    print(f"\n{title}")
    print("  ".join(h.ljust(w) for h, w in zip(header, widths, strict=True)))
    for row in cells:
        print("  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)), flush=True)


def main() -> int:
    load_sandbox()
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        table(f"rolling release, median of {ROUNDS} alternating rounds", ("tool", "wall s", "AWS calls"),
              rolling_vs_peer(work / "rolling"))
        table("task-sets release with and without AWS weather", ("case", "wall s", "AWS calls", "faulted", "outcome"),
              task_sets_weather(work / "weather"))
        points = os.environ.get("BENCH_KILL_POINTS", ",".join(KILL_POINTS)).split(",")
        rows = [kill_at(p, work / f"kill-{i}") for i, p in enumerate(points)]
        table(f"kill -9 matrix (lock stale time {STALE:.0f} s): kill → service free, then the rerun",
              ("killed at", "free after s", "rerun", "event"), rows)
    return 0


if __name__ == "__main__":
    sys.exit(main())
