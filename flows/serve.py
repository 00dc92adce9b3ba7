"""Serve the flows as Prefect deployments from this process.

A served process is the simplest runner: no work pool, and every release is a
flow run of the ``deploy-service`` deployment, so the Prefect UI offers Retry
on a failed one. ``prefect.yaml`` describes the same deployments for a
process work pool and ``prefect worker start`` when several machines run them.

A release waiting for approval is suspended: no process waits for it, so the
serving process also answers "no" for each one whose approval_timeout_seconds
has passed (tasks/release/approval.py); the run comes back and rolls back.
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
from typing import Any

from prefect.client.orchestration import get_client
from prefect.deployments.runner import RunnerDeployment
from prefect.exceptions import ObjectNotFound, TerminationSignal
from prefect.flows import _display_serve_start_message
from prefect.logging import get_logger
from prefect.runner import Runner

from flows.fleet import release_fleet
from flows.pipeline import deploy_service
from flows.polling import poll_changes
from flows.runner import FinishingRunner, served_description
from tasks.core.errors import ConfigError
from tasks.core.settings import Settings
from tasks.release.approval import answer_expired_approvals

DEPLOY_SERVICE = "deploy-service/deploy-service"
RELEASE_FLEET = "release-fleet/release-fleet"
DEPLOY_SUMMARY = (
    "Releases one service. It builds the commit into an image, pushes it, registers a task definition, "
    "starts the new version (green) beside the live one (blue), checks it, moves production traffic to it, "
    "and removes blue after the bake. If anything fails before that, production stays on blue (or goes back "
    'to it) and the run ends Failed, its message saying what happened ("Rolled back: ...", "Build failed: '
    '...").\n\n'
    "Who starts it: pushes (`ecs-pipeline webhook serve` receives them), polling (the poll-changes "
    "deployment), and people here with **Run**, then **Custom run** (`service` is required; an empty `sha` "
    "means the branch head). **Retry** on a failed run releases the same commit again and skips what is "
    "already done. `ecs-pipeline deploy SERVICE` runs the same flow in its own process instead."
)
FLEET_SUMMARY = (
    "Releases many services at once: each is a deploy-service release, in waves of `max_parallel`, with one "
    "`fleet-release` summary artifact.\n\n"
    "Who starts it: a push to a repository several services are built from (`ecs-pipeline webhook serve` starts "
    "one fleet run for all of them), or a person here with **Run** (an empty `services` means every service in "
    "deployments/). `ecs-pipeline deploy --all` runs the same flow in its own process instead."
)
POLL_SUMMARY = (
    "For repositories that cannot send webhooks: every {seconds} seconds it asks each repository for its branch "
    "heads and starts deploy-service for each service whose head is not what production runs. A commit that "
    "already has a run is not started again."
)


def typed_parameters(schema: dict[str, Any]) -> dict[str, Any]:
    """SCHEMA with each optional parameter (``sha: str | None = None``) written as its type, for the UI.

    The UI's parameter table shows a parameter's ``type`` only, and pydantic writes an optional one as
    ``anyOf: [type, null]`` with ``default: null``: no type shown. Written as its type without a default,
    Prefect's validation of a run's parameters still accepts null (it reads a typed, not required
    parameter without a default as ``anyOf: [type, null]``), and the run's default is still None.
    """
    for prop in schema.get("properties", {}).values():
        options = prop.get("anyOf") or []
        kinds = [o for o in options if o.get("type") != "null"]
        if len(options) == 2 and len(kinds) == 1 and "type" in kinds[0] and prop.get("default", 0) is None:
            del prop["anyOf"], prop["default"]
            prop.update(kinds[0])
    return schema


def with_typed_parameters(deployment: RunnerDeployment) -> RunnerDeployment:
    """The deployment, its parameter schema as ``typed_parameters`` writes it (Prefect keeps it private)."""
    schema = deployment._parameter_openapi_schema
    schema.properties = typed_parameters(schema.model_dump())["properties"]
    return deployment


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
            name="release-fleet", description=served_description(FLEET_SUMMARY), tags=["ecs-pipeline", "fleet"]
        ),
    ]
    if poll_interval_seconds:
        deployments.append(
            poll_changes.to_deployment(
                name="poll-changes", interval=poll_interval_seconds, tags=["ecs-pipeline"],
                description=POLL_SUMMARY.format(seconds=poll_interval_seconds),
            )
        )
    deployments = [with_typed_parameters(d) for d in deployments]
    refuse_work_pool_deployments([d.full_name for d in deployments])
    summaries = {DEPLOY_SERVICE: DEPLOY_SUMMARY, RELEASE_FLEET: FLEET_SUMMARY}
    runner: Runner = FinishingRunner(limit=limit, summaries=summaries)
    for deployment in deployments:
        runner.add_deployment(deployment)
    _display_serve_start_message(*deployments)
    stop = threading.Event()
    sweeper = threading.Thread(target=sweep_approvals, args=(stop, SWEEP_SECONDS), daemon=True)
    sweeper.start()
    try:
        with contextlib.suppress(KeyboardInterrupt, TerminationSignal):
            asyncio.run(runner.start())
    finally:
        stop.set()


SWEEP_SECONDS = 60.0  # how late an unanswered approval is answered "no" at most (AWS seconds: time-scaled)


def sweep_approvals(stop: threading.Event, every: float) -> None:
    """Answer "no" for suspended releases past their approval deadline, every EVERY seconds until STOP."""
    log = get_logger("ecs-pipeline.approvals")
    every = max(0.5, Settings().scaled(every))
    while not stop.wait(every):
        try:
            with get_client(sync_client=True) as client:
                for run_id in answer_expired_approvals(client):
                    log.warning("flow run %s: no approval in time; answered no, the release rolls back", run_id)
        except Exception as exc:  # noqa: BLE001 - one failed look is retried at the next
            log.warning("could not look for unanswered approvals: %s", exc)
