"""ECS tasks as real containers, recorded as moto Task objects.

The ``TaskRunner`` keeps each fleet (``fleets.py``) at its desired count,
starting tasks in the background and retrying failed starts with backoff like
the ECS scheduler does, and stops them after their targets have drained.
"""

from __future__ import annotations

import threading
import uuid
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from types import SimpleNamespace
from typing import Any

from moto.ecs.models import Task

from .docker_runtime import ContainerSpec, DockerRuntime, StartError, docker_host
from .fleets import Fleet, TaskRun, awslogs_options, is_healthy, unhealthy_group, utc
from .targets import DRAIN_GRACE, in_flight, target_key
from .world import LOCK, ecs, elbv2, log, now

MAX_STOPPED_PER_FLEET = 10


class TaskRunner:
    """Starts, watches and stops the containers behind moto's Task records."""

    def __init__(self, runtime: DockerRuntime) -> None:
        self.runtime = runtime
        self.runs: dict[str, TaskRun] = {}
        self._pool = ThreadPoolExecutor(max_workers=4, thread_name_prefix="task")
        self._last_poll = 0.0
        self._last_warning = 0.0
        self._lock = threading.Lock()
        self.before_kill: Callable[[TaskRun], None] | None = None

    # -- launching -------------------------------------------------------
    def launch(self, fleet: Fleet, overrides: dict[str, Any] | None = None) -> TaskRun:
        """Create the moto Task (PROVISIONING) and start its containers in the background."""
        backend = ecs()
        cluster = backend._get_cluster(fleet.cluster)
        td = backend.describe_task_definition(fleet.task_definition)
        shim = SimpleNamespace(arn=td.arn, network_mode="host",
                               container_definitions=td.container_definitions)
        task: Any = Task(cluster, shim, None, _resources(td),  # type: ignore[arg-type]
                    backend=backend, group=fleet.group or f"service:{fleet.service}", launch_type="FARGATE",
                    started_by=fleet.started_by, platform_version="1.4.0")
        task._transitions = []  # the controller, not moto's state manager, moves lastStatus
        task.last_status = "PROVISIONING"
        task.created_at = utc()
        task.cpu, task.memory = td.cpu, td.memory
        task.health_status = "UNKNOWN"
        task.overrides = overrides or {}
        task.containers = [_container(task, cdef) for cdef in td.container_definitions]
        task.attachments = [{"id": str(uuid.uuid4()), "type": "ElasticNetworkInterface",
                             "status": "ATTACHED", "details": [
                                 {"name": "networkInterfaceId", "value": f"eni-{task.id[:17]}"},
                                 {"name": "privateIPv4Address", "value": "127.0.0.1"}]}]
        backend.tasks.setdefault(cluster.name, {})[task.task_arn] = task
        run = TaskRun(task=task, fleet=fleet)
        fleet.tasks.append(run)
        self.runs[run.arn] = run
        self._pool.submit(self._start, run, _with_overrides(td.container_definitions, overrides))
        return run

    def _start(self, run: TaskRun, cdefs: list[dict[str, Any]]) -> None:
        primary = _primary(cdefs)
        run.log_options = {c["name"]: o for c in cdefs if (o := awslogs_options(c))}
        run.essential = {c["name"] for c in cdefs if c.get("essential", True)}
        try:
            run.port = self.runtime.allocate_port()
            with LOCK:
                run.task.last_status = "PENDING"
                run.task.pull_started_at = utc()
            for cdef in cdefs:
                self.runtime.pull(cdef["image"])
            with LOCK:
                run.task.pull_stopped_at = utc()
            task_id = run.arn.rsplit("/", 1)[-1]
            for cdef in cdefs:
                env = {e["name"]: e["value"] for e in cdef.get("environment") or []}
                env["PORT"] = str(run.port)
                suffix = "" if cdef is primary else f"-{cdef['name']}"
                spec = ContainerSpec(
                    name=f"sbx-{run.fleet.cluster}-{task_id}{suffix}"[:120], image=cdef["image"],
                    task_arn=run.arn, environment=env, command=cdef.get("command"),
                    entry_point=cdef.get("entryPoint"),
                )
                run.containers[cdef["name"]] = self.runtime.run(spec)
        except StartError as exc:
            with LOCK:
                self._finish(run, exc.reason, "TaskFailedToStart", failed=True)
            return
        except Exception as exc:  # noqa: BLE001 - report any engine failure as ECS would
            with LOCK:
                self._finish(run, f"CannotStartContainerError: {exc}", "TaskFailedToStart", True)
            return
        with LOCK:
            if run.state != "starting":
                self._pool.submit(self._kill, run)
                return
            run.state = "running"
            run.task.last_status = "RUNNING"
            run.task.started_at = utc()
            run.started = now()
            run.task.connectivity, run.task.connectivity_at = "CONNECTED", utc()
            for c in run.task.containers:
                c.last_status = "RUNNING"
                c.runtime_id = run.containers.get(c.name)
                if c.name == primary["name"]:
                    c.network_bindings = [{"bindIP": "127.0.0.1", "containerPort": run.port,
                                           "hostPort": run.port, "protocol": "tcp"}]
            self._register(run)
        log.info("task %s RUNNING on 127.0.0.1:%s", run.arn.rsplit("/", 1)[-1], run.port)

    def _register(self, run: TaskRun) -> None:
        for lb in run.fleet.load_balancers:
            tg_arn = str(lb.get("targetGroupArn") or "")
            tg = elbv2().target_groups.get(tg_arn)
            if tg is None:
                continue
            tg.register([{"Id": "127.0.0.1", "Port": run.port}])
            run.registered.append(tg_arn)

    # -- stopping --------------------------------------------------------
    def request_stop(self, run: TaskRun, reason: str, stop_code: str = "ServiceSchedulerInitiated",
                     failed: bool = False) -> None:
        """Deregister first; the container stops after the deregistration delay."""
        if run.state in ("draining", "stopped"):
            return
        run.failed = run.failed or failed
        run.task.desired_status = "STOPPED"
        run.task.stopped_reason = reason
        run.task.stop_code = stop_code
        run.task.stopping_at = utc()
        if run.state == "starting":
            self._finish(run, reason, stop_code, failed)
            return
        run.state = "draining"
        run.task.last_status = "DEACTIVATING"
        delay = 0.0
        for tg_arn in run.registered:
            tg = elbv2().target_groups.get(tg_arn)
            if tg is None:
                continue
            if target_key("127.0.0.1", run.port) not in tg.targets:
                continue
            tg.deregister([{"Id": "127.0.0.1", "Port": run.port}])
            entry = tg.targets.get(target_key("127.0.0.1", run.port))
            if entry and entry.get("drain_until"):
                delay = max(delay, entry["drain_until"] - now())
        run.stop_at = now() + delay

    def _finish(self, run: TaskRun, reason: str, stop_code: str, failed: bool,
                exit_code: int | None = None, exited: str | None = None) -> None:
        """Mark the task STOPPED (caller holds LOCK)."""
        if run.state == "stopped":
            return
        for tg_arn in run.registered:
            tg = elbv2().target_groups.get(tg_arn)
            entry = tg.targets.get(target_key("127.0.0.1", run.port)) if tg else None
            if entry is not None and entry["State"] != "draining":
                tg.deregister([{"Id": "127.0.0.1", "Port": run.port}])
        run.state = "stopped"
        run.failed = run.failed or failed
        t = run.task
        t.last_status, t.desired_status = "STOPPED", "STOPPED"
        if not t.stopped_reason:
            t.stopped_reason = reason
            t.stop_code = stop_code
        t.stopped_at = t.execution_stopped_at = utc()
        for c in t.containers:
            c.last_status = "STOPPED"
            if exit_code is not None and c.name == exited:
                c.exit_code = exit_code
                c.reason = None
        fleet = run.fleet
        if run.failed:
            fleet.failures += 1
            fleet.failed_total += 1
            fleet.last_reason = t.stopped_reason
            fleet.next_launch = now() + min(0.25 * 2 ** (fleet.failures - 1), 8.0)
        if run.containers:
            self._pool.submit(self._kill, run)
        elif run.port:
            self.runtime.release_port(run.port)
        log.info("task %s STOPPED: %s", run.arn.rsplit("/", 1)[-1], t.stopped_reason)

    def _ship_last_words(self, run: TaskRun) -> None:
        if self.before_kill is not None and run.log_options:
            try:
                self.before_kill(run)  # last words of the container, before it is removed
            except Exception as exc:  # noqa: BLE001 - shipping last logs must never keep a task alive
                log.debug("before_kill for %s failed: %s", run.arn, exc)

    def _kill(self, run: TaskRun) -> None:
        self._ship_last_words(run)
        for cid in run.containers.values():
            self.runtime.stop(cid)
        if run.port:
            self.runtime.release_port(run.port)

    # -- watching --------------------------------------------------------
    def tick(self) -> None:
        """Notice exited containers, failed health checks and finished drains."""
        states: dict[str, tuple[bool, int | None]] | None = None
        with LOCK:
            watching = any(run.state == "running" for run in self.runs.values())
        if watching and now() - self._last_poll >= 0.4:  # nothing running: nothing to ask the engine
            self._last_poll = now()
            try:
                states = self.runtime.states()
            except Exception as exc:  # noqa: BLE001 - an engine hiccup is retried on the next tick
                if now() - self._last_warning > 60:
                    self._last_warning = now()
                    log.warning("docker engine at %s does not answer: %s", docker_host(), exc)
        exited: list[tuple[TaskRun, str]] = []  # (task, essential container that exited)
        with LOCK:
            for run in list(self.runs.values()):
                if run.state == "draining" and run.stop_at is not None and now() >= run.stop_at and (
                        in_flight(run.port) == 0 or now() >= run.stop_at + DRAIN_GRACE):
                    self._finish(run, run.task.stopped_reason, run.task.stop_code or "", run.failed)
                elif run.state == "running":
                    if states is not None:
                        dead = [(name, cid) for name, cid in run.containers.items()
                                if name in run.essential and (cid not in states or not states[cid][0])]
                        if dead:
                            exited.append((run, dead[0][0]))
                            continue
                    if is_healthy(run):
                        run.was_healthy = True
                        run.task.health_status = "HEALTHY"
                        run.fleet.failures = 0
                    tg_arn = unhealthy_group(run)
                    if tg_arn and now() - run.started >= run.fleet.grace:
                        self.request_stop(run, f"Task failed ELB health checks in (target-group {tg_arn})",
                                          "ServiceSchedulerInitiated", failed=True)
        for run, name in exited:
            code, logs = self.runtime.exit_details(run.containers[name])
            self._ship_last_words(run)  # the awslogs driver has them in CloudWatch by the time ECS says STOPPED
            reason = "Essential container in task exited"
            if "in use" in logs.lower():  # host networking: the port belongs to someone else
                last = logs.strip().splitlines()[-1][-200:]
                reason = (f"CannotStartContainerError: container {name} could not bind its port on "
                          f"127.0.0.1 (PORT={run.port}): {last}")
            with LOCK:
                if run.state == "running":
                    run.task.stopped_reason = reason
                    run.task.stop_code = "EssentialContainerExited"
                    self._finish(run, reason, "EssentialContainerExited", True, code, name)
        with LOCK:
            for arn, run in list(self.runs.items()):
                if run.state == "stopped":
                    del self.runs[arn]

    def reconcile(self, fleet: Fleet) -> None:
        """Bring one fleet toward its desired count (caller holds LOCK)."""
        alive = fleet.alive()
        if len(alive) < fleet.desired and now() >= fleet.next_launch:
            for _ in range(fleet.desired - len(alive)):
                self.launch(fleet)
        elif len(alive) > fleet.desired:
            order = sorted(alive, key=lambda r: (is_healthy(r), r.state == "running"))
            for run in order[: len(alive) - fleet.desired]:
                self.request_stop(run, f"Scaling activity initiated by (deployment {fleet.started_by})")
        stopped = [t for t in fleet.tasks if t.state == "stopped"]
        for run in stopped[:-MAX_STOPPED_PER_FLEET] if len(stopped) > MAX_STOPPED_PER_FLEET else []:
            fleet.tasks.remove(run)
            ecs().tasks.get(run.fleet.cluster, {}).pop(run.arn, None)

    def stop_all(self) -> None:
        self._pool.shutdown(wait=False, cancel_futures=True)


