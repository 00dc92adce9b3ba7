"""The build box: the phases in a container of the build's own rootless engine, against the sandbox.

The standard image (busybox and the build's docker command) or ``build.image``, pulled into
the box from the sandbox's registry; ``docker build`` and ``docker push`` go
through the box's engine to ECR; a failed, stopped or killed build leaves no
process, container or folder behind.
"""

from __future__ import annotations

import json
import os
import random
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
import pytest

from harness.services import aws
from tasks.aws.clients import AwsClients
from tasks.build.build_box import open_box, remove_leftovers
from tasks.build.buildspec_runner import BuildRun, box_egress, box_limits, run_buildspec
from tasks.config.buildspec import parse_buildspec
from tasks.config.models import ServiceConfig, parse_service
from tasks.core.errors import BuildError
from tasks.core.settings import Settings

ROOT = Path(__file__).resolve().parents[1]
SHA = "c" * 40
# This process's own folder for build boxes, beside the default one: under `pytest -n 4` other workers'
# builds come and go in the default folder, so what these tests count there must be theirs alone.
OWN_BOXES = Path(f"/var/lib/ecs-pipeline/builds-t{os.getpid()}")
OS_ID = "ecs-pipeline-build-test"


def service(tmp_path: Path, **build: Any) -> ServiceConfig:
    name = "bx" + uuid.uuid4().hex[:8]
    return parse_service(
        {"name": name, "source": {"repo": "https://git.example.com/org/app"}, "ecr": {"repository": name},
         "ecs": {"cluster": "c", "service": name, "container": "web", "container_port": 80},
         "task_definition": "taskdef.json", "strategy": {"type": "rolling"},
         "build": {"timeout_seconds": 120, **build}},
        source="test.yaml", base_dir=tmp_path,
    )


@pytest.fixture(autouse=True, scope="module")
def own_boxes() -> Iterator[None]:
    yield
    shutil.rmtree(OWN_BOXES, ignore_errors=True)


class BoxRun:
    """run_buildspec in the default build box, its lines kept (no reports here: no flow run needed)."""

    def __init__(self, tmp_path: Path, **build: Any) -> None:
        self.cfg, self.src = service(tmp_path, **build), tmp_path / "src"
        self.lines: list[str] = []
        self.src.mkdir(parents=True, exist_ok=True)
        self.clients = AwsClients(Settings(artifacts_dir=tmp_path / "artifacts", build_boxes=OWN_BOXES))
        self.uri = "127.0.0.1:1/none"

    def __call__(self, data: dict[str, Any], log: Any = None) -> BuildRun:
        spec = parse_buildspec({"version": 0.2, **data}, "buildspec.yml")
        return run_buildspec(self.cfg, self.clients, spec, SHA, self.src, self.uri, log or self.lines.append)

    def boxes(self) -> list[Path]:
        folder = self.clients.settings.build_boxes
        return sorted(folder.iterdir()) if folder.is_dir() else []


def alive(mark: int) -> list[str]:
    return subprocess.run(["pgrep", "-af", f"sleep {mark}"], capture_output=True, text=True).stdout.splitlines()


def test_phases_run_in_the_standard_image_on_a_copy_of_the_checkout(tmp_path: Path) -> None:
    run = BoxRun(tmp_path)
    run.uri = aws("ecr").create_repository(repositoryName=run.cfg.name)["repository"]["repositoryUri"]
    (run.src / "checkout.txt").write_text("from the checkout\n")
    (run.src / "Dockerfile").write_text("FROM scratch\nCOPY checkout.txt /\n")
    boxes_before = run.boxes()
    names = ["OS", "TAG", "SEEN_PATH", "WHO", "CODEBUILD_SRC_DIR", "CODEBUILD_BUILD_IMAGE",
             "CODEBUILD_RESOLVED_SOURCE_VERSION", "AWS_REGION", "REPOSITORY_URI", "GREETING", "DOCKER_HOST"]

    done = run({
        "env": {"variables": {"GREETING": "hi"}, "exported-variables": names},
        "phases": {
            "install": {"commands": ['OS=$(. /etc/os-release && echo "$ID")', "SEEN_PATH=$PATH", "WHO=$(id -u)",
                                     'echo "pwd=$PWD"', "cat checkout.txt"]},
            "build": {"commands": ['TAG=$(echo "$CODEBUILD_RESOLVED_SOURCE_VERSION" | cut -c 1-7)',
                                   'docker build -q -t "$REPOSITORY_URI:$TAG" . 2>/dev/null',
                                   'docker push "$REPOSITORY_URI:$TAG"']},
            "post_build": {"commands": ["echo written > from-container.txt"]},
        },
    })

    env = done.exported
    assert env["OS"] == "ecs-pipeline-standard", "the phases ran in the standard image, not on this host"
    assert env["SEEN_PATH"] != os.environ["PATH"] and env["WHO"] == "1000", "the image's PATH, a non-root user"
    assert "pwd=/codebuild/output/src" in run.lines and "from the checkout" in run.lines
    assert env["CODEBUILD_SRC_DIR"] == "/codebuild/output/src"
    assert env["CODEBUILD_BUILD_IMAGE"] == "ecs-pipeline/standard"
    assert env["CODEBUILD_RESOLVED_SOURCE_VERSION"] == SHA and env["GREETING"] == "hi"
    assert env["AWS_REGION"] == run.clients.settings.region and env["REPOSITORY_URI"] == run.uri
    assert env["DOCKER_HOST"] == "", "no engine socket is named in the build"
    assert not (run.src / "from-container.txt").exists(), "the build wrote to its copy, never to the checkout"
    pushed = aws("ecr").describe_images(repositoryName=run.cfg.name, imageIds=[{"imageTag": SHA[:7]}])
    assert pushed["imageDetails"], "docker build and push through the box's engine reached ECR"
    assert set(run.boxes()) <= set(boxes_before), "the box's folder is gone with it"


