"""Attack: a service without a buildspec whose Dockerfile's RUN steps reach for the worker.

Without a buildspec the pipeline builds the repository's Dockerfile itself: in a
build box (tasks/build/boxed_image.py), never by the worker's engine. Each test
is the attacker's Dockerfile through build_in_box against the session's real
sandbox (the pipeline's Docker engine, moto, the Prefect server and the registry
on 127.0.0.1), and asserts the attack fails while the image still arrives in the
worker's engine, ready for the push stage.
"""

from __future__ import annotations

import os
import random
import shutil
import subprocess
import time
import uuid
from pathlib import Path
from urllib.parse import urlsplit

import docker
import pytest

from tasks.aws.clients import AwsClients
from tasks.build.boxed_image import build_in_box
from tasks.build.image import BuildSpec
from tasks.core.errors import BuildError
from tasks.core.settings import Settings
from tests.attacks.builds import service


def port_of(url: str) -> int:
    return int(urlsplit(url if "://" in url else f"http://{url}").port or 0)


def step(script: str) -> str:
    """A RUN step of SCRIPT in busybox's sh (the image has no /bin/sh link)."""
    return 'RUN ["/bin/busybox", "sh", "-c", "' + script.replace('"', '\\"') + '"]'


class Dockerfile:
    """One service's checkout with a Dockerfile of STEPS on busybox; built in a box, its output kept."""

    def __init__(self, tmp_path: Path, steps: list[str], timeout: int = 120) -> None:
        self.cfg = service(tmp_path)
        self.tree = tmp_path / "checkout"
        self.tree.mkdir()
        shutil.copy("/bin/busybox", self.tree / "busybox")
        (self.tree / "Dockerfile").write_text("\n".join(["FROM scratch", "COPY busybox /bin/busybox", *steps]) + "\n")
        self.uri = f"{os.environ['SANDBOX_REGISTRY']}/{self.cfg.name}"
        self.tag = f"{self.uri}:{uuid.uuid4().hex[:8]}"
        self.spec = BuildSpec(context_dir=self.tree, tag=self.tag, build_args={"ECS_PIPELINE_REVISION": "e" * 40},
                              labels={"org.opencontainers.image.revision": "e" * 40}, timeout_seconds=timeout)
        self.lines: list[str] = []
        self.engine = docker.from_env()

    def build(self) -> str:
        clients = AwsClients(Settings(artifacts_dir=self.tree.parent / "artifacts"))
        built = build_in_box(self.cfg, clients, self.engine, self.tree, self.spec, self.uri, self.lines.append)
        return built.image_id

    def said(self, word: str) -> list[str]:
        return [line.removeprefix(word) for line in self.lines if line.startswith(word)]  # not the STEP lines

    def remove(self) -> None:
        for image in self.engine.images.list(name=self.uri):
            self.engine.images.remove(image.id, force=True)


def test_run_steps_reach_neither_the_engines_nor_the_pipelines_services(tmp_path: Path) -> None:
    socket_path = os.environ["DOCKER_HOST"].removeprefix("unix://")
    moto, prefect = port_of(os.environ["AWS_ENDPOINT_URL"]), port_of(os.environ["PREFECT_API_URL"])
    registry = port_of(os.environ["SANDBOX_REGISTRY"])
    probe = ("if echo | nc -w 2 127.0.0.1 {port} >/dev/null 2>&1; then echo seen:{name}=open; "
             "else echo seen:{name}=closed; fi")
    built = Dockerfile(tmp_path, [
        step("/bin/busybox --install -s /bin"),
        step(f"ls {socket_path} /var/run/docker.sock >/dev/null 2>&1 && echo seen:socket || echo seen:no-socket"),
        step("find / -type s 2>/dev/null | sed 's/^/seen:socket file /'; echo seen:searched"),
        step("; ".join(probe.format(port=p, name=n) for p, n in
                       ((registry, "registry"), (moto, "aws"), (prefect, "prefect")))),
        step("env | grep -cE 'AWS_|PREFECT|DOCKER_HOST' | sed 's/^/seen:variables=/'"),
    ])
    try:
        image_id = built.build()
        assert built.said("seen:") == ["no-socket", "searched", "registry=open", "aws=closed", "prefect=closed",
                                       "variables=0"], built.lines
        assert built.engine.images.get(built.tag).id == image_id, "the image is in the worker's engine, to push"
        assert built.engine.images.get(built.tag).labels["org.opencontainers.image.revision"] == "e" * 40
    finally:
        built.remove()


def test_run_steps_are_root_only_inside_the_box(tmp_path: Path) -> None:
    mark = random.randint(100_000, 999_999)
    planted = Path(f"/tmp/pwned-{mark}")
    built = Dockerfile(tmp_path, [step(f"/bin/busybox sleep {mark} & /bin/busybox id -u | /bin/busybox sed "
                                       f"'s/^/seen:uid=/'; /bin/busybox touch {planted}; /bin/busybox sleep 2")])
    uids: list[str] = []

    def look(line: str) -> None:
        built.lines.append(line)
        if line.startswith("seen:uid="):
            found = subprocess.run(["pgrep", "-f", f"sleep {mark}"], capture_output=True, text=True).stdout.split()
            uids.extend(Path(f"/proc/{pid}/status").read_text().split("Uid:")[1].split()[0] for pid in found)

    clients = AwsClients(Settings(artifacts_dir=tmp_path / "artifacts"))
    try:
        build_in_box(built.cfg, clients, built.engine, built.tree, built.spec, built.uri, built.lines.append, look)
    finally:
        built.remove()
    assert built.said("seen:uid=") == ["0"], "root in the step..."
    assert uids and "0" not in uids, f"...is the unprivileged build user on the worker: {uids}"
    assert not planted.exists(), "and writes nothing on the worker"


def test_a_step_past_the_timeout_is_stopped_with_its_box(tmp_path: Path) -> None:
    mark = random.randint(100_000, 999_999)
    built = Dockerfile(tmp_path, [step(f"/bin/busybox sleep {mark}")], timeout=3)
    started = time.monotonic()
    with pytest.raises(BuildError) as err:
        built.build()
    assert "took longer than 3s (build.timeout_seconds)" in err.value.message
    assert time.monotonic() - started < 30
    left = subprocess.run(["pgrep", "-f", f"sleep {mark}"], capture_output=True, text=True).stdout
    assert left == "", "nothing of the build outlives it"
    with pytest.raises(docker.errors.ImageNotFound):
        built.engine.images.get(built.tag)


def test_a_dockerfile_linked_out_of_the_checkout_is_refused(tmp_path: Path) -> None:
    built = Dockerfile(tmp_path, [])
    (built.tree / "Dockerfile").unlink()
    (built.tree / "Dockerfile").symlink_to("/etc/passwd")
    with pytest.raises(BuildError) as err:
        built.build()
    assert "leaves the checkout through a symbolic link" in err.value.message


def test_a_base_image_from_an_unlisted_registry_names_build_egress(tmp_path: Path) -> None:
    built = Dockerfile(tmp_path, [])
    (built.tree / "Dockerfile").write_text("FROM registry.example.com/base:1\nRUN true\n")
    with pytest.raises(BuildError) as err:
        built.build()
    assert "initializing source docker://registry.example.com/base:1" in err.value.message
    assert "add registry.example.com:443 to build.egress" in err.value.message
