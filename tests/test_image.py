"""Image build and push against a real Docker engine and a real registry."""

from __future__ import annotations

import os
import shutil
import socket
import uuid
from collections.abc import Iterator
from pathlib import Path

import docker
import httpx
import pytest

from tasks.aws.clients import AwsClients
from tasks.aws.ecr import RegistryAuth, ensure_repository, find_image_digest, registry_auth
from tasks.build.image import (
    BuildSpec,
    BuiltImage,
    build_image,
    image_with_digest,
    oci_labels,
    push_image,
    split_ref,
)
from tasks.core.errors import BuildError, PushError, TransientError
from tasks.core.settings import Settings

ROOT = Path(__file__).resolve().parents[1]
SHA = "4b825dc642cb6eb9a060e54bf8d69288fbee4904"
MANIFEST_TYPES = (
    "application/vnd.docker.distribution.manifest.v2+json, "
    "application/vnd.oci.image.manifest.v1+json"
)


def sandbox_setting(name: str, default: str) -> str:
    """NAME from the environment, else from .sandbox/env, else DEFAULT."""
    if os.environ.get(name):
        return os.environ[name]
    env_file = ROOT / ".sandbox" / "env"
    if env_file.exists():
        for line in env_file.read_text().splitlines():
            key, sep, value = line.strip().partition("=")
            if sep and key.removeprefix("export ").strip() == name and value:
                return value.strip().strip("'\"")
    return default


@pytest.fixture(scope="module")
def client() -> Iterator[docker.DockerClient]:
    host = sandbox_setting("DOCKER_HOST", "unix:///var/run/docker.sock")
    c = docker.DockerClient(base_url=host, timeout=300)
    yield c
    c.close()


@pytest.fixture(scope="module")
def registry() -> str:
    return sandbox_setting("SANDBOX_REGISTRY", "127.0.0.1:5000")


@pytest.fixture
def auth(registry: str) -> RegistryAuth:
    return RegistryAuth(registry=registry, username="AWS", password="not-checked-here")  # type: ignore[arg-type]


@pytest.fixture
def ref(client: docker.DockerClient, registry: str) -> Iterator[str]:
    name = f"{registry}/ecs-pipeline-test/app-{uuid.uuid4().hex[:10]}:{SHA[:12]}"
    yield name
    for image in client.images.list(name=name.rsplit(":", 1)[0]):
        client.images.remove(image.id, force=True)


def context(tmp_path: Path, dockerfile: str) -> Path:
    busybox = shutil.which("busybox") or "/bin/busybox"
    shutil.copy(busybox, tmp_path / "busybox")
    (tmp_path / "Dockerfile").write_text(dockerfile)
    return tmp_path


GOOD = """\
FROM scratch
COPY busybox /bin/busybox
ARG GREETING=hello
RUN ["/bin/busybox", "sh", "-c", "echo $GREETING > /greeting"]
CMD ["/bin/busybox", "cat", "/greeting"]
"""


def build(client: docker.DockerClient, ctx: Path, tag: str, lines: list[str]) -> BuiltImage:
    spec = BuildSpec(
        context_dir=ctx,
        dockerfile="Dockerfile",
        tag=tag,
        build_args={"GREETING": "from-the-pipeline"},
        labels=oci_labels(SHA, "https://ci:tok3n@git.example.com/team/app.git", "1.2.3"),
        timeout_seconds=120,
    )
    return build_image(client, spec, lines.append)


def test_build_sets_labels_and_streams_output(
    client: docker.DockerClient, ref: str, tmp_path: Path
) -> None:
    lines: list[str] = []
    built = build(client, context(tmp_path, GOOD), ref, lines)
    inspected = client.api.inspect_image(ref)
    assert built == BuiltImage(image_id=inspected["Id"], tag=ref)
    labels = inspected["Config"]["Labels"]
    assert labels["org.opencontainers.image.revision"] == SHA
    assert labels["org.opencontainers.image.source"] == "https://***@git.example.com/team/app.git"
    assert labels["org.opencontainers.image.version"] == "1.2.3"
    assert labels["org.opencontainers.image.created"].endswith("Z")
    assert any(line.startswith("Step 1/") and "FROM scratch" in line for line in lines)
    assert lines[-1].startswith(f"built {ref}")
    out = client.containers.run(ref, remove=True, network_mode="none")
    assert out.decode().strip() == "from-the-pipeline"


@pytest.mark.parametrize(
    ("dockerfile", "quoted"),
    [
        ("FROM scratch\nFOO bar\n", "unknown instruction: FOO"),
        (
            (
                'FROM scratch\nCOPY busybox /bin/busybox\nRUN ["/bin/busybox", "sh", "-c", '
                '"echo compiling; echo broken >&2; exit 3"]\n'
            ),
            "returned a non-zero code: 3",
        ),
        ("FROM scratch\nCOPY not-there /x\n", "COPY failed"),
    ],
    ids=["parse-error", "failing-run", "missing-file"],
)
def test_broken_build_is_a_build_error(
    client: docker.DockerClient, ref: str, tmp_path: Path, dockerfile: str, quoted: str
) -> None:
    with pytest.raises(BuildError) as err:
        build(client, context(tmp_path, dockerfile), ref, [])
    msg = str(err.value)
    assert "docker build of Dockerfile" in msg
    assert quoted in msg
    if "exit 3" in dockerfile:
        assert "  | compiling" in msg  # the last lines of output are quoted


