"""Finding or starting a Docker engine, and installing Debian packages.

An engine the user already has wins; only as root on Debian does the sandbox
install and run its own `dockerd`, with no bridge and no iptables so nothing
but loopback and host networking exists.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
from pathlib import Path
from typing import Literal

from sandbox import procs

DEFAULT_SOCKET = "/var/run/docker.sock"
POLICY_RC = Path("/usr/sbin/policy-rc.d")
BUSYBOX = Path("/bin/busybox")
UNIX_PATH_MAX = 107  # sun_path is 108 bytes including the NUL


class SandboxError(Exception):
    """A problem the person running the sandbox can fix; the message says how."""


def engine_answers(docker_host: str) -> bool:
    """True when the Docker API at DOCKER_HOST (unix:// or tcp://) answers /_ping."""
    if docker_host.startswith("unix://"):
        return procs.unix_http_ok(docker_host.removeprefix("unix://"))
    if docker_host.startswith("tcp://"):
        return procs.http_ok("http://" + docker_host.removeprefix("tcp://").rstrip("/") + "/_ping")
    return False


def own_socket(state: Path) -> Path:
    """Where our dockerd listens: inside the state dir unless that path is too long."""
    candidate = state / "docker.sock"
    if len(str(candidate)) <= UNIX_PATH_MAX - 8:
        return candidate
    return Path("/run/ecs-pipeline") / _short_hash(state) / "docker.sock"


def exec_root(state: Path) -> Path:
    """dockerd's exec root: short (containerd sockets live below it) and per state dir."""
    return Path(f"/run/ecs-pipeline-docker-{_short_hash(state)}")


def _short_hash(state: Path) -> str:
    return hashlib.sha256(str(state.resolve()).encode()).hexdigest()[:8]


def existing_engine(state: Path) -> str | None:
    """DOCKER_HOST or the default socket when one answers; None when we must start one.

    A DOCKER_HOST that names our own socket (from a sourced .sandbox/env) counts
    as ours, not as the user's choice.
    """
    ours = "unix://" + str(own_socket(state))
    chosen = os.environ.get("DOCKER_HOST", "")
    if chosen and chosen != ours:
        if engine_answers(chosen):
            return chosen
        raise SandboxError(
            f"DOCKER_HOST={chosen} does not answer; start that engine, "
            f"or unset DOCKER_HOST to let the sandbox start its own"
        )
    if Path(DEFAULT_SOCKET).exists() and engine_answers("unix://" + DEFAULT_SOCKET):
        return "unix://" + DEFAULT_SOCKET
    return None


def can_manage_packages() -> bool:
    """Root on Debian: the only place the sandbox installs and runs its own engine."""
    return os.geteuid() == 0 and shutil.which("apt-get") is not None


def dockerd_argv(state: Path) -> list[str]:
    sock = own_socket(state)
    return [
        "dockerd",
        "--bridge=none",
        "--iptables=false",
        "--ip-masq=false",
        "--ip6tables=false",
        "--data-root", str(state / "docker" / "data"),
        "--exec-root", str(exec_root(state)),
        "--pidfile", str(state / "docker" / "dockerd.pid"),
        "-H", f"unix://{sock}",
    ]  # fmt: skip


def apt_install(packages: list[str]) -> None:
    """Install Debian packages without prompts and without starting their services.

    `apt-get update` runs only when the install fails without it: it is the slow
    part, and the package lists are usually fresh enough.
    """
    if not packages:
        return
    if not can_manage_packages():
        raise SandboxError(
            f"missing {', '.join(packages)}; install them (Debian: apt-get install "
            f"{' '.join(packages)}) or run the sandbox as root on Debian"
        )
    # needrestart's scan of running processes costs ~10 s and restarts nothing we need.
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive", "NEEDRESTART_SUSPEND": "1"}
    install = [
        "apt-get", "install", "-y", "--no-install-recommends",
        "-o", "DPkg::Lock::Timeout=120", "-o", "Dpkg::Options::=--force-confdef",
        "-o", "Dpkg::Options::=--force-confold", *packages,
    ]  # fmt: skip
    created_policy = _block_service_starts()
    try:
        first = subprocess.run(install, check=False, env=env, capture_output=True, text=True)
        if first.returncode == 0:
            return
        subprocess.run(
            ["apt-get", "update", "-o", "DPkg::Lock::Timeout=120"],
            check=False, env=env, capture_output=True, text=True,
        )  # fmt: skip
        second = subprocess.run(install, check=False, env=env, capture_output=True, text=True)
        if second.returncode != 0:
            tail = (second.stderr or second.stdout).strip().splitlines()[-1:]
            raise SandboxError(
                f"apt-get install {' '.join(packages)} failed ({' '.join(tail)}); "
                f"install them by hand and run up again"
            )
    finally:
        if created_policy:
            POLICY_RC.unlink(missing_ok=True)


def _block_service_starts() -> bool:
    """Make invoke-rc.d refuse service starts during the install (Debian's policy-rc.d)."""
    if POLICY_RC.exists():
        return False
    POLICY_RC.write_text(
        "#!/bin/sh\n# ecs-pipeline sandbox: no service starts during install\nexit 101\n"
    )
    POLICY_RC.chmod(0o755)
    return True


def missing_packages(*, need_dockerd: bool, need_registry: bool) -> list[str]:
    """Debian packages the sandbox needs that are not installed yet."""
    wanted: list[str] = []
    if need_dockerd and shutil.which("dockerd") is None:
        wanted.append("docker.io")
    if need_registry and shutil.which("docker-registry") is None:
        wanted.append("docker-registry")
    if not is_static_elf(BUSYBOX):
        wanted.append("busybox-static")
    # Build boxes (tasks/build/build_box.py): a rootless Podman engine per build.
    wanted += [pkg for tool, pkg in (("podman", "podman"), ("newuidmap", "uidmap")) if shutil.which(tool) is None]
    return wanted


def is_static_elf(path: Path) -> bool:
    """True for an ELF executable without an interpreter: it runs in a scratch image.

    Debian's dynamic `busybox` package also installs /bin/busybox; only
    `busybox-static` works inside an image that has no libc.
    """
    try:
        with open(path, "rb") as fh:
            head = fh.read(64)
            if head[:4] != b"\x7fELF" or head[4] != 2:  # ELF64 only
                return False
            order: Literal["little", "big"] = "little" if head[5] == 1 else "big"
            phoff = int.from_bytes(head[32:40], order)
            phentsize = int.from_bytes(head[54:56], order)
            phnum = int.from_bytes(head[56:58], order)
            fh.seek(phoff)
            table = fh.read(phentsize * phnum)
    except OSError:
        return False
    pt_interp = 3
    return all(
        int.from_bytes(table[i : i + 4], order) != pt_interp
        for i in range(0, len(table), phentsize)
    )
