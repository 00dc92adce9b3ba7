"""`python -m sandbox up [--postgres|--sqlite|--engine-only] | down | status | seed SERVICE_YAML [--prefix P]
[--copies N]`.

Exit codes are part of the contract (`ecs-pipeline sandbox ...` shells out to
this): 0 ok, 1 error with one line on stderr that says what to do.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from sandbox import manage
from sandbox.engine import SandboxError
from sandbox.layout import layout


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m sandbox", description="local AWS rehearsal environment"
    )
    sub = parser.add_subparsers(dest="command", required=True)
    up = sub.add_parser("up", help="start what is missing (idempotent) and write .sandbox/env")
    db = up.add_mutually_exclusive_group()
    db.add_argument("--postgres", dest="database", action="store_const", const="postgres",
                    help="Prefect server on PostgreSQL (loopback, data under .sandbox/postgres); remembered")
    db.add_argument("--sqlite", dest="database", action="store_const", const="sqlite",
                    help="Prefect server on SQLite (the default); remembered")
    up.add_argument("--engine-only", action="store_true",
                    help="only the Docker engine and the packages: what the test suite's own sandboxes share")
    sub.add_parser("down", help="stop what `up` started")
    sub.add_parser("status", help="each component's pid, address and health; exit 1 if one is down")
    seed = sub.add_parser("seed", help="create a service's existing infrastructure (idempotent)")
    seed.add_argument("service_yaml")
    seed.add_argument("--prefix", default="", help="prepended to every resource name")
    seed.add_argument("--copies", type=int, default=0, metavar="N",
                      help="seed N copies (SERVICE-01..N) with their own listeners, target groups and "
                      "alarms, and write their YAMLs to --out")
    seed.add_argument("--out", default=None, help="folder for the copies' YAMLs (default: .sandbox/fleet)")
    args = parser.parse_args(argv)
    try:
        if args.command == "up" and args.engine_only:
            manage.engine_up()
        elif args.command == "up":
            manage.up(database=args.database)
        elif args.command == "down":
            manage.down()
        elif args.command == "status":
            return 0 if manage.status() else 1
        elif args.copies:
            return _seed_fleet(args.service_yaml, args.copies, args.out)
        else:
            return _seed(args.service_yaml, args.prefix)
    except SandboxError as exc:
        return _fail(str(exc))
    except KeyboardInterrupt:
        return _fail("interrupted")
    return 0


def _seed(path: str, prefix: str) -> int:
    import docker.errors
    from botocore.exceptions import BotoCoreError, ClientError, EndpointConnectionError

    from sandbox.seed import seed_service
    from tasks.config.models import load_service
    from tasks.core.errors import PipelineError

    try:
        config = load_service(path)
        env = manage.load_env(admin=True)  # seeding is the sandbox's own work, not the pipeline's
        result = seed_service(config, prefix=prefix, env=env)
    except PipelineError as exc:
        return _fail(str(exc))
    except EndpointConnectionError:
        return _fail(
            f"the AWS endpoint {env['AWS_ENDPOINT_URL']} does not answer; "
            "run `python -m sandbox up`"
        )
    except (ClientError, BotoCoreError) as exc:
        return _fail(f"{exc}; see {layout().log('aws')}")
    except docker.errors.DockerException as exc:
        return _fail(f"Docker engine {env['DOCKER_HOST']}: {exc}; run `python -m sandbox status`")
    print(json.dumps(result, indent=2, sort_keys=True))
    return 0


def _seed_fleet(path: str, copies: int, out: str | None) -> int:
    from sandbox.seed_fleet import seed_fleet
    from tasks.core.errors import PipelineError

    folder = Path(out) if out else layout().state / "fleet"
    try:
        made = seed_fleet(Path(path), copies, folder, env=manage.load_env(admin=True))
    except (PipelineError, ValueError) as exc:
        return _fail(str(exc))
    print(json.dumps({"deployments": str(folder), "services": made}, indent=2))
    return 0


def _fail(message: str) -> int:
    one_line = "; ".join(part.strip() for part in message.splitlines() if part.strip())
    print(f"error: {one_line}", file=sys.stderr)
    return 1


if __name__ == "__main__":
    sys.exit(main())
