"""Serve the flows as Prefect deployments from this process.

A served process is the simplest runner: no work pool, and every release is a
flow run of the ``deploy-service`` deployment, so the Prefect UI offers Retry
on a failed one. ``prefect.yaml`` describes the same deployments for a
process work pool and ``prefect worker start`` when several machines run them.
"""

from __future__ import annotations

import asyncio
import contextlib
from typing import Any

from prefect.client.orchestration import get_client
from prefect.exceptions import ObjectNotFound, TerminationSignal
from prefect.flows import _display_serve_start_message
from prefect.runner import Runner

from flows.fleet import release_fleet
from flows.pipeline import deploy_service
from flows.polling import poll_changes
from flows.runner import FinishingRunner, served_description
from tasks.core.errors import ConfigError

DEPLOY_SERVICE = "deploy-service/deploy-service"
DEPLOY_SUMMARY = "Release one service: detect, build, push, register, blue/green, verify, teardown."


def refuse_work_pool_deployments(names: list[str]) -> None:
    """Serving must not take over deployments that ``prefect deploy`` made for a work pool.

    Their runs belong to that pool's workers: served here they would keep the
    pool's pull steps and crash, while the workers would no longer see them.
    """
    with get_client(sync_client=True) as client:
        for name in names:
            try:
                found = client.read_deployment_by_name(name)
            except ObjectNotFound:
                continue
            if found.work_pool_name:
                raise ConfigError(
                    f"deployment {name} belongs to work pool {found.work_pool_name!r} (made by `prefect deploy`): "
                    f"start `prefect worker start --pool {found.work_pool_name}` to run it, or remove it with "
                    f"`prefect deployment delete {name}` before serving from this process"
                )


def serve_flows(poll_interval_seconds: int | None = None, limit: int = 8) -> None:
    """``prefect.serve`` with a runner that never cancels a run that already finished (flows/runner.py)."""
    deployments: list[Any] = [
        deploy_service.to_deployment(
            name="deploy-service", description=served_description(DEPLOY_SUMMARY), tags=["ecs-pipeline"]
        ),
        release_fleet.to_deployment(
            name="release-fleet",
            description="Release many services as deploy-service runs, in waves.",
            tags=["ecs-pipeline", "fleet"],
        ),
    ]
    if poll_interval_seconds:
        deployments.append(
            poll_changes.to_deployment(
                name="poll-changes", interval=poll_interval_seconds, tags=["ecs-pipeline"]
            )
        )
    refuse_work_pool_deployments([d.full_name for d in deployments])
    runner: Runner = FinishingRunner(limit=limit, summaries={DEPLOY_SERVICE: DEPLOY_SUMMARY})
    for deployment in deployments:
        runner.add_deployment(deployment)
    _display_serve_start_message(*deployments)
    with contextlib.suppress(KeyboardInterrupt, TerminationSignal):
        asyncio.run(runner.start())
