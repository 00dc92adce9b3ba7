"""Docker: build the image for a commit and push it, streaming what the daemon says.

Uses the SDK's low-level API so every build and push line reaches the caller's
log as it happens. A broken Dockerfile or failing RUN step is a BuildError that
quotes the daemon; a daemon timeout or dropped connection is a TransientError.
"""

from __future__ import annotations

import re
import threading
import time
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import docker
import docker.errors
import requests
from pydantic import BaseModel, ConfigDict, Field

from tasks.aws.ecr import RegistryAuth
from tasks.build.source import redact_url
from tasks.core.errors import BuildError, PushError, TransientError

Log = Callable[[str], None]
TAIL_LINES = 15
_DIGEST = re.compile(r"^sha256:[0-9a-f]{64}$")
_ANSI = re.compile(r"\x1b\[[0-9;]*[A-Za-z]")  # the daemon colours RUN steps' stderr
_PUSH_TRANSIENT = (
    "connection refused",
    "connection reset",
    "i/o timeout",
    "tls handshake timeout",
    "unexpected eof",
    "broken pipe",
    "toomanyrequests",
    "too many requests",
    "status: 5",
    "500 internal server error",
    "502 bad gateway",
    "503 service unavailable",
    "504 gateway timeout",
)


class BuildSpec(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")

    context_dir: Path
    dockerfile: str = "Dockerfile"
    tag: str = Field(min_length=1, description="full reference, repository:tag")
    build_args: dict[str, str] = Field(default_factory=dict)
    labels: dict[str, str] = Field(default_factory=dict)
    timeout_seconds: int = Field(default=900, ge=1)


class BuiltImage(BaseModel):
    model_config = ConfigDict(frozen=True)

    image_id: str
    tag: str


def oci_labels(sha: str, source_url: str, version: str | None = None) -> dict[str, str]:
    """The OCI annotations that tie an image to its commit (URL credentials removed)."""
    labels = {
        "org.opencontainers.image.revision": sha,
        "org.opencontainers.image.source": redact_url(source_url),
        "org.opencontainers.image.created": datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
    }
    if version:
        labels["org.opencontainers.image.version"] = version
    return labels


def _lines(chunks: Iterable[str]) -> Iterator[str]:
    """Whole, uncoloured lines from stream chunks that split and join lines arbitrarily."""
    pending = ""
    for chunk in chunks:
        pending += chunk
        *done, pending = pending.split("\n")
        for line in done:
            if text := _ANSI.sub("", line).rstrip():
                yield text
    if text := _ANSI.sub("", pending).rstrip():
        yield text


def _check_inputs(spec: BuildSpec) -> Path:
    context = spec.context_dir
    dockerfile = context / spec.dockerfile
    if not context.is_dir():
        raise BuildError(f"build context {context} does not exist; check build.context")
    if not dockerfile.is_file():
        raise BuildError(
            f"Dockerfile {spec.dockerfile} not found in {context}; check build.dockerfile"
        )
    return dockerfile


def build_failed(spec: BuildSpec, reason: str, tail: deque[str]) -> BuildError:
    quoted = "\n".join(f"  | {line}" for line in tail)
    last = f"\nlast build output:\n{quoted}" if quoted else ""
    return BuildError(f"docker build of {spec.dockerfile} ({spec.tag}) failed: {reason}{last}")


def _follow_build(stream: Iterable[dict[str, Any]], spec: BuildSpec, log: Log) -> tuple[str | None, int]:
    """Log the build as it runs (to LOG, the detail level); the image ID it reports and its step count."""
    tail: deque[str] = deque(maxlen=TAIL_LINES)
    deadline = time.monotonic() + spec.timeout_seconds
    image_id: str | None = None

    def texts() -> Iterator[str]:
        nonlocal image_id
        for item in stream:
            if "error" in item:
                detail = item.get("errorDetail") or {}
                raise build_failed(spec, str(detail.get("message") or item["error"]), tail)
            if isinstance(item.get("aux"), dict) and "ID" in item["aux"]:
                image_id = str(item["aux"]["ID"])
            yield str(item.get("stream") or item.get("status") or "")
            if time.monotonic() > deadline:
                raise build_failed(
                    spec, f"took longer than {spec.timeout_seconds}s (build.timeout_seconds)", tail
                )

    steps = 0
    for line in _lines(texts()):
        tail.append(line)
        steps += line.startswith("Step ")
        log(line)
    return image_id, steps


def _explain(exc: docker.errors.APIError) -> str:
    """The daemon's message without the request URL (which carries the build args)."""
    return str(exc.explanation or f"HTTP {exc.status_code}")


# Images built in this process, by what decides their content: services released at once from one
# repository, commit and Dockerfile (a fleet's threads) build once and tag that image for each.
_SHARED: dict[tuple[str, ...], str] = {}
_SHARED_LOCKS: dict[tuple[str, ...], threading.Lock] = {}
_SHARED_GUARD = threading.Lock()


def _share_key(spec: BuildSpec) -> tuple[str, ...]:
    labels = sorted(f"{k}={v}" for k, v in spec.labels.items() if k != "org.opencontainers.image.created")
    args = sorted(f"{k}={v}" for k, v in spec.build_args.items())
    return (str(spec.context_dir.resolve()), spec.dockerfile, *args, "--labels--", *labels)


def build_image(
    docker_client: docker.DockerClient, spec: BuildSpec, log: Log, detail: Log | None = None,
    builder: Callable[[], BuiltImage] | None = None,
) -> BuiltImage:
    """Build SPEC (or tag the identical image this process built already) as SPEC.tag in DOCKER_CLIENT's engine.

    Concurrent builds of the same context, Dockerfile, args and labels wait for the first one.
    BUILDER, when given, makes the image instead of the engine building it (a build box that
    hands it to the engine: tasks/build/boxed_image.py).
    """
    _check_inputs(spec)
    key = _share_key(spec)
    with _SHARED_GUARD:
        slot = _SHARED_LOCKS.setdefault(key, threading.Lock())
    with slot:
        image_id = _SHARED.get(key)
        if image_id is not None:
            repository, tag = split_ref(spec.tag)
            try:
                if docker_client.api.tag(image_id, repository, tag):
                    log(f"built {spec.tag} ({image_id[:19]}): the image this process built for the same commit "
                        "and Dockerfile, tagged")
                    return BuiltImage(image_id=image_id, tag=spec.tag)
            except docker.errors.APIError:
                pass  # removed since: build it again
        built = builder() if builder is not None else _build(docker_client, spec, log, detail)
        _SHARED[key] = built.image_id
        return built


def _build(docker_client: docker.DockerClient, spec: BuildSpec, log: Log, detail: Log | None) -> BuiltImage:
    """Build SPEC's context with its Dockerfile, labels and args; tag it SPEC.tag.

    The daemon's output goes to DETAIL (default LOG: a run logger's debug
    level keeps the INFO log to one line per build); the summary to LOG.
    Build args end up in the image history: pass secrets some other way.
    """
    detail = detail or log
    started = time.monotonic()
    detail(f"building {spec.tag} from {spec.context_dir} ({spec.dockerfile})")
    try:
        stream = docker_client.api.build(
            path=str(spec.context_dir),
            dockerfile=spec.dockerfile,
            tag=spec.tag,
            buildargs=spec.build_args,
            labels=spec.labels,
            rm=True,
            forcerm=True,
            # Base images come from their registry on every build, never from what an earlier build
            # left in the engine under the same name (one build could plant another's base).
            pull=True,
            decode=True,
            timeout=spec.timeout_seconds,
        )
        reported, steps = _follow_build(stream, spec, detail)
        image_id = str(docker_client.api.inspect_image(spec.tag)["Id"])
    except docker.errors.APIError as exc:
        if exc.status_code is not None and exc.status_code < 500:
            raise build_failed(spec, _explain(exc), deque()) from exc
        raise TransientError(f"docker daemon error building {spec.tag}: {_explain(exc)}") from exc
    except (requests.ConnectionError, requests.Timeout) as exc:
        raise TransientError(f"docker daemon unreachable or timed out building {spec.tag}") from exc
    if reported is not None and reported != image_id:
        raise BuildError(f"{spec.tag} points at {image_id}, not the image just built ({reported})")
    took = time.monotonic() - started
    log(f"built {spec.tag} ({image_id[:19]}) in {took:.1f} s, {steps} step{'' if steps == 1 else 's'}")
    return BuiltImage(image_id=image_id, tag=spec.tag)


def split_ref(ref: str) -> tuple[str, str]:
    """repository, tag of REF (a registry host may carry a port)."""
    repository, sep, tag = ref.rpartition(":")
    if not sep or "/" in tag:
        raise PushError(f"image reference {ref!r} has no tag; expected repository:tag")
    return repository, tag


def image_with_digest(repository_uri: str, digest: str) -> str:
    """repo@sha256:... (a tag on REPOSITORY_URI is dropped): the immutable reference."""
    if not _DIGEST.match(digest):
        raise PushError(f"{digest!r} is not a manifest digest (sha256:<64 hex>)")
    repository = repository_uri.split("@", 1)[0]
    name, sep, tag = repository.rpartition(":")
    if sep and "/" not in tag:
        repository = name
    return f"{repository}@{digest}"


def _push_error(ref: str, message: str) -> PushError | TransientError:
    text = message.lower()
    if any(t in text for t in _PUSH_TRANSIENT):
        return TransientError(f"push of {ref} interrupted: {message}")
    hint = ""
    if any(t in text for t in ("denied", "unauthorized", "authentication", "no basic auth")):
        hint = "; check the registry login (ECR token) and the role's ecr:* push permissions"
    return PushError(f"registry refused {ref}: {message}{hint}")


def _follow_push(stream: Iterable[dict[str, Any]], ref: str, log: Log) -> tuple[str | None, int]:
    """Log status changes (not every progress tick); the digest the push reports and the layer count."""
    last_status: dict[str, str] = {}
    digest: str | None = None
    for item in stream:
        if "error" in item:
            detail = item.get("errorDetail") or {}
            raise _push_error(ref, str(detail.get("message") or item["error"]))
        aux = item.get("aux")
        if isinstance(aux, dict) and aux.get("Digest"):
            digest = str(aux["Digest"])
        status = str(item.get("status") or "")
        layer = item.get("id")
        if not status:
            continue
        if layer is None:
            log(status)
        elif last_status.get(str(layer)) != status:
            last_status[str(layer)] = status
            log(f"{layer}: {status}")
    return digest, len(last_status)


def _registry_digest(docker_client: docker.DockerClient, ref: str, auth: RegistryAuth) -> str:
    found = docker_client.api.inspect_distribution(ref, auth_config=auth.auth_config())
    return str(found["Descriptor"]["digest"])


def push_image(
    docker_client: docker.DockerClient, ref: str, auth: RegistryAuth, log: Log, detail: Log | None = None
) -> str:
    """Push REF (repository:tag); the manifest digest the registry now serves for it.

    Layer progress goes to DETAIL (default LOG), the one-line summary to LOG.
    """
    repository, tag = split_ref(ref)
    detail = detail or log
    started = time.monotonic()
    detail(f"pushing {ref}")
    try:
        stream = docker_client.api.push(
            repository, tag=tag, stream=True, decode=True, auth_config=auth.auth_config()
        )
        pushed, layers = _follow_push(stream, ref, detail)
        served = _registry_digest(docker_client, ref, auth)
    except docker.errors.APIError as exc:
        if exc.status_code is not None and exc.status_code >= 500:
            raise TransientError(f"docker daemon error pushing {ref}: {_explain(exc)}") from exc
        raise PushError(f"push of {ref} refused: {_explain(exc)}") from exc
    except (requests.ConnectionError, requests.Timeout) as exc:
        raise TransientError(f"docker daemon unreachable or timed out pushing {ref}") from exc
    if pushed is not None and pushed != served:
        raise PushError(f"pushed {ref} as {pushed} but the registry serves {served}; push again")
    detail(f"{layers} layer{'' if layers == 1 else 's'} in {time.monotonic() - started:.1f} s")
    log(f"pushed {ref} ({served})")
    return served
