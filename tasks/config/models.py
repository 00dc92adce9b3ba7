"""Service configuration: the only boundary where user input enters the pipeline.

One YAML file per service under ``deployments/``. Every cross-field rule lives
in a validator whose message names the field and the fix, and loading renders
the task definition and appspec with placeholders, so a wrong file fails before
any AWS or Docker call. Numbers and booleans are strict: ``"2"`` is not 2.
"""

from __future__ import annotations

import functools
import re
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, ValidationInfo, field_validator, model_validator

from tasks.config import appspec, taskdef
from tasks.config import buildspec as specs
from tasks.config.inputs import REPOSITORY, check_relative, confined, parse_yaml, read_text, regular_text, shown_key
from tasks.core.errors import ConfigError

NAME = r"^[A-Za-z0-9][A-Za-z0-9_-]{0,254}$"


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, strict=True)


class Source(_Model):
    """Where the code comes from: a git repository (URL or local path) and a branch."""

    repo: str = Field(min_length=1, description="git URL, or a path relative to the YAML file")
    branch: str = Field(default="main", min_length=1)


class BuildResources(_Model):
    """What one build (its commands, its engine and every container it starts) may use at once."""

    memory_mib: Annotated[int, Field(ge=256, le=262144)] = 3072
    cpus: Annotated[float, Field(gt=0, le=96)] = 2.0
    pids: Annotated[int, Field(ge=64, le=65536)] = 2048


EGRESS = r"^[A-Za-z0-9]([A-Za-z0-9.-]{0,251}[A-Za-z0-9])?:[0-9]{1,5}$"


class Build(_Model):
    context: str = "."
    dockerfile: str = "Dockerfile"
    args: dict[str, str] = Field(default_factory=dict)
    timeout_seconds: Annotated[int, Field(ge=10, le=7200)] = 900
    buildspec: str | dict[str, Any] | None = Field(
        default=None, description="buildspec.yml path in the repository, or the buildspec inline (YAML)"
    )
    image: str | None = Field(default=None, min_length=1, description="build image (a registry reference, pulled "
                              "into the build's own engine); without it the standard image")
    runner: Literal["container", "host-unsafe"] = Field(
        default="container", description="container: the build box (docs/buildspec.md); host-unsafe: the "
        "buildspec runs on the worker as the worker's user and the Dockerfile is built by the worker's Docker "
        "engine, refused for triggered runs unless "
        "ECS_PIPELINE_ALLOW_HOST_BUILDS is set")
    egress: list[Annotated[str, Field(pattern=EGRESS)]] = Field(
        default_factory=list, description="host:port endpoints a build may reach besides its own registry "
        "(and, with role_arn, the AWS endpoints of its identity)")
    resources: BuildResources = Field(default_factory=BuildResources)
    role_arn: str | None = Field(
        default=None, pattern=r"^arn:aws[a-z-]*:iam::\d{12}:role/[A-Za-z0-9+=,.@_/-]{1,512}$",
        description="the build's own IAM role (assumed for each build, narrowed to the service's ECR repository "
        "and the parameters and secrets its buildspec names); without it the build gets no AWS credentials",
    )

    @field_validator("context", "dockerfile")
    @classmethod
    def _inside_repository(cls, value: str, info: ValidationInfo) -> str:
        """Docker sends the context (and reads the Dockerfile) from the host: never outside the checkout."""
        return check_relative(value, f"build.{info.field_name}", REPOSITORY)

    @field_validator("buildspec")
    @classmethod
    def _buildspec(cls, value: str | dict[str, Any] | None) -> str | dict[str, Any] | None:
        if value is None:
            return None
        if isinstance(value, str) and "\n" not in value.strip():
            return check_relative(value, "build.buildspec", REPOSITORY)  # a file of the commit, read after checkout
        inline = specs.load_buildspec if isinstance(value, str) else specs.parse_buildspec
        try:
            inline(value, "inline buildspec")  # type: ignore[arg-type]
        except ConfigError as exc:
            raise ValueError(exc.message) from None
        return value

    def inline_buildspec(self) -> specs.BuildSpec | None:
        """The buildspec written in the service YAML (None: none, or a file of the repository)."""
        if isinstance(self.buildspec, dict):
            return specs.parse_buildspec(self.buildspec, "inline buildspec")
        if isinstance(self.buildspec, str) and "\n" in self.buildspec.strip():
            return specs.load_buildspec(self.buildspec, "inline buildspec")
        return None


