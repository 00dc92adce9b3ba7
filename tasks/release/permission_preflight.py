"""Before a release moves anything: may the identity it runs as do what this release will do?

``check_permissions`` asks IAM (sts:GetCallerIdentity, then iam:SimulatePrincipalPolicy
for the caller's user or role) to judge every action of the deploy policy
``ecs-pipeline iam SERVICE --role deploy`` generates for the service, on the
resources each statement names and with the condition keys it tests
(iam:PassedToService for iam:PassRole, ecs:CreateAction, ecs:cluster). Anything
not allowed fails the release at once, before reconcile, build or register, naming
the action, the resource and the generator's statement to add. A service's
``deploy_role_arn`` is simulated as written; any other assumed-role session as its
role, ``arn:aws:iam::ACCT:role/NAME``: a role with a path (``role/PATH/NAME``) is
not found under that ARN, and the check is skipped.

The simulation is a preflight, not a gate of its own: when IAM refuses it (the
identity may not call iam:SimulatePrincipalPolicy on itself) or cannot run it,
the release goes on with one log line saying what to grant, and a denied call is
explained where it happens (``explain_denial``, for the calls no preflight
foresees too). IAM's simulator judges identity policies; a resource policy, an
SCP or a permissions boundary can still refuse a call it allowed.

A run asks while it takes the service's deploy slot (``asked_ahead``): both are waits on
other services (IAM, Prefect's API), so the check costs the release its own round trips
only where they outlast the slot's. The verdict is still read, and acted on, first thing
under the slot; one from before a wait for the slot is asked again.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from contextvars import copy_context
from fnmatch import fnmatchcase
from typing import Any

from prefect import get_run_logger

from tasks.aws.clients import AwsClients
from tasks.aws.iam import CannotSimulate, Decision, principal_of, simulate
from tasks.aws.retry import typed_errors
from tasks.config.buildspec import BuildSpec, Env
from tasks.config.models import ServiceConfig
from tasks.config.taskdef import load_template, render_task_definition
from tasks.core.errors import AccessDenied
from tasks.release.permissions import Policy, Scope, deploy_policy

Statement = dict[str, Any]
Verdict = Callable[[], "str | None"]
FRESH_SECONDS = 30.0  # a verdict older than this when the slot is held came before a wait for it: asked again


class Denied(AccessDenied):
    """An AccessDenied whose message names the generator's statement for it (explained once)."""


def planned_policy(cfg: ServiceConfig, scope: Scope) -> Policy:
    """What ``ecs-pipeline iam NAME --role deploy --account ACCT`` prints: the task definition rendered as
    the generator renders it, and the buildspec when it is in the YAML.

    A buildspec that is a file of the repository is read only after checkout: its re-tag statement is
    checked, the parameters and secrets it names are not (a refused read is explained where it happens).
    """
    path = cfg.path(cfg.task_definition)
    rendered = render_task_definition(
        load_template(path), image="<IMAGE>", container=cfg.ecs.container, sha=None, service=cfg.name,
        source=str(path), account=None if scope.account == "*" else scope.account, region=scope.region)
    spec = cfg.build.inline_buildspec()
    if spec is None and isinstance(cfg.build.buildspec, str):
        spec = BuildSpec(env=Env(), phases=())
    return deploy_policy(cfg, rendered, spec, scope)


def print_command(cfg: ServiceConfig, scope: Scope) -> str:
    account = f" --account {scope.account}" if scope.account != "*" else ""
    return f"`ecs-pipeline iam {cfg.name} --role deploy{account}` prints the full policy"


def _listed(value: Any) -> list[str]:
    return [str(value)] if isinstance(value, str) else [str(v) for v in value or []]


def _context(statement: Statement) -> dict[str, str]:
    """The condition keys a statement tests, each with the value it allows (what the release's calls carry)."""
    return {str(key): _listed(value)[0] for keys in (statement.get("Condition") or {}).values()
            for key, value in keys.items() if _listed(value)}


