"""What the attack tests share: a service of their own and one build of a buildspec, through run_buildspec."""

from __future__ import annotations

import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

from prefect import flow

from tasks.aws.clients import AwsClients
from tasks.build.buildspec_runner import BuildRun, run_buildspec
from tasks.config.buildspec import parse_buildspec
from tasks.config.models import ServiceConfig, parse_service
from tasks.core.settings import Settings


def service(tmp_path: Path, **build: Any) -> ServiceConfig:
    """A service named atk<random> whose build section is BUILD."""
    name = "atk" + uuid.uuid4().hex[:8]
    return parse_service(
        {"name": name, "source": {"repo": "https://git.example.com/org/app"}, "ecr": {"repository": name},
         "ecs": {"cluster": "c", "service": name, "container": "web", "container_port": 80},
         "task_definition": "taskdef.json", "strategy": {"type": "rolling"}, "build": build},
        source="test.yaml", base_dir=tmp_path,
    )


class Build:
    """One buildspec run for CFG in a flow (its reports are artifacts of a run), its output lines kept."""

    def __init__(self, cfg: ServiceConfig, tmp_path: Path, uri: str = "127.0.0.1:1/repo",
                 settings: Settings | None = None) -> None:
        self.cfg, self.uri = cfg, uri
        self.lines: list[str] = []
        self.src = tmp_path / "src"
        self.src.mkdir(parents=True, exist_ok=True)
        self.log: Callable[[str], None] = self.lines.append
        self.clients = AwsClients(settings or Settings(artifacts_dir=tmp_path / "artifacts"))

    def __call__(self, commands: list[str], tags: tuple[str, ...] = (), **spec: Any) -> BuildRun:
        buildspec = parse_buildspec({"version": 0.2, "phases": {"build": {"commands": commands}}, **spec},
                                    "buildspec.yml")

        @flow(name="attack-build", persist_result=False)
        def in_flow() -> BuildRun:
            return run_buildspec(self.cfg, self.clients, buildspec, "e" * 40, self.src, self.uri,
                                 self.log, tags=tags)

        return in_flow()

    def output(self) -> list[str]:
        return [line for line in self.lines if not line.startswith("[")]