class Ecr(_Model):
    repository: Annotated[str, Field(pattern=r"^(?:[a-z0-9]+(?:[._-][a-z0-9]+)*/)*[a-z0-9]+(?:[._-][a-z0-9]+)*$")]


class CapacityProvider(_Model):
    """One item of a capacity provider strategy, as ECS takes it (the provider must be on the cluster)."""

    capacity_provider: str = Field(min_length=1, max_length=255)
    weight: Annotated[int, Field(ge=0, le=1000)] = 1
    base: Annotated[int, Field(ge=0, le=100000)] = 0

    def as_aws(self) -> dict[str, Any]:
        return {"capacityProvider": self.capacity_provider, "weight": self.weight, "base": self.base}


class Network(_Model):
    """The awsvpc network every task set of the task-sets strategy runs in (CreateTaskSet's awsvpcConfiguration).

    An EXTERNAL service holds no network of its own: a new one gets it from here; later releases
    take the primary task set's when this is not set.
    """

    subnets: list[Annotated[str, Field(pattern=r"^subnet-[0-9a-f]{8,17}$")]] = Field(min_length=1, max_length=16)
    security_groups: list[Annotated[str, Field(pattern=r"^sg-[0-9a-f]{8,17}$")]] = Field(
        default_factory=list, max_length=5)
    assign_public_ip: bool = Field(default=False, description="true only for public subnets without a NAT")

    def as_aws(self) -> dict[str, Any]:
        vpc: dict[str, Any] = {"subnets": list(self.subnets),
                               "assignPublicIp": "ENABLED" if self.assign_public_ip else "DISABLED"}
        if self.security_groups:
            vpc["securityGroups"] = list(self.security_groups)
        return {"awsvpcConfiguration": vpc}


class Ecs(_Model):
    cluster: Annotated[str, Field(pattern=NAME)]
    service: Annotated[str, Field(pattern=NAME)]
    container: str = Field(min_length=1, description="container that gets the new image")
    container_port: Annotated[int, Field(ge=1, le=65535)]
    desired_count: Annotated[int, Field(ge=1, le=1000)] = 1
    capacity_provider_strategy: list[CapacityProvider] = Field(
        default_factory=list, max_length=20,
        description="task-sets: CreateTaskSet's capacityProviderStrategy instead of launch type FARGATE "
        "(e.g. FARGATE_SPOT); without it, the primary task set's strategy, else FARGATE")


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
    type: Literal["task-sets", "codedeploy", "rolling", "ecs-native"] = "task-sets"
    traffic: Traffic = Field(default_factory=Traffic)
    wait_until: Literal["done", "traffic-shifted"] = Field(
        default="done", description="ecs-native: follow ECS through the bake and clean-up, or stop once "
        "production moved (ECS finishes; the next run picks the deployment up)")
    pause_timeout_seconds: Annotated[int, Field(ge=60, le=86400)] = Field(
        default=3600, description="ecs-native: how long ECS holds production at the verification pause "
        "before it rolls back on its own")
    infrastructure_role: str | None = Field(
        default=None, description="ecs-native: the IAM role (name or ARN) ECS assumes to move the listener rules "
        "(loadBalancers[].advancedConfiguration.roleArn); `migrate --to ecs-native` needs it")
    codedeploy_application: str | None = None
    codedeploy_group: str | None = None
    appspec: str | None = Field(default=None, description="appspec.yml path, for codedeploy")

    @field_validator("traffic")
    @classmethod
    def _traffic_shifts(cls, value: Traffic, info: ValidationInfo) -> Traffic:
        if info.data.get("type") == "rolling":
            raise ValueError(
                "rolling does not shift traffic (ECS replaces tasks in place), so strategy.traffic "
                "would do nothing; remove strategy.traffic, or use strategy.type task-sets or "
                "codedeploy for all-at-once/canary/linear traffic"
            )
        return value

    @model_validator(mode="after")
    def _native_percent(self) -> Strategy:
        # botocore's ECS model, LinearConfiguration.stepPercent: "Valid values are multiples of 0.1 from 3.0 to
        # 100.0" (CanaryConfiguration.canaryPercent: "from 0.1 to 100.0", which 1-99 already satisfies).
        t = self.traffic
        if self.type == "ecs-native" and t.type == "linear" and t.percent is not None and t.percent < 3:
            raise ValueError(f"strategy.traffic.percent {t.percent}: ECS linear deployments shift 3 to 100 percent "
                             "a step (LinearConfiguration.stepPercent); use percent: 3 or more")
        return self

    @field_validator("appspec")
    @classmethod
    def _appspec_inside(cls, value: str | None) -> str | None:
        return None if value is None else check_relative(value, "strategy.appspec")


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
    target_groups: tuple[str, str] = Field(
        strict=False, description="the two target groups blue/green alternate on"
    )

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