SIMULATIONS_AT_ONCE = 4


def same_question(statements: list[Statement]) -> list[list[Statement]]:
    """Statements on the same resources with the same condition keys, each group one simulation (IAM judges
    every action of a request on every resource of it: only such statements can share one)."""
    groups: dict[str, list[Statement]] = {}
    for statement in statements:
        key = json.dumps([_listed(statement["Resource"]), sorted(_context(statement).items())])
        groups.setdefault(key, []).append(statement)
    return list(groups.values())


def _granting(group: list[Statement], action: str) -> Statement:
    return next((s for s in group if action.lower() in (a.lower() for a in _listed(s["Action"]))), group[0])


def _scope(clients: AwsClients) -> Scope:
    caller = clients.caller()
    return Scope(caller["Account"], clients.settings.region, caller["Arn"].split(":", 2)[1])


@typed_errors
def check_permissions(cfg: ServiceConfig, clients: AwsClients) -> str | None:
    """Fail when the caller may not do what the release will; None, or the note saying why it was skipped.

    A step of the release's own run, not a task of its own: it makes AWS calls only, which botocore
    retries, so a task's repeat would never apply, and its verdict is the run's (a refusal fails the
    run with the statement to add; a skip is a note of the summary and a line of the run's log). The
    summary still times it as the stage "check permissions".
    """
    log = get_run_logger()
    caller = clients.caller()["Arn"]
    principal = clients.role_arn or principal_of(caller)  # a deploy_role_arn as written: its path included
    scope = _scope(clients)
    if principal is None:
        note = (f"permission preflight skipped: {caller} is not an IAM user or role (nothing to simulate); "
                "a refused call is still named with its statement")
        log.info(note)
        return note
    policy = planned_policy(cfg, scope)
    denied: list[tuple[Statement, Decision]] = []
    groups = same_question(policy.document["Statement"])
    iam = clients.get("iam")

    def ask(group: list[Statement]) -> list[Decision]:
        actions = list(dict.fromkeys(a for st in group for a in _listed(st["Action"])))
        return simulate(iam, principal, actions, _listed(group[0]["Resource"]), _context(group[0]))

    try:
        # The groups' simulations are independent questions, asked SIMULATIONS_AT_ONCE at a time: the check
        # waits for a few of IAM's round trips (each a tenth of a second or more), not one per group. A client
        # is safe to share between threads; botocore still retries each throttled one.
        with ThreadPoolExecutor(max_workers=min(SIMULATIONS_AT_ONCE, len(groups) or 1)) as pool:
            asked = [pool.submit(copy_context().run, ask, group) for group in groups]  # each in the run's context
            for group, answer in zip(groups, asked, strict=True):
                found = answer.result()
                denied += [(_granting(group, d.action), d) for d in found if not d.allowed]
    except CannotSimulate as exc:
        fix = (f"grant iam:SimulatePrincipalPolicy on {principal} (`ecs-pipeline iam {cfg.name} --role deploy "
               f"--principal {principal}` adds that statement)" if exc.refused
               else "a refused call is still named with its statement")
        note = f"permission preflight skipped: {exc}; {fix}"
        log.warning(note)
        return note
    if denied:
        raise Denied(refusal(cfg, scope, principal, denied), action=denied[0][1].action,
                     resource=denied[0][1].resource, service=cfg.name)
    log.info("permissions: %s may do all %d actions of the deploy policy", principal, len(policy.actions()))
    return None


@contextmanager
def asked_ahead(cfg: ServiceConfig, clients: AwsClients) -> Iterator[Verdict]:
    """``check_permissions`` started now in a thread of its own (in the run's context); yields its verdict.

    The verdict is ``check_permissions``' result, or its exception raised in the caller's thread, or,
    when more than FRESH_SECONDS passed since the start (the run waited for the slot), a check asked
    again then. Leaving the block waits for the thread: no call of the check outlives the run.
    """
    started = time.monotonic()
    pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="permission-preflight")
    asked = pool.submit(copy_context().run, check_permissions, cfg, clients)

    def verdict() -> str | None:
        if time.monotonic() - started > FRESH_SECONDS:
            return check_permissions(cfg, clients)
        return asked.result()

    try:
        yield verdict
    finally:
        pool.shutdown(wait=True)