class SbxContainer:
    """The Container shape ECS returns, for every container definition of a task."""

    def __init__(self, task: Any, cdef: dict[str, Any]) -> None:
        self.container_arn = f"{task.task_arn.replace(':task/', ':container/')}/{cdef['name']}"
        self.task_arn = task.task_arn
        self.name = cdef["name"]
        self.image = cdef.get("image")
        self.last_status = "PENDING"
        self.exit_code: int | None = None
        self.reason: str | None = None
        self.runtime_id: str | None = None
        self.network_bindings: list[dict[str, Any]] = []
        self.network_interfaces = [{"privateIpv4Address": "127.0.0.1"}]
        self.health_status = "UNKNOWN"
        self.cpu = str(cdef.get("cpu", 0))
        self.memory = str(cdef["memory"]) if cdef.get("memory") else None


def _container(task: Any, cdef: dict[str, Any]) -> SbxContainer:
    return SbxContainer(task, cdef)


def _with_overrides(cdefs: list[dict[str, Any]], overrides: dict[str, Any] | None) -> list[dict[str, Any]]:
    """Container definitions with RunTask's containerOverrides (command, environment) applied."""
    by_name = {o.get("name"): o for o in (overrides or {}).get("containerOverrides") or []}
    out = []
    for cdef in cdefs:
        o = by_name.get(cdef["name"])
        if not o:
            out.append(cdef)
            continue
        merged = dict(cdef)
        if o.get("command"):
            merged["command"] = o["command"]
        env = {e["name"]: e["value"] for e in cdef.get("environment") or []}
        env.update({e["name"]: e["value"] for e in o.get("environment") or []})
        merged["environment"] = [{"name": k, "value": v} for k, v in env.items()]
        out.append(merged)
    return out


def _resources(td: Any) -> dict[str, Any]:
    """CPU/MEMORY the task reserves (Fargate task definitions set them at task level)."""
    return {"CPU": int(td.cpu or 0), "MEMORY": int(td.memory or 0), "PORTS": [], "PORTS_UDP": []}


def _primary(cdefs: list[dict[str, Any]]) -> dict[str, Any]:
    """The essential container with a port mapping gets PORT and the target."""
    for cdef in cdefs:
        if cdef.get("portMappings") and cdef.get("essential", True):
            return cdef
    return cdefs[0]
