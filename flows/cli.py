"""The ecs-pipeline command: deploy, status, rollback, render, diff, sandbox, triggers."""

# Developer notes. Prefect reads its settings once, when it is first imported, so this module imports
# nothing that imports prefect: main() settles the environment first (.sandbox/env or not, see
# load_sandbox_env), prints where AWS calls and Prefect runs go, and only then imports the commands.
# The parser's texts are for the people using the tool: user words, no module or function names.

from __future__ import annotations

from flows import process_end  # first: its exit handler is to run after every other one

# isort: split

import argparse
import contextlib
import json
import os
import subprocess
import sys
from collections.abc import MutableMapping
from pathlib import Path
from typing import Any

from botocore.exceptions import ClientError

from tasks.aws.errors import translate
from tasks.core import heap
from tasks.core.errors import PipelineError

NO_SANDBOX = "ECS_PIPELINE_NO_SANDBOX"
# ECS_PIPELINE_NO_SANDBOX=0 (or false) means "do use the sandbox", not "use a real account".
_OFF = frozenset({"", "0", "false", "no", "off"})


def load_sandbox_env(environ: MutableMapping[str, str] = os.environ) -> str:
    """Use the sandbox's endpoints when it is up and nothing else was chosen; say which, in one quiet line.

    The file describes the sandbox whole (endpoint, fake credentials, Docker
    host, time scale, Prefect), so it is read entirely or not at all: with
    ``ECS_PIPELINE_NO_SANDBOX`` set, or another ``AWS_ENDPOINT_URL`` in the
    environment (even empty: the documented way to use a real account), it is
    not read, and nothing of the sandbox comes back. The environment may
    already point at the sandbox (``. .sandbox/env``): then the file fills in
    what is unset, as when nothing was chosen. Its values never override the
    environment's.
    """
    env_file = Path(environ.get("SANDBOX_DIR") or ".sandbox") / "env"
    if environ.get(NO_SANDBOX, "").strip().lower() not in _OFF:
        return f"{env_file} not read ({NO_SANDBOX} is set)"
    values = read_env_file(env_file)
    if "AWS_ENDPOINT_URL" in environ and environ["AWS_ENDPOINT_URL"] != values.get("AWS_ENDPOINT_URL"):
        return f"{env_file} not read (AWS_ENDPOINT_URL is set in the environment)"
    if not values:
        return f"no {env_file} (sandbox not up here)"
    for key, value in values.items():
        environ.setdefault(key, value)
    return f"using the sandbox ({env_file})"


def read_env_file(path: Path) -> dict[str, str]:
    """KEY=VALUE lines; {} when the file is not there."""
    if not path.is_file():
        return {}
    values: dict[str, str] = {}
    for line in path.read_text().splitlines():
        key, sep, value = line.partition("=")
        if sep and key.strip() and not key.startswith("#"):
            values[key.strip()] = value.strip()
    return values


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
    if args.manifest:
        from flows.manifest_cli import cmd_deploy_manifest

        return cmd_deploy_manifest(args)
    if args.all or args.select:
        from flows.fleet import cmd_fleet

        return cmd_fleet(args)
    if not args.service:
        raise PipelineError("name a SERVICE to release, or use --all / --select PATTERN")
    if args.dry_run:  # reads only: no flow run, so none of the release's imports
        from flows.operations import plan_release

        print("\n".join(plan_release(args.service, args.sha)))
        return 0
    with heap.loading():  # the release's modules, frozen with the rest
        from prefect.context import SyncClientContext
        from prefect.flow_engine import run_flow
        from prefect.states import Pending

        from flows.pipeline import deploy_service
        from flows.terminal import Seen, run_with_view
        from tasks.release.runs import run_tags

    def release(seen: Seen) -> Any:
        parameters = {"service": args.service, "sha": args.sha, "force": args.force, "allow_older": args.allow_older,
                      "task_definition": None}  # every parameter, its default too, as the engine's own would list
        # The run is made here, with its tags, then run as a worker runs one. Its parameters are the JSON
        # values they are: the engine's own creation passes them through FastAPI's encoder, whose import
        # costs a fresh process about 0.4 s. One client for both (the engine takes this context's).
        with SyncClientContext.get_or_create() as context, without_heartbeat():
            flow_run = context.client.create_flow_run(
                deploy_service, parameters=parameters, state=Pending(), tags=run_tags(args.service, args.sha, "cli")
            )
            seen.run_id = flow_run.id
            return run_flow(deploy_service, flow_run=flow_run, parameters=parameters, return_type="state")

    return run_with_view(args.service, release, args.json)


HEARTBEAT_SETTINGS = ("PREFECT_FLOWS_HEARTBEAT_FREQUENCY", "PREFECT_RUNNER_HEARTBEAT_FREQUENCY")