def test_docker_login_reaches_the_services_registry_and_its_password_is_masked(tmp_path: Path) -> None:
    """CodeBuild's ECR sample logs in with ``docker login --password-stdin``: the request carries the password
    on standard input, never a command line, and from then on the build's output shows it as ***."""
    run = BoxRun(tmp_path)
    registry = os.environ["SANDBOX_REGISTRY"]
    run.uri = f"{registry}/{run.cfg.name}"
    done = run({"env": {"exported-variables": ["PW"]}, "phases": {"build": {"commands": [
        "PW=$(cat /proc/sys/kernel/random/uuid)",  # as `aws ecr get-login-password` would: never on a line
        f'printf %s "$PW" | docker login -u AWS --password-stdin {registry}; echo status=$?',
        'echo "then $PW"',
        f"docker logout {registry}; echo status=$?"]}}})
    lines = [line for line in run.lines if not line.startswith("[")]
    assert lines == ["Login Succeeded!", "status=0", "then ***", f"Removed login credentials for {registry}",
                     "status=0"], lines
    assert done.exported == {"PW": "***"}, "masked in what the build hands back too"


@pytest.fixture(scope="module")
def build_image_uri() -> str:
    """A build image of busybox in the sandbox's registry (ECR), as a team's own build image would be."""
    name = "build-images-" + uuid.uuid4().hex[:6]
    uri = aws("ecr").create_repository(repositoryName=name)["repository"]["repositoryUri"]
    client = docker.from_env()
    ctx = Path(os.environ.get("TMPDIR", "/tmp")) / f"{name}-ctx"
    (ctx / "bin").mkdir(parents=True, exist_ok=True)
    (ctx / "etc").mkdir(exist_ok=True)
    shutil.copy("/bin/busybox", ctx / "bin" / "busybox")
    (ctx / "etc" / "os-release").write_text(f"ID={OS_ID}\n")
    (ctx / "Dockerfile").write_text('FROM scratch\nCOPY . /\nRUN ["/bin/busybox", "--install", "-s", "/bin"]\n'
                                    "ENV PATH=/bin\n")
    client.images.build(path=str(ctx), tag=f"{uri}:1", rm=True)
    client.images.push(uri, tag="1")
    shutil.rmtree(ctx, ignore_errors=True)
    return f"{uri}:1"


def test_build_image_is_pulled_into_the_box(tmp_path: Path, build_image_uri: str) -> None:
    run = BoxRun(tmp_path, image=build_image_uri)
    done = run({"env": {"exported-variables": ["OS", "CODEBUILD_BUILD_IMAGE"]},
                "phases": {"build": {"commands": ['OS=$(. /etc/os-release && echo "$ID")', "touch made-here"]}}})
    assert done.exported == {"OS": OS_ID, "CODEBUILD_BUILD_IMAGE": build_image_uri}


class Stop(Exception):
    """Stands for a cancellation arriving while a command runs."""


