"""The pipeline's exception tree.

    PipelineError
    ├── ConfigError          bad service YAML / template: fix the file
    ├── BuildError           git or docker build failed: fix the code
    ├── PushError            registry refused the image
    ├── DeployError          AWS said no, or the release did not become healthy
    │   ├── AccessDenied     the caller lacks an IAM permission: grant it
    │   ├── NotFound         an AWS resource the release needs does not exist
    │   ├── StrategyMismatch the live service cannot do the configured strategy
    │   ├── VerifyFailed     a check on green failed (HTTP, target health, alarm)
    │   ├── RolledBack       the release was rolled back; production is on blue
    │   ├── RollbackFailed   the rollback could not finish; production is left split
    │   └── ApprovalRejected a person rejected or did not approve in time
    └── TransientError       throttling, 5xx, resets: retrying may succeed

Every error carries the service, revision and deployment id it concerns, so a
failed run's message is enough for a person to act on. AWS errors become these
types in one place, ``translate``, by their error code, never by message text.
"""

from __future__ import annotations

from typing import Any

from botocore.exceptions import ClientError

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


def is_transient_aws(exc: ClientError) -> bool:
    return error_code(exc) in TRANSIENT_AWS_CODES or http_status(exc) >= 500


def iam_action(exc: ClientError) -> str:
    """``ecs:CreateTaskSet``: the permission a denied call needs (AwsClients notes the prefix)."""
    prefix = str(exc.response.get("Error", {}).get("IamPrefix") or "")
    return f"{prefix}:{exc.operation_name}" if prefix else exc.operation_name


class PipelineError(Exception):
    def __init__(
        self,
        message: str,
        *,
        service: str | None = None,
        revision: str | None = None,
        deployment_id: str | None = None,
    ) -> None:
        super().__init__(message)
        self.message = message
        self.service = service
        self.revision = revision
        self.deployment_id = deployment_id

    def __str__(self) -> str:
        where = ", ".join(
            f"{k}={v}"
            for k, v in (
                ("service", self.service),
                ("revision", self.revision),
                ("deployment", self.deployment_id),
            )
            if v
        )
        return f"{self.message} [{where}]" if where else self.message

    def __reduce__(self) -> tuple[Any, ...]:
        return (_rebuild, (type(self), self.message, self.service, self.revision, self.deployment_id))


def _rebuild(
    cls: type[PipelineError], message: str, service: str | None, revision: str | None, dep: str | None
) -> PipelineError:
    return cls(message, service=service, revision=revision, deployment_id=dep)


class ConfigError(PipelineError):
    pass


class BuildError(PipelineError):
    pass


class PushError(PipelineError):
    pass


class DeployError(PipelineError):
    pass


class StrategyMismatch(DeployError):
    pass


class VerifyFailed(DeployError):
    pass


class RolledBack(DeployError):
    pass


class ApprovalRejected(DeployError):
    pass


class TransientError(PipelineError):
    pass


class AccessDenied(DeployError):
    pass


class NotFound(DeployError):
    pass


def translate(exc: BaseException, *, service: str | None = None) -> BaseException:
    """The typed error for an AWS ClientError; anything else (and unknown codes) unchanged.

    Callers ``raise translate(exc) from exc``; code that expects a specific code
    catches the ClientError before it gets here.
    """
    original: BaseException = exc
    if not isinstance(exc, ClientError):
        return original
    code = error_code(exc)
    message = exc.response.get("Error", {}).get("Message") or code
    if code in ACCESS_DENIED_CODES:
        action = iam_action(exc)
        return AccessDenied(
            f"AWS denied {action} ({code}: {message}); grant {action} to the role the pipeline runs as",
            service=service,
        )
    if is_transient_aws(exc):
        return TransientError(f"{exc.operation_name}: {code} (transient; retried)", service=service)
    if code in NOT_FOUND_CODES:
        return NotFound(
            f"{exc.operation_name}: {NOT_FOUND_CODES[code]} not found ({code}: {message}); "
            "create it or fix the name in the service config",
            service=service,
        )
    return original

class RollbackFailed(DeployError):
    """Production is left split; ``interrupted_by`` is what the rollback was for (a cancel, a failure)."""

    interrupted_by: BaseException | None = None


def reason_of(exc: BaseException) -> str:
    """An error's words for a person: a pipeline error's message, else its type and text."""
    return getattr(exc, "message", None) or f"{type(exc).__name__}: {exc}".rstrip(": ")
