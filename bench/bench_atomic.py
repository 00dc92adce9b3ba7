"""An atomic fleet's way back, on the sandbox: ten services, the last one fails, how long until all are back.

Ten copies of the sample app (``sandbox seed --copies``); copy 10 depends on the
nine others, so it is released last, once they all passed their bake (held,
blue warm). It is built from Dockerfile.broken, so its green fails
verification; the nine then go back by their own rollback (production 100 % on
the blue they kept). Printed: from that failure (copy 10's run ended) to every
service back on its previous version, as the runs say it (the last of the nine
runs ended, rolled back and verified) and as users see it (the last answer of
the new version on any production listener, polled every 50 ms), and the
failed requests on all listeners meanwhile.

    uv run python -m bench.bench_atomic [--services 10]
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import threading
import time
from datetime import datetime
from pathlib import Path
from typing import Any
from uuid import UUID

ROOT = Path(__file__).resolve().parents[1]


class Probe(threading.Thread):
    """GET / on one production listener every 50 ms: the last time it answered VERSION, and the failures."""

    def __init__(self, url: str, version: str) -> None:
        super().__init__(daemon=True)
        self.url, self.version = url + "/", version
        self.last_new: float | None = None
        self.ok = self.failed = 0
        self.stop = threading.Event()

    def run(self) -> None:
        import httpx

        with httpx.Client(timeout=5) as client:
            while not self.stop.is_set():
                try:
                    resp = client.get(self.url)
                    if resp.status_code == 200:
                        self.ok += 1
                        if resp.text.split(":", 1)[0].endswith(self.version):
                            self.last_new = time.time()
                    else:
                        self.failed += 1
                except httpx.HTTPError:
                    self.failed += 1
                self.stop.wait(0.05)


def load_sandbox() -> None:
    subprocess.run([sys.executable, "-m", "sandbox", "up"], cwd=ROOT, check=True, stdout=subprocess.DEVNULL)
    from sandbox.manage import load_env

    os.environ.update(load_env(admin=True))  # the sandbox's own identity: the release is measured, not IAM
    os.environ["PREFECT_LOGGING_LEVEL"] = "WARNING"


def set_fields(path: Path, **fields: Any) -> None:
    import yaml

    data = yaml.safe_load(path.read_text())
    data.update(fields)
    path.write_text(yaml.safe_dump(data, sort_keys=False))


def run_ends(rows: dict[str, dict[str, Any]]) -> dict[str, float]:
    from prefect.client.orchestration import get_client

    ends: dict[str, float] = {}
    with get_client(sync_client=True) as client:
        for name, row in rows.items():
            run = client.read_flow_run(UUID(row["flow_run_id"]))
            if run.end_time is not None:
                ends[name] = datetime.fromisoformat(str(run.end_time)).timestamp()
    return ends


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--services", type=int, default=10)
    args = parser.parse_args()
    load_sandbox()
    from bench.bench_fleet import remove_services
    from flows.fleet import release_fleet
    from harness.fleet_repo import base_yaml, commit, monorepo
    from sandbox.seed_fleet import seed_fleet

    work = Path(tempfile.mkdtemp(prefix="bench-atomic-"))
    repo, folder = monorepo(work), work / "deployments"
    commit(repo, "v1")
    made = seed_fleet(base_yaml(work, repo), args.services, folder)
    os.environ["ECS_PIPELINE_DEPLOYMENTS"] = str(folder)
    names = [m["name"] for m in made]
    last = names[-1]
    try:
        set_fields(folder / f"{last}.yaml", depends_on=names[:-1])
        first = release_fleet(max_parallel=args.services, return_state=True)
        print(f"setup: v1 on {args.services} services: {first.message}")
        set_fields(folder / f"{last}.yaml", build={"dockerfile": "Dockerfile.broken"})
        commit(repo, "v2")
        probes = [Probe(m["production"], "v2") for m in made[:-1]]
        for probe in probes:
            probe.start()
        started = time.time()
        state = release_fleet(max_parallel=args.services, atomic=True, return_state=True)
        took = time.time() - started
        time.sleep(1)
        for probe in probes:
            probe.stop.set()
            probe.join(10)
        report(state, took, probes, last)
    finally:
        remove_services(folder)
    return 0


def report(state: Any, took: float, probes: list[Probe], last: str) -> None:
    rows: dict[str, dict[str, Any]] = state.result(raise_on_failure=False)
    ends = run_ends(rows)
    back = [n for n, r in rows.items() if r["outcome"] == "reverted"]
    failed_at = ends[last]
    runs_back = max(ends[n] for n in back) - failed_at if back else float("nan")
    seen = [p.last_new for p in probes if p.last_new is not None]
    users_back = max(seen) - failed_at if seen else float("nan")
    print(f"atomic fleet of {len(rows)}: {took:.1f} s, {len(back)} went back; {state.message}")
    print(f"failure ({last} rolled back) -> every service back on its previous version: "
          f"{runs_back:.1f} s (runs ended, verified); last answer of v2 on any listener {users_back:+.1f} s")
    print(f"production requests during the fleet: {sum(p.ok for p in probes)} ok, "
          f"{sum(p.failed for p in probes)} failed")
    off = [n for n, r in rows.items() if n != last and not str(r.get("ended_on", "")).endswith("as before the fleet)")]
    print("every service on what it ran before the fleet" if not off else f"NOT back: {', '.join(off)}")


if __name__ == "__main__":
    sys.exit(main())
