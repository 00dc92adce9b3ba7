"""build.image: the same phases in a container of a build image, against the sandbox's real Docker engine.

Docker Hub cannot be reached, so the build image is made here, ``FROM scratch``:
Debian's static busybox (``sh`` and coreutils as applets) and Debian's docker
CLI (``/usr/bin/docker``) with the libraries ``ldd`` names for it. It is tagged
by the hash of its files, so a session builds it once and a later one finds it.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import docker
import docker.errors
import pytest

from harness.services import aws
from tasks.aws.clients import AwsClients, docker_client
from tasks.build.buildspec_runner import CONTAINER_LABEL, BuildRun, container_spec, run_buildspec
from tasks.build.shell import ShellSpec
from tasks.config.buildspec import parse_buildspec
from tasks.config.models import ServiceConfig, parse_service
from tasks.core.errors import BuildError
from tasks.core.settings import Settings

ROOT = Path(__file__).resolve().parents[1]
SHA = "c" * 40
OS_ID = "ecs-pipeline-build-test"


def image_files() -> dict[str, Path]:
    """Path in the image → file on this host: busybox as /bin/sh, the docker CLI and what it links."""
    files = {"bin/busybox": Path("/bin/busybox"), "bin/docker": Path("/usr/bin/docker")}
    linked = subprocess.run(["ldd", "/usr/bin/docker"], capture_output=True, text=True, check=True).stdout
    for line in linked.splitlines():
        words = line.split()
        path = words[2] if "=>" in words and len(words) > 2 else words[0]
        if path.startswith("/"):
            files[path.lstrip("/")] = Path(path)
    return files


@pytest.fixture(scope="module")
def build_image(tmp_path_factory: pytest.TempPathFactory) -> str:
    files = image_files()
    digest = hashlib.sha256()
    for name, path in sorted(files.items()):
        digest.update(name.encode() + path.read_bytes())
    tag = f"ecs-pipeline-build-test:{digest.hexdigest()[:12]}"
    client = docker_client()
    try:
        client.images.get(tag)
        return tag
    except docker.errors.ImageNotFound:
        pass
    ctx = tmp_path_factory.mktemp("build-image")
    for name, path in files.items():
        (ctx / name).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(path, ctx / name)  # follows symlinks: the loader is a link on the host
    (ctx / "bin" / "sh").symlink_to("busybox")
    (ctx / "etc").mkdir()
    (ctx / "etc" / "os-release").write_text(f"ID={OS_ID}\n")
    (ctx / "Dockerfile").write_text("FROM scratch\nCOPY . /\nENV PATH=/bin\n")
    client.images.build(path=str(ctx), tag=tag, rm=True)
    return tag


def service(tmp_path: Path, image: str) -> ServiceConfig:
    name = "bc" + uuid.uuid4().hex[:8]
    return parse_service(
        {"name": name, "source": {"repo": "https://git.example.com/org/app"}, "ecr": {"repository": name},
         "ecs": {"cluster": "c", "service": name, "container": "web", "container_port": 80},
         "task_definition": "taskdef.json", "strategy": {"type": "rolling"},
         "build": {"image": image, "timeout_seconds": 120}},
        source="test.yaml", base_dir=tmp_path,
    )


class ContainerRun:
    """run_buildspec in build.image mode, its lines kept (no reports here: no flow run needed)."""

    def __init__(self, tmp_path: Path, image: str) -> None:
        self.cfg, self.src, self.lines = service(tmp_path, image), tmp_path / "src", []  # type: list[str]
        self.src.mkdir(parents=True)
        self.clients = AwsClients(Settings(artifacts_dir=tmp_path / "artifacts"))
        self.uri = "127.0.0.1:1/none"

    def __call__(self, data: dict[str, Any], log: Any = None) -> BuildRun:
        spec = parse_buildspec({"version": 0.2, **data}, "buildspec.yml")
        return run_buildspec(self.cfg, self.clients, spec, SHA, self.src, self.uri, log or self.lines.append)

    def containers(self, sparse: bool = False) -> list[Any]:
        """The build containers of this service, running or not. SPARSE: no inspect of each one, for
        waiting on a removal (a container removed between the list and its inspect is a 404)."""
        return list(docker_client().containers.list(
            all=True, sparse=sparse, filters={"label": f"{CONTAINER_LABEL}={self.cfg.name}"}))


@pytest.fixture
def run(tmp_path: Path, build_image: str) -> Iterator[ContainerRun]:
    made = ContainerRun(tmp_path, build_image)
    yield made
    for left in made.containers(sparse=True):
        with contextlib.suppress(docker.errors.NotFound):  # gone on its own meanwhile
            left.remove(force=True)


def test_phases_run_in_the_build_image_with_the_checkout_and_the_docker_socket(run: ContainerRun,
                                                                              build_image: str) -> None:
    run.uri = aws("ecr").create_repository(repositoryName=run.cfg.name)["repository"]["repositoryUri"]
    (run.src / "checkout.txt").write_text("from the checkout\n")
    (run.src / "Dockerfile").write_text("FROM scratch\nCOPY checkout.txt /\n")
    stray = docker_client().containers.run(build_image, ["sh"], stdin_open=True, detach=True, network_mode="host",
                                           labels={CONTAINER_LABEL: run.cfg.name})
    names = ["OS", "TAG", "SEEN_PATH", "CODEBUILD_SRC_DIR", "CODEBUILD_BUILD_IMAGE",
             "CODEBUILD_RESOLVED_SOURCE_VERSION", "AWS_REGION", "REPOSITORY_URI", "GREETING"]

    done = run({
        "env": {"variables": {"GREETING": "hi"}, "exported-variables": names},
        "phases": {
            "install": {"commands": ['OS=$(. /etc/os-release && echo "$ID")', "SEEN_PATH=$PATH",
                                     'echo "pwd=$PWD"', "cat checkout.txt"]},
            "build": {"commands": ['TAG=$(echo "$CODEBUILD_RESOLVED_SOURCE_VERSION" | cut -c 1-7)',
                                   'docker build -q -t "$REPOSITORY_URI:$TAG" .',
                                   'docker push "$REPOSITORY_URI:$TAG"']},
            "post_build": {"commands": ["echo written > from-container.txt"]},
        },
    })

    env = done.exported
    assert env["OS"] == OS_ID, "the phases ran in the build image, not on this host"
    assert env["SEEN_PATH"] == "/bin", "the image's PATH, not the worker's"
    assert f"pwd={run.src}" in run.lines and "from the checkout" in run.lines
    assert env["CODEBUILD_SRC_DIR"] == str(run.src) and env["CODEBUILD_BUILD_IMAGE"] == build_image
    assert env["CODEBUILD_RESOLVED_SOURCE_VERSION"] == SHA and env["GREETING"] == "hi"
    assert env["AWS_REGION"] == run.clients.settings.region and env["REPOSITORY_URI"] == run.uri
    assert (run.src / "from-container.txt").read_text() == "written\n", "the checkout is mounted, not copied"
    pushed = aws("ecr").describe_images(repositoryName=run.cfg.name, imageIds=[{"imageTag": SHA[:7]}])
    assert pushed["imageDetails"], "docker build and push from inside the container reached the engine and ECR"
    assert run.containers(sparse=True) == [], "the build's container is removed, and one a dead build left"
    with pytest.raises(docker.errors.NotFound):
        stray.reload()


class Stop(Exception):
    """Stands for a cancellation arriving while a command runs."""


def test_a_failed_or_stopped_build_names_the_phase_and_leaves_no_container(run: ContainerRun) -> None:
    with pytest.raises(BuildError) as err:
        run({"phases": {
            "install": {"commands": ["mkdir -p /opt/tool && echo installed > /opt/tool/state"]},
            "build": {"commands": ["echo 'FAIL in the container' >&2; exit 4", "echo never"],
                      "finally": ["cat /opt/tool/state"]},
        }})
    assert err.value.message.startswith(
        "buildspec failed in phase build: command `echo 'FAIL in the container' >&2; exit 4` exited 4; "
        "last output:\n  | FAIL in the container")
    assert "installed" in run.lines, "after the shell exited, the next shell runs in the same container"
    assert "never" not in run.lines
    assert run.containers(sparse=True) == []

    def stop_when_started(line: str) -> None:
        if line == "started":
            raise Stop()

    with pytest.raises(Stop):
        run({"phases": {"build": {"commands": ["echo started; sleep 600"]}}}, log=stop_when_started)
    assert run.containers(sparse=True) == [], "the container went with the command still running in it"

    with pytest.raises(BuildError) as err:
        ContainerRun(run.src.parent / "other", "nosuch-image:1")({"phases": {"build": {"commands": ["true"]}}})
    assert err.value.message.startswith("build.image nosuch-image:1: the build container did not start: ")
    assert "nosuch-image:1" in err.value.message.split("did not start: ", 1)[1], "docker's own words follow"


def test_a_killed_worker_leaves_no_container(run: ContainerRun, build_image: str) -> None:
    """SIGKILL leaves no finally block: the container goes because the worker's pipe to its first shell closes."""
    host = ShellSpec(("/bin/sh",), {"PATH": os.environ["PATH"], "DOCKER_HOST": os.environ["DOCKER_HOST"]},
                     run.src, "/bin/sh", run.src)
    container, session = container_spec(run.cfg, build_image, host, host.env)
    worker = subprocess.Popen(
        [sys.executable, "-c", KILLED_WORKER, json.dumps([container.run_argv, container.name, container.label,
                                                          session.argv])],
        cwd=ROOT, env={**os.environ, **host.env}, stdout=subprocess.PIPE, text=True,
    )
    try:
        assert worker.stdout is not None and worker.stdout.readline().strip() == "running"
        [running] = run.containers()
        assert running.name == container.name and running.attrs["HostConfig"]["NetworkMode"] == "host"
        assert any("sleep 600" in " ".join(row) for row in running.top()["Processes"]), "a command is running"
    finally:
        worker.send_signal(signal.SIGKILL)
        worker.wait()
    deadline = time.monotonic() + 60
    while run.containers(sparse=True) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert run.containers(sparse=True) == []


KILLED_WORKER = """
import json, os, subprocess, sys, time
from tasks.build.shell import BuildContainer
run_argv, name, label, session = json.loads(sys.argv[1])
container = BuildContainer(tuple(run_argv), dict(os.environ), name, label)  # held: its pipe is the lifeline
container.start(time.monotonic() + 120)
shell = subprocess.Popen(session, stdin=subprocess.PIPE, stdout=subprocess.PIPE)
shell.stdin.write(b"echo sleeping; sleep 600\\n")
shell.stdin.flush()
assert shell.stdout.readline() == b"sleeping\\n"
print("running", flush=True)
time.sleep(600)
"""
