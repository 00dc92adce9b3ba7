"""The image a buildspec pushed itself: taken from its imagedefinitions.json, checked in ECR, pinned.

CodePipeline's ECS deploy action reads ``[{"name": container, "imageUri": ...}]``;
the pipeline reads the same file. The image must be in the service's ECR
repository; it is deployed by digest, and tagged with the full commit SHA (the
tag the build stage looks for) so a rerun of the commit skips the build. The tag
is ECR's own retag (the same manifest put under a new tag): the image the build
made never enters the pipeline's Docker engine.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from tasks.aws import ecr
from tasks.aws.clients import AwsClients
from tasks.build import image
from tasks.config.models import ServiceConfig
from tasks.core.errors import BuildError

Log = Callable[[str], None]


def image_uri_for(cfg: ServiceConfig, definitions: list[dict[str, Any]]) -> str:
    """The imageUri of the service's container; BuildError naming what the file holds otherwise."""
    for entry in definitions:
        if entry.get("name") == cfg.ecs.container and isinstance(entry.get("imageUri"), str):
            return str(entry["imageUri"])
    names = ", ".join(str(e.get("name")) for e in definitions) or "none"
    raise BuildError(
        f"imagedefinitions.json has no imageUri for container {cfg.ecs.container} (it names: {names}); "
        "write the entry for ecs.container in post_build", service=cfg.name,
    )


def adopt_image(cfg: ServiceConfig, clients: AwsClients, sha: str, uri: str,
                definitions: list[dict[str, Any]], log: Log, detail: Log | None = None) -> str:
    """``repo@digest`` of the image imagedefinitions.json names, after checking it is in ECR."""
    named = image_uri_for(cfg, definitions)
    name, tag, digest = ecr.split_image(named)
    repository = uri.split("@", 1)[0]
    if name != repository:
        # Exactly the service's own repository (registry host and path): a name that merely ends like it
        # is another registry, which would be handed the ECR password for a pull.
        raise BuildError(
            f"imagedefinitions.json: imageUri {named} is not in the service's ECR repository {repository}; "
            "push the image there and name it by that URI", service=cfg.name,
        )
    ecr_client = clients.get("ecr")
    if digest:
        found = digest if ecr.digest_exists(ecr_client, cfg.ecr.repository, digest) else None
    else:
        found = ecr.find_image_digest(ecr_client, cfg.ecr.repository, tag or "latest")
    if not found:
        raise BuildError(
            f"imagedefinitions.json names {named}, which is not in ECR; push it in post_build before "
            "writing the file", service=cfg.name,
        )
    ref = image.image_with_digest(repository, found)
    log(f"the buildspec pushed {named}: deploying {ref}")
    if tag != sha:
        ecr.tag_image(ecr_client, cfg.ecr.repository, found, sha)
        log(f"tagged {repository}@{found} {sha} in ECR")
    return ref
