"""The standard build image: what a buildspec runs in when ``build.image`` names none.

CodeBuild's standard images carry a shell, the usual tools and a Docker client.
This one is a root filesystem made on the worker from Debian's static busybox
(sh, coreutils, sed, awk, wget, tar, ...) and the build's ``docker`` command
(tasks/build/docker_requests.py: it reaches no engine, it asks the pipeline):
enough for test scripts, ``docker build`` and ``docker push``. It is made once
per worker (again when busybox or that command changes), owned by root and
mounted read-only into every build: a build cannot change what the next build
runs in.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import tempfile
from pathlib import Path

from tasks.build.docker_requests import ANSWERS, REQUESTS, SHIM
from tasks.core.errors import BuildError

NAME = "ecs-pipeline/standard"
BUSYBOX = Path("/bin/busybox")
# Where the box mounts a build's files inside its container (as CodeBuild uses /codebuild/output/...).
SRC, SCRIPTS, VALUES = "/codebuild/output/src", "/codebuild/scripts", "/codebuild/values"
# The build's docker command in the standard image, and where a build.image's own PATH finds it first
# (mounted from the standard image: a build.image is not ours to change).
DOCKER_COMMAND, DOCKER_IN_BUILD_IMAGE = "usr/bin/docker", "/usr/local/bin/docker"
# Files and folders the container engine mounts over: they must exist in a read-only root.
MOUNT_POINTS = ("dev", "proc", "sys", "tmp", "run", "var/tmp", "root", SRC[1:], SCRIPTS[1:], VALUES[1:],
                REQUESTS[1:], ANSWERS[1:])
MOUNT_FILES = ("etc/hosts", "etc/hostname", "etc/resolv.conf", "run/.containerenv")


def _key(parts: list[Path]) -> str:
    digest = hashlib.sha256(SHIM.encode())
    for path in parts:
        st = path.stat()
        digest.update(f"{path}:{st.st_size}:{st.st_mtime_ns}\n".encode())
    return digest.hexdigest()[:12]


def standard_root(images: Path) -> Path:
    """The standard image's root filesystem under IMAGES, made when missing; read-only to builds."""
    if not BUSYBOX.is_file():
        raise BuildError("the standard build image needs Debian's busybox-static (/bin/busybox)")
    root = images / f"standard-{_key([BUSYBOX])}"
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
        (work / DOCKER_COMMAND).write_text(SHIM)
        (work / DOCKER_COMMAND).chmod(0o755)
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
