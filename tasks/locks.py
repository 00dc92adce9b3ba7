"""One deploy per service at a time: a Prefect global concurrency limit keyed by service."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager, suppress

from prefect import get_run_logger
from prefect.client.orchestration import get_client
from prefect.client.schemas.actions import GlobalConcurrencyLimitCreate
from prefect.concurrency.sync import concurrency
from prefect.exceptions import ObjectAlreadyExists, ObjectNotFound


def lock_name(service: str) -> str:
    return f"ecs-pipeline-deploy-{service}"


def ensure_limit(name: str) -> None:
    """Create the limit (1 slot) if missing; a limit that exists keeps its settings."""
    with get_client(sync_client=True) as client:
        try:
            client.read_global_concurrency_limit_by_name(name)
            return
        except ObjectNotFound:
            pass
        with suppress(ObjectAlreadyExists):
            client.create_global_concurrency_limit(GlobalConcurrencyLimitCreate(name=name, limit=1))


@contextmanager
def service_lock(service: str, timeout_seconds: float | None = None) -> Iterator[None]:
    """Hold the service's deploy slot; a second run waits here until the first ends."""
    name = lock_name(service)
    ensure_limit(name)
    get_run_logger().info("waiting for the deploy slot of %s", service)
    with concurrency(name, occupy=1, timeout_seconds=timeout_seconds, strict=True, lease_duration=600):
        get_run_logger().info("holding the deploy slot of %s", service)
        yield
