"""ECR: the repository an image goes to, what is already in it, and how to log in.

AWS errors are told apart by ``tasks.aws.errors.error_code``; codes this
module does not expect propagate unchanged so ``tasks.aws.errors.translate`` can type them.
"""

from __future__ import annotations

import base64
import binascii
import re
from datetime import datetime
from typing import Any

from botocore.exceptions import ClientError
from pydantic import BaseModel, ConfigDict, SecretStr

from tasks.aws.errors import error_code
from tasks.core.errors import NotFound, PushError

_FULL_SHA = re.compile(r"^[0-9a-f]{40}$")

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


def ensure_repository(ecr: EcrClient, name: str) -> str:
    """The repository's URI, creating it (scan on push, mutable tags) when it is missing."""
    try:
        found = ecr.describe_repositories(repositoryNames=[name])
        return str(found["repositories"][0]["repositoryUri"])
    except ClientError as exc:
        if error_code(exc) != "RepositoryNotFoundException":
            raise
    try:
        created = ecr.create_repository(
            repositoryName=name,
            imageScanningConfiguration={"scanOnPush": True},
            imageTagMutability="MUTABLE",
        )
    except ClientError as exc:
        if error_code(exc) != "RepositoryAlreadyExistsException":
            raise
        # created by a concurrent run between our describe and create
        found = ecr.describe_repositories(repositoryNames=[name])
        return str(found["repositories"][0]["repositoryUri"])
    return str(created["repository"]["repositoryUri"])


MANIFEST_MEDIA_TYPES = ("application/vnd.docker.distribution.manifest.v2+json",
                        "application/vnd.oci.image.manifest.v1+json",
                        "application/vnd.docker.distribution.manifest.list.v2+json",
                        "application/vnd.oci.image.index.v1+json")


def find_image_digest(ecr: EcrClient, repository: str, tag: str) -> str | None:
    """Digest of REPOSITORY:TAG in ECR, or None when no image has that tag."""
    try:
        found = ecr.describe_images(repositoryName=repository, imageIds=[{"imageTag": tag}])
    except ClientError as exc:
        if error_code(exc) == "ImageNotFoundException":
            return None
        raise
    details = found.get("imageDetails") or []
    return str(details[0]["imageDigest"]) if details else None


def find_image_digest_for_plan(ecr: EcrClient, repository: str, tag: str) -> str | None:
    """``find_image_digest``, and NotFound (naming the AWS code) when the repository itself is missing.

    A dry run reports a missing repository instead of failing: the push stage would create it.
    """
    try:
        return find_image_digest(ecr, repository, tag)
    except ClientError as exc:
        code = error_code(exc)
        if code != "RepositoryNotFoundException":
            raise
        raise NotFound(code) from exc


def tag_image(ecr: EcrClient, repository: str, digest: str, tag: str) -> None:
    """REPOSITORY@DIGEST tagged TAG as ECR documents a retag: BatchGetImage, then PutImage of the same manifest
    (byte for byte, so the digest stays). Nothing is pulled or pushed; a tag that already names it is fine."""
    got = ecr.batch_get_image(repositoryName=repository, imageIds=[{"imageDigest": digest}],
                              acceptedMediaTypes=list(MANIFEST_MEDIA_TYPES))
    images = got.get("images") or []
    if not images:
        raise PushError(f"{repository}@{digest} is not in ECR: nothing to tag {tag}")
    image = images[0]
    try:
        ecr.put_image(repositoryName=repository, imageManifest=image["imageManifest"], imageTag=tag,
                      imageDigest=digest,
                      **({"imageManifestMediaType": image["imageManifestMediaType"]}
                         if image.get("imageManifestMediaType") else {}))
    except ClientError as exc:
        if error_code(exc) != "ImageAlreadyExistsException":
            raise


def digest_exists(ecr: EcrClient, repository: str, digest: str) -> bool:
    """Whether REPOSITORY holds an image with DIGEST."""
    try:
        ecr.describe_images(repositoryName=repository, imageIds=[{"imageDigest": digest}])
    except ClientError as exc:
        if error_code(exc) == "ImageNotFoundException":
            return False
        raise
    return True


def split_image(image: str) -> tuple[str, str | None, str | None]:
    """(name, tag, digest) of an image reference; a registry's ``host:port`` is not a tag."""
    name, _, digest = image.partition("@")
    slash = name.rfind("/")
    colon = name.rfind(":")
    tag = None
    if colon > slash:
        name, tag = name[:colon], name[colon + 1:]
    return name, tag, digest or None


def sha_of_image(ecr: EcrClient, repository: str, image: str | None) -> str | None:
    """The git SHA an image was built from, decided by the registry, not by a tag someone copied.

    By digest: the 40-hex tag ECR holds for that digest in our repository. By tag: the tag
    itself when it is a full SHA in our repository. An image from elsewhere: None (unknown).
    """
    if not image:
        return None
    name, tag, digest = split_image(image)
    if not (name == repository or name.endswith("/" + repository)):
        return None
    if digest is None:
        return tag if tag and _FULL_SHA.match(tag) else None
    try:
        found = ecr.describe_images(repositoryName=repository, imageIds=[{"imageDigest": digest}])
    except ClientError as exc:
        if error_code(exc) in ("ImageNotFoundException", "RepositoryNotFoundException"):
            return None
        raise
    tags = [t for d in found.get("imageDetails", []) for t in d.get("imageTags", [])]
    shas = [t for t in tags if _FULL_SHA.match(t)]
    return shas[0] if shas else None


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
