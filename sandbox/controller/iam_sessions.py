"""What IAM judges beyond the identity's own policies: role sessions and the role's trust.

AWS's rules the sandbox plays (IAM User Guide):

- "Policy evaluation logic": a role session's effective permissions are "the intersection of the
  role's identity-based policies and the session policies"; a request a session policy does not allow is
  denied "because no session policy allows the ACTION action".
- "Temporary security credentials": once a session's credentials expire, calls signed with them are
  refused (``ExpiredToken``: "The security token included in the request is expired").
- "Roles terms and concepts" / AssumeRole's API reference: the caller needs both an identity policy
  allowing ``sts:AssumeRole`` on the role and the role's trust policy naming it (or its account) as a
  principal. A trust statement with a condition the sandbox does not evaluate does not apply (the least
  convenient reading).
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

from .iam_eval import matches


def session_of(principal: Any) -> Any | None:
    """moto's AssumedRole behind a role session's key (None for an IAM user's key)."""
    key = getattr(principal, "_access_key_id", None)
    if key is None or not hasattr(principal, "_owner_role_name"):
        return None
    from moto.sts.models import sts_backends

    for session in sts_backends[principal.account_id][principal.partition].assumed_roles:
        if session.access_key_id == key:
            return session
    return None


def expired(session: Any) -> bool:
    from moto.core.utils import utcnow  # the clock moto stamped the expiration with

    return bool(session.expiration <= utcnow())


def session_documents(session: Any) -> list[dict[str, Any]] | None:
    """The session policy the role was assumed with (None: no session policy, the role's policies alone)."""
    if not session.policy:
        return None
    loaded = json.loads(session.policy) if isinstance(session.policy, str) else session.policy
    return [loaded] if isinstance(loaded, dict) else []


def _listed(value: Any) -> list[str]:
    return [value] if isinstance(value, str) else [str(v) for v in value or []]


def _principal_named(principal: Any, caller: Mapping[str, str]) -> bool:
    if principal == "*":
        return True
    if not isinstance(principal, Mapping):
        return False
    for named in _listed(principal.get("AWS")):
        if named in ("*", caller["arn"], caller["account"], caller["root"]) or named == caller.get("role"):
            return True
    return False


def trust_allows(role: Any, caller_arn: str, account: str, partition: str) -> bool:
    """Whether ROLE's trust policy lets the caller (an IAM user or a role session) assume it."""
    document = role.assume_role_policy_document
    loaded = json.loads(document) if isinstance(document, str) else document
    caller = {"arn": caller_arn, "account": account, "root": f"arn:{partition}:iam::{account}:root"}
    if ":assumed-role/" in caller_arn:
        caller["role"] = f"arn:{partition}:iam::{account}:role/{caller_arn.split('/')[1]}"
    allowed = False
    for statement in _listed_statements(loaded):
        actions = _listed(statement.get("Action"))
        if not any(matches(a, "sts:AssumeRole", ignore_case=True) for a in actions):
            continue
        if not _principal_named(statement.get("Principal"), caller):
            continue
        if statement.get("Effect") == "Deny":
            return False
        if statement.get("Effect") == "Allow" and not statement.get("Condition"):
            allowed = True
    return allowed


def _listed_statements(document: Any) -> list[Mapping[str, Any]]:
    found = document.get("Statement", []) if isinstance(document, Mapping) else []
    return [found] if isinstance(found, Mapping) else [s for s in found if isinstance(s, Mapping)]


def role_named(arn: str, account: str, partition: str) -> Any | None:
    """moto's role for ARN (None when the account has no such role)."""
    from moto.iam.models import iam_backends

    try:
        return iam_backends[account][partition].get_role_by_arn(arn)
    except Exception:  # noqa: BLE001 - moto raises its own IAMNotFoundException
        return None