HOST = r"^[A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?(\.[A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?)*$"


class Verify(_Model):
    http: list[HttpCheck] = Field(default_factory=lambda: [HttpCheck()])
    alarms: list[str] = Field(default_factory=list)
    target_health: bool = True
    host: str | None = Field(
        default=None, pattern=HOST, max_length=253,
        description="the service's own host name: sent as Host header and TLS SNI, and the name its "
        "certificate is checked against, while checks connect to the listener's address",
    )
    ca_bundle: str | None = Field(
        default=None, min_length=1,
        description="PEM file of the CA that issued the listener's certificate (a private CA); "
        "relative to the YAML file or absolute",
    )
    revision_header: str | None = Field(
        default=None, pattern=r"^[A-Za-z0-9-]{1,64}$",
        description="response header in which the service names its commit: a check counts only "
        "answers from this release (the proof it reached green, not blue)",
    )
    propagation_seconds: Annotated[float, Field(ge=0, le=3600)] = Field(
        default=60, description="without revision_header: how long checks wait after a listener "
        "change before counting (AWS: rule updates take effect after a short time)",
    )


class ErrorRateRule(_Model):
    max_increase: Annotated[float, Field(ge=0, le=1)] = Field(
        default=0.01, description="green's 5xx rate may exceed blue's by at most this much, absolute "
        "(0.01: one percentage point)")


class LatencyRule(_Model):
    max_ratio: Annotated[float, Field(ge=1, le=100)] = Field(
        description="green's percentile response time may be at most this many times blue's")


class Analysis(_Model):
    """Canary analysis: each traffic step judges green against blue from the target groups' ALB metrics."""

    min_requests: Annotated[int, Field(ge=1, le=1_000_000)] = Field(
        default=50, description="requests each side needs in a step window before it is judged; fewer is "
        "inconclusive and the step waits (up to inconclusive_wait_seconds) for more")
    error_rate: ErrorRateRule | None = Field(default_factory=ErrorRateRule)
    latency_p50: LatencyRule | None = None
    latency_p95: LatencyRule | None = Field(default_factory=lambda: LatencyRule(max_ratio=1.25))
    latency_p99: LatencyRule | None = None
    method: Literal["thresholds", "mann-whitney"] = Field(
        default="thresholds", description="thresholds: the rules on the window's values; mann-whitney: a "
        "rule fails only when the difference is also statistically significant (scipy), where samples allow")
    alpha: Annotated[float, Field(gt=0, lt=0.5)] = Field(
        default=0.05, description="mann-whitney: the significance level a failed rule must also reach")
    inconclusive_wait_seconds: Annotated[int, Field(ge=0, le=86400)] = Field(
        default=300, description="how long a step with too few requests waits for more before it is decided")
    on_inconclusive: Literal["fail", "pass"] = Field(
        default="fail", description="what a step still without enough requests after the wait is: a "
        "rollback (fail) or a pass with a warning")


class Migration(_Model):
    """A one-off task from the new task definition, run after green is up and before production moves."""

    command: list[str] = Field(min_length=1, max_length=100, description="the container's command override, "
                               "e.g. [\"./manage.py\", \"migrate\"]")
    container: str | None = Field(default=None, min_length=1, description="the container to run it in; "
                                  "default ecs.container")
    timeout_seconds: Annotated[int, Field(ge=1, le=86400)] = Field(
        default=900, description="the task is stopped and the release rolled back after this long")


