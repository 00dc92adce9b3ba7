"""The one place AWS and Docker clients are made.

Region, endpoint, botocore retry mode and timeouts are decided here; clients
are cached per service and passed into the task functions, never created at
module level, so the sandbox and production differ only by an endpoint URL
and a Docker host.
"""

from __future__ import annotations

import threading
from typing import Any

import boto3
import docker
from botocore.config import Config

from tasks.errors import IAM_PREFIX
from tasks.settings import Settings

DOCKER_TIMEOUT_SECONDS = 300
USER_AGENT = "ecs-pipeline/0.1"


def botocore_config(settings: Settings) -> Config:
    """One retry policy for every AWS call: botocore's standard mode (backoff with jitter,
    throttling and 5xx retried, the rest not), attempts sized for a real, busy account."""
    return Config(
        region_name=settings.region,
        # total_max_attempts counts the first call too (botocore's max_attempts does not)
        retries={"mode": "standard", "total_max_attempts": settings.max_attempts},
        connect_timeout=settings.connect_timeout,
        read_timeout=settings.read_timeout,
        # lets a fault injector (or a CloudTrail query) tell the pipeline's calls from anyone else's
        user_agent_extra=USER_AGENT,
    )


def _note_iam_prefix(client: Any) -> Any:
    """Put the IAM prefix into every error answer, so an AccessDenied can name the permission."""
    endpoint_prefix = client.meta.service_model.endpoint_prefix
    prefix = IAM_PREFIX.get(endpoint_prefix, endpoint_prefix)

    def note(parsed: dict[str, Any], **_: Any) -> None:
        if isinstance(parsed, dict) and isinstance(parsed.get("Error"), dict):
            parsed["Error"]["IamPrefix"] = prefix

    return note


class AwsClients:
    """One boto3 session; one client per service name, made on first use."""

    def __init__(self, settings: Settings | None = None) -> None:
        self.settings = settings or Settings()
        self._session = boto3.session.Session(
            region_name=self.settings.region, profile_name=self.settings.profile
        )
        self._config = botocore_config(self.settings)
        self._clients: dict[str, Any] = {}
        self._lock = threading.Lock()  # boto3 sessions are not thread-safe

    def get(self, service: str) -> Any:
        with self._lock:
            client = self._clients.get(service)
            if client is None:
                client = self._session.client(
                    service, endpoint_url=self.settings.endpoint_url, config=self._config
                )
                client.meta.events.register("after-call", _note_iam_prefix(client))
                self._clients[service] = client
            return client

    def __reduce__(self) -> tuple[Any, ...]:
        # Clients hold sockets and locks; rebuild them from the settings elsewhere.
        return (AwsClients, (self.settings,))

    def __repr__(self) -> str:
        return (
            f"AwsClients(region={self.settings.region!r}, endpoint={self.settings.endpoint_url!r})"
        )


def docker_client() -> docker.DockerClient:
    """A Docker client from DOCKER_HOST (and DOCKER_TLS_* when set)."""
    return docker.from_env(timeout=DOCKER_TIMEOUT_SECONDS)
