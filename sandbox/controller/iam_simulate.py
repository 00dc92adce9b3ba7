"""iam:SimulatePrincipalPolicy, which moto lacks: a principal's policies judged by the enforcer's own evaluator.

What AWS's API reference documents, in IAM's query protocol as botocore's model
shapes it:

- PolicySourceArn names an IAM user (its inline and attached policies and those
  of its groups), a group or a role (its inline and attached policies); one
  IAM has not: ``NoSuchEntity`` (404). ``PolicyInputList`` documents are added.
- Each of ActionNames is evaluated for each of ResourceArns (default ``*``)
  with the ContextEntries' values, by sandbox/controller/iam_eval.py, the code
  that judges the calls themselves when enforcement is on.
- One EvaluationResult per action. Its EvalResourceName is "the ARN template
  for the simulated resource type ..., not a specific customer-provided
  resource ARN" (the sandbox names the resource's type only), and the decision
  for each resource is in ResourceSpecificResults; the top-level EvalDecision
  is the most restrictive of them (AWS's words for the details beside it), and
  its MatchedStatements and MissingContextValues the union of theirs.
- MaxItems (default 100) results per answer, IsTruncated and an opaque Marker
  for the next.

Parameters the pipeline never sends (a resource policy, a permissions
boundary, exclusions, another caller) are refused with ``UnsupportedOperation``
naming them, never ignored: an answer that left them out would be looser than AWS.
"""

from __future__ import annotations

import base64
import json
import re
import uuid
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any
from urllib.parse import parse_qsl
from xml.sax.saxutils import escape

from .faults import error_response
from .iam_eval import ALLOW, EXPLICIT_DENY, IMPLICIT_DENY, Evaluation, Need, evaluate
from .supported import CODE as UNSUPPORTED

OPERATION = "SimulatePrincipalPolicy"
NAMESPACE = "https://iam.amazonaws.com/doc/2010-05-08/"
DECISIONS = {ALLOW: "allowed", EXPLICIT_DENY: "explicitDeny", IMPLICIT_DENY: "implicitDeny"}
STRICTNESS = (EXPLICIT_DENY, IMPLICIT_DENY, ALLOW)
UNSUPPORTED_PARAMETERS = ("PermissionsBoundaryPolicyInputList", "PolicyExclusionList", "ResourcePolicy",
                          "ResourceOwner", "CallerArn", "ResourceHandlingOption")
_PRINCIPAL = re.compile(r"^arn:(?P<partition>[\w-]+):iam::(?P<account>\d{12}):(?P<kind>user|role|group)/"
                        r"(?:.*/)?(?P<name>[\w+=,.@-]+)$")
Answer = tuple[int, list[tuple[str, str]], bytes]


class Refused(Exception):
    """An error answer: code, HTTP status, message."""

    def __init__(self, code: str, status: int, message: str) -> None:
        super().__init__(message)
        self.code, self.status, self.message = code, status, message


@dataclass(frozen=True)
class Source:
    """One policy document of the simulation and how AWS names it in MatchedStatements."""

    policy_id: str
    policy_type: str  # user | group | role | aws-managed | user-managed | none
    document: dict[str, Any]


def handle(query_string: str, body: bytes) -> Answer:
    """The answer to one SimulatePrincipalPolicy request (query string and form body)."""
    params = dict(parse_qsl(query_string))
    params.update(parse_qsl(body.decode("utf-8", "replace")))
    try:
        return 200, [("Content-Type", "text/xml")], simulate(params).encode()
    except Refused as exc:
        return error_response("iam", exc.code, exc.message, exc.status, False)


def simulate(params: Mapping[str, str]) -> str:
    for name in UNSUPPORTED_PARAMETERS:
        if any(k == name or k.startswith(name + ".") for k in params):
            raise Refused(UNSUPPORTED, 400, f"the sandbox does not implement iam:{OPERATION} with {name}")
    source = params.get("PolicySourceArn") or ""
    actions = _members(params, "ActionNames")
    if not source or not actions:
        raise Refused("InvalidInput", 400, "PolicySourceArn and ActionNames are required")
    sources = principal_policies(source) + [
        Source(f"PolicyInputList.{i}", "none", _document(text, f"PolicyInputList.{i}"))
        for i, text in enumerate(_members(params, "PolicyInputList"), 1)]
    resources = _members(params, "ResourceArns")
    context = _context(params)
    results = [_result(sources, action, resources, context) for action in actions]
    start, size = _marker(params.get("Marker")), _max_items(params.get("MaxItems"))
    page, rest = results[start:start + size], results[start + size:]
    marker = f"<Marker>{_token(start + size)}</Marker>" if rest else ""
    return (f'<SimulatePrincipalPolicyResponse xmlns="{NAMESPACE}"><SimulatePrincipalPolicyResult>'
            f"<IsTruncated>{'true' if rest else 'false'}</IsTruncated>"
            f"<EvaluationResults>{''.join(page)}</EvaluationResults>{marker}</SimulatePrincipalPolicyResult>"
            f"<ResponseMetadata><RequestId>{uuid.uuid4()}</RequestId></ResponseMetadata>"
            "</SimulatePrincipalPolicyResponse>")


