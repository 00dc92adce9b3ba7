"""CLI subcommand ``verify``: registered on the main parser by ``register_cli``.

``ecs-pipeline verify SERVICE`` (or ``--all``) checks, before a first release, that
everything the service's strategy needs exists and is usable, one line per check
with its fix. Exit 0 when every check is ok, 1 when something is missing, wrong or
could not be checked, 2 on bad input (the main CLI's answer to a ConfigError).
"""

from __future__ import annotations

import argparse
import json
from collections import Counter

from tasks.core.errors import PipelineError


def register_cli(subparsers: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    """Add ``verify`` to the main CLI's subparsers."""
    summary = "check that everything a service's strategy needs exists and is usable (changes nothing)"
    p = subparsers.add_parser(
        "verify", help=summary, formatter_class=argparse.RawDescriptionHelpFormatter,
        description="Check, before a first release, that everything a service's strategy needs exists and\n"
                    "is usable: one line per check, with its fix. Exit 0 when every check is ok, 1 when\n"
                    "something is missing or wrong.",
        epilog="examples:\n  ecs-pipeline verify sample-app\n  ecs-pipeline verify --all --json\n",
    )
    p.add_argument("service", nargs="?", help="the service to check")
    p.add_argument("--all", action="store_true", help="every service under the deployments folder")
    p.add_argument("--json", action="store_true",
                   help="a JSON list of {check, status, resource, fix, detail, service} on stdout")
    p.set_defaults(func=cmd_verify)


def cmd_verify(args: argparse.Namespace) -> int:
    from tasks.aws.clients import AwsClients
    from tasks.config.models import find_service, load_all_services
    from tasks.core.settings import Settings
    from tasks.release.preflight import passed, verify_service

    if bool(args.all) == bool(args.service):
        raise PipelineError("verify: name one SERVICE, or use --all")
    clients = AwsClients(Settings())
    folder = clients.settings.deployments
    configs = load_all_services(folder) if args.all else [find_service(args.service, folder)]
    if not configs:
        raise PipelineError(f"verify --all: no service YAML under {folder}")
    checks = []
    for cfg in configs:
        found = verify_service(cfg, clients.for_service(cfg))  # as its deploy role, which releases use
        checks += found
        if not args.json:
            print(f"{cfg.name} ({cfg.strategy.type}, {cfg.ecs.cluster}/{cfg.ecs.service}):")
            for check in found:
                print(f"  {check.line()}")
    if args.json:
        print(json.dumps([c.as_json() for c in checks], indent=2))
    else:
        counts = Counter(c.status for c in checks)
        print(", ".join(f"{counts[s]} {s}" for s in ("ok", "MISSING", "WRONG", "cannot check")))
    return 0 if passed(checks) else 1