class Timeouts(_Model):
    green_healthy_seconds: Annotated[int, Field(ge=1, le=7200)] = Field(
        default=300, description="green's tasks pulled and started; health-check time is added from the target group"
    )
    rollout_seconds: Annotated[int, Field(ge=1, le=14400)] = 1800
    hook_seconds: Annotated[int, Field(ge=1, le=3600)] = Field(
        default=3600,
        description="the longest an appspec hook's function takes to report its status (codedeploy); "
        "CodeDeploy allows a hook one hour",
    )


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
    network: Network | None = Field(default=None, description="task-sets: subnets, security groups, public IP")
    queueing: Literal["supersede", "queue"] = Field(
        default="supersede", description="a newer SHA cancels a waiting run, or waits behind it"
    )
    approval: Literal["none", "required"] = "none"
    analysis: Analysis | None = Field(
        default=None, description="judge green against blue at every traffic step (strategies with steps)")
    depends_on: list[Annotated[str, Field(pattern=NAME)]] = Field(
        default_factory=list, max_length=100,
        description="services (by name) a fleet release deploys before this one: it starts only once they are "
        "Deployed")
    migrate: Migration | None = Field(
        default=None, description="a migration run as a one-off ECS task from the new task definition; "
        "its exit code gates the shift and must leave the schema usable by blue")
    deploy_role_arn: str | None = Field(
        default=None, pattern=r"^arn:aws[a-z-]*:iam::\d{12}:role/[A-Za-z0-9+=,.@_/-]{1,512}$",
        description="the IAM role this service's releases assume (CodePipeline's per-pipeline service role): "
        "every AWS call of its releases, status and rollbacks is made as this role, which holds the policy "
        "`ecs-pipeline iam SERVICE --role deploy` prints; the worker's own identity then needs only "
        "sts:AssumeRole on it, and the role's trust policy must name that identity")
    approval_timeout_seconds: Annotated[int, Field(ge=1, le=1209600)] = Field(
        default=3600, description="how long a release waits for approval, up to 14 days (ECS's PAUSE hook "
        "limit); a run from a deployment waits suspended, without holding a worker")
    base_dir: str = Field(default=".", description="set by the loader: the YAML file's folder")

    @field_validator("name")
    @classmethod
    def _not_the_fleet(cls, value: str) -> str:
        if value == "fleet":  # its artifacts (fleet-live, fleet-release) would be the fleet's own
            raise ValueError("'fleet' names the fleet's own views in the Prefect UI; give the service another name")
        return value

    @model_validator(mode="after")
    def _approval_fits_codedeploy(self) -> ServiceConfig:
        # CodeDeploy holds green at Ready for at most 2880 minutes (deploymentReadyOption.waitTimeInMinutes,
        # the strictest reading of its documented limits), so a longer approval would outlive green.
        waits = self.approval == "required" and self.strategy.type == "codedeploy"
        if waits and self.approval_timeout_seconds > 172800:
            raise ValueError(
                f"approval_timeout_seconds is {self.approval_timeout_seconds}, but CodeDeploy holds a deployment "
                "at Ready for at most 2880 minutes: set 172800 or less, or use strategy.type ecs-native (14 days)"
            )
        return self

    @model_validator(mode="after")
    def _not_on_itself(self) -> ServiceConfig:
        if self.name in self.depends_on:
            raise ValueError(f"depends_on names the service itself ({self.name}); remove it")
        if len(set(self.depends_on)) != len(self.depends_on):
            raise ValueError("depends_on names a service twice; list each once")
        return self

    @field_validator("task_definition")
    @classmethod
    def _taskdef_inside(cls, value: str) -> str:
        return check_relative(value, "task_definition")

    @model_validator(mode="after")
    def _strategy_needs(self) -> ServiceConfig:
        kind = self.strategy.type
        if kind in ("task-sets", "codedeploy", "ecs-native") and self.load_balancer is None:
            raise ValueError(
                f"strategy.type {kind} needs load_balancer "
                f"(production_listener, test_listener, target_groups); add it or use rolling"
            )
        if self.analysis is not None and self.strategy.traffic.type == "all-at-once":
            raise ValueError(
                "analysis compares green with blue while both take production traffic, which needs traffic "
                "steps: set strategy.traffic to canary or linear (with percent and interval_seconds), or remove "
                "analysis"
            )
        return self

    def path(self, relative: str) -> Path:
        """A file the config names, inside the YAML's folder (anything else is refused)."""
        field = {self.task_definition: "task_definition", self.strategy.appspec: "strategy.appspec"}
        return confined(Path(self.base_dir), relative, field.get(relative, "a file path"), self.base_dir)

    @property
    def repo_location(self) -> str:
        """A repository, not a file the pipeline reads: a URL, or a path anywhere."""
        repo = self.source.repo
        if re.match(r"^[a-z+]+://|^git@", repo):
            return repo
        p = Path(repo).expanduser()
        return str(p if p.is_absolute() else (Path(self.base_dir) / p).resolve())

    @property
    def codedeploy_application(self) -> str:
        return self.strategy.codedeploy_application or f"AppECS-{self.ecs.cluster}-{self.ecs.service}"

    @property
    def codedeploy_group(self) -> str:
        return self.strategy.codedeploy_group or f"DgpECS-{self.ecs.cluster}-{self.ecs.service}"


