"""Real containers for ECS tasks, on the host network, bound to loopback.

Every container carries the label ``ecs-pipeline.sandbox=1`` so a restart or a
shutdown can find and remove exactly what the sandbox started.
"""

from __future__ import annotations

import contextlib
import os
import re
import threading
from dataclasses import dataclass, field
from typing import Any

import docker
from docker.errors import APIError, DockerException, ImageNotFound, NotFound

from sandbox.engine import SandboxError
from sandbox.layout import free_ports

from .world import log

LABEL = "ecs-pipeline.sandbox"
OWNER = "ecs-pipeline.sandbox.owner"
_EXITED = re.compile(r"Exited \((-?\d+)\)")


class StartError(Exception):
    """A task could not start; ``reason`` is the stoppedReason ECS would write."""

    def __init__(self, reason: str, exit_code: int | None = None) -> None:
        super().__init__(reason)
        self.reason = reason
        self.exit_code = exit_code


@dataclass
class ContainerSpec:
    """What one task needs from Docker."""

    name: str
    image: str
    task_arn: str
    environment: dict[str, str]
    command: list[str] | None = None
    entry_point: list[str] | None = None
    labels: dict[str, str] = field(default_factory=dict)


class DockerRuntime:
    """Thin, thread-safe wrapper over the Docker SDK with ECS-style errors."""

    def __init__(self, owner: str = "") -> None:
        self.owner = owner  # host:port of the endpoint; separates sandboxes sharing an engine
        self._client: Any = None
        self._ports: set[int] = set()
        self._lock = threading.Lock()

    @property
    def client(self) -> Any:
        if self._client is None:
            self._client = docker.from_env(timeout=60)
        return self._client

    def available(self) -> bool:
        try:
            self.client.ping()
            return True
        except Exception:  # noqa: BLE001 - any failure means "no engine"
            return False

    def allocate_port(self) -> int:
        """A loopback port nobody listens on, never handed out twice while in use."""
        with self._lock:
            for _ in range(50):
                try:
                    (port,) = free_ports(1)  # below the ephemeral range: no outgoing connection takes it first
                except SandboxError:
                    break
                if port not in self._ports:
                    self._ports.add(port)
                    return port
        raise StartError("CannotStartContainerError: no free port on 127.0.0.1")

    def release_port(self, port: int) -> None:
        with self._lock:
            self._ports.discard(port)

    def pull(self, image: str) -> None:
        """Pull like the ECS agent does; failures become CannotPullContainerError."""
        try:
            repo, tag = _split_ref(image)
            self.client.images.pull(repo, tag=tag)
        except (APIError, ImageNotFound, DockerException) as exc:
            if self._cached(image):
                log.warning("pull of %s failed, using the cached image like the ECS agent", image)
                return
            msg = getattr(exc, "explanation", None) or str(exc)
            raise StartError(
                f"CannotPullContainerError: pull image manifest has been retried 1 time(s): "
                f"failed to resolve ref {image}: {msg}"
            ) from exc

    def _cached(self, image: str) -> bool:
        try:
            self.client.images.get(image)
            return True
        except (ImageNotFound, APIError):
            return False

    def run(self, spec: ContainerSpec) -> str:
        """Start the container detached on the host network; returns its id."""
        labels = {LABEL: "1", "ecs-pipeline.task-arn": spec.task_arn, OWNER: self.owner}
        labels.update(spec.labels)
        kwargs: dict[str, Any] = {
            "detach": True,
            "network_mode": "host",
            "environment": spec.environment,
            "labels": labels,
            "name": spec.name,
        }
        if spec.command:
            kwargs["command"] = spec.command
        if spec.entry_point:
            kwargs["entrypoint"] = spec.entry_point
        try:
            self._remove_by_name(spec.name)
            container = self.client.containers.run(spec.image, **kwargs)
        except (APIError, DockerException) as exc:
            msg = getattr(exc, "explanation", None) or str(exc)
            raise StartError(f"CannotStartContainerError: {msg}") from exc
        return str(container.id)

    def _remove_by_name(self, name: str) -> None:
        with contextlib.suppress(NotFound):
            self.client.containers.get(name).remove(force=True)

    def states(self) -> dict[str, tuple[bool, int | None]]:
        """Container id -> (running, exit code) for every container this endpoint started.

        Several sandboxes may share one engine: each lists only its own, so the engine's work per poll
        does not grow with the other sandboxes' containers.
        """
        rows = self.client.api.containers(all=True, filters={"label": [f"{LABEL}=1", f"{OWNER}={self.owner}"]})
        out: dict[str, tuple[bool, int | None]] = {}
        for row in rows:
            state = row.get("State", "")
            code: int | None = None
            match = _EXITED.search(row.get("Status", ""))
            if match:
                code = int(match.group(1))
            out[row["Id"]] = (state in ("running", "created", "restarting"), code)
        return out

    def exit_details(self, container_id: str) -> tuple[int | None, str]:
        """Exit code and the last log lines, to explain why a task stopped."""
        try:
            c = self.client.containers.get(container_id)
            code = c.attrs.get("State", {}).get("ExitCode")
            logs = c.logs(tail=5).decode("utf-8", "replace").strip()
            return code, logs
        except (NotFound, APIError):
            return None, ""

    def stop(self, container_id: str, timeout: int = 2) -> None:
        try:
            c = self.client.containers.get(container_id)
            c.stop(timeout=timeout)
            c.remove(force=True)
        except NotFound:
            pass
        except APIError as exc:
            log.warning("stop %s failed: %s", container_id[:12], exc)

    def remove_all(self) -> int:
        """Remove this endpoint's sandbox containers (orphans of an earlier run included)."""
        try:
            rows = self.client.api.containers(all=True, filters={"label": f"{LABEL}=1"})
        except DockerException as exc:
            log.warning("cannot list sandbox containers: %s", exc)
            return 0
        rows = [r for r in rows if (r.get("Labels") or {}).get(OWNER, self.owner) == self.owner]
        for row in rows:
            try:
                self.client.api.remove_container(row["Id"], force=True)
            except APIError as exc:
                log.warning("remove %s failed: %s", row["Id"][:12], exc)
        return len(rows)


def _split_ref(image: str) -> tuple[str, str]:
    """Split an image reference into repository and tag or digest."""
    if "@" in image:
        repo, digest = image.split("@", 1)
        return repo, digest
    last = image.rsplit("/", 1)[-1]
    if ":" in last:
        repo, tag = image.rsplit(":", 1)
        return repo, tag
    return image, "latest"


def docker_host() -> str:
    return os.environ.get("DOCKER_HOST", "unix:///var/run/docker.sock")
