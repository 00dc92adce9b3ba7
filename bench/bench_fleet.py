"""Fleet figures, side by side in one run, on the sandbox (best after `sandbox up --postgres`).

1. Releases by two workers from `prefect deploy --all`: one service alone vs
   twenty at once (one release-fleet, max_parallel 20): wall time and ratio,
   per-release orchestration time (run wall time minus the time inside its
   tasks, plus the wait for a worker), peak memory of each worker (its process
   tree).
2. Webhook POST -> 202 for 1, 3 and 20 services, SQLite vs Postgres, median and
   p95 (a temporary SQLite Prefect server is started for the comparison).
3. Prefect API calls per release, counted by a TCP proxy in front of the server.

    uv run python -m bench.bench_fleet [--services 20]
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from pathlib import Path
from typing import Any

from bench.cost import CountingProxy

ROOT = Path(__file__).resolve().parents[1]


def percentiles(samples: list[float]) -> tuple[float, float]:
    ordered = sorted(samples)
    return statistics.median(ordered), ordered[max(0, int(len(ordered) * 0.95) - 1)]


# -- 1. releases on two workers --------------------------------------------------


def tree_rss_mb(pid: int) -> float:
    from harness.workers import descendants

    total = 0
    for p in [pid, *descendants(pid)]:
        try:
            for line in Path(f"/proc/{p}/status").read_text().splitlines():
                if line.startswith("VmRSS:"):
                    total += int(line.split()[1])
        except OSError:
            continue
    return total / 1024


class PeakMemory(threading.Thread):
    def __init__(self, pids: dict[str, int]) -> None:
        super().__init__(daemon=True)
        self.pids, self.peak = pids, dict.fromkeys(pids, 0.0)
        self.done = threading.Event()

    def run(self) -> None:
        while not self.done.wait(0.5):
            for name, pid in self.pids.items():
                self.peak[name] = max(self.peak[name], tree_rss_mb(pid))


def settle(run_ids: list[Any], within: float = 180) -> None:
    """Wait until the server has stored the runs' task runs, all final: it writes them from events, in
    batches, and under load well after the flow runs have ended (read early, the late stages are missing)."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterId

    deadline, last = time.monotonic() + within, -1
    with get_client(sync_client=True) as client:
        while time.monotonic() < deadline:
            tasks = [t for run_id in run_ids  # the server answers at most 200 task runs a call
                     for t in client.read_task_runs(flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=[run_id])))]
            done = sum(1 for t in tasks if t.state is not None and t.state.is_final())
            if done == len(tasks) == last:
                return
            last = done if done == len(tasks) else -1
            time.sleep(3)


def orchestration_seconds(run_ids: list[Any]) -> list[float]:
    """Per run: (end - expected start) minus the seconds spent inside its task runs."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterId

    out = []
    with get_client(sync_client=True) as client:
        for run_id in run_ids:
            run = client.read_flow_run(run_id)
            tasks = client.read_task_runs(flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=[run_id])))
            inside = sum(t.total_run_time.total_seconds() for t in tasks)
            if run.end_time and run.expected_start_time:
                out.append((run.end_time - run.expected_start_time).total_seconds() - inside)
    return out


def phases(run_ids: list[Any]) -> dict[str, list[float]]:
    """Per run, seconds in each phase: waiting for a worker and its process (expected start -> Running),
    the slot and set-up before the first task, each stage (task runs by name), and after the last task."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterId

    out: dict[str, list[float]] = {}
    with get_client(sync_client=True) as client:
        for run_id in run_ids:
            run = client.read_flow_run(run_id)
            tasks = client.read_task_runs(flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=[run_id])))
            tasks = [t for t in tasks if t.start_time and t.end_time]
            if not (run.start_time and run.end_time and run.expected_start_time and tasks):
                continue
            seen: Counter[str] = Counter()
            for t in tasks:
                seen[t.name.split(" ")[0] if not t.name.startswith(("detect", "deploy")) else
                     " ".join(t.name.split(" ")[:2])] += t.total_run_time.total_seconds()
            first = min(t.start_time for t in tasks if t.start_time)
            last = max(t.end_time for t in tasks if t.end_time)
            spans = {"queue+worker+process": (run.start_time - run.expected_start_time).total_seconds(),
                     "slot+set-up": (first - run.start_time).total_seconds(), **seen,
                     "after last task": (run.end_time - last).total_seconds()}  # fmt: skip
            for k, v in spans.items():
                out.setdefault(k, []).append(v)
    return out