def refusal(cfg: ServiceConfig, scope: Scope, principal: str, denied: list[tuple[Statement, Decision]]) -> str:
    """Which actions on which resources, and the statements that grant them, in one message."""
    by_statement: dict[str, dict[str, list[str]]] = {}
    statements: dict[str, Statement] = {}
    for statement, decision in denied:
        sid = str(statement["Sid"])
        statements[sid] = statement
        by_statement.setdefault(sid, {}).setdefault(decision.resource, []).append(
            decision.action + (" (explicit deny)" if decision.decision == "explicitDeny" else ""))
    refused = "; ".join(f"{', '.join(dict.fromkeys(actions))} on {resource}"
                        for per in by_statement.values() for resource, actions in per.items())
    grants = "; ".join(f"{sid}: {json.dumps(statements[sid])}" for sid in statements)
    explicit = any(d.decision == "explicitDeny" for _, d in denied)
    return (f"permission preflight: {principal} may not {refused}; nothing was changed. Add to its policy "
            f"the generated deploy policy's statement{'s' * (len(statements) > 1)} {grants}"
            + ("; an explicit deny (a Deny statement, an SCP or a permissions boundary) must go too"
               if explicit else "") + f". {print_command(cfg, scope)}")


def _matches(patterns: Iterable[str], value: str, *, ignore_case: bool = False) -> bool:
    if ignore_case:
        return any(fnmatchcase(value.lower(), p.lower()) for p in patterns)
    return any(fnmatchcase(value, p) for p in patterns)


def statement_for(document: dict[str, Any], action: str, resource: str) -> tuple[Statement | None, bool]:
    """The generator's statement granting ACTION (on RESOURCE when named), and whether it covers RESOURCE."""
    granting = [s for s in document["Statement"] if _matches(_listed(s["Action"]), action, ignore_case=True)]
    covering = [s for s in granting if not resource or _matches(_listed(s["Resource"]), resource)]
    if covering:
        return covering[0], True
    return (granting[0], False) if granting else (None, False)


def explain_denial(exc: BaseException, cfg: ServiceConfig, clients: AwsClients) -> BaseException:
    """EXC, or for an AccessDenied naming an action: the same refusal with the generator's statement to add."""
    if not isinstance(exc, AccessDenied) or isinstance(exc, Denied) or not exc.action:
        return exc
    try:
        scope = _scope(clients)
        statement, covers = statement_for(planned_policy(cfg, scope).document, exc.action, exc.resource)
    except Exception:  # noqa: BLE001 - explaining must never hide the refusal itself
        return exc
    said = f" ({exc.said})" if exc.said else ""
    what = f"AWS denied {exc.action} on {exc.resource or 'a resource its answer did not name'}{said}"
    if statement is None:
        fix = (f"the generated deploy policy has no statement for {exc.action}: grant it on "
               f"{exc.resource or 'the resource the call names'} to the identity the pipeline runs as")
    elif covers:
        fix = (f"add to the policy of the identity the pipeline runs as the generated deploy policy's statement "
               f"{statement['Sid']}: {json.dumps(statement)}")
    else:
        fix = (f"the generated deploy policy's statement {statement['Sid']} grants it only on "
               f"{', '.join(_listed(statement['Resource']))}, not on that resource: {json.dumps(statement)}")
    return Denied(f"{what}: {fix}. {print_command(cfg, scope)}", action=exc.action, resource=exc.resource,
                  said=exc.said, service=exc.service, revision=exc.revision,
                  deployment_id=exc.deployment_id)
