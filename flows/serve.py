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

from prefect.exceptions import TerminationSignal
from prefect.flows import _display_serve_start_message
from prefect.runner import Runner

from flows.fleet import release_fleet
from flows.pipeline import deploy_service
from flows.polling import poll_changes
from flows.runner import FinishingRunner, served_description

DEPLOY_SERVICE = "deploy-service/deploy-service"
DEPLOY_SUMMARY = "Release one service: detect, build, push, register, blue/green, verify, teardown."


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
    runner: Runner = FinishingRunner(limit=limit, summaries={DEPLOY_SERVICE: DEPLOY_SUMMARY})
    for deployment in deployments:
        runner.add_deployment(deployment)
    _display_serve_start_message(*deployments)
    with contextlib.suppress(KeyboardInterrupt, TerminationSignal):
        asyncio.run(runner.start())
