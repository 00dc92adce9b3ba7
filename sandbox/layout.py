"""Where the sandbox lives: its state directory, its loopback ports and the env file it writes.

Read by `up`/`down`/`status` (``manage.py``), by the seeders and by tests, so
it starts nothing and reads only the environment.
"""

from __future__ import annotations

import contextlib
import os
import secrets
import socket
from dataclasses import dataclass
from pathlib import Path

from sandbox.engine import SandboxError

REPO = Path(__file__).resolve().parent.parent
REAL_CREDENTIALS = frozenset(
    {
        "AWS_ACCESS_KEY_ID",
        "AWS_SECRET_ACCESS_KEY",
        "AWS_SESSION_TOKEN",
        "AWS_SECURITY_TOKEN",
        "AWS_PROFILE",
    }
)
ENV_KEYS = (
    "AWS_ENDPOINT_URL",
    "AWS_ACCESS_KEY_ID",
    "AWS_SECRET_ACCESS_KEY",
    "AWS_DEFAULT_REGION",
    "AWS_REGION",
    "DOCKER_HOST",
    "PREFECT_API_URL",
    "PREFECT_API_AUTH_STRING",
    "SANDBOX_REGISTRY",
    "SANDBOX_TIME_SCALE",
    "SANDBOX_DIR",
    "ECS_PIPELINE_TIME_SCALE",
    "ECS_PIPELINE_CACHE",
    "PREFECT_LOCAL_STORAGE_PATH",
)


@dataclass(frozen=True)
class Layout:
    """Where the sandbox keeps its state and which loopback ports it uses."""

    state: Path
    aws_port: int
    registry_port: int
    prefect_port: int
    time_scale: str
    postgres_port: int = 5432

    @property
    def pids(self) -> Path:
        return self.state / "pids"

    @property
    def logs(self) -> Path:
        return self.state / "logs"

    @property
    def env_file(self) -> Path:
        return self.state / "env"

    @property
    def admin_env_file(self) -> Path:
        """The sandbox's own (admin) AWS keys: seeding, tests' set-up; never the pipeline's."""
        return self.state / "admin.env"

    @property
    def deploy_key_file(self) -> Path:
        """The deploy user's access key, as its server made it (lost with the server's memory)."""
        return self.state / "deploy.key"

    @property
    def docker_host_file(self) -> Path:
        return self.state / "docker_host"

    def pidfile(self, name: str) -> Path:
        return self.pids / f"{name}.pid"

    def log(self, name: str) -> Path:
        return self.logs / f"{name}.log"


def layout() -> Layout:
    """The layout from the environment: SANDBOX_DIR and SANDBOX_*_PORT override defaults."""
    state = Path(os.environ.get("SANDBOX_DIR") or REPO / ".sandbox").resolve()
    return Layout(
        state=state,
        aws_port=_port("SANDBOX_AWS_PORT", 4566),
        registry_port=_port("SANDBOX_REGISTRY_PORT", 5000),
        prefect_port=_port("SANDBOX_PREFECT_PORT", 4200),
        time_scale=os.environ.get("SANDBOX_TIME_SCALE") or "60",
        postgres_port=_port("SANDBOX_POSTGRES_PORT", 5432),
    )


def _port(var: str, default: int) -> int:
    raw = os.environ.get(var)
    if not raw:
        return default
    if not raw.isdigit() or not 0 < int(raw) < 65536:
        raise SandboxError(f"{var}={raw} is not a TCP port; set it to a number 1-65535")
    return int(raw)


def child_env() -> dict[str, str]:
    """The caller's environment minus real AWS credentials: no sandbox process needs them."""
    return {k: v for k, v in os.environ.items() if k not in REAL_CREDENTIALS}


def prefect_auth(lay: Layout) -> str:
    """``user:password`` of the sandbox's Prefect API, made once per sandbox (readable by its owner only)."""
    path = lay.state / "prefect-auth"
    try:
        found = path.read_text().strip()
    except OSError:
        found = ""
    if ":" in found:
        return found
    lay.state.mkdir(parents=True, exist_ok=True)
    made = f"ecs-pipeline:{secrets.token_urlsafe(24)}"
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as fh:
        fh.write(made + "\n")
    return made


