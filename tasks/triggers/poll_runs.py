"""From polled changes to deploy-service runs: one per new commit, never twice for one commit, then supersede.

A commit that already has a run (waiting, running, or finished even if it
failed) is not started again: a broken commit is tried once, and retried by a
person with Retry, not every poll.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any
from uuid import UUID

from prefect.client.orchestration import SyncPrefectClient

from tasks.release.runs import already_started, cancel_waiting_runs, commit_order_for, create_deploy_run, queueing_mode
from tasks.triggers.branch_polling import BranchPoller, Change

RunLogger = logging.Logger | logging.LoggerAdapter[logging.Logger]


def start_changes(
    client: SyncPrefectClient,
    deployment_id: UUID,
    changes: list[Change],
    *,
    dry_run: bool,
    cache: Path,
    logger: RunLogger,
) -> tuple[list[dict[str, Any]], dict[str, str]]:
    """The runs started (or, with DRY_RUN, that would start) and the services skipped, with why."""
    started: list[dict[str, Any]] = []
    skipped: dict[str, str] = {}
    for change in changes:
        existing = already_started(client, change.service, change.sha)
        if existing is not None:
            state = existing.state.name if existing.state else "unknown"
            skipped[change.service] = f"run {existing.id} ({state}) already has {change.sha[:12]}"
            continue
        run_id = None
        if not dry_run:
            run_id = _start(client, deployment_id, change, cache)
        live = (change.live or "nothing")[:12]
        verb = "Would deploy" if dry_run else "Deploying"
        logger.info("%s %s %s (live %s) %s", verb, change.service, change.sha[:12], live, run_id or "")
        started.append({"service": change.service, "sha": change.sha, "flow_run_id": run_id})
    return started, skipped


def _start(client: SyncPrefectClient, deployment_id: UUID, change: Change, cache: Path) -> str:
    run = create_deploy_run(client, deployment_id, change.service, change.sha, BranchPoller.kind)
    if queueing_mode(change.config) == "supersede":
        order = commit_order_for(change.config, cache / "git")
        cancel_waiting_runs(change.service, run.id, client=client, order=order)
    return str(run.id)
