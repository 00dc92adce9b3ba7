"""CLI subcommand ``iam``: the IAM policies a service's releases need, printed from its config.

``ecs-pipeline iam SERVICE --role deploy`` prints exactly one JSON policy document on
stdout; notes (wildcards it had to use, what it could not know offline) go to stderr.
Offline: the task definition is rendered without AWS (``<AWS_ACCOUNT_ID>`` becomes
``--account``, else ``*``) and nothing is asked of AWS.
"""

from __future__ import annotations

import argparse
import json
import re
import subprocess
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

from tasks.core.errors import ConfigError, PipelineError

if TYPE_CHECKING:  # the command's own modules are imported when it runs: other commands start without them
    from tasks.config.buildspec import BuildSpec
    from tasks.config.models import ServiceConfig
    from tasks.release.permissions import Policy, Scope


def register_cli(subparsers: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    """Add ``iam`` to the main CLI's subparsers."""
    summary = "print the IAM policies a service's releases need (deploy and build roles)"
    p = subparsers.add_parser(
        "iam", help=summary, formatter_class=argparse.RawDescriptionHelpFormatter,
        description="Print the least-privilege IAM policies a service's releases need, from its YAML file\n"
                    "and task definition (offline: nothing is asked of AWS).",
        epilog="examples:\n"
               "  ecs-pipeline iam sample-app --role deploy\n"
               "  ecs-pipeline iam --all --format cfn --account 123456789012 > policies.yaml\n",
    )
    p.add_argument("service", nargs="?", help="the service to print policies for")
    p.add_argument("--all", action="store_true", help="every service of the deployments folder: one merged "
                                                      "policy per role")
    p.add_argument("--role", choices=["deploy", "build", "verify", "all"], default="all",
                   help="deploy: the releases' identity; build: the build role's; verify: what the verify "
                        "command reads beyond the deploy policy (attach both to the deploy role); all: deploy and "
                        "build")
    p.add_argument("--format", choices=["json", "cfn"], default="json",
                   help="json: the policy document(s); cfn: AWS::IAM::ManagedPolicy resources (a template)")
    p.add_argument("--account", default="*", help="the AWS account the ARNs name (default: *, any account)")
    p.add_argument("--region", default=None, help="the region the ARNs name (default: the configured region)")
    p.add_argument("--partition", default="aws", help="aws, aws-cn or aws-us-gov")
    p.add_argument("--principal", default=None, metavar="ARN",
                   help="the IAM user or role the pipeline runs as: the deploy policy then lets it simulate its own "
                        "permissions (iam:SimulatePrincipalPolicy), so each release checks them before it starts")
    p.add_argument("--buildspec", type=Path, default=None, metavar="FILE",
                   help="the buildspec to read parameters and secrets from, when build.buildspec is a path in "
                        "the repository (default: read it from a local repository's branch)")
    p.set_defaults(func=cmd_iam)


def cmd_iam(args: argparse.Namespace) -> int:
    from tasks.config.models import find_service, load_all_services
    from tasks.core.settings import Settings
    from tasks.release.permissions import ROLES, Scope, merge

    settings = Settings()
    scope = Scope(check_account(args.account), args.region or settings.region, args.partition)
    principal = check_principal(args.principal)
    if args.all == bool(args.service):
        raise PipelineError("name a SERVICE, or use --all for every service of the deployments folder")
    configs = (load_all_services(settings.deployments) if args.all
               else [find_service(args.service, settings.deployments)])
    if not configs:
        raise ConfigError(f"no service files under {settings.deployments}")
    roles = ROLES if args.role == "all" else (args.role,)
    notes: list[str] = []
    policies = [merge([policy_for(cfg, role, scope, args.buildspec, notes, principal) for cfg in configs])
                for role in roles]
    notes += [f"{cfg.name}: releases assume deploy_role_arn {cfg.deploy_role_arn}: attach the deploy policy to that "
              "role; the worker's own identity needs only sts:AssumeRole on it, and the role's trust policy (and "
              "the build role's, with build.role_arn) must name the identity that assumes it"
              for cfg in configs if cfg.deploy_role_arn and "deploy" in roles]
    for line in dict.fromkeys([*notes, *(n for p in policies for n in p.notes)]):
        print(f"note: {line}", file=sys.stderr)
    name = "fleet" if args.all else configs[0].name
    print(json.dumps(output(policies, args.format, name), indent=2))
    return 0


def check_account(account: str) -> str:
    if account != "*" and not (account.isdigit() and len(account) == 12):
        raise PipelineError(f"--account {account!r}: an AWS account is 12 digits (or * for any account)")
    return account


def check_principal(principal: str | None) -> str | None:
    if principal is not None and not re.fullmatch(r"arn:[\w-]+:iam::\d{12}:(user|role)/[\w+=,.@/-]+", principal):
        raise PipelineError(f"--principal {principal!r}: the ARN of an IAM user or role "
                            "(arn:aws:iam::123456789012:role/NAME)")
    return principal


def output(policies: list[Policy], fmt: str, name: str) -> Any:
    from tasks.release.permissions import cloudformation

    if fmt == "cfn":
        return cloudformation(policies, name)
    if len(policies) == 1:
        return policies[0].document
    return {p.role: p.document for p in policies}


def policy_for(cfg: ServiceConfig, role: str, scope: Scope, buildspec: Path | None, notes: list[str],
               principal: str | None = None) -> Policy:
    from tasks.release.permissions import build_policy, deploy_policy, verify_policy

    spec = service_buildspec(cfg, buildspec, notes)
    if role == "build":
        return build_policy(cfg, spec, scope)
    if role == "verify":
        return verify_policy(cfg, rendered(cfg, scope), scope)
    return deploy_policy(cfg, rendered(cfg, scope), spec, scope, principal)


def rendered(cfg: ServiceConfig, scope: Scope) -> dict[str, Any]:
    """The task definition a release registers, offline: the account from the scope when one is given."""
    from tasks.config.taskdef import load_template, render_task_definition

    path = cfg.path(cfg.task_definition)
    return render_task_definition(
        load_template(path), image="<IMAGE>", container=cfg.ecs.container, sha=None, service=cfg.name,
        source=str(path), account=None if scope.account == "*" else scope.account, region=scope.region,
    )


def service_buildspec(cfg: ServiceConfig, override: Path | None, notes: list[str]) -> BuildSpec | None:
    """The buildspec the service's builds run: --buildspec, inline in the YAML, or the local branch's file."""
    from tasks.config.buildspec import load_buildspec
    from tasks.config.inputs import read_text

    if override is not None:
        return load_buildspec(read_text(override, "--buildspec", "the command line"), str(override))
    inline = cfg.build.inline_buildspec()
    if inline is not None or not isinstance(cfg.build.buildspec, str):
        return inline
    where = f"{cfg.source.branch} of {cfg.repo_location}"
    text = git_file(cfg.repo_location, cfg.source.branch, cfg.build.buildspec)
    if text is None:
        notes.append(f"{cfg.name}: build.buildspec {cfg.build.buildspec} is in the repository, which is not a "
                     "local one here: the parameters and secrets it names are not in the policies; pass "
                     "--buildspec FILE to include them")
        # A buildspec there is (its image is re-tagged), naming no parameters or secrets that can be read here.
        return load_buildspec("version: 0.2\nphases:\n  build:\n    commands: ['true']\n", "a buildspec unread")
    return load_buildspec(text, f"{cfg.build.buildspec} ({where})")


def git_file(repo: str, branch: str, path: str) -> str | None:
    """PATH at the head of BRANCH in a local repository; None when there is none to read."""
    if not Path(repo).is_dir():
        return None
    done = subprocess.run(["git", "-C", repo, "show", f"{branch}:{path}"], capture_output=True, text=True,
                          timeout=30, check=False)
    return done.stdout if done.returncode == 0 else None
