"""Opt-in IAM enforcement: calls signed by an IAM user's (or assumed role's) keys obey its policies.

Turned on with ``SANDBOX_ENFORCE_IAM=1`` in the sandbox server's environment;
off, nothing here runs and every call is served as before. On:

- the sandbox's own keys (``SANDBOX_ADMIN_ACCESS_KEY_IDS``, default the
  ``testing`` key of ``.sandbox/env``) stay all-powerful: seeding, tests'
  set-up and the controller are not judged;
- an unsigned call is refused (MissingAuthenticationToken); any other key
  must belong to an IAM user created in moto (or a role session from moto's
  STS) and sign correctly: moto's own code identifies the key and checks the
  signature (``moto.iam.access_control``), and collects the user's inline,
  attached and group policies;
- each call is judged against those documents for every authorization it
  needs (sandbox/controller/iam_resources.py: the action, the resource ARN
  the call names, ``iam:PassRole`` with ``iam:PassedToService``), by
  sandbox/controller/iam_eval.py;
- a refusal is answered in the service's own protocol, as AWS does, so
  botocore raises ``AccessDeniedException`` (ECS, ECR, CodeDeploy,
  CloudWatch's JSON) or ``AccessDenied`` (ELBv2's query XML).

moto's own switch (``INITIAL_NO_AUTH_ACTION_COUNT``) stays off: it judges
every call outside IAM, STS and SQS against the resource ``"*"``, so any
statement scoped by ARN, which is every scoped statement of the pipeline's
policy, would refuse, and it answers JSON services with a query-style XML 403.
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Mapping
from typing import Any
from urllib.parse import parse_qsl

from werkzeug.datastructures import EnvironHeaders
from werkzeug.exceptions import HTTPException

from .faults import error_response
from .iam_eval import ALLOW, EXPLICIT_DENY, IMPLICIT_DENY, Need, decide
from .iam_resources import Where, needs
from .iam_sessions import expired, role_named, session_documents, session_of, trust_allows
from .world import LOCK, log

ENV = "SANDBOX_ENFORCE_IAM"
ADMIN_ENV = "SANDBOX_ADMIN_ACCESS_KEY_IDS"
DEFAULT_ADMIN_KEYS = ("testing",)
_CREDENTIAL = re.compile(r"Credential=([^/,\s]+)/\d{8}/([^/]+)/")
Answer = tuple[int, list[tuple[str, str]], bytes]


def enabled(env: Mapping[str, str] | None = None) -> bool:
    """Whether the server was asked to enforce IAM (``SANDBOX_ENFORCE_IAM=1``)."""
    value = (env if env is not None else os.environ).get(ENV, "")
    return value.strip().lower() in ("1", "true", "yes", "on")


def admin_keys(env: Mapping[str, str] | None = None) -> frozenset[str]:
    value = (env if env is not None else os.environ).get(ADMIN_ENV, "")
    return frozenset(k.strip() for k in value.split(",") if k.strip()) or frozenset(DEFAULT_ADMIN_KEYS)


def _params(body: bytes, environ: Mapping[str, Any], is_json: bool) -> dict[str, Any]:
    if is_json:
        try:
            loaded = json.loads(body or b"{}")
        except ValueError:
            return {}
        return loaded if isinstance(loaded, dict) else {}
    query = dict(parse_qsl(str(environ.get("QUERY_STRING", ""))))
    if body and "x-www-form-urlencoded" in str(environ.get("CONTENT_TYPE", "")):
        query.update(parse_qsl(body.decode("utf-8", "replace")))
    return query


def _documents(policies: list[Any]) -> list[dict[str, Any]]:
    """The JSON documents of moto's policy objects (managed: default version; inline: the document)."""
    out = []
    for policy in policies:
        if hasattr(policy, "versions"):
            text = next(v.document for v in policy.versions if v.is_default)
        elif isinstance(policy, str):
            text = policy
        else:
            text = policy["policy_document"]
        doc = json.loads(text) if isinstance(text, str) else text
        if isinstance(doc, dict):
            out.append(doc)
    return out


def denial_message(principal: str, need: Need, verdict: str, kind: str = "identity-based") -> str:
    """AWS's wording, naming the action, the resource and why (KIND: identity-based, session or trust)."""
    head = f"User: {principal} is not authorized to perform: {need.action} on resource: {need.resource or '*'}"
    if kind == "trust":  # the role's trust policy does not name the caller: AWS says no more
        return head
    why = (f"with an explicit deny in a {kind} policy" if verdict == EXPLICIT_DENY
           else f"because no {kind} policy allows the {need.action} action")
    return f"{head} {why}"


def access_denied(service: str, message: str, is_json: bool) -> Answer:
    """AccessDeniedException at 400 for JSON services, AccessDenied at 403 in query XML."""
    if is_json:
        return error_response(service, "AccessDeniedException", message, 400, True)
    return error_response(service, "AccessDenied", message, 403, False)


