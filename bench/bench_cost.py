"""What one release costs, per strategy, and what the command costs before any release work.

1. One v1→v2 release (build and push included) per strategy, from the CLI
   (`ecs-pipeline deploy NAME`, a fresh process, as a person runs it):
   CPU-seconds of the release's process (its whole waited tree: git included),
   CPU-seconds of the sandbox's Prefect server (its /proc/PID/stat before, and
   after it has persisted what the release sent, less its idle rate), wall
   seconds, Prefect API calls by route (a counting proxy the process's
   PREFECT_API_URL points at), events stored for the run, AWS calls by
   operation (the sandbox's request log, the pipeline's User-Agent only) and
   Docker API calls by route (a counting proxy on DOCKER_HOST). The Docker
   engine's own CPU (the build) is not counted: any tool pays it.
2. Cold start: `ecs-pipeline --help`, `ecs-pipeline deploy NAME --dry-run`,
   `import prefect`, and a do-nothing flow run, each a fresh process (wall, CPU,
   Prefect API calls).

    uv run python -m bench cost
    BENCH_COST_STRATEGIES=task-sets uv run python -m bench cost    (only some strategies)
"""

from __future__ import annotations

import json
import os
import statistics
import subprocess
import sys
import tempfile
from collections import Counter
from pathlib import Path
from typing import Any

import httpx

from bench import figures
from bench.bench_pipeline import load_sandbox
from bench.cost import Child, CountingProxy, ServerMeter, prefect_server_pid, run_child
from bench.figures import table

ROOT = Path(__file__).resolve().parents[1]
STRATEGIES = tuple(os.environ.get("BENCH_COST_STRATEGIES", "task-sets,rolling,codedeploy,ecs-native").split(","))
COLD_ROUNDS = int(os.environ.get("BENCH_COLD_ROUNDS", "3"))
ROUNDS = int(os.environ.get("BENCH_COST_ROUNDS", "5"))  # warm task-sets releases (the others: one); the median
# The checkout whose flows/ and tasks/ release (another one's, e.g. an export of main, gives a before/after).
OURS_ROOT = Path(os.environ.get("BENCH_OURS_ROOT") or ROOT)


class Meters:
    """The proxies and the server meter, made once for the whole benchmark."""

    def __init__(self, work: Path) -> None:
        api = os.environ["PREFECT_API_URL"]
        self.prefect = CountingProxy(("127.0.0.1", int(api.split(":")[2].split("/")[0])))
        docker = os.environ["DOCKER_HOST"].removeprefix("unix://")
        self.docker = CountingProxy(docker, listen=str(work / "docker.sock"))
        self.prefect.start()
        self.docker.start()
        self.server = ServerMeter(prefect_server_pid())

    def env(self, **extra: str) -> dict[str, str]:
        """The bench's environment, with the proxies; Prefect's logging as a person's release has it (its log
        lines go to the API, the bench's own are quiet)."""
        env = {**os.environ, "PREFECT_API_URL": f"http://{self.prefect.address}/api",
               "DOCKER_HOST": f"unix://{self.docker.address}", **extra}
        env.pop("PREFECT_LOGGING_LEVEL", None)
        return env

    def run(self, argv: list[str], *, cwd: Path = ROOT, **extra: str) -> tuple[Child, Counter[str], Counter[str]]:
        """ARGV in a fresh process: the child (wall, CPU), its Prefect and Docker calls; the server's CPU in
        child.extra."""
        self.prefect.take()
        self.docker.take()
        extra_out: dict[str, float] = {}
        with self.server.window(extra_out):
            child = run_child(argv, self.env(**extra), cwd)
        child.extra.update(extra_out)
        return child, self.prefect.take(), self.docker.take()

    def close(self) -> None:
        self.prefect.close()
        self.docker.close()


def events_of(run_id: str) -> Counter[str]:
    """Events the server stored for the run: Prefect's own and the pipeline's (which name the run as related)."""
    from harness.faults import prefect_api_headers

    body = {"filter": {"any_resource": {"id": [f"prefect.flow-run.{run_id}"]},
                       "occurred": {"since": "2000-01-01T00:00:00Z"}}, "limit": 50}
    page = httpx.post(f"{os.environ['PREFECT_API_URL']}/events/filter", json=body, timeout=10,
                      headers=prefect_api_headers()).json()
    found = page["events"]
    while page.get("next_page"):  # 50 a page
        page = httpx.get(page["next_page"], timeout=10, headers=prefect_api_headers()).json()
        found += page["events"]
    return Counter(e["event"] for e in found)


