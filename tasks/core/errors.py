"""The pipeline's exception tree.

    PipelineError
    ├── ConfigError          bad service YAML / template: fix the file
    ├── BuildError           git or docker build failed: fix the code
    ├── PushError            registry refused the image
    ├── DeployError          AWS said no, or the release did not become healthy
    │   ├── AccessDenied     the caller lacks an IAM permission: grant it
    │   ├── NotFound         an AWS resource the release needs does not exist
    │   ├── Conflict         another deployment holds what this release needs
    │   ├── StrategyMismatch the live service cannot do the configured strategy
    │   ├── VerifyFailed     a check on green failed (HTTP, target health, alarm)
    │   ├── RolledBack       the release was rolled back; production is on blue
    │   ├── RollbackFailed   the rollback could not finish; production is left split
    │   └── ApprovalRejected a person rejected or did not approve in time
    └── TransientError       throttling, 5xx, resets: retrying may succeed
        └── AwsUnavailable   AWS kept failing through every attempt of the call

Every error carries the service, revision and deployment id it concerns, so a
failed run's message is enough for a person to act on. AWS error codes are
read in ``tasks/aws`` only: its adapters and ``tasks.aws.errors.translate``
turn them into these types; nothing here knows a code. Which of these a stage
repeats is decided in ``tasks.aws.retry``.
"""

from __future__ import annotations

from typing import Any


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
    """``action`` and ``resource``: what AWS refused, as its answer named them ("" when it did not);
    ``said``: AWS's own words (its code and message)."""

    def __init__(self, message: str, *, action: str = "", resource: str = "", said: str = "", **where: Any) -> None:
        super().__init__(message, **where)
        self.action, self.resource, self.said = action, resource, said

    def __reduce__(self) -> tuple[Any, ...]:
        return (_rebuild_denied, (self.message, self.action, self.resource, self.said, self.service, self.revision,
                                  self.deployment_id))


def _rebuild_denied(message: str, action: str, resource: str, said: str, service: str | None,
                    revision: str | None, dep: str | None) -> AccessDenied:
    return AccessDenied(message, action=action, resource=resource, said=said, service=service, revision=revision,
                        deployment_id=dep)


class NotFound(DeployError):
    pass


class Conflict(DeployError):
    pass


class AwsUnavailable(TransientError):
    """Throttling or 5xx that outlasted botocore's attempts: a later run may succeed, a stage repeat not."""


class RollbackFailed(DeployError):
    """Production is left split; ``interrupted_by`` is what the rollback was for (a cancel, a failure)."""

    interrupted_by: BaseException | None = None


def reason_of(exc: BaseException) -> str:
    """An error's words for a person: a pipeline error's message, else its type and text."""
    return getattr(exc, "message", None) or f"{type(exc).__name__}: {exc}".rstrip(": ")
