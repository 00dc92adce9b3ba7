"""CLI: ``ecs-pipeline manifest`` prints a release manifest; ``deploy --manifest FILE|RUN`` goes back to one.

``manifest`` (registered on the main parser by ``register_cli``) reads the newest manifest, the one of a
run (``--run``) or the newest at or before a time (``--at``), as a table or as MANIFEST_SCHEMA's JSON.
``deploy --manifest`` checks every listed digest in ECR first (nothing moves when one is gone), then
releases the services that differ from it as one fleet, each on its manifest commit, and says which
service does not serve the manifest's digest and revision afterwards.
"""

from __future__ import annotations

import argparse
import json
from typing import Any

from tasks.core.errors import PipelineError


def register_cli(subparsers: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    """Add ``manifest`` to the main CLI's subparsers."""
    summary = "print a release manifest: what every service ran after a fleet or release"
    p = subparsers.add_parser(
        "manifest", help=summary, formatter_class=argparse.RawDescriptionHelpFormatter,
        description="Print a release manifest: per service the commit, image digest, task definition\n"
                    "revision and strategy live after a fleet run or a release, with the run and the time.\n"
                    "Default: the newest. `ecs-pipeline deploy --manifest RUN` goes back to one.",
        epilog="examples:\n  ecs-pipeline manifest\n  ecs-pipeline manifest --at 2026-12-06T17:30:00Z\n"
               "  ecs-pipeline manifest --run 0b5e…-run-id --json > before.json\n"
               "  ecs-pipeline deploy --manifest before.json\n",
    )
    which = p.add_mutually_exclusive_group()
    which.add_argument("--at", metavar="TIME",
                       help="the newest manifest at or before TIME (ISO-8601; UTC if no offset)")
    which.add_argument("--run", metavar="ID", help="the manifest of this fleet or release run (its flow run id)")
    p.add_argument("--json", action="store_true",
                   help="print it as JSON instead (the form `deploy --manifest FILE` reads; ISO-8601 time)")
    p.set_defaults(func=cmd_manifest)


def cmd_manifest(args: argparse.Namespace) -> int:
    from tasks.aws.clients import AwsClients
    from tasks.core.settings import Settings
    from tasks.release.manifest import ManifestStore, parse_time

    store = ManifestStore.from_clients(AwsClients(Settings()))
    manifest = store.by_run(args.run) if args.run else store.at(parse_time(args.at) if args.at else None)
    if args.json:
        print(json.dumps(manifest.model_dump(), indent=2))
        return 0
    print_manifest(manifest)
    return 0


def print_manifest(manifest: Any) -> None:
    from rich.console import Console
    from rich.table import Table

    from tasks.release.manifest import manifest_rows

    run = manifest.run_url or manifest.run_id or "no run"
    print(f"{manifest.kind} manifest of {run} at {manifest.created_at}")
    table = Table()
    rows = manifest_rows(manifest)
    for column in ("service", "commit", "digest", "task definition", "strategy"):
        table.add_column(column)
    for row in rows:
        table.add_row(*row.values())
    Console(width=None if Console().is_terminal else 200).print(table)


def cmd_deploy_manifest(args: argparse.Namespace) -> int:
    """Every listed service back on the manifest's digest and revision, as one fleet; 0 once all are."""
    from flows.fleet import release_fleet
    from tasks.aws.clients import AwsClients
    from tasks.config.models import load_all_services
    from tasks.core.settings import Settings
    from tasks.release.manifest import ManifestStore, load_manifest
    from tasks.release.manifest_restore import check_restored, restore_plan

    if args.service or args.all or args.select or args.sha:
        raise PipelineError("deploy --manifest restores the services it lists: give no SERVICE, --all, --select "
                            "or --sha with it")
    clients = AwsClients(Settings())
    manifest = load_manifest(args.manifest, ManifestStore.from_clients(clients))
    configs = load_all_services(clients.settings.deployments)
    plan = restore_plan(manifest, configs, clients)  # refuses before anything moves
    already = set(plan) - {d.service for d in check_restored(manifest, configs, clients) if not d.same_content}
    moving = {name: sha for name, sha in plan.items() if name not in already}
    run = manifest.run_id or "(no run)"
    print(f"manifest of run {run} at {manifest.created_at}: {len(moving)} service(s) to put back, "
          f"{len(already)} already on it")
    for name, sha in sorted(moving.items()):
        print(f"  {name}: release {sha[:12]}")
    if args.dry_run or not moving:
        return 0
    state = release_fleet(
        services=sorted(moving), shas=moving, max_parallel=args.max_parallel,
        revisions={e.service: e.task_definition for e in manifest.services
                   if e.service in moving and e.task_definition},
        stop_on_first_failure=args.stop_on_first_failure, children=args.children,
        atomic=getattr(args, "atomic", False), return_state=True,
    )  # fmt: skip
    print(state.message or state.name)
    found = check_restored(manifest, configs, clients)
    differ = [d for d in found if not d.same_content]
    for d in found:
        print(f"{'note' if d.same_content else 'not restored'}: {d.service} {d.detail}"
              + ("; same image and settings, registered anew" if d.same_content else ""))
    if not differ:
        print(f"every listed service serves the manifest of run {run}'s digest and task definition")
    return 0 if state.is_completed() and not differ else 1
