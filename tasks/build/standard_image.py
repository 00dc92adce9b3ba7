"""The standard build image: what a buildspec runs in when ``build.image`` names none.

CodeBuild's standard images carry a shell, the usual tools and a Docker client.
This one is a root filesystem made on the worker from Debian's static busybox
(sh, coreutils, sed, awk, wget, tar, ...) and the worker's Docker client (with
the C library it needs): enough for test scripts, ``docker build`` and
``docker push``. It is made once per worker (again when those binaries change),
owned by root and mounted read-only into every build: a build cannot change
what the next build runs in.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import tempfile
from pathlib import Path

from tasks.core.errors import BuildError

NAME = "ecs-pipeline/standard"
BUSYBOX = Path("/bin/busybox")
# Where the box mounts a build's files inside its container (as CodeBuild uses /codebuild/output/...).
SRC, SCRIPTS, VALUES = "/codebuild/output/src", "/codebuild/scripts", "/codebuild/values"
# Where a build finds the API of its own box's rootless engine (tasks/build/build_box.py), where Docker
# clients look by default. Never the pipeline's engine: that socket is outside the box's view altogether.
BOX_ENGINE_SOCKET = "/var/run/docker.sock"
# Files and folders the container engine mounts over: they must exist in a read-only root.
MOUNT_POINTS = ("dev", "proc", "sys", "tmp", "run", "var/tmp", "root", SRC[1:], SCRIPTS[1:], VALUES[1:])
MOUNT_FILES = ("etc/hosts", "etc/hostname", "etc/resolv.conf", "run/.containerenv", BOX_ENGINE_SOCKET[1:])


def _docker_client() -> Path:
    found = shutil.which("docker")
    if found is None:
        raise BuildError("the standard build image needs a Docker client on the worker (Debian: docker.io)")
    return Path(found).resolve()


def _libraries(binary: Path) -> list[Path]:
    """The shared libraries (and loader) BINARY needs, from ldd."""
    out = subprocess.run(["ldd", str(binary)], capture_output=True, text=True, check=False).stdout
    found: list[Path] = []
    for line in out.splitlines():
        parts = line.split()
        for part in parts:
            if part.startswith("/") and Path(part).exists():
                found.append(Path(part))
    return found


def _key(parts: list[Path]) -> str:
    digest = hashlib.sha256()
    for path in parts:
        st = path.stat()
        digest.update(f"{path}:{st.st_size}:{st.st_mtime_ns}\n".encode())
    return digest.hexdigest()[:12]


def standard_root(images: Path) -> Path:
    """The standard image's root filesystem under IMAGES, made when missing; read-only to builds."""
    if not BUSYBOX.is_file():
        raise BuildError("the standard build image needs Debian's busybox-static (/bin/busybox)")
    docker = _docker_client()
    libs = _libraries(docker)
    root = images / f"standard-{_key([BUSYBOX, docker, *libs])}"
    if root.is_dir():
        return root
    root.parent.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix=".standard-", dir=root.parent))
    try:
        (work / "bin").mkdir()
        shutil.copy2(BUSYBOX, work / "bin" / "busybox")
        applets = subprocess.run([str(BUSYBOX), "--list"], capture_output=True, text=True, check=True).stdout
        for applet in applets.split():
            if applet != "busybox":
                (work / "bin" / applet).symlink_to("busybox")
        (work / "usr" / "bin").mkdir(parents=True)
        shutil.copy2(docker, work / "usr" / "bin" / "docker")
        for lib in libs:
            dest = work / str(lib).lstrip("/")
            dest.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(lib.resolve(), dest)
        certs = Path("/etc/ssl/certs/ca-certificates.crt")
        etc = work / "etc"
        (etc / "ssl" / "certs").mkdir(parents=True)
        if certs.is_file():
            shutil.copy2(certs, etc / "ssl" / "certs" / certs.name)
        (etc / "passwd").write_text("root:x:0:0:root:/root:/bin/sh\nbuild:x:1000:1000:build:/tmp:/bin/sh\n"
                                    "nobody:x:65534:65534:nobody:/:/bin/false\n")
        (etc / "group").write_text("root:x:0:\nbuild:x:1000:\nnogroup:x:65534:\n")
        (etc / "os-release").write_text(f'ID=ecs-pipeline-standard\nNAME="{NAME}"\n')
        (etc / "mtab").symlink_to("/proc/mounts")
        for folder in MOUNT_POINTS:
            (work / folder).mkdir(parents=True, exist_ok=True)
        for file in MOUNT_FILES:
            (work / file).parent.mkdir(parents=True, exist_ok=True)
            (work / file).touch()
        (work / "tmp").chmod(0o1777)
        os.chmod(work, 0o755)
        try:
            work.rename(root)
        except OSError:  # another build made it first
            if not root.is_dir():
                raise
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return root
