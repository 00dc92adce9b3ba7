"""The ``poll-changes`` flow: deploys for repositories that cannot send webhooks.

On an interval it asks every repository once for its branch heads and starts
``deploy-service`` for each service whose head is not what is live. The
trigger is ``tasks/triggers/branch_polling.py``; this flow only gives it its
settings, the live release reader and a Prefect client.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from prefect import flow, get_run_logger
from prefect.client.orchestration import get_client

from tasks.aws.clients import AwsClients
from tasks.config.models import ServiceConfig, load_all_services
from tasks.core.settings import Settings
from tasks.release.approval import answer_expired_approvals
from tasks.release.runs import DEPLOY_DEPLOYMENT
from tasks.release.stages import live_release
from tasks.triggers.branch_polling import LiveSha, ResolveHeads, find_changes
from tasks.triggers.poll_runs import start_changes


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
            return live_release(cfg, clients.for_service(cfg)).sha

    found = find_changes(configs, live_sha=live_sha, resolve=resolve)
    for name, error in sorted(found.errors.items()):
        logger.warning("%s: %s", name, error)
    with get_client(sync_client=True) as client:
        deployment_id = client.read_deployment_by_name(deployment_name).id
        started, skipped = start_changes(
            client, deployment_id, found.changes, dry_run=dry_run, cache=settings.cache, logger=logger
        )
        if not dry_run:  # a setup with workers and no `serve`: each poll is also the look for late approvals
            try:
                for run_id in answer_expired_approvals(client):
                    logger.warning("flow run %s: no approval in time; answered no, the release rolls back", run_id)
            except Exception as exc:  # noqa: BLE001 - the next poll looks again
                logger.warning("could not look for unanswered approvals: %s", exc)
    return {
        "started": started,
        "unchanged": sorted(found.unchanged),
        "skipped": skipped,
        "errors": found.errors,
    }
