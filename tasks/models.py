"""Service configuration: the only boundary where user input enters the pipeline.

One YAML file per service under ``deployments/``. Every cross-field rule lives
in a validator whose message names the field and the fix, so a wrong file fails
before any AWS or Docker call.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from tasks.errors import ConfigError

NAME = r"^[A-Za-z0-9][A-Za-z0-9_-]{0,254}$"


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class Source(_Model):
    """Where the code comes from: a git repository (URL or local path) and a branch."""

    repo: str = Field(min_length=1, description="git URL, or a path relative to the YAML file")
    branch: str = Field(default="main", min_length=1)


class Build(_Model):
    context: str = "."
    dockerfile: str = "Dockerfile"
    args: dict[str, str] = Field(default_factory=dict)
    timeout_seconds: Annotated[int, Field(ge=10, le=7200)] = 900


class Ecr(_Model):
    repository: Annotated[str, Field(pattern=r"^(?:[a-z0-9]+(?:[._-][a-z0-9]+)*/)*[a-z0-9]+(?:[._-][a-z0-9]+)*$")]


class Ecs(_Model):
    cluster: Annotated[str, Field(pattern=NAME)]
    service: Annotated[str, Field(pattern=NAME)]
    container: str = Field(min_length=1, description="container that gets the new image")
    container_port: Annotated[int, Field(ge=1, le=65535)]
    desired_count: Annotated[int, Field(ge=1, le=1000)] = 1


class Traffic(_Model):
    """How production traffic moves to green: CodeDeploy's three shapes."""

    type: Literal["all-at-once", "canary", "linear"] = "all-at-once"
    percent: Annotated[int, Field(ge=1, le=99)] | None = None
    interval_seconds: Annotated[int, Field(ge=0, le=86400)] | None = None

    @model_validator(mode="after")
    def _shape(self) -> Traffic:
        if self.type == "all-at-once":
            if self.percent is not None or self.interval_seconds is not None:
                raise ValueError("all-at-once takes no percent or interval_seconds; remove them")
        elif self.percent is None or self.interval_seconds is None:
            raise ValueError(
                f"{self.type} needs percent (1-99) and interval_seconds, "
                f"e.g. percent: 10, interval_seconds: 300"
            )
        return self

    def steps(self) -> list[int]:
        """Production weights of green, in order, ending at 100."""
        if self.type == "all-at-once" or self.percent is None:
            return [100]
        if self.type == "canary":
            return [self.percent, 100]
        out = list(range(self.percent, 100, self.percent))
        return [*out, 100]


class Strategy(_Model):
    type: Literal["task-sets", "codedeploy", "rolling"] = "task-sets"
    traffic: Traffic = Field(default_factory=Traffic)
    codedeploy_application: str | None = None
    codedeploy_group: str | None = None
    appspec: str | None = Field(default=None, description="appspec.yml path, for codedeploy")


class ListenerRef(_Model):
    """A listener by its load balancer name and port, or by ARN."""

    load_balancer: str | None = None
    port: Annotated[int, Field(ge=1, le=65535)] | None = None
    arn: str | None = None

    @model_validator(mode="after")
    def _one_way(self) -> ListenerRef:
        if self.arn is None and (self.load_balancer is None or self.port is None):
            raise ValueError("give either arn, or load_balancer and port")
        return self


class LoadBalancer(_Model):
    production_listener: ListenerRef
    test_listener: ListenerRef
    target_groups: tuple[str, str] = Field(description="the two target groups blue/green alternate on")

    @model_validator(mode="after")
    def _distinct(self) -> LoadBalancer:
        if self.target_groups[0] == self.target_groups[1]:
            raise ValueError("target_groups must name two different target groups")
        if self.production_listener == self.test_listener:
            raise ValueError("production_listener and test_listener must be different listeners")
        return self


class HttpCheck(_Model):
    path: str = Field(default="/", pattern=r"^/")
    expect_status: Annotated[int, Field(ge=100, le=599)] = 200
    expect_body: str | None = None
    consecutive: Annotated[int, Field(ge=1, le=100)] = 3
    max_latency_ms: Annotated[int, Field(ge=1, le=60000)] = 2000
    interval_seconds: Annotated[float, Field(ge=0, le=60)] = 0.2
    attempts: Annotated[int, Field(ge=1, le=1000)] = 30
    base_url: str | None = Field(default=None, description="overrides the test listener's URL")