def _field_path(loc: tuple[Any, ...]) -> str:
    return ".".join(str(p) if isinstance(p, int) else shown_key(p) for p in loc) or "(top level)"


# Strict types: say what is expected and how to write it, never the value given.
_EXPECTED = {
    "int_type": "expected a whole number, written without quotes (e.g. 2)",
    "float_type": "expected a number, written without quotes (e.g. 60 or 0.5)",
    "bool_type": "expected true or false, without quotes",
    "string_type": "expected text",
    "model_type": "expected a mapping of fields",
    "dict_type": "expected a mapping",
    "list_type": "expected a list",
    "tuple_type": "expected a list",
    "extra_forbidden": "unknown field; check the spelling against docs/configuration.md",
    "missing": "required field is missing; add it (see docs/configuration.md)",
}


def parse_service(data: Any, *, source: str, base_dir: str | Path = ".") -> ServiceConfig:
    """Validate already-loaded YAML data; errors name the file and field path."""
    if not isinstance(data, dict):
        raise ConfigError(f"{source}: expected a mapping of settings at the top level")
    try:
        return ServiceConfig.model_validate({**data, "base_dir": str(base_dir)})
    except ValidationError as exc:
        lines = []
        for err in exc.errors():
            msg = _EXPECTED.get(err["type"]) or err["msg"].removeprefix("Value error, ")
            lines.append(f"  {_field_path(err['loc'])}: {msg}")
        raise ConfigError(f"{source}: invalid service config\n" + "\n".join(lines)) from None


def check_templates(cfg: ServiceConfig, source: str) -> None:
    """Render the task definition and appspec with placeholders: a broken one fails now, not after the build."""
    path = confined(Path(cfg.base_dir), cfg.task_definition, "task_definition", source)
    where = f"{path} (task_definition of {source})"
    template = taskdef.parse_template(read_text(path, "task_definition", source), where)
    rendered = taskdef.render_task_definition(
        template, image="<IMAGE>", container=cfg.ecs.container, sha="0" * 40, service=cfg.name, source=where
    )
    taskdef.container_named(rendered, cfg.ecs.container, where)
    taskdef.check_register_input(rendered, where)
    routed = cfg.ecs.container_port if cfg.load_balancer is not None else None
    if cfg.network is not None and rendered.get("networkMode") != "awsvpc":
        raise ConfigError(
            f"{source}: network is set but {where} has networkMode {rendered.get('networkMode') or 'unset'}; "
            "ECS takes a network configuration only for networkMode awsvpc: remove network or use awsvpc"
        )
    taskdef.check_aws_rules(rendered, cfg.ecs.container, routed, where)
    if cfg.strategy.type == "codedeploy" or cfg.strategy.appspec:
        appspec_for(cfg, appspec.PLACEHOLDER_ARN, source=source)


def appspec_for(cfg: ServiceConfig, task_definition_arn: str, *, source: str | None = None) -> dict[str, Any]:
    """This release's appspec: strategy.appspec (inside the YAML's folder) or the default one.

    The service loader calls it with ``PLACEHOLDER_ARN`` so a broken appspec
    fails before anything is built; the codedeploy strategy calls it with the
    registered ARN. ``source`` names the service YAML in errors.
    """
    origin = source or f"{cfg.base_dir} (service config)"
    if not cfg.strategy.appspec:
        return appspec.render_appspec(None, task_definition_arn, cfg.ecs.container, cfg.ecs.container_port)
    path = confined(Path(cfg.base_dir), cfg.strategy.appspec, "strategy.appspec", origin)
    text = read_text(path, "strategy.appspec", origin)
    where = f"{path} (strategy.appspec of {origin})"
    return appspec.render_appspec(text, task_definition_arn, cfg.ecs.container, cfg.ecs.container_port, where)


