"""The pipeline's exception tree.

    PipelineError
    ├── ConfigError          bad service YAML / template: fix the file
    ├── BuildError           git or docker build failed: fix the code
    ├── PushError            registry refused the image
    ├── DeployError          AWS said no, or the release did not become healthy
    │   ├── StrategyMismatch the live service cannot do the configured strategy
    │   ├── VerifyFailed     a check on green failed (HTTP, target health, alarm)
    │   ├── RolledBack       the release was rolled back; production is on blue
    │   └── ApprovalRejected a person rejected or did not approve in time
    └── TransientError       throttling, 5xx, resets: retrying may succeed

Every error carries the service, revision and deployment id it concerns, so a
failed run's message is enough for a person to act on.
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
