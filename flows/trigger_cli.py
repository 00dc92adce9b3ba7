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
    serve_p.add_argument(
        "--delivery-ttl-hours",
        type=float,
        default=24.0,
        help="how long a delivery id counts as seen, by every receiver of the same Prefect server (default 24)",
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
