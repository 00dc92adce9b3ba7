"""Going back to a release manifest, and how what AWS serves differs from one.

``restore_plan`` checks every listed digest in ECR before anything moves (``deploy --manifest``);
``check_restored`` says afterwards which service does not serve the manifest's digest and revision;
``manifest_drift`` is ``status``'s comparison with a service's newest manifest.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from tasks.aws import ecr
from tasks.aws.clients import AwsClients
from tasks.config.models import ServiceConfig
from tasks.core.errors import ConfigError, PipelineError
from tasks.release.manifest import Manifest, ServiceEntry, entry_of, short_revision

_DIGEST = re.compile(r"^sha256:[0-9a-f]{64}$")
_SHA = re.compile(r"^[0-9a-f]{40}$")


def restore_plan(manifest: Manifest, configs: Sequence[ServiceConfig], clients: AwsClients) -> dict[str, str]:
    """{service: commit} to release to put MANIFEST back; refuses (one error naming every problem) before any
    change when a service is unknown or its digest is no longer in ECR under the commit's tag."""
    by_name = {c.name: c for c in configs}
    plan: dict[str, str] = {}
    problems: list[str] = []
    for e in manifest.services:
        cfg = by_name.get(e.service)
        if cfg is None:
            problems.append(f"{e.service}: not a service in the deployments folder")
            continue
        if not e.commit or not _SHA.match(e.commit) or not e.digest or not _DIGEST.match(e.digest):
            problems.append(f"{e.service}: the manifest names no commit and digest to go back to "
                            f"(commit {e.commit or 'none'}, image {e.image or 'none'})")
            continue
        client = clients.for_service(cfg).get("ecr")
        repo = cfg.ecr.repository
        if not ecr.digest_exists(client, repo, e.digest):
            problems.append(f"{e.service}: image {e.digest} is no longer in ECR repository {repo}")
            continue
        tagged = ecr.find_image_digest(client, repo, e.commit)
        if tagged != e.digest:
            now = f"names {tagged}" if tagged else "names no image"
            problems.append(f"{e.service}: tag {e.commit[:12]} in ECR repository {repo} {now}, "
                            f"not the manifest's {e.digest}")
            continue
        plan[e.service] = e.commit
    if problems:
        raise ConfigError("cannot restore the manifest of run "
                          f"{manifest.run_id or '(none)'} at {manifest.created_at}; nothing was changed:\n  "
                          + "\n  ".join(problems))
    return plan


@dataclass(frozen=True)
class Difference:
    """A service not on the manifest's version. ``same_content``: only the revision number differs (the
    release registered the manifest's task definition anew: same image, same settings)."""

    service: str
    detail: str
    same_content: bool = False


# What ECS adds to a registered revision: not part of what the revision runs.
_REGISTERED = ("taskDefinitionArn", "revision", "status", "registeredAt", "registeredBy", "deregisteredAt",
               "requiresAttributes", "compatibilities")


def same_task_definition(ecs: Any, one: str | None, other: str | None) -> bool:
    """Whether two revisions run the same thing (everything but ECS's own bookkeeping; tags aside)."""
    if not one or not other:
        return False
    found = [{k: v for k, v in ecs.describe_task_definition(taskDefinition=arn)["taskDefinition"].items()
              if k not in _REGISTERED} for arn in (one, other)]
    return found[0] == found[1]


def compare_entry(manifest: Manifest, wanted: ServiceEntry, live: ServiceEntry) -> str | None:
    """How LIVE differs from the manifest's WANTED (task definition revision first, then digest); None: same."""
    parts = []
    if short_revision(live.task_definition) != short_revision(wanted.task_definition):
        parts.append(f"live {short_revision(live.task_definition)}, manifest {short_revision(wanted.task_definition)}")
    if live.digest != wanted.digest:
        parts.append(f"live image {(live.digest or 'none')[:19]}, manifest {(wanted.digest or 'none')[:19]}")
    if not parts:
        return None
    return f"differs from manifest of run {manifest.run_id or '(none)'} at {manifest.created_at}: " + "; ".join(parts)


def manifest_drift(newest: tuple[Manifest, ServiceEntry] | None, live: dict[str, Any],
                   in_flight: bool = False) -> dict[str, Any] | None:
    """operations.MANIFEST_DRIFT_SCHEMA: LIVE (status's sha, image, task_definition) against NEWEST, the
    service's newest manifest entry; None when no manifest names the service."""
    if newest is None:
        return None
    manifest, wanted = newest
    digest = ecr.split_image(live["image"])[2] if live.get("image") else None
    seen = ServiceEntry(service=wanted.service, commit=live.get("sha"), image=live.get("image"), digest=digest,
                        task_definition=live.get("task_definition"), strategy=wanted.strategy)
    detail = compare_entry(manifest, wanted, seen)
    if detail and in_flight:
        detail += "; a release is in flight"
    return {"run_id": manifest.run_id, "run_url": manifest.run_url, "created_at": manifest.created_at,
            "drifted": detail is not None, "detail": detail}


def check_restored(manifest: Manifest, configs: Sequence[ServiceConfig], clients: AwsClients) -> list[Difference]:
    """After a restore: each listed service whose live digest or revision is not the manifest's."""
    by_name = {c.name: c for c in configs}
    found = []
    for wanted in manifest.services:
        cfg = by_name.get(wanted.service)
        if cfg is None:
            continue
        try:
            live = entry_of(cfg, clients)
            detail = compare_entry(manifest, wanted, live)
            same = bool(detail) and live.digest == wanted.digest and same_task_definition(
                clients.for_service(cfg).get("ecs"), live.task_definition, wanted.task_definition)
        except PipelineError as exc:
            detail, same = f"could not be read: {exc}", False
        if detail:
            found.append(Difference(wanted.service, detail, same))
    return found
