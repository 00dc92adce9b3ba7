"""Test session set-up: one sandbox (Docker engine, registry, AWS endpoint, Prefect server).

``python -m sandbox up`` is idempotent and answers in about a second when
everything already runs, so every session calls it and loads its env file
before Prefect or boto3 read their settings. Tests talk to it over HTTP.
"""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

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
    os.environ["PREFECT_LOGGING_LEVEL"] = "WARNING"


@pytest.fixture
def new_service(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Callable[..., Any]]:
    """make_service(...) for this test, found by the pipeline, removed from the sandbox afterwards."""
    from tests.release_helpers import ServiceUnderTest, make_service

    made: list[ServiceUnderTest] = []

    def make(**kwargs: Any) -> ServiceUnderTest:
        sut = make_service(tmp_path / f"service{len(made)}", **kwargs)
        monkeypatch.setenv("ECS_PIPELINE_DEPLOYMENTS", str(sut.yaml_path.parent))
        made.append(sut)
        return sut

    yield make
    for sut in made:
        sut.cleanup()