def write_private(path: Path, text: str) -> None:
    """TEXT into PATH, readable by its owner only, replaced whole."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as fh:
        fh.write(text)
    tmp.replace(path)


def admin_key(lay: Layout) -> tuple[str, str]:
    """The sandbox's own access key id and secret, made once per sandbox (readable by its owner only).

    The AWS server treats this key as all-powerful (``SANDBOX_ADMIN_ACCESS_KEY_IDS``); nothing the
    pipeline runs reads this file: `ecs-pipeline` and workers load ``<state>/env``, the deploy user's.
    """
    found = read_env_file(lay.admin_env_file)
    if found.get("AWS_ACCESS_KEY_ID") and found.get("AWS_SECRET_ACCESS_KEY"):
        return found["AWS_ACCESS_KEY_ID"], found["AWS_SECRET_ACCESS_KEY"]
    alphabet = "ABCDEFGHIJKLMNOPQRSTUVWXYZ234567"
    made = ("AKIASANDBOX" + "".join(secrets.choice(alphabet) for _ in range(9)), secrets.token_urlsafe(30))
    write_private(lay.admin_env_file, f"AWS_ACCESS_KEY_ID={made[0]}\nAWS_SECRET_ACCESS_KEY={made[1]}\n")
    return made


# Ports picked for servers come from below the kernel's ephemeral range: a port inside it that was free
# when picked can be taken by an outgoing connection's local end before the server binds it (seen: a test
# session's Prefect server that could not bind its port). Above the usual fixed ports (4200, 4566, 5000).
PICK_FLOOR = 20000
_RANGE_FILE = Path("/proc/sys/net/ipv4/ip_local_port_range")


def _pickable() -> range | None:
    """The ports between PICK_FLOOR and the ephemeral range's start (None: the kernel leaves too few)."""
    try:
        low = int(_RANGE_FILE.read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return None
    return range(PICK_FLOOR, low) if low - PICK_FLOOR >= 1000 else None


def free_ports(count: int) -> list[int]:
    """COUNT distinct free ports on loopback, picked at random below the ephemeral range (see PICK_FLOOR) and
    bound together while picked, so none is handed out twice; the kernel's own choice where that range is
    too small."""
    pickable = _pickable()
    rng = secrets.SystemRandom()
    with contextlib.ExitStack() as held:
        ports: list[int] = []
        for _ in range(50 * count):
            if len(ports) == count:
                break
            port = 0 if pickable is None else rng.choice(pickable)
            if port in ports:
                continue
            sock = held.enter_context(socket.socket())
            try:
                sock.bind(("127.0.0.1", port))
            except OSError:  # in use
                continue
            ports.append(int(sock.getsockname()[1]))
        if len(ports) < count:
            raise SandboxError(f"found {len(ports)} of {count} free ports on 127.0.0.1 between {PICK_FLOOR} and "
                               "the ephemeral range; stop what holds them and try again")
        return ports


def read_env_file(path: Path) -> dict[str, str]:
    """KEY=VALUE lines of PATH ({} when it is missing)."""
    try:
        lines = path.read_text().splitlines()
    except OSError:
        return {}
    return {k.strip(): v.strip() for k, sep, v in (line.partition("=") for line in lines)
            if sep and k.strip() and not k.startswith("#")}


def write_env(lay: Layout, docker_host: str, key: tuple[str, str]) -> None:
    """KEY=VALUE lines a shell, a test or `ecs-pipeline` can load to talk to the sandbox.

    KEY: the AWS access key id and secret the pipeline signs with (the deploy user's).
    """
    values = {
        "AWS_ENDPOINT_URL": f"http://127.0.0.1:{lay.aws_port}",
        "AWS_ACCESS_KEY_ID": key[0],
        "AWS_SECRET_ACCESS_KEY": key[1],
        "AWS_DEFAULT_REGION": "us-east-1",
        "AWS_REGION": "us-east-1",
        "DOCKER_HOST": docker_host,
        "PREFECT_API_URL": f"http://127.0.0.1:{lay.prefect_port}/api",
        # The Prefect API answers only to this (HTTP basic auth): anything else on this machine,
        # a build's commands included, cannot start or change runs.
        "PREFECT_API_AUTH_STRING": prefect_auth(lay),
        "SANDBOX_REGISTRY": f"127.0.0.1:{lay.registry_port}",
        "SANDBOX_TIME_SCALE": lay.time_scale,
        "SANDBOX_DIR": str(lay.state),
        # The pipeline's own waits (canary steps, bake) shrink by the same factor in rehearsals.
        "ECS_PIPELINE_TIME_SCALE": lay.time_scale,
        "ECS_PIPELINE_CACHE": str(lay.state / "cache"),
        # Flow results (never the source of truth) stay with the sandbox's other state.
        "PREFECT_LOCAL_STORAGE_PATH": str(lay.state / "results"),
    }
    text = "".join(f"{k}={values[k]}\n" for k in ENV_KEYS)
    try:
        if lay.env_file.read_text() == text:
            return
    except OSError:
        pass
    write_private(lay.env_file, text)
