"""CLI subcommands that start or answer releases: ``webhook serve``, ``poll``, ``approve``."""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

from tasks.core.settings import DEPLOY_DEPLOYMENT

# What `poll --json` and `approve --json` print, in the convention of the schemas in flows/operations.py
# (stable snake_case keys; "time" is ISO-8601 with its UTC offset; "url" a run's page in the Prefect UI; a
# tuple is "one of", None: null; a list [X] is a list of X).
# `poll --json`: started: the releases started (dry_run: that would start; run_id and url are then null);
# skipped: a run already has that commit; unchanged: live is the branch head; errors: the services not read.
POLL_SCHEMA: dict[str, Any] = {
    "dry_run": "boolean", "deployment": "string", "polled_at": "time",
    "started": [{"service": "string", "sha": "string", "run_id": ("string", None), "url": ("url", None)}],
    "skipped": [{"service": "string", "reason": "string"}],
    "unchanged": ["string"],
    "errors": [{"service": "string", "error": "string"}],
}
# `approve RUN --json`: answer is "approved" or "rejected"; answered: the run took it (then answered_at is
# set and the command exits 0), else error says why not (exit 1).
APPROVE_SCHEMA: dict[str, Any] = {
    "run_id": "string", "url": ("url", None), "answer": "string", "comment": "string", "answered": "boolean",
    "answered_at": ("time", None), "error": ("string", None),
}
LONG_RUNNING = "Long-running: logs, no --json."

RunLink = Callable[[str], "str | None"]


def poll_document(result: dict[str, Any], deployment: str, dry_run: bool, polled_at: datetime,
                  link: RunLink) -> dict[str, Any]:
    """`poll --json` from poll-changes' result, as POLL_SCHEMA describes it (LINK: a run id's page)."""
    return {
        "dry_run": dry_run, "deployment": deployment,
        "polled_at": polled_at.astimezone(UTC).isoformat(timespec="seconds"),
        "started": [{"service": run["service"], "sha": run["sha"], "run_id": _text(run.get("flow_run_id")),
                     "url": link(str(run["flow_run_id"])) if run.get("flow_run_id") else None}
                    for run in result["started"]],
        "skipped": [{"service": name, "reason": why} for name, why in sorted(result["skipped"].items())],
        "unchanged": sorted(result["unchanged"]),
        "errors": [{"service": name, "error": error} for name, error in sorted(result["errors"].items())],
    }


def approve_document(run: str, reject: bool, comment: str, error: str | None, answered_at: datetime,
                     url: str | None) -> dict[str, Any]:
    """`approve --json`, as APPROVE_SCHEMA describes it (URL: the run's page, None when there is no such run)."""
    return {
        "run_id": run, "url": url, "answer": "rejected" if reject else "approved", "comment": comment,
        "answered": error is None, "error": error,
        "answered_at": answered_at.astimezone(UTC).isoformat(timespec="seconds") if error is None else None,
    }


def _text(value: Any) -> str | None:
    return None if value is None else str(value)


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
    from flows.operations import run_url
    from flows.polling import poll_changes

    polled_at = datetime.now(UTC)
    result = poll_changes(
        deployment_name=args.deployment, services=args.service or None, dry_run=args.dry_run
    )
    if args.json:
        print(json.dumps(poll_document(result, args.deployment, args.dry_run, polled_at, run_url), indent=2))
    else:
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
    from flows.operations import run_url

    error, exists = _answer(args.run, approve=not args.reject, comment=args.comment)
    if args.json:
        url = run_url(args.run) if exists else None
        print(json.dumps(approve_document(args.run, args.reject, args.comment, error, datetime.now(UTC), url),
                         indent=2))
    if error is not None:
        return _fail(f"approve: {error}")
    if not args.json:
        print(f"{'Rejected' if args.reject else 'Approved'} run {args.run}")
    return 0


def _answer(run: str, approve: bool, comment: str) -> tuple[str | None, bool]:
    """Why the run did not take the answer (None once it did), and whether there is such a run."""
    from prefect.exceptions import FlowPauseTimeout, NotPausedError, ObjectNotFound

    from tasks.release.approval import approve_run

    try:
        approve_run(run, approve=approve, comment=comment)
    except ValueError:
        return f"{run!r} is not a flow run id", False
    except ObjectNotFound:
        return f"no flow run {run}", False
    except NotPausedError:
        return f"run {run} is not waiting for approval", True
    except FlowPauseTimeout:
        return f"run {run} waited too long; it is rolling back", True
    return None, True


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
        description="Run the webhook receiver: each signed push to a service's branch starts its release.\n\n"
                    + LONG_RUNNING,
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
        epilog="examples:\n  ecs-pipeline poll --dry-run\n  ecs-pipeline poll --service sample-app\n"
               "  ecs-pipeline poll --json | jq '.started[].url'\n",
    )
    poll.add_argument("--service", action="append", help="only this service (repeatable)")
    poll.add_argument("--dry-run", action="store_true", help="show what would start")
    poll.add_argument("--json", action="store_true",
                      help="print JSON instead: runs started (with links), skipped, up to date, errors; same exit code")
    _add_deployment(poll)
    poll.set_defaults(func=_cmd_poll)

    approve = subparsers.add_parser(
        "approve", help="approve (or reject) a release waiting for approval", formatter_class=raw,
        description="Answer a release that waits for approval before it shifts production traffic.",
        epilog="examples:\n  ecs-pipeline approve 3f2c9a4e-...\n"
               "  ecs-pipeline approve 3f2c9a4e-... --reject --comment 'not during the sale'\n"
               "  ecs-pipeline approve 3f2c9a4e-... --json | jq .answered\n",
    )
    approve.add_argument("run", help="the waiting run's id (from its link in the Prefect UI or ecs-pipeline status)")
    approve.add_argument("--reject", action="store_true", help="reject: the release rolls back")
    approve.add_argument("--comment", default="", help="a note kept with the answer")
    approve.add_argument("--json", action="store_true",
                         help="print JSON instead: the answer, whether the run took it (or why not), its link; "
                              "same exit code")
    approve.set_defaults(func=_cmd_approve)


def _add_deployment(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--deployment", default=DEPLOY_DEPLOYMENT,
        help=f"the Prefect deployment that runs releases (default {DEPLOY_DEPLOYMENT})"
    )
