"""ECR answers that match the real registry at SANDBOX_REGISTRY.

moto does not speak the registry protocol, so repository URIs point at the
local OCI registry and image queries ask that registry over its HTTP API v2.
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
import secrets
import threading
import urllib.error
import urllib.request
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from moto.ecr.models import Repository

from .world import ACCOUNT, ecr

MANIFEST_TYPES = (
    "application/vnd.docker.distribution.manifest.v2+json, "
    "application/vnd.oci.image.manifest.v1+json, "
    "application/vnd.docker.distribution.manifest.list.v2+json, "
    "application/vnd.oci.image.index.v1+json"
)


class ApiError(Exception):
    """An AWS error answered by a handler of the middleware."""

    def __init__(self, code: str, message: str, status: int = 400) -> None:
        super().__init__(message)
        self.code, self.message, self.status = code, message, status


def registry() -> str:
    return os.environ.get("SANDBOX_REGISTRY", "127.0.0.1:5000")


_orig_repo_init = Repository.__init__


def _repo_init(self: Repository, *args: Any, **kwargs: Any) -> None:
    _orig_repo_init(self, *args, **kwargs)
    self.uri = f"{registry()}/{self.name}"


def install_patches() -> None:
    Repository.__init__ = _repo_init  # type: ignore[method-assign]


def _http(method: str, path: str, body: bytes | None = None,
          content_type: str | None = None) -> tuple[int, dict[str, str], bytes]:
    headers = {"Accept": MANIFEST_TYPES, **({"Content-Type": content_type} if content_type else {})}
    req = urllib.request.Request(f"http://{registry()}{path}", method=method, data=body, headers=headers)
    try:
        with urllib.request.urlopen(req, timeout=5) as resp:
            return resp.status, dict(resp.headers), resp.read()
    except urllib.error.HTTPError as exc:
        return exc.code, dict(exc.headers), exc.read()
    except OSError as exc:
        raise ApiError("ServerException", f"registry {registry()} unreachable: {exc}", 500) from exc


def _repo(params: dict[str, Any]) -> Any:
    name = params.get("repositoryName", "")
    repo = ecr().repositories.get(name)
    if repo is None:
        raise ApiError("RepositoryNotFoundException",
                       f"The repository with name '{name}' does not exist in the registry with id '{ACCOUNT}'")
    return repo


def _tags(name: str) -> list[str]:
    status, _, body = _http("GET", f"/v2/{name}/tags/list")
    if status != 200:
        return []
    return list(json.loads(body or b"{}").get("tags") or [])


def _manifest(name: str, ref: str) -> tuple[str, dict[str, Any], str] | None:
    status, headers, body = _http("GET", f"/v2/{name}/manifests/{ref}")
    if status != 200:
        return None
    lower = {k.lower(): v for k, v in headers.items()}
    return lower.get("docker-content-digest", ""), json.loads(body or b"{}"), body.decode()


def _not_found(name: str, image_id: dict[str, Any]) -> ApiError:
    return ApiError("ImageNotFoundException",
                    f"The image with imageId {{imageDigest:'{image_id.get('imageDigest', 'null')}', "
                    f"imageTag:'{image_id.get('imageTag', 'null')}'}} does not exist within the repository "
                    f"with name '{name}' in the registry with id '{ACCOUNT}'")


def _images(name: str, image_ids: list[dict[str, Any]] | None) -> list[dict[str, Any]]:
    """Digest -> details of the images asked for (all, when no ids are given)."""
    tags = _tags(name)
    by_digest: dict[str, dict[str, Any]] = {}
    found: tuple[str, dict[str, Any], str] | None
    for tag in tags:
        found = _manifest(name, tag)
        if found is None:
            continue
        digest, manifest, raw = found
        by_digest.setdefault(digest, _detail(name, digest, manifest, raw))["imageTags"].append(tag)
    if not image_ids:
        return list(by_digest.values())
    out: list[dict[str, Any]] = []
    for image_id in image_ids:
        item: dict[str, Any] | None
        if image_id.get("imageDigest"):
            item = by_digest.get(image_id["imageDigest"])
            if item is None:
                found = _manifest(name, image_id["imageDigest"])
                item = _detail(name, image_id["imageDigest"], found[1], found[2]) if found else None
        else:
            item = next((i for i in by_digest.values() if image_id.get("imageTag") in i["imageTags"]), None)
        if item is None:
            raise _not_found(name, image_id)
        if item not in out:
            out.append(item)
    return out


_FIRST_SEEN: dict[tuple[str, str], float] = {}
_FIRST_SEEN_LOCK = threading.Lock()


def pushed_at(name: str, digest: str) -> float:
    """When the manifest was pushed: the registry's own record of it (its revision link's mtime),
    else when this endpoint first saw it; stable across calls either way."""
    storage = os.environ.get("SANDBOX_REGISTRY_STORAGE")
    if storage and ":" in digest:
        algo, hexdigest = digest.split(":", 1)
        link = (Path(storage) / "docker/registry/v2/repositories" / name / "_manifests/revisions"
                / algo / hexdigest / "link")
        try:
            return link.stat().st_mtime
        except OSError:
            pass
    with _FIRST_SEEN_LOCK:
        return _FIRST_SEEN.setdefault((name, digest), datetime.now(UTC).timestamp())


def _detail(name: str, digest: str, manifest: dict[str, Any], raw: str) -> dict[str, Any]:
    size = sum(int(layer.get("size", 0)) for layer in manifest.get("layers") or [])
    return {
        "registryId": ACCOUNT, "repositoryName": name, "imageDigest": digest, "imageTags": [],
        "imageSizeInBytes": size, "imagePushedAt": pushed_at(name, digest),
        "imageManifestMediaType": manifest.get("mediaType", "application/vnd.docker.distribution.manifest.v2+json"),
        "_manifest": raw,
    }


def describe_images(params: dict[str, Any]) -> dict[str, Any]:
    repo = _repo(params)
    images = _images(repo.name, params.get("imageIds"))
    details = []
    for img in images:
        d = {k: v for k, v in img.items() if not k.startswith("_")}
        if not d["imageTags"]:
            del d["imageTags"]
        details.append(d)
    return {"imageDetails": details}


def list_images(params: dict[str, Any]) -> dict[str, Any]:
    repo = _repo(params)
    ids = [{"imageDigest": i["imageDigest"], "imageTag": t}
           for i in _images(repo.name, None) for t in i["imageTags"]]
    return {"imageIds": ids}


def batch_get_image(params: dict[str, Any]) -> dict[str, Any]:
    repo = _repo(params)
    images, failures = [], []
    for image_id in params.get("imageIds") or []:
        try:
            img = _images(repo.name, [image_id])[0]
        except ApiError:
            failures.append({"imageId": image_id, "failureCode": "ImageNotFound",
                             "failureReason": "Requested image not found"})
            continue
        images.append({"registryId": ACCOUNT, "repositoryName": repo.name,
                       "imageId": {"imageDigest": img["imageDigest"], **({"imageTag": image_id["imageTag"]}
                                   if image_id.get("imageTag") else {})},
                       "imageManifest": img["_manifest"],
                       "imageManifestMediaType": img["imageManifestMediaType"]})
    return {"images": images, "failures": failures}


def put_image(params: dict[str, Any]) -> dict[str, Any]:
    """PutImage: the manifest stored under imageTag, as ECR does for a retag (BatchGetImage, then PutImage).

    ECR's API reference: ImageAlreadyExistsException "The specified image has already been pushed,
    and there were no changes to the manifest or image tag after the last push"; ImageDigestDoesNotMatch
    when imageDigest is given and is not the manifest's; the layers must already be in the repository
    (LayersNotFoundException): the registry checks that itself.
    """
    repo = _repo(params)
    raw = str(params.get("imageManifest") or "")
    tag = params.get("imageTag")
    try:
        manifest = json.loads(raw)
    except ValueError:
        raise ApiError("InvalidParameterException", "Invalid parameter at 'imageManifest' failed to satisfy "
                       "constraint: 'Invalid JSON syntax'") from None
    media = params.get("imageManifestMediaType") or manifest.get("mediaType") or \
        "application/vnd.docker.distribution.manifest.v2+json"
    digest = "sha256:" + hashlib.sha256(raw.encode()).hexdigest()
    if params.get("imageDigest") and params["imageDigest"] != digest:
        raise ApiError("ImageDigestDoesNotMatchException", f"The specified image digest {params['imageDigest']} "
                       f"does not match the digest that Amazon ECR calculated for the image {digest}")
    if tag:
        current = _manifest(repo.name, tag)
        if current is not None and current[0] == digest:
            raise ApiError("ImageAlreadyExistsException", f"Image with digest '{digest}' and tag '{tag}' already "
                           f"exists in the repository with name '{repo.name}' in registry with id '{ACCOUNT}'")
    status, _, body = _http("PUT", f"/v2/{repo.name}/manifests/{tag or digest}", raw.encode(), media)
    if status == 400 and b"BLOB_UNKNOWN" in body.upper():
        raise ApiError("LayersNotFoundException", "The image layers were not found in the repository")
    if status not in (200, 201):
        raise ApiError("ServerException", f"registry {registry()} refused the manifest: HTTP {status}", 500)
    return {"image": {"registryId": ACCOUNT, "repositoryName": repo.name,
                      "imageId": {"imageDigest": digest, **({"imageTag": tag} if tag else {})},
                      "imageManifest": raw, "imageManifestMediaType": media}}


def get_authorization_token(params: dict[str, Any]) -> dict[str, Any]:
    token = base64.b64encode(f"AWS:{secrets.token_urlsafe(24)}".encode()).decode()
    expires = (datetime.now(UTC) + timedelta(hours=12)).timestamp()
    return {"authorizationData": [{"authorizationToken": token, "expiresAt": expires,
                                   "proxyEndpoint": f"http://{registry()}"}]}


HANDLERS = {
    "DescribeImages": describe_images,
    "ListImages": list_images,
    "BatchGetImage": batch_get_image,
    "PutImage": put_image,
    "GetAuthorizationToken": get_authorization_token,
}
