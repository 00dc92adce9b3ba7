"""Twenty services against one, at a realistic time scale and at the rehearsal's, on SQLite and Postgres.

On AWS a release mostly waits (green's health checks, the deregistration delay), so what
limits a fleet is how well its releases wait together, not CPU. Each case brings up a sandbox
of its own (own state folder, ports and engine) at a time scale, seeds 21 copies of one
task-sets service (a 4-minute bake, time-scaled), releases one copy alone and then the other
twenty as one fleet (`ecs-pipeline deploy --select ... --max-parallel 20`, children in threads),
each from a fresh CLI process, and reports:

* wall of the one and of the twenty, and their ratio (the goal at the realistic scale: <= 1.2x);
* CPU-seconds of the fleet's process, the Prefect server, the sandbox's AWS server and its Docker
  engine over the fleet's window, and the services deployed (all twenty, on both databases);
* the Prefect server's 503 answers to the fleet (SQLite's "database is locked"), counted by a proxy in
  front of it (sandbox/prefect_weather.py with no weather): Prefect keeps them out of its log.

Cases: time scale 6 (one release is about a minute of waiting) on SQLite, then time scale 60 on
SQLite and on Postgres.

    uv run python -m bench.bench_fleet_scale [--services 20] [--cases realistic,sqlite60,postgres60]
"""

from __future__ import annotations

import argparse
import contextlib
import os
import re
import shutil
import subprocess
import sys
import tempfile
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from bench.cost import route, run_child, tree_cpu, wait_quiet
from bench.figures import record, table
from harness.services import free_ports
from sandbox.layout import read_env_file

ROOT = Path(__file__).resolve().parents[1]
CASES = {"realistic": ("6", "sqlite"), "realistic-postgres": ("6", "postgres"), "sqlite60": ("60", "sqlite"),
         "postgres60": ("60", "postgres")}
SERVERS = ("prefect", "aws", "engine")
# A bake as teams keep one (4 minutes of production on green with blue warm): at time scale 6 it is
# 40 s, so one release is about a minute of waiting, as on AWS it is several.
BAKE_SECONDS = 240


@dataclass
class Sandbox:
    """A sandbox of the bench's own: its state folder, its environment (the sandbox's admin keys)."""

    state: Path
    env: dict[str, str]

    def pid(self, name: str) -> int:
        return int((self.state / "pids" / f"{name}.pid").read_text().split()[0])

    def cpu(self) -> dict[str, float]:
        return {name: tree_cpu(self.pid(name)) for name in SERVERS}