def release_cost(strategy: str, work: Path, meters: Meters, cli: bool) -> dict[str, Any]:
    """One v1→v2 release through STRATEGY, counted: from the CLI (a fresh process) or in a warm process."""
    from harness.faults import flow_runs, last_request
    from harness.services import make_service, seed_serving

    sut = make_service(work, strategy=strategy, bake_seconds=0, verify_paths=("/health",))
    where = {"ECS_PIPELINE_DEPLOYMENTS": str(sut.yaml_path.parent)}
    try:
        if strategy != "task-sets":  # a task-sets service starts empty: its first release puts v1 up
            seed_serving(sut)
        if cli:
            deploy = [sys.executable, "-m", "flows.cli", "deploy", sut.name]
            first = run_child(deploy, {**os.environ, **where}, OURS_ROOT)
            assert first.code == 0, first.stderr[-2000:]
            sut.commit("v2")
            seq = last_request()
            child, prefect, docker = meters.run(deploy, cwd=OURS_ROOT, **where)
            if child.code != 0:
                raise SystemExit(f"{strategy} release failed: {child.stdout[-1500:]}\n{child.stderr[-1500:]}")
            counted = {"child": child, "prefect": prefect, "docker": docker, "aws": calls_since_agent(seq)}
        else:
            counted = warm_release(sut, meters, where)
        run = flow_runs(sut.name)[-1]  # the last run's events (one release's: each round's are alike)
        return {"strategy": strategy, **counted, "events": events_of(str(run.id))}
    finally:
        sut.cleanup()