def load_service(path: str | Path) -> ServiceConfig:
    """Read and validate one service YAML file and the templates it names."""
    p = Path(path)
    try:
        text = regular_text(p)
    except UnicodeDecodeError:
        raise ConfigError(f"{p}: service config is not UTF-8 text") from None
    except ValueError as exc:
        raise ConfigError(f"{p}: service config {exc}") from None
    except OSError as exc:
        raise ConfigError(f"{p}: cannot read service config ({exc.strerror})") from exc
    cfg = parse_service(parse_yaml(text, str(p), "service config"), source=str(p), base_dir=p.parent.resolve())
    check_templates(cfg, str(p))
    return cfg


def _service_files(directory: Path) -> list[Path]:
    """The folder's *.yaml and *.yml files, but not an appspec a service names (it may sit beside its YAML)."""
    files = sorted(directory.glob("*.yaml")) + sorted(directory.glob("*.yml"))
    named = {(directory / ref).resolve() for f in files if isinstance(ref := _lenient(f, "strategy", "appspec"), str)}
    return [f for f in files if f.resolve() not in named]


def _ecs_target(path: Path) -> tuple[str, str] | None:
    """(cluster, service) as written in a YAML file, or None when it cannot tell."""
    cluster, service = _lenient(path, "ecs", "cluster"), _lenient(path, "ecs", "service")
    return (str(cluster), str(service)) if cluster is not None and service is not None else None


def _lenient(path: Path, section: str, key: str) -> Any:
    """SECTION.KEY as written in a YAML file, or None: a lenient read of the folder's other files.

    Every release reads every other file of its folder: each text is parsed once per process.
    """
    try:
        value = (_parsed(regular_text(path)).get(section) or {}).get(key)
    except (OSError, ValueError, AttributeError):  # UnicodeDecodeError is a ValueError
        return None
    return value if value not in ("", None) else None


@functools.lru_cache(maxsize=256)
def _parsed(text: str) -> dict[str, Any]:
    try:
        data = yaml.safe_load(text)
    except (yaml.YAMLError, RecursionError):
        return {}
    return data if isinstance(data, dict) else {}


def _same_target(path: Path, target: tuple[str, str], others: list[Path]) -> None:
    for other in others:
        if other.resolve() != path.resolve() and _ecs_target(other) == target:
            first, second = sorted([path, other])
            raise ConfigError(
                f"{first} and {second} both deploy ECS service {target[1]} in cluster {target[0]}; "
                "each would take its own lock and they would race: keep one file per ECS service"
            )


def find_service(name: str, directory: Path) -> ServiceConfig:
    """The config for NAME from deployments/NAME.yaml (or any file whose name: matches)."""
    d = directory
    direct = d / f"{name}.yaml"
    if direct.exists():
        cfg = load_service(direct)
        if cfg.name == name:
            _same_target(direct, (cfg.ecs.cluster, cfg.ecs.service), _service_files(d))
            return cfg
    for cfg in load_all_services(d):
        if cfg.name == name:
            return cfg
    known = ", ".join(sorted(c.name for c in load_all_services(d))) or "none"
    raise ConfigError(f"no service named {name!r} under {d} (known: {known})")


def load_all_services(directory: Path) -> list[ServiceConfig]:
    """Every service file in the folder; two files for one ECS service (or one name) are refused."""
    loaded = [(p, load_service(p)) for p in _service_files(directory)]
    for i, (path, cfg) in enumerate(loaded):
        for other, seen in loaded[:i]:
            if seen.name == cfg.name:
                raise ConfigError(
                    f"{other} and {path} both name service {cfg.name}; give each file its own name"
                )
        _same_target(path, (cfg.ecs.cluster, cfg.ecs.service), [p for p, _ in loaded[:i]])
    return [cfg for _, cfg in loaded]
