"""The ``ecs-pipeline`` command: deploy, status, rollback, render, diff, sandbox, triggers.

Prefect reads its settings once, when it is first imported, so this module
imports nothing that imports prefect: ``main`` settles the environment first
(``.sandbox/env`` or not, see ``load_sandbox_env``), prints where AWS calls and
Prefect runs go, and only then imports the commands.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from collections.abc import MutableMapping
from pathlib import Path
from typing import Any

from botocore.exceptions import ClientError

from tasks.aws.errors import translate
from tasks.core.errors import PipelineError

NO_SANDBOX = "ECS_PIPELINE_NO_SANDBOX"
# ECS_PIPELINE_NO_SANDBOX=0 (or false) means "do use the sandbox", not "use a real account".
_OFF = frozenset({"", "0", "false", "no", "off"})


def load_sandbox_env(environ: MutableMapping[str, str] = os.environ) -> str:
    """Use the sandbox's endpoints when it is up and nothing else was chosen; say which.

    The file describes the sandbox whole (endpoint, fake credentials, Docker
    host, time scale, Prefect), so it is read entirely or not at all: with
    ``ECS_PIPELINE_NO_SANDBOX`` set, or ``AWS_ENDPOINT_URL`` present in the
    environment (even empty: the documented way to use a real account), it is
    not read, and nothing of the sandbox comes back. Otherwise its values fill
    in what the environment does not set.
    """
    env_file = Path(environ.get("SANDBOX_DIR") or ".sandbox") / "env"
    if environ.get(NO_SANDBOX, "").strip().lower() not in _OFF:
        return f"{env_file} not read ({NO_SANDBOX} is set)"
    if "AWS_ENDPOINT_URL" in environ:
        return f"{env_file} not read (AWS_ENDPOINT_URL is set in the environment)"
    if not env_file.is_file():
        return f"no {env_file} (sandbox not up here)"
    for line in env_file.read_text().splitlines():
        key, sep, value = line.partition("=")
        if sep and key.strip() and not key.startswith("#"):
            environ.setdefault(key.strip(), value.strip())
    return f"{env_file.resolve()}"


def aws_line() -> str:
    """Where this command's AWS calls go (pydantic-settings only: no prefect import yet)."""
    from pydantic import ValidationError

    from tasks.core.settings import Settings

    try:
        settings = Settings()
    except ValidationError as exc:
        fields = ", ".join(".".join(str(p) for p in e["loc"]) for e in exc.errors())
        raise PipelineError(f"invalid environment setting(s): {fields}") from None
    scale = settings.effective_time_scale
    return f"aws: {settings.describe()}" + (f", time scale {scale:g}" if scale != 1 else "")


def prefect_line() -> str:
    """Where this command's flow runs are recorded; imports prefect, so the env must be settled."""
    from prefect.settings import get_current_settings

    url = get_current_settings().api.url
    return f"prefect: {url}" if url else "prefect: no PREFECT_API_URL: a temporary local server (runs are not kept)"


def print_environment(source: str) -> None:
    """Every command's first lines, on stderr so stdout stays parseable (render, --json)."""
    print(aws_line(), file=sys.stderr, flush=True)
    print(prefect_line(), file=sys.stderr)
    print(f"env: {source}", file=sys.stderr, flush=True)


def cmd_deploy(args: argparse.Namespace) -> int:
    if args.all or args.select:
        from flows.fleet import cmd_fleet

        return cmd_fleet(args)
    if not args.service:
        raise PipelineError("name a SERVICE to release, or use --all / --select PATTERN")
    from prefect.client.schemas.objects import FlowRun, State

    from flows.pipeline import deploy_service
    from flows.terminal import Seen, run_with_view
    from tasks.release.runs import ensure_run_tags

    if args.dry_run:
        from flows.operations import plan_release

        print("\n".join(plan_release(args.service, args.sha)))
        return 0

    def release(seen: Seen) -> Any:
        def tag_cli_run(flow: Any, flow_run: FlowRun, state: State[Any]) -> None:  # Prefect's hook signature
            seen.run_id = flow_run.id  # main thread, before the release starts
            ensure_run_tags(flow_run.id, args.service, args.sha, "cli")

        return deploy_service.with_options(on_running=[tag_cli_run])(
            args.service, sha=args.sha, force=args.force, allow_older=args.allow_older, return_state=True
        )

    return run_with_view(args.service, release, args.json)


def cmd_status(args: argparse.Namespace) -> int:
    from flows.operations import service_status
    from flows.runner import serving_status
    from flows.serve import DEPLOY_SERVICE

    info = service_status(args.service)
    info["runs start"] = serving_status(DEPLOY_SERVICE)
    if args.json:
        print(json.dumps(info, indent=2, default=str))
    else:
        for key, value in info.items():
            if isinstance(value, list):
                print(f"{key}:")
                for item in value:
                    print(f"  {item}")
            else:
                print(f"{key}: {value}")
    return 0


def cmd_rollback(args: argparse.Namespace) -> int:
    """The run's outcome and reason; exit 0 once production is back (rolled back, or the previous commit deployed)."""
    from flows.operations import rollback_service
    from tasks.release.outcome import outcome_of

    state = rollback_service(args.service, args.wait)
    print(state.message or state.name)
    return 0 if outcome_of(state) in ("Deployed", "Rolled back") else 1