class Verify(_Model):
    http: list[HttpCheck] = Field(default_factory=lambda: [HttpCheck()])
    alarms: list[str] = Field(default_factory=list)
    target_health: bool = True


class Timeouts(_Model):
    green_healthy_seconds: Annotated[int, Field(ge=1, le=7200)] = 300
    rollout_seconds: Annotated[int, Field(ge=1, le=14400)] = 1800


class ServiceConfig(_Model):
    name: Annotated[str, Field(pattern=NAME)]
    source: Source
    build: Build = Field(default_factory=Build)
    ecr: Ecr
    ecs: Ecs
    task_definition: str = Field(description="taskdef.json path, relative to the YAML file")
    strategy: Strategy = Field(default_factory=Strategy)
    load_balancer: LoadBalancer | None = None
    verify: Verify = Field(default_factory=Verify)
    bake_seconds: Annotated[float, Field(ge=0, le=86400)] = 60
    timeouts: Timeouts = Field(default_factory=Timeouts)
    queueing: Literal["supersede", "queue"] = Field(
        default="supersede", description="a newer SHA cancels a waiting run, or waits behind it"
    )
    approval: Literal["none", "required"] = "none"
    approval_timeout_seconds: Annotated[int, Field(ge=1, le=604800)] = 3600
    base_dir: str = Field(default=".", description="set by the loader: the YAML file's folder")

    @model_validator(mode="after")
    def _strategy_needs(self) -> ServiceConfig:
        kind = self.strategy.type
        if kind in ("task-sets", "codedeploy") and self.load_balancer is None:
            raise ValueError(
                f"strategy.type {kind} needs load_balancer "
                f"(production_listener, test_listener, target_groups); add it or use rolling"
            )
        return self

    def path(self, relative: str) -> Path:
        """A path from the YAML, resolved against the YAML's folder."""
        p = Path(relative)
        return p if p.is_absolute() else (Path(self.base_dir) / p).resolve()

    @property
    def repo_location(self) -> str:
        repo = self.source.repo
        if re.match(r"^[a-z+]+://|^git@", repo):
            return repo
        return str(self.path(repo))

    @property
    def codedeploy_application(self) -> str:
        return self.strategy.codedeploy_application or f"AppECS-{self.ecs.cluster}-{self.ecs.service}"

    @property
    def codedeploy_group(self) -> str:
        return self.strategy.codedeploy_group or f"DgpECS-{self.ecs.cluster}-{self.ecs.service}"


def _field_path(loc: tuple[Any, ...]) -> str:
    return ".".join(str(p) for p in loc) or "(top level)"


def parse_service(data: Any, *, source: str, base_dir: str | Path = ".") -> ServiceConfig:
    """Validate already-loaded YAML data; errors name the file and field path."""
    if not isinstance(data, dict):
        raise ConfigError(f"{source}: expected a mapping of settings at the top level")
    try:
        return ServiceConfig.model_validate({**data, "base_dir": str(base_dir)})
    except ValidationError as exc:
        lines = []
        for err in exc.errors():
            msg = err["msg"].removeprefix("Value error, ")
            if err["type"] == "extra_forbidden":
                msg = "unknown field; check the spelling against README's config reference"
            lines.append(f"  {_field_path(err['loc'])}: {msg}")
        raise ConfigError(f"{source}: invalid service config\n" + "\n".join(lines)) from None


def load_service(path: str | Path) -> ServiceConfig:
    """Read and validate one service YAML file."""
    p = Path(path)
    try:
        text = p.read_text()
    except OSError as exc:
        raise ConfigError(f"{p}: cannot read service config ({exc.strerror})") from exc
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise ConfigError(f"{p}: not valid YAML: {exc}") from exc
    return parse_service(data, source=str(p), base_dir=p.parent.resolve())


def find_service(name: str, directory: Path) -> ServiceConfig:
    """The config for NAME from deployments/NAME.yaml (or any file whose name: matches)."""
    d = directory
    direct = d / f"{name}.yaml"
    if direct.exists():
        cfg = load_service(direct)
        if cfg.name == name:
            return cfg
    for cfg in load_all_services(d):
        if cfg.name == name:
            return cfg
    known = ", ".join(sorted(c.name for c in load_all_services(d))) or "none"
    raise ConfigError(f"no service named {name!r} under {d} (known: {known})")


def load_all_services(directory: Path) -> list[ServiceConfig]:
    d = directory
    return [load_service(p) for p in sorted(d.glob("*.yaml")) + sorted(d.glob("*.yml"))]
