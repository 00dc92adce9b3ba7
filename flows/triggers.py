"""Entry points that start deploys: the ``poll-changes`` flow and the CLI commands.

``poll-changes`` is the fallback for repositories that cannot send webhooks: on
an interval it asks every repository once for its branch heads and starts
``deploy-service`` for each service whose head is not what is live.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

from prefect import flow, get_run_logger
from prefect.client.orchestration import SyncPrefectClient, get_client

from tasks.models import ServiceConfig, load_all_services
from tasks.settings import Settings
from tasks.triggers import (
    DEPLOY_DEPLOYMENT,
    Change,
    LiveSha,
    ResolveHeads,
    already_started,
    cancel_waiting_runs,
    find_changes,
    queueing_mode,
    run_parameters,
    run_tags,
)


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
    configs = load_all_services(Path(services_dir) if services_dir else Settings().deployments)
    if services:
        configs = [c for c in configs if c.name in set(services)]
    found = find_changes(configs, live_sha=live_sha, resolve=resolve)
    for name, error in sorted(found.errors.items()):
        logger.warning("%s: %s", name, error)
    with get_client(sync_client=True) as client:
        deployment_id = client.read_deployment_by_name(deployment_name).id
        by_name = {c.name: c for c in configs}
        started, skipped = _start_changes(client, deployment_id, found.changes, by_name, dry_run)
    return {
        "started": started,
        "unchanged": sorted(found.unchanged),
        "skipped": skipped,
        "errors": found.errors,
    }


def _start_changes(
    client: SyncPrefectClient,
    deployment_id: Any,
    changes: list[Change],
    by_name: dict[str, ServiceConfig],
    dry_run: bool,
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
            run_id = _start(client, deployment_id, change, by_name[change.service])
        live = (change.live or "nothing")[:12]
        verb = "Would deploy" if dry_run else "Deploying"
        logger.info(
            "%s %s %s (live %s) %s", verb, change.service, change.sha[:12], live, run_id or ""
        )
        started.append({"service": change.service, "sha": change.sha, "flow_run_id": run_id})
    return started, skipped


def _start(
    client: SyncPrefectClient, deployment_id: Any, change: Change, cfg: ServiceConfig
) -> str:
    run = client.create_flow_run_from_deployment(
        deployment_id,
        parameters=run_parameters(change.service, change.sha),
        tags=run_tags(change.service, change.sha, "poll"),
        name=f"{change.service}-{change.sha[:7]}",
    )
    if queueing_mode(cfg) == "supersede":
        cancel_waiting_runs(change.service, run.id, client=client)
    return str(run.id)


# -- CLI ----------------------------------------------------------------------------


def _cmd_webhook_serve(args: argparse.Namespace) -> int:
    from flows.webhook import serve

    try:
        serve(
            args.host,
            args.port,
            deployment_name=args.deployment,
            dispatch=args.dispatch,
            parallel_creates=args.parallel_creates,
        )
    except LookupError as exc:
        print(f"webhook: {exc}", file=sys.stderr)
        return 2
    return 0


def _cmd_poll(args: argparse.Namespace) -> int:
    result = poll_changes(
        deployment_name=args.deployment, services=args.service or None, dry_run=args.dry_run
    )
    verb = "would start" if args.dry_run else "started"
    for run in result["started"]:
        print(f"{verb} {run['service']} {run['sha'][:12]} {run['flow_run_id'] or ''}".rstrip())
    for name, why in sorted(result["skipped"].items()):
        print(f"skipped {name}: {why}")
    for name in result["unchanged"]:
        print(f"up to date {name}")
    for name, error in sorted(result["errors"].items()):
        print(f"error {name}: {error}", file=sys.stderr)
    return 1 if result["errors"] else 0


def _cmd_approve(args: argparse.Namespace) -> int:
    from prefect.exceptions import FlowPauseTimeout, NotPausedError, ObjectNotFound

    from tasks.approval import approve_run

    try:
        approve_run(args.run, approve=not args.reject, comment=args.comment)
    except ValueError:
        return _fail(f"approve: {args.run!r} is not a flow run id")
    except ObjectNotFound:
        return _fail(f"approve: no flow run {args.run}")
    except NotPausedError:
        return _fail(f"approve: run {args.run} is not waiting for approval")
    except FlowPauseTimeout:
        return _fail(f"approve: run {args.run} waited too long; it is rolling back")
    print(f"{'Rejected' if args.reject else 'Approved'} run {args.run}")
    return 0


def _fail(message: str) -> int:
    print(message, file=sys.stderr)
    return 1


def register_cli(subparsers: Any) -> None:
    """Add ``webhook serve``, ``poll`` and ``approve`` to the main CLI's subparsers."""
    webhook = subparsers.add_parser("webhook", help="receive git push webhooks")
    webhook_sub = webhook.add_subparsers(dest="webhook_command", required=True)
    serve_p = webhook_sub.add_parser("serve", help="run the webhook receiver")
    serve_p.add_argument("--host", default="127.0.0.1")
    serve_p.add_argument("--port", type=int, default=9000)
    _add_deployment(serve_p)
    serve_p.add_argument(
        "--dispatch",
        choices=["direct", "automation"],
        default="direct",
        help="direct: create runs here (fast); automation: only emit events for deploy-on-push",
    )
    serve_p.add_argument(
        "--parallel-creates",
        type=int,
        default=1,
        help="flow runs created at once; raise for a Postgres-backed Prefect server",
    )
    serve_p.set_defaults(func=_cmd_webhook_serve)

    poll = subparsers.add_parser("poll", help="deploy services whose branch moved")
    poll.add_argument("--service", action="append", help="only this service (repeatable)")
    poll.add_argument("--dry-run", action="store_true", help="show what would start")
    _add_deployment(poll)
    poll.set_defaults(func=_cmd_poll)

    approve = subparsers.add_parser("approve", help="answer a release waiting for approval")
    approve.add_argument("run", help="flow run id")
    approve.add_argument("--reject", action="store_true")
    approve.add_argument("--comment", default="")
    approve.set_defaults(func=_cmd_approve)


def _add_deployment(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--deployment", default=DEPLOY_DEPLOYMENT, help="deployment that runs deploy-service"
    )
