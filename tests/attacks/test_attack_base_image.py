"""Attack: one build plants an image under a base image's name, for another service's build to use.

The engine is shared by the builds of every service: a build that tags its own
image as ``<registry>/base:1`` (without pushing it) must not become the base of
the next build ``FROM <registry>/base:1``; that build takes the registry's.
"""

from __future__ import annotations

import contextlib
import uuid
from collections.abc import Iterator
from pathlib import Path

import docker
import docker.errors
import pytest

from tasks.build.image import BuildSpec, build_image
from tests.test_image import sandbox_setting


@pytest.fixture
def client() -> Iterator[docker.DockerClient]:
    made = docker.DockerClient(base_url=sandbox_setting("DOCKER_HOST", "unix:///var/run/docker.sock"), timeout=120)
    yield made
    made.close()


def layers(client: docker.DockerClient, ref: str) -> list[str]:
    return list(client.api.inspect_image(ref)["RootFS"]["Layers"])


def image_from(client: docker.DockerClient, folder: Path, who: str, tag: str) -> str:
    """An image whose only layer says WHO made it."""
    folder.mkdir(parents=True)
    (folder / "who").write_text(f"{who} {uuid.uuid4()}\n")
    (folder / "Dockerfile").write_text("FROM scratch\nCOPY who /who\n")
    client.images.build(path=str(folder), tag=tag, rm=True)
    return tag


def test_a_planted_base_image_is_not_used_by_the_next_build(client: docker.DockerClient, tmp_path: Path) -> None:
    registry = sandbox_setting("SANDBOX_REGISTRY", "127.0.0.1:5000")
    base = f"{registry}/atk-base-{uuid.uuid4().hex[:8]}:1"
    victim = f"{registry}/atk-victim-{uuid.uuid4().hex[:8]}:1"
    planted: list[str] = []
    try:
        image_from(client, tmp_path / "legit", "the registry's base", base)
        client.images.push(base)  # the base as its registry serves it
        legit = layers(client, base)
        # the attacker's build: another image under the base's name, left in the engine, not pushed
        image_from(client, tmp_path / "planted", "an attacker's build", base)
        planted.append(client.api.inspect_image(base)["Id"])
        assert layers(client, base) != legit
        ctx = tmp_path / "victim"
        ctx.mkdir()
        (ctx / "Dockerfile").write_text(f"FROM {base}\nCMD [\"/who\"]\n")
        built = build_image(client, BuildSpec(context_dir=ctx, dockerfile="Dockerfile", tag=victim, build_args={},
                                              labels={}, timeout_seconds=120), lambda _line: None)
        assert layers(client, built.tag) == legit  # the registry's base, not the planted one
    finally:
        for ref in (victim, base, *planted):
            with contextlib.suppress(docker.errors.APIError):
                client.images.remove(ref, force=True)