def without_heartbeat() -> contextlib.AbstractContextManager[Any]:
    """A release from the terminal without Prefect's flow-run heartbeat thread, unless one was asked for.

    Prefect's engine runs a heartbeat thread beside every flow run that sleeps in one-second steps
    and joins it when the run ends: up to a second after the release's work is done before the
    command returns. The heartbeat lets Prefect's server tell a run whose process died silently;
    for a release from a terminal, the process is the person's own, and the service a dead run
    held is freed by the pipeline's own lease (ECS_PIPELINE_LOCK_STALE_SECONDS). Workers and
    `serve` keep Prefect's heartbeats; so does a CLI whose environment sets their frequency.
    """
    if any(os.environ.get(name) for name in HEARTBEAT_SETTINGS):
        return contextlib.nullcontext()
    from prefect.settings import PREFECT_FLOWS_HEARTBEAT_FREQUENCY, temporary_settings

    return temporary_settings(updates={PREFECT_FLOWS_HEARTBEAT_FREQUENCY: None})


def cmd_status(args: argparse.Namespace) -> int:
    from flows.operations import all_services_status, service_status
    from flows.runner import serving_info
    from flows.serve import DEPLOY_SERVICE
    from flows.terminal import drift_text, print_status_table, service_lines

    data = service_status(args.service) if args.service else all_services_status()
    data["deploy_service"] = serving_info(DEPLOY_SERVICE)
    if args.json:
        print(json.dumps(data, indent=2))
    elif args.service:
        print("\n".join(service_lines(data)))
        print(f"drift from the last release: {drift_text(data['drift'])}")
        print(f"runs start: {data['deploy_service']['detail']}")
    else:
        print_status_table(data)
        print(f"runs start: {data['deploy_service']['detail']}")
    return 0


def cmd_rollback(args: argparse.Namespace) -> int:
    """The run's outcome and reason; exit 0 once production is back (rolled back, or the previous commit deployed)."""
    from flows.operations import rollback_result, rollback_service

    state = rollback_service(args.service, args.wait)
    result = rollback_result(args.service, state)
    print(json.dumps(result, indent=2) if args.json else state.message or state.name)
    return 0 if result["production_restored"] else 1


def cmd_render(args: argparse.Namespace) -> int:
    from flows.operations import render_service

    print(json.dumps(render_service(args.service, args.image, args.sha), indent=2))
    return 0


def cmd_diff(args: argparse.Namespace) -> int:
    from flows.operations import diff_report

    report = diff_report(args.service, args.image)
    if args.json:
        print(json.dumps(report, indent=2))
    else:
        for line in [c["line"] for c in report["changes"]] or ["no differences"]:
            print(line)
    return 1 if report["differs"] and args.exit_code else 0


def cmd_serve(args: argparse.Namespace) -> int:
    from flows.serve import serve_flows

    serve_flows(poll_interval_seconds=args.poll_interval, limit=args.limit)
    return 0


def cmd_migrate(args: argparse.Namespace) -> int:
    from flows.migrate import migrate, migration_document, migration_lines

    migration = migrate(args.service, args.to, args.apply)
    print(json.dumps(migration_document(migration), indent=2) if args.json else "\n".join(migration_lines(migration)))
    return 0


def cmd_sandbox(args: argparse.Namespace) -> int:
    """The sandbox is a separate program: the pipeline never imports it."""
    return subprocess.call([sys.executable, "-m", "sandbox", *args.rest])


DESCRIPTION = """\
Release a git commit to AWS ECS Fargate with blue/green, and back again.

A release builds the commit's image, pushes it, registers the task definition,
starts the new version (green) beside the live one (blue), checks it, shifts
production traffic to it and removes the old version. When a check fails,
production goes back to blue. Every release is a run you can watch, retry or
cancel in the Prefect UI.

Each service is one YAML file in deployments/ (its task definition template
beside it, in a folder named after the service). ECS_PIPELINE_DEPLOYMENTS
names another folder.
"""

EXAMPLES = """\
examples:
  ecs-pipeline status                       every service at a glance
  ecs-pipeline deploy sample-app --dry-run  what a release of the branch head would do
  ecs-pipeline deploy sample-app            release it, with a live view of each stage
  ecs-pipeline rollback sample-app          production back to the previous release

"ecs-pipeline COMMAND --help" shows a command's options and examples.
"""


