"""Container output shipped to CloudWatch Logs, like the awslogs log driver.

Task definitions that name ``logDriver: awslogs`` get their containers' stdout
and stderr in moto's Logs backend under ``<prefix>/<container>/<task id>``, so
a person can read why a task failed the way they would on AWS.
"""

from __future__ import annotations

import threading
from datetime import datetime
from typing import TYPE_CHECKING, Any

from .world import ACCOUNT, LOCK, REGION, log

if TYPE_CHECKING:
    from .containers import TaskRunner
    from .docker_runtime import DockerRuntime
    from .fleets import TaskRun

# The awslogs driver buffers a container's output and puts it every 5 s (Docker's
# daemon/logger/awslogs/cloudwatchlogs.go, batchPublishFrequency = 5 * time.Second), so CloudWatch
# shows a running task's lines up to 5 s late; a stopped task's last lines go before ECS says STOPPED.
INTERVAL = 5.0


def logs_backend() -> Any:
    from moto.logs.models import logs_backends

    return logs_backends[ACCOUNT][REGION]


class LogShipper:
    """Polls each awslogs container's output and appends new lines to its stream."""

    def __init__(self, runner: TaskRunner, runtime: DockerRuntime) -> None:
        self.runner, self.runtime = runner, runtime
        self._cursor: dict[str, str] = {}  # container id -> last shipped docker timestamp
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self._thread = threading.Thread(target=self._loop, name="logs", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()

    def _loop(self) -> None:
        while not self._stop.wait(INTERVAL):
            with LOCK:
                runs = [r for r in self.runner.runs.values() if r.log_options and r.containers]
            for run in runs:
                try:
                    self.ship(run)
                except Exception as exc:  # noqa: BLE001 - logs must never stop the sandbox
                    log.debug("log shipping for %s failed: %s", run.arn, exc)

    def ship(self, run: TaskRun) -> None:
        """Append the output each container wrote since the last call."""
        task_id = run.arn.rsplit("/", 1)[-1]
        for name, cid in list(run.containers.items()):
            opts = run.log_options.get(name)
            if not opts:
                continue
            with self._lock:
                events = self._read(cid)
            if events:
                self._put(opts, f"{opts.get('awslogs-stream-prefix', 'ecs')}/{name}/{task_id}", events)

    def _read(self, cid: str) -> list[dict[str, Any]]:
        last = self._cursor.get(cid, "")
        since = int(_millis(last) / 1000) if last else None
        try:
            raw = self.runtime.client.api.logs(cid, stdout=True, stderr=True, timestamps=True,
                                               since=since)
        except Exception:  # noqa: BLE001 - container already gone
            return []
        events = []
        for line in raw.decode("utf-8", "replace").splitlines():
            stamp, _, message = line.partition(" ")
            if not stamp or stamp <= last:
                continue
            last = stamp
            events.append({"timestamp": _millis(stamp), "message": message})
        self._cursor[cid] = last
        return events

    @staticmethod
    def _put(opts: dict[str, str], stream: str, events: list[dict[str, Any]]) -> None:
        group = opts["awslogs-group"]
        with LOCK:
            backend = logs_backend()
            if group not in backend.groups:
                if str(opts.get("awslogs-create-group", "")).lower() != "true":
                    return  # like the driver: no group, no logs (and the task keeps running)
                backend.create_log_group(group, {})
            backend.ensure_log_stream(group, stream)
            backend.put_log_events(group, stream, events)


def _millis(stamp: str) -> int:
    """Docker's RFC 3339 nanosecond timestamp as epoch milliseconds."""
    head, _, frac = stamp.rstrip("Z").partition(".")
    base = datetime.fromisoformat(head + "+00:00").timestamp()
    return int(base * 1000 + int((frac + "000")[:3] or 0))