def fleet_children(fleet_id: Any) -> list[Any]:
    """The deploy-service runs a fleet run started (threads: its subflows; deployment: linked by tags)."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterParentFlowRunId

    with get_client(sync_client=True) as client:
        found = client.read_flow_runs(
            flow_run_filter=FlowRunFilter(parent_flow_run_id=FlowRunFilterParentFlowRunId(any_=[fleet_id])), limit=200
        )
    return found


def release_on_pool(services: list[str], children: str) -> dict[str, Any]:
    """One release-fleet run of the deployment, picked up by a worker, as a webhook's monorepo push starts it."""
    from prefect.deployments import run_deployment

    from harness.workers import wait_final
    from tasks.release.fleet_plan import classify
    from tasks.release.outcome import outcome_of

    t0 = time.perf_counter()
    run = run_deployment("release-fleet/release-fleet", timeout=0, parameters={
        "services": services, "max_parallel": len(services), "children": children})  # fmt: skip
    final = wait_final(run.id, timeout=3600)
    wall = time.perf_counter() - t0
    inside = (final.end_time - final.start_time).total_seconds() if final.start_time and final.end_time else wall
    kids = fleet_children(run.id)
    settle([k.id for k in kids])
    ok = sum(1 for k in kids if classify(k.state.type.value if k.state else None, outcome_of(k.state)) == "ok")
    ids = [k.id for k in kids]
    return {"wall": wall, "inside": inside, "ok": ok, "n": len(services), "orch": orchestration_seconds(ids),
            "phases": phases(ids)}


def bench_releases(n: int, work: Path, limit: int, children: str) -> dict[str, Any]:
    from harness.fleet_repo import base_yaml, commit, monorepo
    from harness.workers import worker_pool
    from sandbox.seed_fleet import seed_fleet

    repo = monorepo(work)
    commit(repo, "v1")
    folder = work / "deployments"
    made = [s["name"] for s in seed_fleet(base_yaml(work, repo), n + 1, folder)]
    os.environ["ECS_PIPELINE_DEPLOYMENTS"] = str(folder)
    with worker_pool(folder, work, limit=limit) as pool:
        memory = PeakMemory({w.name: w.proc.pid for w in pool.workers})
        memory.start()
        results: dict[str, Any] = {}
        for label, services in (("1 service alone", made[:1]), (f"{n} services at once", made[1:])):
            results[label] = release_on_pool(services, children)
        memory.done.set()
        results["peak_mb"] = memory.peak
    return results


def remove_services(folder: Path) -> None:
    """Delete the copies' ECS services (their containers stop) and load balancers (their proxies close)."""
    import contextlib

    from botocore.exceptions import ClientError

    from harness.services import aws
    from tasks.config.models import load_all_services

    for cfg in load_all_services(folder):
        with contextlib.suppress(ClientError):
            aws("ecs").delete_service(cluster=cfg.ecs.cluster, service=cfg.ecs.service, force=True)
        if cfg.load_balancer is not None and cfg.load_balancer.production_listener.load_balancer:
            with contextlib.suppress(ClientError, IndexError):
                name = cfg.load_balancer.production_listener.load_balancer
                arn = aws("elbv2").describe_load_balancers(Names=[name])["LoadBalancers"][0]["LoadBalancerArn"]
                aws("elbv2").delete_load_balancer(LoadBalancerArn=arn)


# -- 2. webhook latency, SQLite vs Postgres ---------------------------------------


def webhook_samples(requests: int) -> dict[str, list[float]]:
    """Run in a subprocess with PREFECT_API_URL set to the server being measured."""
    import uuid

    import httpx
    from prefect.client.orchestration import get_client

    from bench.bench_webhook import SECRET, payload, service, serving
    from flows.webhook import create_app
    from tasks.triggers.push_runs import PrefectRunStarter
    from tasks.triggers.webhook_secrets import WebhookSecrets
    from tasks.triggers.webhooks import sign_github

    tag = uuid.uuid4().hex[:8]
    with get_client(sync_client=True) as client:
        deps = [client.create_deployment(flow_id=client.create_flow_from_name(f), name=f"bench-{tag}", entrypoint="x:y")
                for f in ("deploy-service", "release-fleet")]  # fmt: skip
    out: dict[str, list[float]] = {}
    cases = [("1", 1, True, 1), ("3", 3, True, 1), ("20", 20, True, 1), ("20, one run each", 20, False, 8)]
    try:
        for label, n, fleet, parallel in cases:
            services = [service(f"b{tag}-{i}") for i in range(n)]
            starter = PrefectRunStarter(f"deploy-service/bench-{tag}", parallel_creates=parallel,
                                        fleet_deployment=f"release-fleet/bench-{tag}" if fleet else None)  # fmt: skip
            samples: list[float] = []
            case_ends = time.monotonic() + 120  # a case that slow (SQLite, one run each) stops with fewer samples
            with serving(create_app(services, WebhookSecrets({"github": SECRET}), starter)) as url, httpx.Client() as h:
                for i in range(requests + 3):
                    if time.monotonic() > case_ends and samples:
                        break
                    body = payload(uuid.uuid4().hex + uuid.uuid4().hex[:8])
                    headers = {"Content-Type": "application/json", "X-GitHub-Event": "push",
                               "X-GitHub-Delivery": str(uuid.uuid4()), "X-Hub-Signature-256": sign_github(SECRET, body)}
                    t0 = time.perf_counter()
                    try:
                        answer = h.post(f"{url}/webhook/github", content=body, headers=headers, timeout=30)
                    except httpx.TimeoutException:
                        answer = None  # over 30 s: counted as not answered
                    took = (time.perf_counter() - t0) * 1000
                    named = answer is not None and answer.status_code == 202 and all(
                        s["flow_run_id"] for s in answer.json()["started"])
                    if i >= 3:
                        samples.append(took if named else -1.0)  # -1: not answered 202 with the runs named
                    time.sleep(0.1)
            out[label] = samples
    finally:
        from prefect.client.schemas.filters import DeploymentFilter, DeploymentFilterId

        with get_client(sync_client=True) as client, contextlib.suppress(Exception):  # best effort
            for dep in deps:
                only = DeploymentFilter(id=DeploymentFilterId(any_=[dep]))
                while runs := client.read_flow_runs(deployment_filter=only, limit=200):
                    for r in runs:
                        client.delete_flow_run(r.id)
                client.delete_deployment(dep)
    return out


