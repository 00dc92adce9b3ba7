"""ECR: the repository an image goes to, what is already in it, and how to log in.

AWS errors are told apart by ``exc.response["Error"]["Code"]``; codes this
module does not expect propagate unchanged so ``tasks.retry`` can judge them.
"""

from __future__ import annotations

import base64
import binascii
from datetime import datetime
from typing import Any

from botocore.exceptions import ClientError
from pydantic import BaseModel, ConfigDict, SecretStr

from tasks.errors import PushError

EcrClient = Any  # a boto3 "ecr" client from tasks.aws.AwsClients.get("ecr")


class RegistryAuth(BaseModel):
    """Registry credentials; the password never appears in repr, str or logs."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    registry: str
    username: str
    password: SecretStr
    expires_at: datetime | None = None

    def auth_config(self) -> dict[str, str]:
        """The ``auth_config`` the Docker SDK takes; hand it to Docker only."""
        return {
            "username": self.username,
            "password": self.password.get_secret_value(),
            "serveraddress": self.registry,
        }


def _code(exc: ClientError) -> str:
    return str(exc.response.get("Error", {}).get("Code", ""))


def ensure_repository(ecr: EcrClient, name: str) -> str:
    """The repository's URI, creating it (scan on push, mutable tags) when it is missing."""
    try:
        found = ecr.describe_repositories(repositoryNames=[name])
        return str(found["repositories"][0]["repositoryUri"])
    except ClientError as exc:
        if _code(exc) != "RepositoryNotFoundException":
            raise
    try:
        created = ecr.create_repository(
            repositoryName=name,
            imageScanningConfiguration={"scanOnPush": True},
            imageTagMutability="MUTABLE",
        )
    except ClientError as exc:
        if _code(exc) != "RepositoryAlreadyExistsException":
            raise
        # created by a concurrent run between our describe and create
        found = ecr.describe_repositories(repositoryNames=[name])
        return str(found["repositories"][0]["repositoryUri"])
    return str(created["repository"]["repositoryUri"])


def find_image_digest(ecr: EcrClient, repository: str, tag: str) -> str | None:
    """Digest of REPOSITORY:TAG in ECR, or None when no image has that tag."""
    try:
        found = ecr.describe_images(repositoryName=repository, imageIds=[{"imageTag": tag}])
    except ClientError as exc:
        if _code(exc) == "ImageNotFoundException":
            return None
        raise
    details = found.get("imageDetails") or []
    return str(details[0]["imageDigest"]) if details else None


def _registry_host(endpoint: str) -> str:
    host = endpoint.split("://", 1)[-1]
    return host.split("/", 1)[0]


def registry_auth(ecr: EcrClient) -> RegistryAuth:
    """Docker login for the account's registry, from ECR's authorization token."""
    data = ecr.get_authorization_token()["authorizationData"]
    if not data:
        raise PushError("ECR returned no authorization data; check the IAM policy for ecr:*")
    entry = data[0]
    try:
        decoded = base64.b64decode(entry["authorizationToken"], validate=True).decode()
    except (binascii.Error, UnicodeDecodeError) as exc:
        raise PushError("ECR returned an authorization token that is not base64 user:pass") from exc
    username, sep, password = decoded.partition(":")
    if not sep:
        raise PushError("ECR returned an authorization token without a user:password pair")
    return RegistryAuth(
        registry=_registry_host(str(entry["proxyEndpoint"])),
        username=username,
        password=SecretStr(password),
        expires_at=entry.get("expiresAt"),
    )
