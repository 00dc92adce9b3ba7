"""The one place AWS and Docker clients are made.

Region, endpoint, botocore retry mode and timeouts are decided here; clients
are cached per service and passed into the task functions, never created at
module level, so the sandbox and production differ only by an endpoint URL
and a Docker host.
"""

from __future__ import annotations

import os
import threading
from typing import Any

import boto3
import docker
from botocore.config import Config
from pydantic import BaseModel, ConfigDict, Field

DOCKER_TIMEOUT_SECONDS = 300
SANDBOX_MAX_ATTEMPTS = 2


class AwsSettings(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")

    region: str = Field(default="us-east-1", min_length=1)
    endpoint_url: str | None = Field(
        default=None, description="the sandbox's endpoint; None for AWS itself"
    )
    max_attempts: int = Field(default=3, ge=1, le=20, description="calls in all, first included")
    connect_timeout: float = Field(default=5, gt=0)
    read_timeout: float = Field(default=30, gt=0)
    profile: str | None = None

    @classmethod
    def from_env(cls, env: dict[str, str] | None = None) -> AwsSettings:
        """Settings from AWS_* variables; a sandbox endpoint gets few attempts to fail fast."""
        e = dict(os.environ) if env is None else env
        endpoint = e.get("AWS_ENDPOINT_URL") or None
        attempts = e.get("AWS_MAX_ATTEMPTS")
        default_attempts = SANDBOX_MAX_ATTEMPTS if endpoint else 3
        return cls(
            region=e.get("AWS_REGION") or e.get("AWS_DEFAULT_REGION") or "us-east-1",
            endpoint_url=endpoint,
            max_attempts=int(attempts) if attempts else default_attempts,
            profile=e.get("AWS_PROFILE") or None,
        )

    def botocore_config(self) -> Config:
        return Config(
            region_name=self.region,
            # total_max_attempts counts the first call too (botocore's max_attempts does not)
            retries={"mode": "standard", "total_max_attempts": self.max_attempts},
            connect_timeout=self.connect_timeout,
            read_timeout=self.read_timeout,
        )


class AwsClients:
    """One boto3 session; one client per service name, made on first use."""

    def __init__(self, settings: AwsSettings | None = None) -> None:
        self.settings = settings or AwsSettings.from_env()
        self._session = boto3.session.Session(
            region_name=self.settings.region, profile_name=self.settings.profile
        )
        self._config = self.settings.botocore_config()
        self._clients: dict[str, Any] = {}
        self._lock = threading.Lock()  # boto3 sessions are not thread-safe

    def get(self, service: str) -> Any:
        with self._lock:
            client = self._clients.get(service)
            if client is None:
                client = self._session.client(
                    service, endpoint_url=self.settings.endpoint_url, config=self._config
                )
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
