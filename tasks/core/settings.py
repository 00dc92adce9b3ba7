"""The pipeline's one settings object, read from the environment once per flow run or CLI call.

Everything below the entry points receives it (through ``AwsClients.settings``)
instead of reading ``os.environ``; the pipeline knows no sandbox folder, only
the values the sandbox's env file sets.

    AWS_REGION / AWS_DEFAULT_REGION, AWS_ENDPOINT_URL, AWS_PROFILE, AWS_MAX_ATTEMPTS
    ECS_PIPELINE_DEPLOYMENTS     service YAML directory (default ./deployments)
    ECS_PIPELINE_CACHE           one cache: git mirrors and build checkouts (default ~/.cache/ecs-pipeline)
    ECS_PIPELINE_ARTIFACTS_DIR   CodePipeline hand-over files (default ./artifacts)
    ECS_PIPELINE_TIME_SCALE      divides the pipeline's own waits; honoured only on a loopback endpoint
    ECS_PIPELINE_LOCK_STALE_SECONDS  a dead release frees its service after this long (default 30)
    ECS_PIPELINE_BUILD_USER      the unprivileged user build boxes run as (default ecs-build)
    ECS_PIPELINE_BUILD_BOXES     where running build boxes keep their files (default /var/lib/ecs-pipeline/builds)
    ECS_PIPELINE_ALLOW_HOST_BUILDS   let triggered runs use build.runner: host-unsafe (default false)
    ECS_PIPELINE_{GITHUB,GITEA,GITLAB}_WEBHOOK_SECRET[_BLOCK]
                                 one webhook secret per sender (a value, or a Prefect Secret block's name);
                                 ECS_PIPELINE_WEBHOOK_SECRET[_BLOCK] is the GitHub one, as before
"""

from __future__ import annotations

import ipaddress
import os
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from pydantic import AliasChoices, Field, SecretStr, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

# Real accounts throttle Describe* calls under load; ten attempts with botocore's
# backoff ride out a busy minute. The sandbox answers what it cannot do with a
# non-retryable error, so this number never slows a permanent failure down.
DEFAULT_MAX_ATTEMPTS = 10

# The Prefect deployment that runs releases (`ecs-pipeline serve`, prefect.yaml): the default of every
# command that starts or finds deploy-service runs. Here, below Prefect, so naming it costs a command
# (its --help) no Prefect import.
DEPLOY_DEPLOYMENT = "deploy-service/deploy-service"


# What a buildspec's commands inherit from the worker (as a CodeBuild build gets its image's PATH):
# nothing else of the worker's environment, and never its AWS identity (keys, profile, credential
# files, container or web-identity credentials): a build gets AWS credentials only from build.role_arn.
BUILD_HOST_ENV = (
    "PATH", "HOME", "LANG", "LC_ALL", "TMPDIR", "DOCKER_HOST", "DOCKER_TLS_VERIFY", "DOCKER_CERT_PATH",
    "DOCKER_CONFIG", "AWS_ENDPOINT_URL",
)


def _build_host_env() -> dict[str, str]:
    return {name: value for name in BUILD_HOST_ENV if (value := os.environ.get(name))}


def _default_cache() -> Path:
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "ecs-pipeline"


def is_loopback_url(url: str | None) -> bool:
    """True for http://127.x.x.x, [::1] and localhost endpoints: the sandbox, never AWS."""
    if not url:
        return False
    host = (urlsplit(url if "://" in url else f"http://{url}").hostname or "").lower()
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