def warm_release(sut: Any, meters: Meters, where: dict[str, str]) -> dict[str, Any]:
    """bench/release_warm.py: v1 released to warm the process up, then ROUNDS releases counted; the round of
    median CPU (process + server), with its own counts."""
    from harness.faults import last_request

    log = (sut.yaml_path.parent / "release_warm.log").open("w")
    env = meters.env(**where)
    if OURS_ROOT != ROOT:  # another checkout's flows/ and tasks/ (a before/after on one sandbox)
        env["PYTHONPATH"] = str(OURS_ROOT)
    proc = subprocess.Popen([sys.executable, str(ROOT / "bench" / "release_warm.py"), sut.name], cwd=OURS_ROOT,
                            env=env, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=log, text=True)
    assert proc.stdin is not None and proc.stdout is not None
    rounds: list[dict[str, Any]] = []
    try:
        ready = bench_line(proc)
        assert ready.startswith("ready Deployed"), f"the warm-up release ended {ready}"
        rounds_here = ROUNDS if sut.cfg.strategy.type == "task-sets" else 1  # the headline figure's: a median
        for i in range(rounds_here):
            sut.commit(f"v{i + 2}")
            seq = last_request()
            meters.prefect.take()
            meters.docker.take()
            out: dict[str, float] = {}
            with meters.server.window(out):
                proc.stdin.write("go\n")
                proc.stdin.flush()
                got = json.loads(bench_line(proc))
            if got["outcome"] != "Deployed":
                raise SystemExit(f"{sut.cfg.strategy.type} release ended {got['outcome']}: {got['message']}")
            rounds.append({"child": Child(["release_warm"], got["wall"], got["cpu"], extra=out),
                           "prefect": meters.prefect.take(), "docker": meters.docker.take(),
                           "aws": calls_since_agent(seq)})
    finally:
        proc.stdin.close()
        proc.wait(60)
        log.close()
    rounds.sort(key=lambda r: r["child"].cpu + r["child"].extra["server_cpu"])
    return rounds[len(rounds) // 2]


def bench_line(proc: subprocess.Popen[str]) -> str:
    """The next ``BENCH ...`` line the process prints (Prefect's own lines go by)."""
    assert proc.stdout is not None
    for line in proc.stdout:
        if line.startswith("BENCH "):
            return line.removeprefix("BENCH ").strip()
    raise SystemExit(f"the release process ended early (exit {proc.wait(60)}); its stderr is in release_warm.log")


def calls_since_agent(seq: int) -> Counter[str]:
    """The pipeline's own AWS calls after SEQ (its User-Agent), by operation."""
    from harness.faults import PIPELINE_AGENT, control

    found = control("GET", f"/_sandbox/requests?since={seq}&agent={PIPELINE_AGENT}")["requests"]
    return Counter(r["operation"] for r in found)


def cold_start(meters: Meters, service_dir: Path, service: str) -> list[tuple[str, float, float, int]]:
    """(what, median wall s, median CPU s, Prefect calls) of each start-up alone, fresh processes."""
    py = sys.executable
    where = {"ECS_PIPELINE_DEPLOYMENTS": str(service_dir)}
    cases = {
        "ecs-pipeline --help": [py, "-m", "flows.cli", "--help"],
        "ecs-pipeline deploy NAME --dry-run": [py, "-m", "flows.cli", "deploy", service, "--dry-run"],
        "python -c 'import prefect'": [py, "-c", "import prefect"],
        "python -c 'import flows.pipeline' (the release's modules)": [py, "-c", "import flows.pipeline"],
        "do-nothing flow run (bench/prefect_floor.py --nothing)": [py, "-m", "bench.prefect_floor", "--nothing"],
        "release-shaped flow run, no work (bench/prefect_floor.py)": [py, "-m", "bench.prefect_floor", service],
    }
    rows = []
    for what, argv in cases.items():
        runs = [meters.run(argv, cwd=ROOT, **where) for _ in range(COLD_ROUNDS)]
        bad = [c for c, _, _ in runs if c.code != 0]
        if bad:
            raise SystemExit(f"{what} failed: {bad[0].stderr[-1500:]}")
        rows.append((what, statistics.median(c.wall for c, _, _ in runs),
                     statistics.median(c.cpu for c, _, _ in runs),
                     int(statistics.median(sum(p.values()) for _, p, _ in runs))))
    return rows


def by_name(results: list[dict[str, Any]], key: str) -> list[tuple[Any, ...]]:
    """One row per route/operation: its count in each release."""
    names = sorted({n for r in results for n in r[key]}, key=lambda n: (-sum(r[key][n] for r in results), n))
    return [(n, *(r[key][n] for r in results)) for n in names]


def report(results: list[dict[str, Any]], idle: float) -> None:
    labels = tuple(r["label"] for r in results)
    rows = []
    for r in results:
        child = r["child"]
        rows.append((r["label"], child.wall, child.cpu, child.extra["server_cpu"],
                     child.cpu + child.extra["server_cpu"], sum(r["prefect"].values()), sum(r["events"].values()),
                     sum(r["aws"].values()), sum(r["docker"].values())))
    table("one release per strategy, build and push included: warm = a process that released before (a worker, "
          f"serve, a fleet; task-sets: the round of median CPU of {ROUNDS}), CLI = a fresh `ecs-pipeline deploy` "
          f"process; server CPU less its idle {idle:.3f} CPU-s/s",
          ("release", "wall s", "process CPU s", "server CPU s", "CPU s total", "Prefect calls", "events",
           "AWS calls", "Docker calls"), rows)
    table("Prefect API calls per release, by route", ("route", *labels), by_name(results, "prefect"))
    table("events stored per release, by name", ("event", *labels), by_name(results, "events"))
    table("AWS calls per release, by operation (the pipeline's own)", ("operation", *labels),
          by_name(results, "aws"))
    table("Docker API calls per release, by route", ("route", *labels), by_name(results, "docker"))
    task_sets = next((r for r in results if r["label"] == "task-sets"), None)
    if task_sets is not None:
        figures.record("cpu/release", task_sets["child"].cpu + task_sets["child"].extra["server_cpu"])


def main() -> int:
    load_sandbox()
    with tempfile.TemporaryDirectory(prefix="bench-cost-") as tmp:
        work = Path(tmp)
        meters = Meters(work)
        try:
            idle = meters.server.measure_idle()
            results = []
            for strategy in STRATEGIES:
                results.append({"label": strategy, **release_cost(strategy, work / strategy, meters, cli=False)})
                if strategy == "task-sets":
                    results.append({"label": "task-sets CLI", **release_cost(strategy, work / "cli", meters, cli=True)})
            report(results, idle)
            from harness.services import make_service

            sut = make_service(work / "cold", bake_seconds=0)
            try:
                rows = cold_start(meters, sut.yaml_path.parent, sut.name)
            finally:
                sut.cleanup()
            table(f"cold start, fresh processes (median of {COLD_ROUNDS}; no release work, no flow run unless named)",
                  ("command", "wall s", "CPU s", "Prefect calls"), rows)
        finally:
            meters.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
