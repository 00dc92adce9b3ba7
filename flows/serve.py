"""Serve the flows as Prefect deployments from this process.

A served process is the simplest runner: no work pool, and every release is a
flow run of the ``deploy-service`` deployment, so the Prefect UI offers Retry
on a failed one. ``prefect.yaml`` describes the same deployments for a
process work pool and ``prefect worker start`` when several machines run them.
"""

from __future__ import annotations

from prefect import serve

from flows.fleet import release_fleet
from flows.pipeline import deploy_service
from flows.polling import poll_changes

DEPLOY_SERVICE = "deploy-service/deploy-service"


def serve_flows(poll_interval_seconds: int | None = None, limit: int = 8) -> None:
    deployments = [
        deploy_service.to_deployment(
            name="deploy-service",
            description="Release one service: detect, build, push, register, blue/green, verify, teardown.",
            tags=["ecs-pipeline"],
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
    serve(*deployments, limit=limit, print_starting_message=True)  # type: ignore[arg-type]
