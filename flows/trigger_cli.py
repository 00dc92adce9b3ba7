"""CLI subcommands that start or answer releases: ``webhook serve``, ``poll``, ``approve``."""

from __future__ import annotations

import argparse
import sys
from typing import Any

from tasks.release.runs import DEPLOY_DEPLOYMENT


def _cmd_webhook_serve(args: argparse.Namespace) -> int:
    from flows.webhook import serve

    try:
        serve(
            args.host,
            args.port,
            deployment_name=args.deployment,
            dispatch=args.dispatch,
            parallel_creates=args.parallel_creates,
            delivery_ttl=args.delivery_ttl_hours * 3600,
        )
    except LookupError as exc:
        print(f"webhook: {exc}", file=sys.stderr)
        return 2
    return 0


def _cmd_poll(args: argparse.Namespace) -> int:
    from flows.polling import poll_changes

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

    from tasks.release.approval import approve_run

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
    raw = argparse.RawDescriptionHelpFormatter
    webhook = subparsers.add_parser(
        "webhook", help="receive git push webhooks (GitHub, Gitea, GitLab) and start releases",
        description="Receive git push webhooks and start a release of each service whose branch moved.",
        epilog="examples:\n  ecs-pipeline webhook serve --port 9000\n", formatter_class=raw,
    )
    webhook_sub = webhook.add_subparsers(dest="webhook_command", required=True, metavar="ACTION")
    serve_p = webhook_sub.add_parser(
        "serve", help="run the webhook receiver", formatter_class=raw,
        description="Run the webhook receiver: each signed push to a service's branch starts its release.",
        epilog="examples:\n  ecs-pipeline webhook serve --host 0.0.0.0 --port 9000\n",
    )
    serve_p.add_argument("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1)")
    serve_p.add_argument("--port", type=int, default=9000, help="port to listen on (default 9000)")
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
    serve_p.add_argument(
        "--delivery-ttl-hours",
        type=float,
        default=24.0,
        help="how long a delivery id counts as seen, by every receiver of the same Prefect server (default 24)",
    )
    serve_p.set_defaults(func=_cmd_webhook_serve)

    poll = subparsers.add_parser(
        "poll", help="start a release of each service whose branch moved", formatter_class=raw,
        description="Look at every service's branch once and start a release where it moved past the live commit.",
        epilog="examples:\n  ecs-pipeline poll --dry-run\n  ecs-pipeline poll --service sample-app\n",
    )
    poll.add_argument("--service", action="append", help="only this service (repeatable)")
    poll.add_argument("--dry-run", action="store_true", help="show what would start")
    _add_deployment(poll)
    poll.set_defaults(func=_cmd_poll)

    approve = subparsers.add_parser(
        "approve", help="approve (or reject) a release waiting for approval", formatter_class=raw,
        description="Answer a release that waits for approval before it shifts production traffic.",
        epilog="examples:\n  ecs-pipeline approve 3f2c9a4e-...\n"
               "  ecs-pipeline approve 3f2c9a4e-... --reject --comment 'not during the sale'\n",
    )
    approve.add_argument("run", help="the waiting run's id (from its link in the Prefect UI or ecs-pipeline status)")
    approve.add_argument("--reject", action="store_true", help="reject: the release rolls back")
    approve.add_argument("--comment", default="", help="a note kept with the answer")
    approve.set_defaults(func=_cmd_approve)


def _add_deployment(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--deployment", default=DEPLOY_DEPLOYMENT,
        help=f"the Prefect deployment that runs releases (default {DEPLOY_DEPLOYMENT})"
    )
