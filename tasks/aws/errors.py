"""AWS error codes, read here and nowhere above ``tasks/aws``.

A ClientError is told apart by ``exc.response["Error"]["Code"]``, never by its
message. The adapters of this room (ecr, ecs, codedeploy, parameters, traffic)
turn the codes they expect into a plain value (None for "not found", False for
"already done") or a typed error of ``tasks.core.errors``; ``translate`` types
the rest at a stage's edge, and leaves unknown codes unchanged.
"""

from __future__ import annotations

import re

from botocore.exceptions import ClientError

from tasks.core.errors import AccessDenied, AwsUnavailable, NotFound

TRANSIENT_AWS_CODES = frozenset(
    {
        "Throttling",
        "ThrottlingException",
        "ThrottledException",
        "RequestThrottled",
        "RequestThrottledException",
        "RequestLimitExceeded",
        "TooManyRequestsException",
        "ServiceUnavailable",
        "ServiceUnavailableException",
        "InternalFailure",
        "InternalError",
        "InternalServerError",
        "InternalServerException",
        "RequestTimeout",
        "RequestTimeoutException",
        "ServerException",
        "PriorRequestNotComplete",
        "SlowDown",
    }
)
ACCESS_DENIED_CODES = frozenset(
    {"AccessDenied", "AccessDeniedException", "UnauthorizedOperation", "UnrecognizedClientException",
     "InvalidClientTokenId", "ExpiredToken", "ExpiredTokenException"}
)
# Codes that name a missing resource, and what the resource is, for the message.
NOT_FOUND_CODES = {
    "ClusterNotFoundException": "ECS cluster",
    "ServiceNotFoundException": "ECS service",
    "ServiceNotActiveException": "ECS service",
    "TaskSetNotFoundException": "ECS task set",
    "RepositoryNotFoundException": "ECR repository",
    "ImageNotFoundException": "ECR image",
    "LoadBalancerNotFound": "load balancer",
    "ListenerNotFound": "listener",
    "TargetGroupNotFound": "target group",
    "ApplicationDoesNotExistException": "CodeDeploy application",
    "DeploymentGroupDoesNotExistException": "CodeDeploy deployment group",
    "DeploymentDoesNotExistException": "CodeDeploy deployment",
    "ResourceNotFound": "CloudWatch resource",
    "ResourceNotFoundException": "resource",
}
# The key itself refused (unknown, expired): no permission to add, so no action on the typed error.
IDENTITY_CODES = frozenset({"UnrecognizedClientException", "InvalidClientTokenId", "ExpiredToken",
                            "ExpiredTokenException"})
# How AWS's AccessDenied messages name what they refused ("User: ARN is not authorized to perform: ACTION
# on resource: ARN because ..."): read for the person's message only, never to decide what the error is.
_DENIED_WHAT = re.compile(r"not authorized to perform:? (?P<action>[\w-]+:[\w*]+)(?: on resource:? (?P<resource>\S+))?")
# IAM's prefix where it differs from the API's endpoint prefix.
IAM_PREFIX = {"monitoring": "cloudwatch", "api.ecr": "ecr"}


def error_code(exc: BaseException) -> str:
    """The AWS error code of a ClientError ("" for anything else)."""
    if isinstance(exc, ClientError):
        return str(exc.response.get("Error", {}).get("Code", ""))
    return ""


def http_status(exc: ClientError) -> int:
    status = exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode", 0)
    return status if isinstance(status, int) else 0


def attempts(exc: ClientError) -> int:
    """How many times botocore sent the call that ended in EXC (its retries plus the first)."""
    retried = exc.response.get("ResponseMetadata", {}).get("RetryAttempts", 0)
    return 1 + (retried if isinstance(retried, int) else 0)


def is_transient_aws(exc: ClientError) -> bool:
    return error_code(exc) in TRANSIENT_AWS_CODES or http_status(exc) >= 500


def iam_action(exc: ClientError) -> str:
    """``ecs:CreateTaskSet``: the permission a denied call needs (AwsClients notes the prefix)."""
    prefix = str(exc.response.get("Error", {}).get("IamPrefix") or "")
    return f"{prefix}:{exc.operation_name}" if prefix else exc.operation_name


def denied_what(exc: ClientError) -> tuple[str, str]:
    """(action, resource) an AccessDenied names: the action from AWS's message when it says (a call can be
    refused for another action it implies, iam:PassRole), else the call's own; the resource or ""."""
    message = str(exc.response.get("Error", {}).get("Message") or "")
    found = _DENIED_WHAT.search(message)
    if found is None:
        return iam_action(exc), ""
    return found["action"], (found["resource"] or "").rstrip(".,;")


def translate(exc: BaseException, *, service: str | None = None) -> BaseException:
    """The typed error for an AWS ClientError; anything else (and unknown codes) unchanged.

    Callers ``raise translate(exc) from exc``; code that expects a specific code
    calls an adapter of this room before it gets here.
    """
    original: BaseException = exc
    if not isinstance(exc, ClientError):
        return original
    code = error_code(exc)
    message = exc.response.get("Error", {}).get("Message") or code
    if code in ACCESS_DENIED_CODES:
        action, resource = denied_what(exc)
        return AccessDenied(
            f"AWS denied {action} ({code}: {message}); "
            + (f"grant sts:AssumeRole on {resource} to the worker's own identity, and name that identity in the "
               "role's trust policy" if action == "sts:AssumeRole"
               else f"grant {action} to the role the pipeline runs as"),
            service=service, said=f"{code}: {message}",
            **({} if code in IDENTITY_CODES else {"action": action, "resource": resource}),
        )
    if is_transient_aws(exc):
        tried = attempts(exc)
        return AwsUnavailable(
            f"{exc.operation_name}: {code} (transient; still failing after {tried} attempt{'s' * (tried != 1)})",
            service=service,
        )
    if code in NOT_FOUND_CODES:
        return NotFound(
            f"{exc.operation_name}: {NOT_FOUND_CODES[code]} not found ({code}: {message}); "
            "create it or fix the name in the service config",
            service=service,
        )
    return original
