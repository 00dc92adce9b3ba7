"""The controller's loop: makes moto's AWS control plane behave like the real services.

One thread ticks every part in turn: Docker-backed tasks, ECS services and
deployments, target health, listener proxies, CodeDeploy and CloudWatch.
"""

from __future__ import annotations

import threading
import time
from typing import Any

from . import ec2_ids, ecr_api, ecs_patches, targets
from .cloudwatch import AlarmEvaluator, Metrics
from .codedeploy import CodeDeployController
from .codedeploy_api import CodeDeployApi
from .codedeploy_api import install_patches as install_codedeploy_patches
from .containers import TaskRunner
from .docker_runtime import DockerRuntime, docker_host
from .ecs import EcsController
from .ecs_native import NativeController
from .ecs_native_api import NativeApi
from .faults import Faults
from .logs import LogShipper
from .proxy import ProxyManager
from .requests_log import RequestLog
from .traffic import install_listener_patches
from .world import LOCK, ecs, elbv2, log, time_scale

TICK_SECONDS = 0.1


class Controller:
    """Owns every moving part of the sandbox and the loop that drives them."""

    def __init__(self, owner: str = "") -> None:
        self.runtime = DockerRuntime(owner)
        self.runner = TaskRunner(self.runtime)
        self.ecs = EcsController(self.runner)
        self.codedeploy = CodeDeployController(self.ecs)
        self.ecs.native = self.native = NativeController(self.ecs)
        self.native_api = NativeApi(self.native)
        self.codedeploy_api = CodeDeployApi(self.codedeploy)
        self.metrics = Metrics()
        self.alarms = AlarmEvaluator(self.metrics)
        self.proxies = ProxyManager(self.metrics)
        self.health = targets.HealthChecker()
        self.faults = Faults()
        self.requests = RequestLog()
        self.logs = LogShipper(self.runner, self.runtime)
        self.runner.before_kill = self.logs.ship
        self.running = False
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="controller", daemon=True)
        self.started_at = time.time()

    def install(self) -> None:
        """Patch moto where its answers would not match AWS."""
        targets.install_patches()
        ecs_patches.install(self.runner, self.native)
        ecr_api.install_patches()
        ec2_ids.install_patches()
        install_codedeploy_patches()
        _patch_load_balancer_dns()
        install_listener_patches()

    def start(self) -> None:
        removed = self.runtime.remove_all() if self.runtime.available() else 0
        if removed:
            log.info("removed %d stale sandbox containers", removed)
        self._thread.start()
        self.logs.start()

    def _loop(self) -> None:
        log.info("controller running (time scale %s, docker %s)", time_scale(), docker_host())
        self.running = True
        while not self._stop.is_set():
            started = time.monotonic()
            for step in (self.runner.tick, self.ecs.tick, self.health.tick, self.proxies.sync,
                         self.codedeploy.tick, self.metrics.flush, self.alarms.tick):
                try:
                    step()
                except Exception:  # noqa: BLE001 - one failing part must not stop the others
                    log.exception("controller step %s failed", getattr(step, "__qualname__", step))
            self._stop.wait(max(0.0, TICK_SECONDS - (time.monotonic() - started)))

    def stop(self) -> None:
        """Stop proxies and remove every container the sandbox started."""
        self._stop.set()
        self.logs.stop()
        self.running = False
        if self._thread.is_alive():
            self._thread.join(timeout=5)
        self.proxies.stop_all()
        self.runner.stop_all()
        removed = self.runtime.remove_all()
        log.info("stopped; removed %d containers", removed)

    def snapshot(self) -> dict[str, Any]:
        """Everything a person needs to see what the sandbox is doing."""
        with LOCK:
            groups = []
            for tg in elbv2().target_groups.values():
                groups.append({"targetGroupArn": tg.arn, "name": tg.name, "targets": [
                    {"id": e["Id"], "port": e["Port"], "state": e["State"], "reason": e["Reason"]}
                    for e in tg.targets.values()]})
            fleets = self.ecs.snapshot()
            services = [_service_summary(s) for s in ecs().services.values()]
            plays = [{"deploymentId": p.dep.deployment_id, "status": p.dep.status, "phase": p.phase,
                      "greenWeight": p.green_weight} for p in self.codedeploy.plays.values()]
        return {
            "ok": self.running, "timeScale": time_scale(), "uptime": time.time() - self.started_at,
            "services": services, "fleets": fleets, "targetGroups": groups, "listeners": self.proxies.snapshot(),
            "deployments": plays, "faults": self.faults.list(),
        }


def _service_summary(service: Any) -> dict[str, Any]:
    return {
        "cluster": service.cluster_name, "service": service.name, "status": service.status,
        "controller": (service.deployment_controller or {}).get("type", "ECS"),
        "desired": service.desired_count, "running": service.running_count,
        "pending": service.pending_count,
        "taskSets": [{"taskSetArn": ts.task_set_arn, "status": ts.status, "scale": ts.scale,
                      "taskDefinition": ts.task_definition, "stability": ts.stabilityStatus}
                     for ts in service.task_sets],
        "deployments": [{k: d.get(k) for k in ("id", "status", "taskDefinition", "rolloutState",
                                                "desiredCount", "runningCount", "failedTasks")}
                        for d in service.deployments],
    }


def _patch_load_balancer_dns() -> None:
    """Every internet-facing load balancer answers on 127.0.0.1 (its listener proxies bind there).

    An internal one keeps a name the worker cannot reach: botocore's LoadBalancer.Scheme says
    "internal load balancers can route requests only from clients with access to the VPC",
    and the worker is outside the VPC the sandbox plays.
    """
    from moto.elbv2.models import FakeLoadBalancer

    orig = FakeLoadBalancer.__init__

    def init(self: Any, *args: Any, **kwargs: Any) -> None:
        orig(self, *args, **kwargs)
        if self.scheme != "internal":
            self.dns_name = "127.0.0.1"

    FakeLoadBalancer.__init__ = init  # type: ignore[method-assign]


__all__ = ["Controller"]