def principal_policies(arn: str) -> list[Source]:
    """The policies of the user, group or role ARN names (a user's groups' too); NoSuchEntity when IAM has none."""
    from moto.iam.models import iam_backends

    found = _PRINCIPAL.match(arn)
    if found is None:
        raise Refused("InvalidInput", 400, f"PolicySourceArn {arn} is not the ARN of an IAM user, group or role")
    backend = iam_backends[found["account"]][found["partition"]]
    kind = found["kind"]
    pools: dict[str, Any] = {"user": backend.users, "role": backend.roles, "group": backend.groups}
    entity: Any = next((e for e in pools[kind].values() if e.arn == arn), None)
    if entity is None:
        raise Refused("NoSuchEntity", 404, f"The {kind} with name {found['name']} cannot be found.")
    out = _own_policies(entity, kind)
    if kind == "user":
        for group in backend.get_groups_for_user(entity.name):
            out += _own_policies(group, "group")
    return out


def _own_policies(entity: Any, kind: str) -> list[Source]:
    inline = [Source(name, kind, _document(text, name)) for name, text in entity.policies.items()]
    managed = [Source(p.name, "aws-managed" if ":aws:policy/" in p.arn else "user-managed",
                      _document(next(v.document for v in p.versions if v.is_default), p.name))
               for p in entity.managed_policies.values()]
    return inline + managed


def _document(text: Any, name: str) -> dict[str, Any]:
    try:
        doc = json.loads(text) if isinstance(text, str) else text
    except ValueError as exc:
        raise Refused("MalformedPolicyDocument", 400, f"{name} is not a JSON policy document") from exc
    if not isinstance(doc, dict):
        raise Refused("MalformedPolicyDocument", 400, f"{name} is not a JSON policy document")
    return doc


def _members(params: Mapping[str, str], name: str) -> list[str]:
    """A query list (NAME.member.1, NAME.member.2, ...) in order."""
    found = {int(k.rsplit(".", 1)[1]): v for k, v in params.items()
             if re.fullmatch(rf"{name}\.member\.\d+", k)}
    return [found[i] for i in sorted(found)]


def _context(params: Mapping[str, str]) -> dict[str, str]:
    out = {}
    for key, name in params.items():
        entry = re.fullmatch(r"ContextEntries\.member\.(\d+)\.ContextKeyName", key)
        if entry is None:
            continue
        values = _members(params, f"ContextEntries.member.{entry[1]}.ContextKeyValues")
        if len(values) != 1:
            raise Refused(UNSUPPORTED, 400, f"the sandbox simulates single-valued context keys only ({name})")
        out[name] = values[0]
    return out


def _marker(value: str | None) -> int:
    if not value:
        return 0
    try:
        return int(base64.urlsafe_b64decode(value.encode()).decode().removeprefix("simulation:"))
    except ValueError as exc:
        raise Refused("InvalidInput", 400, "Marker is not one this operation returned") from exc


def _token(offset: int) -> str:
    return base64.urlsafe_b64encode(f"simulation:{offset}".encode()).decode()


def _max_items(value: str | None) -> int:
    size = int(value) if value and value.isdigit() else 100
    if not 1 <= size <= 1000:
        raise Refused("InvalidInput", 400, "MaxItems must be between 1 and 1000")
    return size


def template(arn: str) -> str:
    """The resource's type as an ARN template (``arn:${Partition}:ecs:${Region}:${Account}:service/...``)."""
    parts = arn.split(":", 5)
    if arn == "*" or len(parts) < 6:
        return "*"
    kind = re.match(r"[A-Za-z-]*[/:]?", parts[5])
    region = "${Region}" if parts[3] else ""
    account = "${Account}" if parts[4] else ""
    return f"arn:${{Partition}}:{parts[2]}:{region}:{account}:{kind[0] if kind else ''}${{ResourceName}}"


def _result(sources: list[Source], action: str, resources: list[str], context: dict[str, str]) -> str:
    documents = [s.document for s in sources]
    judged = [(r, evaluate(documents, Need(action, r, context))) for r in resources or ["*"]]
    verdict = next(v for v in STRICTNESS if any(e.verdict == v for _, e in judged))
    matched = list(dict.fromkeys(m for _, e in judged if e.verdict == verdict for m in e.matched))
    missing = list(dict.fromkeys(k for _, e in judged for k in e.missing))
    specific = "".join(
        f"<member><EvalResourceName>{escape(r)}</EvalResourceName>"
        f"<EvalResourceDecision>{DECISIONS[e.verdict]}</EvalResourceDecision>"
        f"{_statements(sources, e.matched)}{_keys(e)}<EvalDecisionDetails/></member>" for r, e in judged)
    return (f"<member><EvalActionName>{escape(action)}</EvalActionName>"
            f"<EvalResourceName>{escape(template(resources[0]) if resources else '*')}</EvalResourceName>"
            f"<EvalDecision>{DECISIONS[verdict]}</EvalDecision>{_statements(sources, matched)}"
            f"<MissingContextValues>{''.join(f'<member>{escape(k)}</member>' for k in missing)}"
            "</MissingContextValues>"
            + (f"<EvalDecisionDetails/><ResourceSpecificResults>{specific}</ResourceSpecificResults>"
               if resources else "") + "</member>")


def _statements(sources: list[Source], matched: Any) -> str:
    """One member per statement that decided, named by its policy (positions in the document left out)."""
    items = "".join(f"<member><SourcePolicyId>{escape(sources[d].policy_id)}</SourcePolicyId>"
                    f"<SourcePolicyType>{sources[d].policy_type}</SourcePolicyType></member>"
                    for d, _ in matched)
    return f"<MatchedStatements>{items}</MatchedStatements>"


def _keys(evaluation: Evaluation) -> str:
    return f"<MissingContextValues>{''.join(f'<member>{escape(k)}</member>' for k in evaluation.missing)}" \
           "</MissingContextValues>"