class Settings(BaseSettings):
    model_config = SettingsConfigDict(
        env_prefix="ECS_PIPELINE_", extra="ignore", frozen=True, populate_by_name=True
    )

    region: str = Field(
        default="us-east-1", min_length=1, validation_alias=AliasChoices("AWS_REGION", "AWS_DEFAULT_REGION")
    )
    endpoint_url: str | None = Field(
        default=None, validation_alias="AWS_ENDPOINT_URL", description="the sandbox's endpoint; None for AWS"
    )
    profile: str | None = Field(default=None, validation_alias="AWS_PROFILE")
    max_attempts: int = Field(
        default=DEFAULT_MAX_ATTEMPTS, ge=1, le=20, validation_alias="AWS_MAX_ATTEMPTS",
        description="calls in all, the first included",
    )
    connect_timeout: float = Field(default=5, gt=0)
    read_timeout: float = Field(default=30, gt=0)

    deployments: Path = Path("deployments")
    cache: Path = Field(default_factory=_default_cache)
    artifacts_dir: Path = Path("artifacts")
    time_scale: float = Field(default=1.0, gt=0)
    build_host_env: dict[str, str] = Field(
        default_factory=_build_host_env, repr=False, description="what buildspec commands inherit (BUILD_HOST_ENV)"
    )
    build_user: str = Field(
        default="ecs-build", pattern=r"^[a-z_][a-z0-9_-]{0,31}$",
        description="the unprivileged user build boxes run as (made, with subordinate ids, when missing)",
    )
    build_boxes: Path = Field(
        default=Path("/var/lib/ecs-pipeline/builds"),
        description="where build boxes live while they run (short: the engine limits its paths' length)",
    )
    allow_host_builds: bool = Field(
        default=False, description="let runs started by a push or a poll use build.runner: host-unsafe",
    )
    lock_stale_seconds: float = Field(
        default=30.0, ge=5, description="a release whose heartbeat is older than this has died: its service is freed"
    )

    # One secret per webhook sender, never shared: GitLab sends its token in clear,
    # so it must not be the key that signs GitHub's or Gitea's payloads.
    github_webhook_secret: SecretStr | None = Field(
        default=None,
        validation_alias=AliasChoices("ECS_PIPELINE_GITHUB_WEBHOOK_SECRET", "ECS_PIPELINE_WEBHOOK_SECRET"),
    )
    github_webhook_secret_block: str | None = Field(
        default=None,
        validation_alias=AliasChoices(
            "ECS_PIPELINE_GITHUB_WEBHOOK_SECRET_BLOCK", "ECS_PIPELINE_WEBHOOK_SECRET_BLOCK"
        ),
    )
    gitea_webhook_secret: SecretStr | None = None
    gitea_webhook_secret_block: str | None = None
    gitlab_webhook_secret: SecretStr | None = None
    gitlab_webhook_secret_block: str | None = None

    @field_validator(
        "endpoint_url",
        "profile",
        "github_webhook_secret",
        "github_webhook_secret_block",
        "gitea_webhook_secret",
        "gitea_webhook_secret_block",
        "gitlab_webhook_secret",
        "gitlab_webhook_secret_block",
        mode="before",
    )
    @classmethod
    def _empty_is_unset(cls, value: Any) -> Any:
        return value or None

    @field_validator("deployments", "cache", "artifacts_dir", "build_boxes")
    @classmethod
    def _absolute(cls, value: Path) -> Path:
        return value.expanduser().resolve()

    @property
    def sandbox(self) -> bool:
        """Whether the AWS endpoint is on this machine (a rehearsal, never a real account)."""
        return is_loopback_url(self.endpoint_url)

    @property
    def effective_time_scale(self) -> float:
        """The time scale, but 1 against real AWS: a rehearsal setting must not shorten a real bake."""
        return self.time_scale if self.sandbox else 1.0

    def scaled(self, seconds: float) -> float:
        return seconds / self.effective_time_scale

    def poll_cap(self) -> float:
        """Longest pause between two looks at an AWS wait: 5 s, shorter in a fast rehearsal."""
        return min(5.0, max(0.5, self.scaled(15)))

    def describe(self) -> str:
        """Where this process's AWS calls go, for a command's first line."""
        if self.endpoint_url:
            kind = "sandbox" if self.sandbox else "custom endpoint"
            return f"{self.endpoint_url} ({kind})"
        return f"AWS {self.region}" + (f" (profile {self.profile})" if self.profile else "")
