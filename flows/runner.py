"""The serving process: a Prefect runner that leaves finished runs finished, and says when nobody serves.

Prefect's runner, told to stop, cancels every flow run whose process it still
tracks, with force. A run that has just reached its final state (Deployed,
say) is still tracked for the second or so its process needs to exit, so
stopping `serve` then turned a finished release into "Cancelled: Runner is
shutting down" while production ran the new commit. This runner cancels only
runs that have not finished.

A served deployment runs only while its `serve` process lives: the
description says so, and says when it stopped, because a Run or Retry then
waits silently ("Not Ready" in the UI).
"""

from __future__ import annotations

import os
import socket
from datetime import UTC, datetime
from typing import Any

from prefect.client.orchestration import get_client
from prefect.client.schemas.objects import DeploymentStatus
from prefect.exceptions import ObjectNotFound
from prefect.runner import Runner

NOT_SERVED = (
    "Runs only while `ecs-pipeline serve` serves it. "
    "When this deployment shows **Not Ready**, nothing serves it: a Run or a Retry waits "
    "until `ecs-pipeline serve` starts again."
)


def served_description(summary: str) -> str:
    host = socket.gethostname()
    return f"{summary}\n\nServed by `ecs-pipeline serve` (pid {os.getpid()} on {host}). {NOT_SERVED}"


def stopped_description(summary: str) -> str:
    when = datetime.now(UTC).strftime("%Y-%m-%d %H:%M:%S UTC")
    return (
        f"{summary}\n\n**Not served since {when}**: `ecs-pipeline serve` on {socket.gethostname()} "
        f"stopped. {NOT_SERVED}"
    )


class FinishingRunner(Runner):
    """Cancels on shutdown only the runs that have not finished; marks its deployments unserved."""

    def __init__(self, *args: Any, summaries: dict[str, str] | None = None, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.summaries = summaries or {}

    async def cancel_all(self) -> None:
        for run_id in self._process_manager.flow_run_ids():
            try:
                run = await self._client.read_flow_run(run_id)
            except ObjectNotFound:
                continue
            if run.state is not None and run.state.is_final():
                self._logger.info("Flow run %r is already %s: left to exit, not cancelled", run.name, run.state.name)
                continue
            await self._cancel_run(run, "Runner is shutting down.")
        await self._mark_unserved()

    async def _mark_unserved(self) -> None:
        for name, summary in self.summaries.items():
            try:
                deployment = await self._client.read_deployment_by_name(name)
                await self._client.update_deployment(deployment.id, _update(stopped_description(summary)))
            except Exception as exc:  # noqa: BLE001 - a description must not stop the shutdown
                self._logger.warning("could not mark %s as not served: %s", name, exc)


def _update(description: str) -> Any:
    from prefect.client.schemas.actions import DeploymentUpdate

    return DeploymentUpdate(description=description)


def serving_status(deployment: str) -> str:
    """One line for `status`: whether a runner or worker serves DEPLOYMENT right now."""
    return str(serving_info(deployment)["detail"])


def serving_info(deployment: str) -> dict[str, Any]:
    """Whether DEPLOYMENT is served (ready: None when it is not registered), with the line a person reads."""
    with get_client(sync_client=True) as client:
        try:
            found = client.read_deployment_by_name(deployment)
        except ObjectNotFound:
            return {"deployment": deployment, "ready": None,
                    "detail": f"{deployment}: not registered (run `ecs-pipeline serve` once)"}
    if found.status == DeploymentStatus.READY:
        return {"deployment": deployment, "ready": True,
                "detail": f"{deployment}: ready (a runner or worker serves it)"}
    return {"deployment": deployment, "ready": False, "detail": (
        f"{deployment}: NOT READY: no runner or worker serves it; runs and retries wait "
        "until `ecs-pipeline serve` (or a worker) starts"
    )}
