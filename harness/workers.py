"""The worker path exactly as README tells it: work pool, `prefect deploy --all`, `prefect worker start`.

Each worker is its own process (a stand-in for a host) with the sandbox's
environment, as a user's shell has it after `set -a; . .sandbox/env; set +a`.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from uuid import UUID

from prefect.client.orchestration import get_client
from prefect.client.schemas.actions import GlobalConcurrencyLimitUpdate
from prefect.client.schemas.filters import DeploymentFilter, DeploymentFilterId
from prefect.exceptions import ObjectNotFound
from prefect.states import Cancelled

ROOT = Path(__file__).resolve().parents[1]
POOL = "ecs-pipeline"
PREFECT = [sys.executable, "-m", "prefect"]


def prefect_cli(*args: str, timeout: float = 300) -> str:
    """`uv run prefect ARGS` from the checkout; fails the test with its output."""
    done = subprocess.run([*PREFECT, *args], cwd=ROOT, capture_output=True, text=True, timeout=timeout,
                          env={**os.environ, "PREFECT_CLI_PROMPT": "false"}, check=False)
    assert done.returncode == 0, f"prefect {' '.join(args)}: {done.stdout[-2000:]}{done.stderr[-2000:]}"
    return done.stdout


def deploy_all() -> None:
    """README's two set-up commands; the pool is made once, the deployments every time."""
    with get_client(sync_client=True) as client:
        try:
            client.read_work_pool(POOL)
        except ObjectNotFound:
            prefect_cli("work-pool", "create", POOL, "--type", "process")
    prefect_cli("deploy", "--all")
    with get_client(sync_client=True) as client:  # tests start polls themselves, not every 120 s
        poll = client.read_deployment_by_name("poll-changes/poll-changes")
        for schedule in client.read_deployment_schedules(poll.id):
            client.update_deployment_schedule(poll.id, schedule.id, active=False)
        # Scheduled polls made before the pause, or left Running by a worker an earlier session
        # killed, would hold the deployment's one slot (collision strategy CANCEL_NEW).
        leftovers = client.read_flow_runs(deployment_filter=DeploymentFilter(id=DeploymentFilterId(any_=[poll.id])))
        for run in leftovers:
            if run.state is not None and not run.state.is_final():
                client.set_flow_run_state(run.id, Cancelled(message="left over before this session"), force=True)
        if poll.global_concurrency_limit is not None and poll.global_concurrency_limit.active_slots:
            client.update_global_concurrency_limit(
                poll.global_concurrency_limit.name, GlobalConcurrencyLimitUpdate(active_slots=0)
            )


@dataclass
class Worker:
    name: str
    proc: subprocess.Popen[bytes]
    log: Path
    killed: bool = False

    def text(self) -> str:
        return self.log.read_text(errors="replace")

    def ran(self, run_id: Any) -> bool:
        """This worker took the run at least once: a worker that loses a race for it logs an aborted
        submission, and may lose the first race and win a retry's."""
        text = self.text()
        return text.count(f"submitting flow run '{run_id}'") > text.count(f"Aborted submission of flow run '{run_id}'")

    def wait_for(self, text: str, timeout: float = 300) -> None:
        deadline = time.monotonic() + timeout
        while text not in self.text():
            assert time.monotonic() < deadline, f"{self.name} never logged {text!r}"
            time.sleep(0.3)

    def kill(self) -> None:
        """The host goes away: the worker and every process it started, at once."""
        for pid in [*descendants(self.proc.pid), self.proc.pid]:
            with suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        self.proc.wait(10)
        self.killed = True


@dataclass
class Pool:
    workers: list[Worker] = field(default_factory=list)

    def worker_of(self, run_id: Any, timeout: float = 300) -> Worker:
        deadline = time.monotonic() + timeout
        while True:
            found = [w for w in self.workers if w.ran(run_id)]
            if found:
                return found[-1]
            assert time.monotonic() < deadline, f"no worker took run {run_id}"
            time.sleep(0.5)


    def logging(self, text: str, timeout: float = 300) -> Worker:
        """The worker whose runs log TEXT (flow-run output goes to the worker's own output)."""
        deadline = time.monotonic() + timeout
        while True:
            found = [w for w in self.workers if text in w.text()]
            if found:
                return found[0]
            assert time.monotonic() < deadline, f"no worker logged {text!r}"
            time.sleep(0.3)


def descendants(pid: int) -> list[int]:
    children: dict[int, list[int]] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        with suppress(OSError, IndexError, ValueError):
            fields = stat.read_text().rsplit(")", 1)[1].split()
            children.setdefault(int(fields[1]), []).append(int(stat.parent.name))
    out: list[int] = []
    todo = [pid]
    while todo:
        for child in children.get(todo.pop(), []):
            out.append(child)
            todo.append(child)
    return out


def start_worker(name: str, deployments: Path, logdir: Path, limit: int = 4) -> Worker:
    env = {
        **os.environ,
        "ECS_PIPELINE_DEPLOYMENTS": str(deployments),
        "ECS_PIPELINE_LOCK_STALE_SECONDS": "10",
        "PREFECT_WORKER_QUERY_SECONDS": "2",
        "PREFECT_LOGGING_LEVEL": "INFO",
    }
    log = logdir / f"worker-{name}.log"
    out = log.open("wb")
    proc = subprocess.Popen(
        [*PREFECT, "worker", "start", "--pool", POOL, "--name", name, "--limit", str(limit)],
        cwd=ROOT, env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True,
    )  # fmt: skip
    return Worker(name, proc, log)


@contextmanager
def worker_pool(
    deployments: Path, logdir: Path, names: tuple[str, ...] = ("w1", "w2"), limit: int = 4
) -> Iterator[Pool]:
    deploy_all()
    pool = Pool([start_worker(n, deployments, logdir, limit) for n in names])
    try:
        deadline = time.monotonic() + 120
        while not all("started" in w.text() for w in pool.workers):
            assert time.monotonic() < deadline, "\n".join(w.text()[-2000:] for w in pool.workers)
            time.sleep(0.5)
        yield pool
    finally:
        alive = [w for w in pool.workers if not w.killed]
        for w in alive:  # all told at once: each shutdown takes seconds, not one after the other
            with suppress(ProcessLookupError):
                os.killpg(w.proc.pid, signal.SIGTERM)
        for w in alive:
            try:
                w.proc.wait(15)
            except subprocess.TimeoutExpired:
                w.kill()
        remove_pool_deployments()


def remove_pool_deployments() -> None:
    """The deployments `prefect deploy --all` made go with the test: a later `serve` in this session
    registers deployments of the same names, and must not inherit the worker's pull steps."""
    with get_client(sync_client=True) as client:
        for deployment in client.read_deployments():
            if deployment.work_pool_name == POOL:
                client.delete_deployment(deployment.id)


def wait_final(run_id: UUID | str, timeout: float = 600) -> Any:
    with get_client(sync_client=True) as client:
        deadline = time.monotonic() + timeout
        while True:
            run = client.read_flow_run(UUID(str(run_id)))
            if run.state is not None and run.state.is_final():
                return run
            assert time.monotonic() < deadline, f"run {run_id} still {run.state}"
            time.sleep(1)
