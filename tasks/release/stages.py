"""A release in progress and the stages before deployment: detect, build, push, register.

Each stage checks the real state first (live SHA, image in the registry,
identical task definition revision), so a rerun resumes instead of repeating.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from typing import Any

from prefect import get_run_logger
from prefect.runtime import flow_run, task_run

from tasks.aws import ecr
from tasks.aws.clients import AwsClients, docker_client
from tasks.aws.ecs import LiveRelease, describe_latest, describe_release, describe_service, live_task_definition
from tasks.aws.retry import stage
from tasks.build import boxed_image, buildspec_runner, image, pushed_image, source
from tasks.config.models import ServiceConfig
from tasks.config.taskdef import diff_task_definitions, load_template, render_task_definition, uses_account


@dataclass(frozen=True)
class Target:
    """The commit to release, what production runs now, and how the two relate in git."""

    sha: str
    live: LiveRelease
    ancestry: source.Ancestry = "unknown"

    @property
    def changed(self) -> bool:
        return self.live.sha != self.sha

    @property
    def moves_back(self) -> bool:
        """Not a descendant of the live commit: older, or on a diverged line (a force-push)."""
        return self.changed and self.ancestry in ("older", "diverged")


@dataclass(frozen=True)
class StageResult:
    """A stage's output and whether it did the work (False: it found it done already).

    ``pushed``: the build pushed the image itself (a buildspec's post_build); ``notes`` go to the summary.
    """

    value: str
    done: bool
    pushed: bool = False
    notes: tuple[str, ...] = ()


def live_release(cfg: ServiceConfig, clients: AwsClients, service: dict[str, Any] | None = None) -> LiveRelease:
    """What production runs; ``service``: the service as this run just described it (no second look)."""
    ecs = clients.get("ecs")
    svc = service if service is not None else describe_service(ecs, cfg.ecs.cluster, cfg.ecs.service)
    return release_of(cfg, clients, live_task_definition(ecs, svc))


def release_of(cfg: ServiceConfig, clients: AwsClients, task_definition: str | None) -> LiveRelease:
    """A task definition's image and the commit it was built from."""
    found = describe_release(clients.get("ecs"), task_definition, cfg.ecs.container)
    # The image's digest decides what runs: a task definition tag can be copied by another tool.
    sha = ecr.sha_of_image(clients.get("ecr"), cfg.ecr.repository, found.image)
    return LiveRelease(found.task_definition, sha, found.image, found.family_latest)


def live_sha(cfg: ServiceConfig, clients: AwsClients) -> str | None:
    """The git SHA production runs, for polling."""
    return live_release(cfg, clients).sha


@stage("detect change", "detect change {cfg.name}")
def detect_change(
    cfg: ServiceConfig, clients: AwsClients, sha: str | None, service: dict[str, Any] | None = None
) -> Target:
    """Resolve the commit to release (in the branch's history only), read the live one, compare them."""
    cache = clients.settings.cache / "git"
    full = source.resolve_commit(cfg.repo_location, cfg.source.branch, sha, cache_dir=cache)
    live = live_release(cfg, clients, service)
    ancestry = source.commit_order(cfg.repo_location, live.sha, full, cache_dir=cache) if live.sha else "unknown"
    get_run_logger().info(
        "%s: %s resolves to %s; %s", cfg.name, sha or cfg.source.branch, full, order_words(full, live.sha, ancestry)
    )
    return Target(full, live, ancestry)


def order_words(target: str, live: str | None, ancestry: str) -> str:
    """Where production is against the commit to release, named on both sides: never a bare "(newer)"."""
    if not live:
        return "production runs no commit it can name (nothing live, or an image without a commit tag)"
    new, old = target[:7], live[:7]
    return f"production runs {live[:12]}, " + {
        "same": "the same commit",
        "newer": f"which is older than {new} ({new} descends from it)",
        "older": f"which is newer than {new} ({new} is in its history)",
        "diverged": f"which has diverged from {new} (neither descends from the other)",
        "missing": f"and {new} is not a commit of the repository",
    }.get(ancestry, f"and which of {new} and {old} is newer is unknown ({old} is not a full commit of the repository)")


def repository_uri(cfg: ServiceConfig, live: LiveRelease) -> str | None:
    """Our repository's URI when ECR just named the live image's SHA by its digest (so it exists)."""
    if not (live.image and live.sha):
        return None
    name, _, digest = ecr.split_image(live.image)
    return name if digest and name.endswith("/" + cfg.ecr.repository) else None


def image_in_ecr(cfg: ServiceConfig, clients: AwsClients, sha: str, uri: str | None = None) -> tuple[str, str | None]:
    """(repository URI, ``repo@digest`` of the SHA's image or None): the truth build and push check.

    ``uri``: the repository is known to exist (see ``repository_uri``): no DescribeRepositories.
    """
    ecr_client = clients.get("ecr")
    uri = uri or ecr.ensure_repository(ecr_client, cfg.ecr.repository)
    digest = ecr.find_image_digest(ecr_client, cfg.ecr.repository, sha)
    return uri, image.image_with_digest(uri, digest) if digest else None


@stage("build", "build {cfg.name}@{sha:.7}")
def build(
    cfg: ServiceConfig, clients: AwsClients, sha: str, force: bool = False, repository: str | None = None
) -> StageResult:
    """The buildspec (when set), then docker build at the SHA unless the buildspec pushed an image itself:
    in a build box (tasks/build/boxed_image.py), or by the worker's engine with ``build.runner: host-unsafe``.

    Skipped, buildspec included, when ECR already has the image for the SHA (unless FORCE).
    """
    log = get_run_logger()
    uri, found = image_in_ecr(cfg, clients, sha, repository)
    if found and not force:
        log.info("image for %s already in ECR: build skipped", sha[:7])
        return StageResult(found, done=False)
    tree = source.checkout(cfg.repo_location, sha, clients.settings.cache / "git")
    notes: tuple[str, ...] = ()
    spec = buildspec_runner.buildspec_for(cfg, tree, sha)
    if spec is not None:
        ran = buildspec_runner.run_buildspec(cfg, clients, spec, sha, tree, uri, log.info, detail=log.debug,
                                             tags=flow_run.tags or ())
        notes = tuple(ran.notes())
        if ran.image_definitions is not None:
            ref = pushed_image.adopt_image(cfg, clients, sha, uri, ran.image_definitions, log.info, log.debug)
            return StageResult(ref, done=True, pushed=True, notes=notes)
    docker_build = image.BuildSpec(
        context_dir=tree / cfg.build.context,
        dockerfile=cfg.build.dockerfile,
        tag=f"{uri}:{sha}",
        build_args={"ECS_PIPELINE_REVISION": sha, **cfg.build.args},  # what verify.revision_header compares
        labels=image.oci_labels(sha, cfg.source.repo, None),
        timeout_seconds=cfg.build.timeout_seconds,
    )
    engine = docker_client()
    if cfg.build.runner == "host-unsafe":
        buildspec_runner.refuse_host_build(cfg, clients, flow_run.tags or ())
        built = image.build_image(engine, docker_build, log.info, detail=log.debug)
    else:
        in_box = functools.partial(boxed_image.build_in_box, cfg, clients, engine, tree, docker_build, uri, log.info,
                                   log.debug)
        built = image.build_image(engine, docker_build, log.info, detail=log.debug, builder=in_box)
    return StageResult(built.tag, done=True, notes=notes)


@stage("push", "push {cfg.name}@{sha:.7}")
def push(cfg: ServiceConfig, clients: AwsClients, sha: str, built: StageResult, force: bool = False) -> StageResult:
    """Push to ECR and pin the image by digest; nothing to do when ECR has it (or the buildspec pushed it)."""
    log = get_run_logger()
    if built.pushed:
        log.info("image %s already pushed by the buildspec: push skipped", built.value)
        return StageResult(built.value, done=False)
    if not built.done:  # the build stage just found it in ECR (by digest): no second look
        log.info("image for %s already in ECR (found by the build stage): push skipped", sha[:7])
        return StageResult(built.value, done=False)
    # Built just now, after the build stage looked in ECR: pushing is idempotent, a second look is not needed.
    uri = built.value.rsplit(":", 1)[0]
    auth = ecr.registry_auth(clients.get("ecr"))
    digest = image.push_image(docker_client(), built.value, auth, log.info, detail=log.debug)
    ref = image.image_with_digest(uri, digest)
    log.info("pushed %s", ref)
    return StageResult(ref, done=True)


def render(cfg: ServiceConfig, image_ref: str, sha: str | None, clients: AwsClients | None = None) -> dict[str, Any]:
    """The RegisterTaskDefinition input this release would send (pure apart from reading the file).

    With ``clients``, ``<AWS_ACCOUNT_ID>`` is the caller's account (one STS call per run, and
    only when the template names it) and ``<AWS_REGION>`` the settings' region; without, both stay.
    """
    path = cfg.path(cfg.task_definition)
    template = load_template(path)
    return render_task_definition(
        template,
        image=image_ref,
        container=cfg.ecs.container,
        sha=sha,
        service=cfg.name,
        source=str(path),
        account=clients.account_id() if clients is not None and uses_account(template) else None,
        region=clients.settings.region if clients is not None else None,
    )


@stage("register task definition", "register {cfg.name}@{sha:.7}")
def register(
    cfg: ServiceConfig, clients: AwsClients, sha: str, image_ref: str, seen: dict[str, Any] | None = None,
    pinned: str | None = None,
) -> StageResult:
    """Register the rendered task definition; reuse the latest revision when identical.

    ``seen``: the family's latest revision as detect change read it, under the lock (a retry reads afresh).
    ``pinned``: a revision to put live as it is (a release manifest's), when it is of the service's family
    and runs exactly this image in the service's container; otherwise the rendered one, with a warning.
    """
    log = get_run_logger()
    desired = render(cfg, image_ref, sha, clients)
    ecs = clients.get("ecs")
    if pinned:
        found = ecs.describe_task_definition(taskDefinition=pinned)["taskDefinition"]
        image = next((c.get("image") for c in found.get("containerDefinitions") or []
                      if c.get("name") == cfg.ecs.container), None)
        if found.get("family") == desired["family"] and image == image_ref:
            log.info("%s runs %s: put live as it is", found["taskDefinitionArn"], image_ref)
            return StageResult(str(found["taskDefinitionArn"]), done=False)
        log.warning("%s is not of family %s running %s in container %s: registering the rendered task "
                    "definition instead", pinned, desired["family"], image_ref, cfg.ecs.container)
    fresh = seen is None or seen.get("family") != desired["family"] or task_run.run_count > 1
    latest = latest_task_definition(ecs, desired["family"]) if fresh else seen
    if latest is not None and not diff_task_definitions(latest, desired):
        arn = latest["taskDefinitionArn"]
        log.info("latest revision %s is identical: reused", arn)
        return StageResult(arn, done=False)
    arn = ecs.register_task_definition(**desired)["taskDefinition"]["taskDefinitionArn"]
    log.info("registered %s", arn)
    return StageResult(str(arn), done=True)


def latest_task_definition(ecs: Any, family: str) -> dict[str, Any] | None:
    """The family's newest ACTIVE revision with its tags, or None for a new family."""
    return describe_latest(ecs, family)
