"""IAM policy evaluation for identity-based policies (pure: documents in, a decision out).

What AWS documents for one principal's policies in one account: an explicit
Deny wins, then any Allow, else the request is implicitly denied. Action and
Resource match case-insensitively / case-sensitively with ``*`` and ``?``
wildcards; ``NotAction`` and ``NotResource`` invert them; a Condition applies
only when every operator in it is true. Operators the sandbox does not know
make an Allow not apply and a Deny apply (the least convenient reading).

A resource of ``None`` means the sandbox cannot name the call's resource: the
call is judged on its action alone (an Allow for the action applies whatever
its Resource; a Deny applies only when its Resource is ``*``).
"""

from __future__ import annotations

import functools
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

ALLOW, EXPLICIT_DENY, IMPLICIT_DENY = "allow", "explicit-deny", "implicit-deny"


@dataclass(frozen=True)
class Need:
    """One authorization a call needs: an action on a resource, with the request's condition keys."""

    action: str
    resource: str | None
    context: Mapping[str, str] = field(default_factory=dict)


@functools.lru_cache(maxsize=4096)
def _pattern(glob: str, ignore_case: bool) -> re.Pattern[str]:
    body = "".join(".*" if c == "*" else "." if c == "?" else re.escape(c) for c in glob)
    return re.compile(f"^{body}$", re.IGNORECASE | re.DOTALL if ignore_case else re.DOTALL)


def matches(glob: str, value: str, *, ignore_case: bool = False) -> bool:
    return _pattern(glob, ignore_case).match(value) is not None


def _listed(value: Any) -> list[str]:
    if value is None:
        return []
    return [str(value)] if isinstance(value, str) else [str(v) for v in value]


def _action_applies(statement: Mapping[str, Any], action: str) -> bool:
    if "NotAction" in statement:
        return not any(matches(p, action, ignore_case=True) for p in _listed(statement["NotAction"]))
    return any(matches(p, action, ignore_case=True) for p in _listed(statement.get("Action")))


def _resource_applies(statement: Mapping[str, Any], resource: str | None, effect: str) -> bool:
    if resource is None:
        if effect == "Allow":
            return True
        return "*" in _listed(statement.get("Resource"))
    if "NotResource" in statement:
        return not any(matches(p, resource) for p in _listed(statement["NotResource"]))
    return any(matches(p, resource) for p in _listed(statement.get("Resource")))


def _string_test(op: str) -> tuple[bool, bool, bool] | None:
    """(like?, negated?, case-insensitive?) of a string or ARN operator, None when unknown."""
    table = {
        "StringEquals": (False, False, False), "StringNotEquals": (False, True, False),
        "StringEqualsIgnoreCase": (False, False, True), "StringNotEqualsIgnoreCase": (False, True, True),
        "StringLike": (True, False, False), "StringNotLike": (True, True, False),
        "ArnEquals": (True, False, False), "ArnLike": (True, False, False),
        "ArnNotEquals": (True, True, False), "ArnNotLike": (True, True, False),
    }
    return table.get(op)


def _operator_holds(op: str, expected: Mapping[str, Any], context: Mapping[str, str]) -> bool | None:
    """Whether one condition operator holds for CONTEXT; None when the sandbox does not know the operator."""
    if_exists = op.endswith("IfExists")
    base = op[: -len("IfExists")] if if_exists else op
    lowered = {k.lower(): v for k, v in context.items()}
    for key, wanted in expected.items():
        actual = lowered.get(key.lower())
        if base == "Null":
            is_null = actual is None
            if any(str(w).lower() == "true" for w in _listed(wanted)) != is_null:
                return False
            continue
        test = _string_test(base) if base != "Bool" else (False, False, True)
        if test is None:
            return None
        like, negated, fold = test
        if actual is None:
            if if_exists or negated:
                continue
            return False
        if like:
            hit = any(matches(w, actual, ignore_case=fold) for w in _listed(wanted))
        else:
            hit = any((w.lower() == actual.lower()) if fold else w == actual for w in _listed(wanted))
        if hit == negated:
            return False
    return True


def _conditions_hold(statement: Mapping[str, Any], context: Mapping[str, str], effect: str) -> bool:
    for op, expected in (statement.get("Condition") or {}).items():
        held = _operator_holds(op, expected, context) if isinstance(expected, Mapping) else None
        if held is None:
            return effect == "Deny"
        if not held:
            return False
    return True


def statements(documents: Iterable[Mapping[str, Any]]) -> list[Mapping[str, Any]]:
    out: list[Mapping[str, Any]] = []
    for doc in documents:
        found = doc.get("Statement") or []
        out += [found] if isinstance(found, Mapping) else list(found)
    return out


@dataclass(frozen=True)
class Evaluation:
    """A decision with what led to it: the statements that decided (by position) and the condition keys
    the statements that applied to the action and resource named but the request did not give."""

    verdict: str
    matched: tuple[tuple[int, int], ...] = ()  # (document index, statement index)
    missing: tuple[str, ...] = ()


def _condition_keys(statement: Mapping[str, Any]) -> list[str]:
    return [str(key) for op, expected in (statement.get("Condition") or {}).items()
            if isinstance(expected, Mapping) and not str(op).startswith("Null") for key in expected]


def evaluate(documents: Iterable[Mapping[str, Any]], need: Need) -> Evaluation:
    """NEED under the principal's DOCUMENTS: the verdict, the deciding statements, the missing context keys."""
    allows: list[tuple[int, int]] = []
    denies: list[tuple[int, int]] = []
    missing: dict[str, None] = {}
    given = {k.lower() for k in need.context}
    for d, doc in enumerate(documents):
        for s, statement in enumerate(statements([doc])):
            effect = str(statement.get("Effect", ""))
            if effect not in ("Allow", "Deny"):
                continue
            if not (_action_applies(statement, need.action) and _resource_applies(statement, need.resource, effect)):
                continue
            missing.update((k, None) for k in _condition_keys(statement) if k.lower() not in given)
            if _conditions_hold(statement, need.context, effect):
                (denies if effect == "Deny" else allows).append((d, s))
    if denies:
        return Evaluation(EXPLICIT_DENY, tuple(denies), tuple(missing))
    return Evaluation(ALLOW if allows else IMPLICIT_DENY, tuple(allows), tuple(missing))


def decide(documents: Iterable[Mapping[str, Any]], need: Need) -> str:
    """ALLOW, EXPLICIT_DENY or IMPLICIT_DENY for NEED under the principal's DOCUMENTS."""
    return evaluate(documents, need).verdict