def test_missing_dockerfile_is_a_build_error(client: docker.DockerClient, tmp_path: Path) -> None:
    spec = BuildSpec(context_dir=tmp_path, dockerfile="build/Dockerfile", tag="x:y")
    with pytest.raises(BuildError, match="Dockerfile build/Dockerfile not found in"):
        build_image(client, spec, print)


def test_unreachable_daemon_is_transient(tmp_path: Path) -> None:
    gone = docker.DockerClient(base_url=f"unix://{tmp_path}/no.sock", version="1.41", timeout=5)
    spec = BuildSpec(context_dir=context(tmp_path, GOOD), tag="x:y")
    with pytest.raises(TransientError, match="unreachable"):
        build_image(gone, spec, print)


def registry_digest(registry: str, ref: str) -> str:
    repository, tag = split_ref(ref)
    path = repository.removeprefix(f"{registry}/")
    resp = httpx.head(
        f"http://{registry}/v2/{path}/manifests/{tag}", headers={"Accept": MANIFEST_TYPES}
    )
    resp.raise_for_status()
    return resp.headers["Docker-Content-Digest"]


def test_push_returns_the_registry_digest_and_is_repeatable(
    client: docker.DockerClient, ref: str, registry: str, auth: RegistryAuth, tmp_path: Path
) -> None:
    build(client, context(tmp_path, GOOD), ref, [])
    lines: list[str] = []
    digest = push_image(client, ref, auth, lines.append)
    assert digest.startswith("sha256:")
    assert digest == registry_digest(registry, ref)
    assert lines[-1] == f"pushed {ref} ({digest})"
    layer_lines = [line for line in lines if ": " in line and not line.startswith("pushed")]
    assert len(layer_lines) == len(set(layer_lines))  # progress reduced to status changes
    assert "not-checked-here" not in "\n".join(lines)

    assert push_image(client, ref, auth, [].append) == digest
    repository = ref.rsplit(":", 1)[0]
    pinned = image_with_digest(repository, digest)
    assert client.api.inspect_distribution(pinned)["Descriptor"]["digest"] == digest


def test_push_of_unknown_image_is_a_push_error(
    client: docker.DockerClient, ref: str, auth: RegistryAuth
) -> None:
    with pytest.raises(PushError, match="does not exist locally"):
        push_image(client, ref, auth, print)


def test_push_to_unreachable_registry_is_transient(
    client: docker.DockerClient, ref: str, tmp_path: Path
) -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    dead = f"127.0.0.1:{port}/ecs-pipeline-test/app:{SHA[:12]}"
    build(client, context(tmp_path, GOOD), ref, [])
    client.api.tag(ref, dead.rsplit(":", 1)[0], tag=SHA[:12])
    auth = RegistryAuth(registry=f"127.0.0.1:{port}", username="AWS", password="x")  # type: ignore[arg-type]
    try:
        with pytest.raises(TransientError, match="connection refused"):
            push_image(client, dead, auth, print)
    finally:
        client.api.remove_image(dead)


@pytest.mark.parametrize(
    ("uri", "expect"),
    [
        ("1234.dkr.ecr.us-east-1.amazonaws.com/app", "1234.dkr.ecr.us-east-1.amazonaws.com/app"),
        ("127.0.0.1:5000/team/app:abc", "127.0.0.1:5000/team/app"),
        ("127.0.0.1:5000/team/app", "127.0.0.1:5000/team/app"),
        ("127.0.0.1:5000/app@sha256:" + "b" * 64, "127.0.0.1:5000/app"),
    ],
)
def test_image_with_digest(uri: str, expect: str) -> None:
    digest = "sha256:" + "a" * 64
    assert image_with_digest(uri, digest) == f"{expect}@{digest}"


@pytest.mark.parametrize("digest", ["sha256:abc", "abc", "sha512:" + "a" * 64])
def test_image_with_digest_rejects_non_digests(digest: str) -> None:
    with pytest.raises(PushError, match="not a manifest digest"):
        image_with_digest("127.0.0.1:5000/app", digest)


@pytest.mark.parametrize(
    ("ref", "expect"),
    [
        ("127.0.0.1:5000/app:v1", ("127.0.0.1:5000/app", "v1")),
        ("app:latest", ("app", "latest")),
    ],
)
def test_split_ref(ref: str, expect: tuple[str, str]) -> None:
    assert split_ref(ref) == expect


def test_split_ref_needs_a_tag() -> None:
    with pytest.raises(PushError, match="has no tag"):
        split_ref("127.0.0.1:5000/app")


def test_pushed_image_is_found_in_ecr_by_its_tag(
    client: docker.DockerClient, tmp_path: Path
) -> None:
    """The pipeline's path: ECR repository, ECR login, build, push, then ECR sees the digest."""
    settings = Settings(
        region="us-east-1",
        endpoint_url=sandbox_setting("AWS_ENDPOINT_URL", "http://127.0.0.1:4566"),
    )
    ecr = AwsClients(settings).get("ecr")
    name = f"ecs-pipeline-test/ecr-{uuid.uuid4().hex[:8]}"
    uri = ensure_repository(ecr, name)
    assert find_image_digest(ecr, name, SHA) is None
    ref = f"{uri}:{SHA}"
    try:
        build(client, context(tmp_path, GOOD), ref, [])
        digest = push_image(client, ref, registry_auth(ecr), [].append)
        assert find_image_digest(ecr, name, SHA) == digest
        assert image_with_digest(uri, digest) == f"{uri}@{digest}"
    finally:
        client.images.remove(ref, force=True)
