"""Test session set-up: one sandbox (Docker engine, registry, AWS endpoint, Prefect server).

``python -m sandbox up`` is idempotent and answers in about a second when
everything already runs, so every session calls it and loads its env file
before Prefect or boto3 read their settings. Tests talk to it over HTTP.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _load_env(path: Path) -> None:
    for line in path.read_text().splitlines():
        key, sep, value = line.partition("=")
        if sep and key and not key.startswith("#"):
            os.environ[key.strip()] = value.strip()


def pytest_configure(config: object) -> None:
    if os.environ.get("ECS_PIPELINE_TESTS_NO_SANDBOX"):
        return
    subprocess.run([sys.executable, "-m", "sandbox", "up"], cwd=ROOT, check=True)
    state = Path(os.environ.get("SANDBOX_DIR", ROOT / ".sandbox"))
    _load_env(state / "env")
    os.environ.setdefault("AWS_MAX_ATTEMPTS", "2")
    os.environ["PREFECT_LOGGING_LEVEL"] = "WARNING"