def add_command(sub: Any, name: str, summary: str, examples: str, details: str = "") -> argparse.ArgumentParser:
    """A subcommand with its one-line summary, a description for its own --help and examples below."""
    parser: argparse.ArgumentParser = sub.add_parser(
        name, help=summary, description=summary[0].upper() + summary[1:] + "." + (f"\n\n{details}" if details else ""),
        epilog="examples:\n" + examples, formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    return parser


def add_fleet_arguments(parser: argparse.ArgumentParser) -> None:
    # The fleet's flags live here: parsing a single release never imports the fleet flow (~0.2 s).
    parser.add_argument("--all", action="store_true", help="release every service as one fleet run")
    parser.add_argument("--select", action="append", metavar="PATTERN",
                        help="release the services matching PATTERN (a name or a glob; repeatable)")
    parser.add_argument("--max-parallel", type=int, default=4, metavar="N",
                        help="services released at once in a fleet (default 4)")
    parser.add_argument("--stop-on-first-failure", action="store_true",
                        help="in a fleet, hold the later services once one fails or rolls back")
    parser.add_argument("--atomic", action="store_true",
                        help="release the fleet as one change: each service waits past its bake with blue up, and "
                        "when one fails every service the fleet moved goes back (children threads only)")
    parser.add_argument("--children", choices=["threads", "deployment"], default="threads",
                        help="in a fleet, release each service from this process (threads, the default) or as a "
                             "deploy-service run on whichever worker is free (deployment)")  # fmt: skip


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="ecs-pipeline", description=DESCRIPTION, epilog=EXAMPLES,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    p = add_command(sub, "deploy", "release a service's branch head (or a given commit), or several services",
                    "  ecs-pipeline deploy sample-app --dry-run\n"
                    "  ecs-pipeline deploy sample-app\n"
                    "  ecs-pipeline deploy sample-app --sha 1a2b3c4\n"
                    "  ecs-pipeline deploy --select 'sample-*' --max-parallel 2\n",
                    "Only commits of the service's configured branch are released, and only forward\n"
                    "(a descendant of the live commit) unless --allow-older says otherwise.")
    p.add_argument("service", nargs="?", help="the service to release (its name in deployments/)")
    p.add_argument("--sha", help="commit to release (full or abbreviated); default: the branch head")
    p.add_argument("--force", action="store_true", help="release even when production already runs that commit")
    p.add_argument("--allow-older", action="store_true",
                   help="allow a commit older than (or diverged from) the live one: an explicit step back")
    p.add_argument("--dry-run", action="store_true", help="show what would happen; change nothing")
    p.add_argument("--json", action="store_true", help="no live view: print the outcome and summary as JSON")
    p.add_argument("--manifest", metavar="FILE|RUN",
                   help="put every service a release manifest lists back on its digest, as one fleet")
    add_fleet_arguments(p)
    p.set_defaults(func=cmd_deploy)

    p = add_command(sub, "status", "what runs where: every service, or one service in detail",
                    "  ecs-pipeline status\n"
                    "  ecs-pipeline status sample-app\n"
                    "  ecs-pipeline status --json | jq '.services[] | {service, live}'\n",
                    "Without SERVICE: one table of every service in deployments/ (live commit and\n"
                    "its age, strategy, production traffic by blue/green and target group, health,\n"
                    "release in flight, last outcome, drift from the last release: what AWS serves\n"
                    "against what the pipeline last put live). With SERVICE: its task sets and last\n"
                    "runs too.\n"
                    "--json prints the same data as JSON: stable snake_case keys, numbers as numbers,\n"
                    "ISO-8601 times, a link to each run.")
    p.add_argument("service", nargs="?", help="one service in detail (default: a table of every service)")
    p.add_argument("--json", action="store_true", help="print JSON instead (stable keys, ISO-8601 times, run links)")
    p.set_defaults(func=cmd_status)

    p = add_command(sub, "rollback", "put production back on the previous release (instant while blue is up)",
                    "  ecs-pipeline rollback sample-app\n"
                    "  ecs-pipeline rollback sample-app --wait 300\n"
                    "  ecs-pipeline rollback sample-app --json | jq .production_restored\n",
                    "A release in flight goes back to blue; otherwise the commit before the live one\n"
                    "is released again.")
    p.add_argument("service", help="the service to roll back")
    p.add_argument("--wait", type=float, default=60.0, metavar="SECONDS",
                   help="how long to wait for a release of SERVICE in progress before refusing (default 60)")
    p.add_argument("--json", action="store_true",
                   help="print the outcome as JSON instead (outcome, reason, run link; same exit code)")
    p.set_defaults(func=cmd_rollback)

    p = add_command(sub, "render", "print the task definition a release would register (offline)",
                    "  ecs-pipeline render sample-app\n"
                    "  ecs-pipeline render sample-app --image 123456789012.dkr.ecr.us-east-1.amazonaws.com/app:1\n",
                    "No AWS call: <AWS_ACCOUNT_ID> and <AWS_REGION> stay as written; a release fills them in.")
    p.add_argument("service", help="the service whose task definition template to render")
    p.add_argument("--image", default="<IMAGE>", help="image reference to put in the container (default <IMAGE>)")
    p.add_argument("--sha", default=None, help="commit to render for (its tags and labels); default: none")
    p.set_defaults(func=cmd_render)

    p = add_command(sub, "diff", "compare the task definition a release would register with the live one",
                    "  ecs-pipeline diff sample-app\n"
                    "  ecs-pipeline diff sample-app --exit-code && echo unchanged\n"
                    "  ecs-pipeline diff sample-app --json | jq '.changes[].path'\n")
    p.add_argument("service", help="the service to compare")
    p.add_argument("--image", default=None, help="image to render with (default: the live image)")
    p.add_argument("--exit-code", action="store_true", help="exit 1 when there are differences")
    p.add_argument("--json", action="store_true",
                   help="print the changes as JSON instead (path, kind, line for each; the live revision)")
    p.set_defaults(func=cmd_diff)

    p = add_command(sub, "serve", "run releases started from the Prefect UI, webhooks or polling, in this process",
                    "  ecs-pipeline serve\n"
                    "  ecs-pipeline serve --poll-interval 60 --limit 4\n",
                    "Serves the deploy-service deployment (and poll-changes with --poll-interval)\n"
                    "until stopped; its runs roll back before the process exits.\n"
                    "Long-running: logs, no --json.")
    p.add_argument("--poll-interval", type=int, default=None, metavar="SECONDS",
                   help="also look for new commits every SECONDS (default: no polling)")
    p.add_argument("--limit", type=int, default=8, help="releases run at once (default 8)")
    p.set_defaults(func=cmd_serve)

    p = add_command(sub, "migrate", "move a CodeDeploy service to ECS-native blue/green (prints the change first)",
                    "  ecs-pipeline migrate sample-app-cd\n"
                    "  ecs-pipeline migrate sample-app-cd --apply\n"
                    "  ecs-pipeline migrate sample-app-cd --apply --json | jq .service_deployment\n")
    p.add_argument("service", help="the CodeDeploy service to move")
    p.add_argument("--to", default="ecs-native", choices=["ecs-native"], help="the target strategy (ecs-native)")
    p.add_argument("--apply", action="store_true", help="make the change (default: only print it)")
    p.add_argument("--json", action="store_true",
                   help="print the plan (and what was done) as JSON instead: target groups, listener rules, the "
                        "service deployment, ISO-8601 times")
    p.set_defaults(func=cmd_migrate)

    p = add_command(sub, "sandbox", "the local AWS rehearsal environment: up, down, status, seed",
                    "  ecs-pipeline sandbox up\n"
                    "  ecs-pipeline sandbox status\n"
                    "  ecs-pipeline sandbox down\n",
                    "A separate program with its own output: no --json.")
    p.add_argument("rest", nargs=argparse.REMAINDER, metavar="ACTION",
                   help="up, down, status or seed SERVICE_YAML, with their options")
    p.set_defaults(func=cmd_sandbox)

    from flows import iam_cli, manifest_cli, trigger_cli, verify_cli  # may import prefect: only once the env is settled

    manifest_cli.register_cli(sub)
    trigger_cli.register_cli(sub)
    iam_cli.register_cli(sub)
    verify_cli.register_cli(sub)
    return parser


def wants_help(argv: list[str]) -> bool:
    """Help and usage need no environment lines."""
    return not argv or any(a in ("-h", "--help") for a in argv)


# Prefect's client retries 408, 429, 502, 503 and dropped connections, waiting 2, 4, 8 ... s (with
# jitter) between tries; its default of 5 tries gives up after about a minute. A release outlives an
# orchestrator's bad minute with 7: about four minutes, within every stage's own budget.
PREFECT_CLIENT_RETRIES = "7"


def orchestrator_patience(environ: MutableMapping[str, str] = os.environ) -> None:
    """Prefect's client retries for this process and the runs it starts, unless the environment chose."""
    environ.setdefault("PREFECT_CLIENT_MAX_RETRIES", PREFECT_CLIENT_RETRIES)


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    sandbox = bool(argv) and argv[0] == "sandbox"  # its own program, with its own settings
    try:
        with heap.loading() if not sandbox else contextlib.nullcontext():  # print_environment imports prefect
            if not sandbox:
                source = load_sandbox_env()
                orchestrator_patience()
                if not wants_help(argv):
                    print_environment(source)
            args = build_parser().parse_args(argv)
        return int(args.func(args))
    except PipelineError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except ClientError as exc:  # a refusal (an AssumeRole of the service's deploy role, say): AWS's words, no trace
        print(f"error: {translate(exc)}", file=sys.stderr)
        return 2


def run() -> None:
    """The ``ecs-pipeline`` program: ``main`` with the process's arguments, then a quick end (``process_end``)."""
    code = main()
    process_end.arm(code)
    sys.exit(code)


if __name__ == "__main__":
    run()