def temporary_sqlite_server(work: Path, ready_within: float = 900) -> tuple[subprocess.Popen[bytes], str]:
    """A Prefect server on a new SQLite database (no UI): its first start runs every migration, which
    takes minutes on a loaded host, so it gets READY_WITHIN seconds; its log tail explains a failure."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    env = {k: v for k, v in os.environ.items() if not k.startswith("PREFECT_")}
    env.update(PREFECT_HOME=str(work / "prefect-sqlite"), PREFECT_SERVER_ANALYTICS_ENABLED="false",
               PREFECT_UI_ENABLED="false", PREFECT_SERVER_UI_ENABLED="false",
               PREFECT_API_DATABASE_CONNECTION_URL=f"sqlite+aiosqlite:///{work / 'prefect-sqlite.db'}")
    log_path = work / "prefect-sqlite.log"
    log = log_path.open("wb")
    proc = subprocess.Popen([sys.executable, "-m", "prefect", "server", "start", "--host", "127.0.0.1",
                             "--port", str(port)], env=env, stdout=log, stderr=subprocess.STDOUT,
                            start_new_session=True)  # fmt: skip
    from sandbox.procs import http_ok

    started = time.monotonic()
    while not http_ok(f"http://127.0.0.1:{port}/api/health", timeout=5):
        if time.monotonic() - started > ready_within or proc.poll() is not None:
            tail = log_path.read_text(errors="replace")[-1500:]
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, 15)
            raise RuntimeError(f"temporary SQLite Prefect server not ready after {time.monotonic() - started:.0f} s:"
                               f"\n{tail}")
        time.sleep(1)
    print(f"(temporary SQLite Prefect server ready in {time.monotonic() - started:.0f} s)", flush=True)
    return proc, f"http://127.0.0.1:{port}/api"


def measure_webhook(api_url: str, requests: int) -> dict[str, list[float]]:
    env = {**os.environ, "PREFECT_API_URL": api_url, "PREFECT_LOGGING_LEVEL": "WARNING"}
    done = subprocess.run([sys.executable, "-m", "bench.bench_fleet", "--webhook-only", "--requests", str(requests)],
                          cwd=ROOT, env=env, capture_output=True, text=True, check=False)  # fmt: skip
    if done.returncode != 0:
        print(f"webhook measurement against {api_url} failed: {done.stderr.strip().splitlines()[-3:]}")
        return {}
    result: dict[str, list[float]] = json.loads(done.stdout.strip().splitlines()[-1])
    return result


# -- 3. API calls per release -------------------------------------------------------

def api_calls_per_release(service: str) -> Counter[str]:
    api = os.environ["PREFECT_API_URL"]
    proxy = CountingProxy(("127.0.0.1", int(api.split(":")[2].split("/")[0])))
    proxy.start()
    env = {**os.environ, "PREFECT_API_URL": f"http://{proxy.address}/api"}
    subprocess.run([sys.executable, "-m", "flows.cli", "deploy", service, "--force"], cwd=ROOT, env=env,
                   capture_output=True, check=False, timeout=900)  # fmt: skip
    return proxy.counts


# -- report -------------------------------------------------------------------------


def load_sandbox() -> None:
    subprocess.run([sys.executable, "-m", "sandbox", "up"], cwd=ROOT, check=True, stdout=subprocess.DEVNULL)
    from sandbox.manage import load_env

    # The sandbox's own identity: a benchmark's services (a fleet of up to 100) are seeded without
    # deploy policies of their own, and what is measured is the release, not the account's judging.
    os.environ.update(load_env(admin=True))
    os.environ["PREFECT_LOGGING_LEVEL"] = "WARNING"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--services", type=int, default=20)
    parser.add_argument("--requests", type=int, default=20)
    parser.add_argument("--worker-limit", type=int, default=10, help="flow runs at once per worker")
    parser.add_argument("--children", choices=["threads", "deployment"], default="threads",
                        help="where the fleet runs each service: threads of the fleet run, or worker processes")
    parser.add_argument("--webhook", action=argparse.BooleanOptionalAction, default=True,
                        help="measure the webhook, SQLite vs Postgres (default: yes)")
    parser.add_argument("--webhook-only", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.webhook_only:
        print(json.dumps(webhook_samples(args.requests)))
        return 0
    load_sandbox()  # before anything imports prefect: it reads its settings once
    from sandbox.layout import layout
    from sandbox.manage import prefect_database

    sandbox_db = prefect_database(layout()) or "sqlite"
    with tempfile.TemporaryDirectory(prefix="bench-fleet-") as tmp:
        work = Path(tmp)
        if args.services:
            releases = bench_releases(args.services, work, args.worker_limit, args.children)
            releases["limit"], releases["children"] = args.worker_limit, args.children
            report_releases(releases)
            report_calls(api_calls_per_release(sorted((work / "deployments").glob("*.yaml"))[0].stem))
            remove_services(work / "deployments")
        latencies: dict[str, dict[str, list[float]]] = {}
        if not args.webhook:
            return 0
        proc, url = temporary_sqlite_server(work) if sandbox_db == "postgres" else (None, "")
        try:
            if proc is not None:
                latencies["sqlite"] = measure_webhook(url, args.requests)
            latencies[sandbox_db] = measure_webhook(os.environ["PREFECT_API_URL"], args.requests)
        finally:
            if proc is not None:
                os.killpg(proc.pid, 15)
                proc.wait(30)
    report_webhook(latencies)
    return 0


def report_releases(releases: dict[str, Any]) -> None:
    print(f"\n== releases on 2 workers (prefect deploy --all, prefect worker start --limit {releases['limit']}): "
          f"one release-fleet deployment run each, children in {releases['children']} ==")
    alone, fleet = (releases[k] for k in list(releases)[:2])
    for label in list(releases)[:2]:
        r = releases[label]
        orch = statistics.median(r["orch"]) if r["orch"] else float("nan")
        print(f"{label:<24} wall {r['wall']:7.1f} s (fleet run itself {r['inside']:6.1f} s)   "
              f"deployed {r['ok']}/{r['n']}   orchestration per release (median) {orch:6.1f} s")  # fmt: skip
    print(f"{'wall-time ratio':<24} {fleet['wall'] / alone['wall']:7.2f}x (goal <= 2x); "
          f"fleet run itself {fleet['inside'] / alone['inside']:.2f}x")
    print(f"\n{'phase (median s per release)':<30}" + "".join(f"{k:>24}" for k in list(releases)[:2]))
    names = dict.fromkeys(k for r in (alone, fleet) for k in r["phases"])
    for name in names:
        cells = [statistics.median(r["phases"][name]) if r["phases"].get(name) else float("nan")
                 for r in (alone, fleet)]
        print(f"{name:<30}" + "".join(f"{c:24.1f}" for c in cells))
    for name, mb in releases["peak_mb"].items():
        print(f"peak memory, worker {name:<4} {mb:7.0f} MB (worker + its flow-run processes)")
    sys.stdout.flush()


def cell(samples: list[float] | None) -> str:
    ok = [x for x in samples or [] if x >= 0]
    if not ok:
        return f"{'-':>16}{'-':>13}"
    median, p95 = percentiles(ok)
    failed = len(samples or []) - len(ok)
    return f"{median:13.1f} ms{p95:10.1f} ms" + (f" ({failed} not 202)" if failed else "")


def report_webhook(latencies: dict[str, dict[str, list[float]]]) -> None:
    print("\n== webhook POST -> 202 with the runs named (fleet: one release-fleet run) ==")
    print(f"{'services':<20}" + "".join(f"{db + ' median':>16}{db + ' p95':>13}" for db in latencies))
    labels = [label for v in latencies.values() for label in v]
    for label in dict.fromkeys(labels):
        print(f"{label:<20}" + "".join(cell(v.get(label)) for v in latencies.values()))


def report_calls(calls: Counter[str]) -> None:
    print(f"\n== Prefect API calls for one release ({sum(calls.values())} in all), most frequent ==")
    for path, n in calls.most_common(12):
        print(f"{n:5d}  {path}")


if __name__ == "__main__":
    sys.exit(main())