def test_a_failed_or_stopped_build_names_the_phase_and_leaves_nothing(tmp_path: Path) -> None:
    run = BoxRun(tmp_path)
    boxes_before = run.boxes()
    with pytest.raises(BuildError) as err:
        run({"phases": {
            "install": {"commands": ["mkdir -p /tmp/tool && echo installed > /tmp/tool/state"]},
            "build": {"commands": ["echo 'FAIL in the container' >&2; exit 4", "echo never"],
                      "finally": ["cat /tmp/tool/state"]},
        }})
    assert err.value.message.startswith(
        "buildspec failed in phase build: command `echo 'FAIL in the container' >&2; exit 4` exited 4; "
        "last output:\n  | FAIL in the container")
    assert "installed" in run.lines, "after the shell exited, the next shell runs in the same container"
    assert "never" not in run.lines

    mark = random.randint(100_000, 999_999)

    def stop_when_started(line: str) -> None:
        if line == "started":
            raise Stop()

    with pytest.raises(Stop):
        run({"phases": {"build": {"commands": [f"echo started; sleep {mark}"]}}}, log=stop_when_started)
    assert not alive(mark), "the command went with its box"
    assert run.boxes() == boxes_before

    with pytest.raises(BuildError) as err:
        BoxRun(tmp_path / "other", image="127.0.0.1:1/nosuch-image:1")({"phases": {"build": {"commands": ["true"]}}})
    assert err.value.message.startswith("build.image 127.0.0.1:1/nosuch-image:1: the build container did not start: ")
    assert "nosuch-image" in err.value.message.split("did not start: ", 1)[1], "the engine's own words follow"


def test_a_killed_worker_leaves_no_process_and_its_box_is_cleared(tmp_path: Path) -> None:
    """SIGKILL leaves no finally block: the box goes because the worker's pipe to its keeper closes."""
    mark = random.randint(100_000, 999_999)
    run = BoxRun(tmp_path)
    before = set(run.boxes())
    argv = [sys.executable, "-c", KILLED_WORKER, json.dumps([str(tmp_path), mark, str(OWN_BOXES)])]
    worker = subprocess.Popen(argv, cwd=ROOT, stdout=subprocess.PIPE, text=True)
    try:
        assert worker.stdout is not None and worker.stdout.readline().strip() == "running"
        started = time.monotonic() + 10  # "sleeping" is printed just before the sleep starts
        while not alive(mark) and time.monotonic() < started:
            time.sleep(0.05)
        assert alive(mark), "a command of the build is running"
        [box] = set(run.boxes()) - before
        assert box_processes(box), "its engine runs from the box's folder"
    finally:
        worker.send_signal(signal.SIGKILL)
        worker.wait()
    deadline = time.monotonic() + 10
    while alive(mark) and time.monotonic() < deadline:
        time.sleep(0.1)
    while box_processes(box) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not alive(mark), "nothing of the build outlives its worker"
    assert not box_processes(box), "nor its engine, its monitors or its containers"
    assert box.exists(), "a killed worker could not remove its box's folder"
    run({"phases": {"build": {"commands": ["true"]}}})  # the next build clears what a dead one left
    assert not box.exists(), "the folder of a dead box is removed"


def test_a_stopped_box_whose_files_are_still_read_is_no_leftover(tmp_path: Path) -> None:
    """A build reads its box's files (artifacts, reports, the saved image) after the box stopped. Every
    box's start clears leftovers, and took a stopped box for one: a build on another worker removed the
    files in between ("the saved image is not a file"; an artifact's attack test found nothing to refuse)."""
    run = BoxRun(tmp_path)
    (run.src / "kept.txt").write_text("read after the stop\n")
    deadline = time.monotonic() + 60
    with open_box(run.src, OWN_BOXES, run.clients.settings.build_user, box_limits(run.cfg),
                  box_egress(run.cfg, run.clients, run.uri, {}), deadline) as box:
        box.stop()
        assert not box_processes(box.folder), "the box's processes ended"
        remove_leftovers(OWN_BOXES)  # what the next box's start does, on this worker or another
        assert (box.src / "kept.txt").read_text() == "read after the stop\n"
    assert not box.folder.exists(), "closed, the box's folder goes"


def box_processes(folder: Path) -> list[str]:
    """Processes of the box at FOLDER: its engine and container monitors name it in their command lines."""
    found = subprocess.run(["pgrep", "-af", str(folder)], capture_output=True, text=True).stdout.splitlines()
    return [line for line in found if "pgrep" not in line]


KILLED_WORKER = """
import json, sys
from pathlib import Path
import tests.test_build_box as here
from tests.test_build_box import BoxRun
tmp, mark, boxes = json.loads(sys.argv[1])
here.OWN_BOXES = Path(boxes)  # the test's own folder, not one named after this process
run = BoxRun(Path(tmp) / "worker")
def say(line):
    if line == "sleeping":
        print("running", flush=True)
run({"phases": {"build": {"commands": [f"echo sleeping; sleep {mark}"]}}}, log=say)
"""
