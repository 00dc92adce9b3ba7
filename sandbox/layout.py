"""Where the sandbox lives: its state directory, its loopback ports and the env file it writes.

Read by `up`/`down`/`status` (``manage.py``), by the seeders and by tests, so
it starts nothing and reads only the environment.
"""

from __future__ import annotations

import os
import secrets
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


def write_env(lay: Layout, docker_host: str) -> None:
    """KEY=VALUE lines a shell, a test or `ecs-pipeline` can load to talk to the sandbox."""
    values = {
        "AWS_ENDPOINT_URL": f"http://127.0.0.1:{lay.aws_port}",
        "AWS_ACCESS_KEY_ID": "testing",
        "AWS_SECRET_ACCESS_KEY": "testing",
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
    tmp = lay.env_file.with_suffix(".tmp")
    tmp.write_text(text)
    tmp.replace(lay.env_file)
