"""The ``poll-changes`` flow: deploys for repositories that cannot send webhooks.

On an interval it asks every repository once for its branch heads and starts
``deploy-service`` for each service whose head is not what is live.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any
from uuid import UUID

from prefect import flow, get_run_logger
from prefect.client.orchestration import SyncPrefectClient, get_client

from tasks.aws.clients import AwsClients
from tasks.config.models import ServiceConfig, load_all_services
from tasks.core.settings import Settings
from tasks.release.runs import (
    DEPLOY_DEPLOYMENT,
    already_started,
    cancel_waiting_runs,
    commit_order_for,
    create_deploy_run,
    queueing_mode,
)
from tasks.release.stages import live_release
from tasks.triggers.changes import Change, LiveSha, ResolveHeads, find_changes


@flow(name="poll-changes")
def poll_changes(
    deployment_name: str = DEPLOY_DEPLOYMENT,
    services: list[str] | None = None,
    dry_run: bool = False,
    services_dir: str | None = None,
    live_sha: LiveSha | None = None,
    resolve: ResolveHeads | None = None,
) -> dict[str, Any]:
    """Start deploy-service for every service whose branch head differs from live.

    A commit that already has a run (waiting, running, or finished even if it
    failed) is not started again: a broken commit is tried once, and retried by
    a person with Retry, not every poll.
    """
    logger = get_run_logger()
    settings = Settings()
    configs = load_all_services(Path(services_dir) if services_dir else settings.deployments)
    if services:
        configs = [c for c in configs if c.name in set(services)]
    if live_sha is None:
        clients = AwsClients(settings)

        def live_sha(cfg: ServiceConfig) -> str | None:
            return live_release(cfg, clients).sha

    found = find_changes(configs, live_sha=live_sha, resolve=resolve)
    for name, error in sorted(found.errors.items()):
        logger.warning("%s: %s", name, error)
    with get_client(sync_client=True) as client:
        deployment_id = client.read_deployment_by_name(deployment_name).id
        by_name = {c.name: c for c in configs}
        started, skipped = _start_changes(client, deployment_id, found.changes, by_name, dry_run, settings.cache)
    return {
        "started": started,
        "unchanged": sorted(found.unchanged),
        "skipped": skipped,
        "errors": found.errors,
    }


def _start_changes(
    client: SyncPrefectClient,
    deployment_id: UUID,
    changes: list[Change],
    by_name: dict[str, ServiceConfig],
    dry_run: bool,
    cache: Path,
) -> tuple[list[dict[str, Any]], dict[str, str]]:
    logger = get_run_logger()
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
            run_id = _start(client, deployment_id, change, by_name[change.service], cache)
        live = (change.live or "nothing")[:12]
        verb = "Would deploy" if dry_run else "Deploying"
        logger.info(
            "%s %s %s (live %s) %s", verb, change.service, change.sha[:12], live, run_id or ""
        )
        started.append({"service": change.service, "sha": change.sha, "flow_run_id": run_id})
    return started, skipped


def _start(
    client: SyncPrefectClient, deployment_id: UUID, change: Change, cfg: ServiceConfig, cache: Path
) -> str:
    run = create_deploy_run(client, deployment_id, change.service, change.sha, "poll")
    if queueing_mode(cfg) == "supersede":
        order = commit_order_for(cfg, cache / "git")
        cancel_waiting_runs(change.service, run.id, client=client, order=order)
    return str(run.id)
