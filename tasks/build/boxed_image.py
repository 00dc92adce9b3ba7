"""The service's Dockerfile built in a build box, then handed to the worker's engine as an image.

A Dockerfile is the repository's code: its ``RUN`` steps run whatever the pusher
wrote. Built by the worker's engine, they would run as that engine's root, beside
the pipeline's and the sandbox's containers. Here they run in a build box
(tasks/build/build_box.py), CodeBuild's fresh container: the box's own rootless
engine, as the unprivileged build user, on loopback with only the service's
registry and ``build.egress``, with ``build.resources`` and killed at
``build.timeout_seconds``. What comes back is the image as a ``docker save``
archive, loaded into the worker's engine when every process of the box has
ended; the push stage pushes it from there as it pushes any image.
"""

from __future__ import annotations

import contextlib
import os
import re
import signal
import subprocess
import threading
import time
from collections import deque
from pathlib import Path
from typing import TYPE_CHECKING

import requests

from tasks.aws.clients import AwsClients
from tasks.build.build_box import BuildBox, open_box
from tasks.build.buildspec_runner import box_egress, box_limits
from tasks.build.image import TAIL_LINES, BuildSpec, BuiltImage, Log, build_failed
from tasks.build.shell import open_written
from tasks.config.models import ServiceConfig
from tasks.core.errors import BuildError, TransientError

if TYPE_CHECKING:
    import docker

_ERROR = re.compile(r"^(Error|error):? ")
_SOURCE = re.compile(r"initializing source docker://([^/\s]+)/")


def build_in_box(cfg: ServiceConfig, clients: AwsClients, engine: docker.DockerClient, tree: Path, spec: BuildSpec,
                 uri: str, log: Log, detail: Log | None = None) -> BuiltImage:
    """Build SPEC (its context inside TREE, the checkout) in a box; the image tagged SPEC.tag in ENGINE."""
    detail = detail or log
    started = time.monotonic()
    deadline = started + spec.timeout_seconds
    relative = spec.context_dir.relative_to(tree)
    with open_box(tree, clients.settings.build_boxes, clients.settings.build_user, box_limits(cfg),
                  box_egress(cfg, clients, uri, {}), deadline) as box:
        context = Path(os.path.realpath(box.src / relative))
        dockerfile = Path(os.path.realpath(context / spec.dockerfile))
        src = box.src.resolve()
        if not context.is_relative_to(src) or not dockerfile.is_relative_to(src):
            raise BuildError(f"build.context {relative} or build.dockerfile {spec.dockerfile} leaves the checkout "
                             "through a symbolic link; name a folder and a file of the repository", service=cfg.name)
        if not dockerfile.is_file():
            raise BuildError(f"Dockerfile {spec.dockerfile} not found in {relative}; check build.dockerfile",
                             service=cfg.name)
        detail(f"building {spec.tag} from {relative} ({spec.dockerfile}) in a build box")
        # --layers=false: the box's storage is new, so no later build can reuse an intermediate image; not
        # committing one per step saves about 0.15 CPU-s of a 14-step build (base image layers stay as they are).
        words = ["build", "--pull=always", "--layers=false", "--tag", spec.tag, "--file", str(dockerfile),
                 *(w for k, v in spec.build_args.items() for w in ("--build-arg", f"{k}={v}")),
                 *(w for k, v in spec.labels.items() for w in ("--label", f"{k}={v}")), str(context)]
        steps = _run_build(box, words, spec, deadline, detail, uri.split("/", 1)[0])
        archive = box.folder / "tmp" / "image.tar"
        _run(box, ["save", "--format", "docker-archive", "--output", str(archive), spec.tag], deadline,
             f"docker build of {spec.dockerfile} ({spec.tag}): saving the image")
        box.stop()  # nothing of the box runs while its image is read
        image_id = _load(engine, archive, spec)
    log(f"built {spec.tag} ({image_id[:19]}) in a build box in {time.monotonic() - started:.1f} s, "
        f"{steps} step{'' if steps == 1 else 's'}")
    return BuiltImage(image_id=image_id, tag=spec.tag)


def _run_build(box: BuildBox, words: list[str], spec: BuildSpec, deadline: float, detail: Log, registry: str) -> int:
    """podman build in BOX, its output to DETAIL as it comes; the number of steps. BuildError when it failed
    (naming build.egress when a base image's registry, not the service's REGISTRY, was out of reach)."""
    tail: deque[str] = deque(maxlen=TAIL_LINES)
    proc = subprocess.Popen([*box.client(), *words], stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, start_new_session=True)
    late = threading.Timer(max(deadline - time.monotonic(), 0.0), _kill, (proc,))
    late.daemon = True
    late.start()
    steps, reason = 0, ""
    try:
        for raw in iter(proc.stdout.readline, b""):  # type: ignore[union-attr]
            line = raw.decode("utf-8", "replace").rstrip()
            if not line:
                continue
            tail.append(line)
            steps += line.startswith("STEP ")
            if _ERROR.match(line):
                reason = _ERROR.sub("", line)
            detail(line)
        proc.wait()
    finally:
        late.cancel()
        _kill(proc)
    if time.monotonic() >= deadline:
        raise build_failed(spec, f"took longer than {spec.timeout_seconds}s (build.timeout_seconds)", tail)
    if proc.returncode != 0:
        pulled = _SOURCE.search(reason)
        if pulled and pulled.group(1) != registry:
            reason += (f" (a build box reaches only the service's registry and build.egress: add "
                       f"{pulled.group(1)}{'' if ':' in pulled.group(1) else ':443'} to build.egress)")
        raise build_failed(spec, reason or f"exited {proc.returncode}", tail)
    return steps


def _run(box: BuildBox, words: list[str], deadline: float, what: str) -> None:
    try:
        done = subprocess.run([*box.client(), *words], capture_output=True, text=True,
                              timeout=max(deadline - time.monotonic(), 1.0), check=False)
    except subprocess.TimeoutExpired:
        raise BuildError(f"{what} took longer than build.timeout_seconds") from None
    if done.returncode != 0:
        raise BuildError(f"{what} failed: {(done.stderr or done.stdout).strip()[-500:]}")


def _kill(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is None:
        with contextlib.suppress(OSError):
            os.killpg(proc.pid, signal.SIGKILL)


def _load(engine: docker.DockerClient, archive: Path, spec: BuildSpec) -> str:
    """The box's archive loaded into the worker's ENGINE: the image ID of SPEC.tag."""
    import docker.errors

    what = f"docker build of {spec.dockerfile} ({spec.tag})"
    data = open_written(archive)
    if data is None:
        raise BuildError(f"{what}: the saved image is not a file")
    with data:
        try:
            for said in engine.api.load_image(data):
                if isinstance(said, dict) and "error" in said:
                    raise BuildError(f"{what}: the worker's engine did not load the image: {said['error']}")
            return str(engine.api.inspect_image(spec.tag)["Id"])
        except docker.errors.APIError as exc:
            if exc.status_code is not None and exc.status_code < 500:
                raise BuildError(f"{what}: the worker's engine did not load the image: {exc.explanation}") from exc
            raise TransientError(f"docker daemon error loading {spec.tag}: {exc.explanation}") from exc
        except (requests.ConnectionError, requests.Timeout) as exc:
            raise TransientError(f"docker daemon unreachable or timed out loading {spec.tag}") from exc