class Enforcer:
    """Judges each signed AWS call against its principal's IAM policies (None: let it through)."""

    def __init__(self, admin: frozenset[str]) -> None:
        self.admin = admin

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> Enforcer:
        return cls(admin_keys(env))

    def judge(self, environ: dict[str, Any], service: str, operation: str, is_json: bool,
              body: bytes) -> Answer | None:
        found = _CREDENTIAL.search(str(environ.get("HTTP_AUTHORIZATION", "")))
        if found is None:
            return _unsigned(service, is_json)
        if found.group(1) in self.admin:  # the sandbox's own identity, all-powerful, but roles it names must exist
            with LOCK:
                return _no_such_role(service, operation, _params(body, environ, is_json), is_json)
        key, region = found.group(1), found.group(2)
        with LOCK:
            try:
                principal = _principal(environ, body, operation, key)
            except HTTPException as exc:
                return _identity_refused(service, exc, is_json)
            documents = _documents(principal.collect_policies())
            session = session_of(principal)
            if session is not None and expired(session):
                return _expired(service, is_json)
            limits = session_documents(session) if session is not None else None
            where = Where(region, principal.account_id, principal.partition)
            for need in needs(service, operation, _params(body, environ, is_json), where):
                verdict, kind = decide(documents, need), "identity-based"
                if verdict == ALLOW and limits is not None:
                    verdict, kind = decide(limits, need), "session"
                if verdict == ALLOW and need.action == "sts:AssumeRole" and need.resource:
                    role = role_named(need.resource, principal.account_id, principal.partition)
                    if role is None or not trust_allows(role, principal.arn, principal.account_id,
                                                        principal.partition):
                        verdict, kind = IMPLICIT_DENY, "trust"
                if verdict != ALLOW:
                    message = denial_message(principal.arn, need, verdict, kind)
                    log.info("IAM: %s", message)
                    return access_denied(service, message, is_json)
        return None


def _no_such_role(service: str, operation: str, params: Mapping[str, Any], is_json: bool) -> Answer | None:
    """AssumeRole of a role that does not exist: AccessDenied, as AWS answers it (it says no more, whoever asks);
    moto alone hands out credentials for any ARN, whose every call then fails inside the sandbox."""
    arn = str(params.get("RoleArn") or "")
    if operation != "AssumeRole" or arn.count(":") < 5:
        return None
    partition, account = arn.split(":")[1], arn.split(":")[4]
    if role_named(arn, account, partition) is not None:
        return None
    message = f"User: the sandbox's admin is not authorized to perform: sts:AssumeRole on resource: {arn}"
    log.info("IAM: %s", message)
    return access_denied(service, message, is_json)


def _principal(environ: dict[str, Any], body: bytes, operation: str, key: str) -> Any:
    """moto's view of the key's owner, after moto checked the request's signature with its secret."""
    from moto.iam.access_control import IAMRequest
    from moto.iam.models import get_account_id_from

    path = str(environ.get("RAW_URI") or environ.get("REQUEST_URI") or environ.get("PATH_INFO") or "/")
    if "?" not in path and environ.get("QUERY_STRING"):
        path += "?" + str(environ["QUERY_STRING"])
    headers: Any = EnvironHeaders(environ)  # what moto's own server mode hands it: case-insensitive
    request = IAMRequest(account_id=get_account_id_from(key), method=str(environ.get("REQUEST_METHOD", "POST")),
                         path=path, data={}, body=body, headers=headers, action=operation)
    request.check_signature()
    return request._access_key  # moto's identified principal: an IAM user or a role session


def _expired(service: str, is_json: bool) -> Answer:
    """A role session's credentials past their expiration (STS's DurationSeconds)."""
    message = "The security token included in the request is expired"
    if is_json:
        return error_response(service, "ExpiredTokenException", message, 400, True)
    return error_response(service, "ExpiredToken", message, 403, False)


def _unsigned(service: str, is_json: bool) -> Answer:
    """A call with no SigV4 Authorization header: AWS asks for credentials before anything else."""
    message = "Request is missing Authentication Token"
    if is_json:
        return error_response(service, "MissingAuthenticationTokenException", message, 400, True)
    return error_response(service, "MissingAuthenticationToken", message, 403, False)


def _identity_refused(service: str, exc: HTTPException, is_json: bool) -> Answer:
    """An unknown key or a bad signature, as the service's protocol names them."""
    code = str(getattr(exc, "error_type", "") or "InvalidClientTokenId")
    message = str(getattr(exc, "message", "") or exc.description or code)
    if is_json:
        json_code = "InvalidSignatureException" if code == "SignatureDoesNotMatch" else "UnrecognizedClientException"
        return error_response(service, json_code, message, 400, True)
    return error_response(service, code, message, 403, False)