def cmd_render(args: argparse.Namespace) -> int:
    from flows.operations import render_service

    print(json.dumps(render_service(args.service, args.image, args.sha), indent=2))
    return 0


def cmd_diff(args: argparse.Namespace) -> int:
    from flows.operations import diff_service

    changes = diff_service(args.service, args.image)
    for line in changes or ["no differences"]:
        print(line)
    return 1 if changes and args.exit_code else 0


def cmd_serve(args: argparse.Namespace) -> int:
    from flows.serve import serve_flows

    serve_flows(poll_interval_seconds=args.poll_interval, limit=args.limit)
    return 0


def cmd_migrate(args: argparse.Namespace) -> int:
    from flows.migrate import migrate

    print("\n".join(migrate(args.service, args.to, args.apply)))
    return 0


def cmd_sandbox(args: argparse.Namespace) -> int:
    """The sandbox is a separate program: the pipeline never imports it."""
    return subprocess.call([sys.executable, "-m", "sandbox", *args.rest])


def add_fleet_arguments(parser: argparse.ArgumentParser) -> None:
    """The fleet's flags live here: parsing a single release never imports the fleet flow (~0.2 s)."""
    parser.add_argument("--all", action="store_true", help="release every service as one fleet run")
    parser.add_argument("--select", action="append", metavar="PATTERN",
                        help="release the services matching PATTERN (a name or a glob; repeatable)")
    parser.add_argument("--max-parallel", type=int, default=4, help="services per wave (fleet)")
    parser.add_argument("--stop-on-first-failure", action="store_true",
                        help="hold the later waves once a service fails or rolls back (fleet)")
    parser.add_argument("--children", choices=["threads", "deployment"], default="threads",
                        help="run each service here in a thread (default), or as a deploy-service "
                             "deployment run on whichever worker is free (fleet)")  # fmt: skip


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="ecs-pipeline", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("deploy", help="release the branch head (or --sha) of SERVICE, or a fleet")
    p.add_argument("service", nargs="?")
    p.add_argument("--sha", help="commit to release (full or abbreviated); default: branch head")
    p.add_argument("--force", action="store_true", help="deploy even when production runs that SHA")
    p.add_argument("--allow-older", action="store_true",
                   help="allow a commit older than (or diverged from) the live one: an explicit step back")
    p.add_argument("--dry-run", action="store_true", help="show what would happen; change nothing")
    p.add_argument("--json", action="store_true", help="no live view: print the outcome and summary as JSON")
    add_fleet_arguments(p)
    p.set_defaults(func=cmd_deploy)

    p = sub.add_parser("status", help="live revision, SHA, image, traffic split, last runs")
    p.add_argument("service")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_status)

    p = sub.add_parser("rollback", help="back to the previous release (instant while blue is up)")
    p.add_argument("service")
    p.add_argument("--wait", type=float, default=60.0, metavar="SECONDS",
                   help="how long to wait for a release of SERVICE in progress before refusing (default 60)")
    p.set_defaults(func=cmd_rollback)

    p = sub.add_parser("render", help="print the task definition that would be registered (offline: "
                                      "<AWS_ACCOUNT_ID>/<AWS_REGION> stay for the release to fill)")
    p.add_argument("service")
    p.add_argument("--image", default="<IMAGE>", help="image reference to render with")
    p.add_argument("--sha", default=None)
    p.set_defaults(func=cmd_render)

    p = sub.add_parser("diff", help="rendered task definition against the live one")
    p.add_argument("service")
    p.add_argument("--image", default=None, help="image to render with (default: the live image)")
    p.add_argument("--exit-code", action="store_true", help="exit 1 when there are differences")
    p.set_defaults(func=cmd_diff)

    p = sub.add_parser("serve", help="run deploy-service (and poll-changes) deployments from this process")
    p.add_argument("--poll-interval", type=int, default=None, help="seconds between polls; off if unset")
    p.add_argument("--limit", type=int, default=8, help="flow runs at once")
    p.set_defaults(func=cmd_serve)

    p = sub.add_parser("migrate", help="move a CODE_DEPLOY service to ECS-native blue/green (dry run)")
    p.add_argument("service")
    p.add_argument("--to", default="ecs-native", choices=["ecs-native"])
    p.add_argument("--apply", action="store_true", help="send the UpdateService (default: print it)")
    p.set_defaults(func=cmd_migrate)

    p = sub.add_parser("sandbox", help="the local AWS rehearsal environment: up, down, status, seed")
    p.add_argument("rest", nargs=argparse.REMAINDER)
    p.set_defaults(func=cmd_sandbox)

    from flows import iam_cli, trigger_cli, verify_cli  # may import prefect: only once the env is settled

    trigger_cli.register_cli(sub)
    iam_cli.register_cli(sub)
    verify_cli.register_cli(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    sandbox = bool(argv) and argv[0] == "sandbox"  # its own program, with its own settings
    try:
        if not sandbox:
            source = load_sandbox_env()
            print_environment(source)
        args = build_parser().parse_args(argv)
        return int(args.func(args))
    except PipelineError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except ClientError as exc:  # a refusal (an AssumeRole of the service's deploy role, say): AWS's words, no trace
        print(f"error: {translate(exc)}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
