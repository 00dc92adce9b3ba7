"""IAM: roles the pipeline names to AWS (never creates), and the simulation of its own permissions."""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from botocore.exceptions import ClientError

from tasks.aws.errors import ACCESS_DENIED_CODES, error_code

# An endpoint without the operation: AWS's query services answer InvalidAction; the sandbox UnsupportedOperation.
UNSUPPORTED_CODES = frozenset({"InvalidAction", "UnsupportedOperation", "NotImplemented"})


def role_arn(iam: Any, role: str) -> str | None:
    """The ARN of ROLE (a name or an ARN), or None when IAM has no such role (GetRole: NoSuchEntity)."""
    name = role.rsplit("/", 1)[-1] if role.startswith("arn:") else role
    try:
        return str(iam.get_role(RoleName=name)["Role"]["Arn"])
    except ClientError as exc:
        if error_code(exc) == "NoSuchEntity":
            return None
        raise


class CannotSimulate(Exception):
    """IAM's policy simulation could not answer for this identity; the message says why.

    ``refused``: IAM denied the simulation itself (granting iam:SimulatePrincipalPolicy would help).
    """

    def __init__(self, why: str, *, refused: bool = False) -> None:
        super().__init__(why)
        self.refused = refused


@dataclass(frozen=True)
class Decision:
    """One action on one resource as IAM's simulation judged it: allowed, explicitDeny or implicitDeny."""

    action: str
    resource: str
    decision: str

    @property
    def allowed(self) -> bool:
        return self.decision == "allowed"


def principal_of(caller_arn: str) -> str | None:
    """The IAM user or role whose policies apply to CALLER_ARN (GetCallerIdentity's Arn); None for the root
    user, a federated user or anything else IAM cannot simulate.

    An assumed-role session (``arn:aws:sts::ACCT:assumed-role/NAME/SESSION``) maps to its role,
    ``arn:aws:iam::ACCT:role/NAME``. The session ARN does not carry the role's path: a role with a path
    (``role/PATH/NAME``) is not found under that ARN, and the simulation is skipped.
    """
    found = _CALLER.match(caller_arn)
    if found is None:
        return None
    if found["kind"] == "assumed-role":
        return f"arn:{found['partition']}:iam::{found['account']}:role/{found['rest'].split('/', 1)[0]}"
    return caller_arn if found["service"] == "iam" and found["kind"] in ("user", "role") else None


_CALLER = re.compile(r"^arn:(?P<partition>[\w-]+):(?P<service>iam|sts)::(?P<account>\d{12}):"
                     r"(?P<kind>user|role|assumed-role)/(?P<rest>.+)$")


def simulate(iam: Any, principal: str, actions: Sequence[str], resources: Sequence[str],
             context: Mapping[str, str]) -> list[Decision]:
    """Each of ACTIONS on each of RESOURCES under PRINCIPAL's policies (iam:SimulatePrincipalPolicy, every page).

    Per resource from ResourceSpecificResults when IAM gives them (its EvalResourceName is then the resource
    type's ARN template, not the resource); else the result's own EvalResourceName and EvalDecision.
    Raises CannotSimulate when IAM refuses the simulation or cannot run it.
    """
    entries = [{"ContextKeyName": k, "ContextKeyValues": [v], "ContextKeyType": "string"} for k, v in context.items()]
    try:
        pages = iam.get_paginator("simulate_principal_policy").paginate(
            PolicySourceArn=principal, ActionNames=list(actions), ResourceArns=list(resources), ContextEntries=entries)
        results = [r for page in pages for r in page.get("EvaluationResults") or []]
    except ClientError as exc:
        raise CannotSimulate(_why_not(exc, principal), refused=error_code(exc) in ACCESS_DENIED_CODES) from exc
    out = []
    for result in results:
        specific = result.get("ResourceSpecificResults") or []
        out += [Decision(str(result["EvalActionName"]), str(r["EvalResourceName"]), str(r["EvalResourceDecision"]))
                for r in specific] or [Decision(str(result["EvalActionName"]), str(result.get("EvalResourceName")),
                                                str(result["EvalDecision"]))]
    return out


def _why_not(exc: ClientError, principal: str) -> str:
    code = error_code(exc)
    if code in ACCESS_DENIED_CODES:
        return f"{principal} may not call iam:SimulatePrincipalPolicy on itself ({code})"
    if code == "NoSuchEntity":
        return (f"IAM has no {principal} (a role with a path is named arn:...:role/PATH/NAME, which its "
                "sessions do not show)")
    if code in UNSUPPORTED_CODES:
        return f"the endpoint does not implement iam:SimulatePrincipalPolicy ({code})"
    return f"iam:SimulatePrincipalPolicy failed: {code or type(exc).__name__}"