@contextlib.contextmanager
def own_sandbox(work: Path, scale: str, db: str) -> Iterator[Sandbox]:
    state = work / f"sandbox-{scale}-{db}"
    aws, registry, prefect, postgres = free_ports(4)
    base = {k: v for k, v in os.environ.items()
            if not k.startswith(("PREFECT_", "AWS_", "SANDBOX_", "ECS_PIPELINE_", "DOCKER_HOST"))}
    base.update(SANDBOX_DIR=str(state), SANDBOX_AWS_PORT=str(aws), SANDBOX_REGISTRY_PORT=str(registry),
                SANDBOX_PREFECT_PORT=str(prefect), SANDBOX_POSTGRES_PORT=str(postgres), SANDBOX_TIME_SCALE=scale)
    flag = ["--postgres"] if db == "postgres" else ["--sqlite"]
    try:
        subprocess.run([sys.executable, "-m", "sandbox", "up", *flag], cwd=ROOT, env=base, check=True,
                       stdout=subprocess.DEVNULL)
        env = {**base, **read_env_file(state / "env"), **read_env_file(state / "admin.env"),
               "PREFECT_LOGGING_LEVEL": "WARNING"}
        yield Sandbox(state, env)
    finally:
        subprocess.run([sys.executable, "-m", "sandbox", "down"], cwd=ROOT, env=base, check=False,
                       stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        shutil.rmtree(state, ignore_errors=True)


def seed(box: Sandbox, work: Path, copies: int) -> tuple[Path, list[str]]:
    """COPIES copies of one task-sets service in BOX, built from one monorepo; their folder and names."""
    code = (
        "import json, sys; from pathlib import Path\n"
        "from harness.fleet_repo import base_yaml, commit, monorepo\n"
        "from sandbox.seed_fleet import seed_fleet\n"
        "work = Path(sys.argv[1]); repo = monorepo(work); commit(repo, 'v1')\n"
        "import yaml\n"
        "made = seed_fleet(base_yaml(work, repo), int(sys.argv[2]), work / 'deployments')\n"
        "for m in made:\n"
        "    path = Path(m['yaml']); data = yaml.safe_load(path.read_text())\n"
        "    path.write_text(yaml.safe_dump({**data, 'bake_seconds': int(sys.argv[3])}, sort_keys=False))\n"
        "print(json.dumps([m['name'] for m in made]))\n"
    )
    done = subprocess.run([sys.executable, "-c", code, str(work), str(copies), str(BAKE_SECONDS)], cwd=ROOT,
                          env=box.env,
                          capture_output=True, text=True, check=True)
    import json

    return work / "deployments", list(json.loads(done.stdout.strip().splitlines()[-1]))


def release(box: Sandbox, folder: Path, names: list[str]) -> dict[str, float]:
    from sandbox.prefect_weather import PrefectWeather

    # The server's 503s are counted on the way back (Prefect keeps "database is locked" out of its log).
    counter = PrefectWeather(box.env["PREFECT_API_URL"].removesuffix("/api"), 0.0).start()
    env = {**box.env, "ECS_PIPELINE_DEPLOYMENTS": str(folder), "PREFECT_API_URL": f"{counter.url}/api"}
    argv = [sys.executable, "-m", "flows.cli", "deploy"]
    argv += [names[0]] if len(names) == 1 else [a for n in names for a in ("--select", n)] + [
        "--max-parallel", str(len(names))]
    before = box.cpu()
    try:
        child = run_child(argv, env, ROOT, timeout=1800)
    finally:
        counter.stop()
    after = box.cpu()
    text = child.stdout + child.stderr
    if len(names) == 1:
        ok = 1 if child.code == 0 else 0
    else:
        found = re.search(r"(\d+) of (\d+) deployed or unchanged", text)
        ok = int(found.group(1)) if found else 0
    if ok < len(names):
        print(text[-3000:], file=sys.stderr)
    if counter.unavailable:
        routes: Counter[str] = Counter()
        for (method, path), n in counter.unavailable.items():
            routes[f"{method} {route(path)}"] += n
        print(f"{len(names)} service(s): the Prefect server's 5xx by route: "
              + ", ".join(f"{r} {n}" for r, n in routes.most_common()), flush=True)
    out = {"wall": child.wall, "process": child.cpu, "ok": float(ok), "n": float(len(names)),
           "503s": float(counter.answers[503])}
    out.update({name: after[name] - before[name] for name in SERVERS})
    return out


def run_case(label: str, scale: str, db: str, services: int, work: Path) -> dict[str, dict[str, float]]:
    with own_sandbox(work, scale, db) as box:
        folder, names = seed(box, work / label, services + 1)
        wait_quiet(longest=60)  # the seeding's tasks start and pass their health checks before anything is timed
        one = release(box, folder, names[:1])
        wait_quiet(longest=60)
        many = release(box, folder, names[1:])
    return {"one": one, "many": many}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--services", type=int, default=20)
    parser.add_argument("--cases", default=",".join(CASES), help=f"comma-separated, of {', '.join(CASES)}")
    args, _ = parser.parse_known_args()
    n = args.services
    rows, splits = [], []
    with tempfile.TemporaryDirectory(prefix="bench-fleet-scale-") as tmp:
        os.chmod(tmp, 0o755)  # the sandbox's Postgres runs as its own user and must reach its folder
        for label in args.cases.split(","):
            scale, db = CASES[label]
            found = run_case(label, scale, db, n, Path(tmp))
            one, many = found["one"], found["many"]
            ratio = many["wall"] / one["wall"]
            if label == "realistic" and n == 20:
                record("fleet20 realistic", ratio)
            rows.append((f"time scale {scale}, {db}", one["wall"], many["wall"], ratio,
                         f"{int(many['ok'])}/{int(many['n'])}", int(many["503s"])))
            for who, r in (("1 service", one), (f"{n} services", many)):
                total = r["process"] + sum(r[s] for s in SERVERS)
                splits.append((f"time scale {scale}, {db}: {who}", r["process"], r["prefect"], r["aws"],
                               r["engine"], total, total / r["n"]))
            table(f"fleet of {n} against one service, each from a fresh CLI (children in threads); wall s",
                  ("case", "1 service", f"{n} services", "ratio", "deployed", "Prefect 503s"), rows[-1:])
    table(f"fleet of {n} against one service: wall s (goal at the realistic scale: ratio <= 1.2x)",
          ("case", "1 service", f"{n} services", "ratio", "deployed", "Prefect 503s"), rows)
    table("CPU-seconds over each release's window: the CLI process (fleet run and its children), the Prefect "
          "server, the sandbox's AWS server, its Docker engine",
          ("case", "process", "Prefect server", "AWS server", "dockerd", "total", "per service"), splits)
    return 0


if __name__ == "__main__":
    sys.exit(main())
