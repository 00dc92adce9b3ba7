"""Task definition rendering and comparison: pure functions over plain dicts.

A template is either CodePipeline's ``taskdef.json`` (``<IMAGE1_NAME>`` where
the image goes) or a plain task definition, even one copied from
``describe-task-definition`` output; the container named in the service config
gets the new image. ``<AWS_ACCOUNT_ID>`` and ``<AWS_REGION>`` anywhere in a
template's text are this product's own placeholders (CodePipeline knows only
``<IMAGE1_NAME>``): the caller passes the account (STS GetCallerIdentity) and
the region in, so one template serves every account. No boto3, docker or
Prefect here.
"""

from __future__ import annotations

import copy
import json
import re
from collections.abc import Iterator
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any

from tasks.config.inputs import load_json, shown_key, shown_path
from tasks.core.errors import ConfigError

PLACEHOLDER = "<IMAGE1_NAME>"
ACCOUNT_PLACEHOLDER = "<AWS_ACCOUNT_ID>"
REGION_PLACEHOLDER = "<AWS_REGION>"
_AWS_PLACEHOLDER = re.compile(r"<AWS_[A-Z0-9_]*>")
_ACCOUNT = re.compile(r"^\d{12}$")
SHA_TAG = "ecs-pipeline:git-sha"
SERVICE_TAG = "ecs-pipeline:service"

# Present in DescribeTaskDefinition output, refused by RegisterTaskDefinition.
READ_ONLY = frozenset(
    {
        "taskDefinitionArn",
        "revision",
        "status",
        "requiresAttributes",
        "compatibilities",
        "registeredAt",
        "registeredBy",
        "deregisteredAt",
        "deleteRequestedAt",
    }
)


@lru_cache(maxsize=1)
def _register_input_shape() -> Any:
    """botocore's RegisterTaskDefinition input shape, decoded once per process (the ECS model is megabytes)."""
    import botocore.session

    return botocore.session.get_session().get_service_model("ecs").operation_model("RegisterTaskDefinition").input_shape


@lru_cache(maxsize=1)
def register_input_keys() -> frozenset[str]:
    """RegisterTaskDefinition's accepted top-level keys, from botocore's own model."""
    return frozenset(_register_input_shape().members)


def load_template(path: Path) -> dict[str, Any]:
    """Read a taskdef.json; a ``{"taskDefinition": {...}}`` wrapper (describe output) is unwrapped."""
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError:
        raise ConfigError(f"{path}: not UTF-8 text; expected a task definition template") from None
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read task definition template ({exc.strerror})") from exc
    return parse_template(text, str(path))


def parse_template(text: str, source: str) -> dict[str, Any]:
    """A taskdef.json's text to the task definition; errors give line and column, never the text."""
    try:
        data = load_json(text, source, "task definition template")
    except json.JSONDecodeError as exc:
        raise ConfigError(
            f"{source}: not valid JSON at line {exc.lineno} column {exc.colno}: {exc.msg}"
        ) from None
    if isinstance(data, dict) and isinstance(data.get("taskDefinition"), dict):
        data = data["taskDefinition"]
    if not isinstance(data, dict):
        raise ConfigError(f"{source}: expected a JSON object with family and containerDefinitions")
    return data


def container_named(td: dict[str, Any], name: str, source: str) -> dict[str, Any]:
    """The container the service config names; imagedefinitions.json and the appspec use it too."""
    containers = [c for c in td.get("containerDefinitions", []) if isinstance(c, dict)]
    named = [c for c in containers if c.get("name") == name]
    if not named:
        names = ", ".join(shown_key(c.get("name")) for c in containers)
        raise ConfigError(
            f"{source}: no container named {name!r} (containers: {names}); "
            "fix ecs.container in the service config or the template"
        )
    return named[0]


def _strings(value: Any, path: str) -> Iterator[tuple[str, str]]:
    """(field path, text) of every string in a template, keys included."""
    if isinstance(value, str):
        yield path, value
    elif isinstance(value, dict):
        for key, item in value.items():
            where = f"{path}.{shown_key(key)}" if path else shown_key(key)
            if isinstance(key, str):
                yield where, key
            yield from _strings(item, where)
    elif isinstance(value, list):
        for i, item in enumerate(value):
            yield from _strings(item, f"{path}[{i}]")


def uses_account(template: dict[str, Any]) -> bool:
    """Whether the template names ``<AWS_ACCOUNT_ID>`` (only then is the account looked up)."""
    return any(ACCOUNT_PLACEHOLDER in text for _, text in _strings(template, ""))


def check_placeholders(template: dict[str, Any], source: str) -> None:
    """A ``<AWS_...>`` placeholder other than the two this product fills would reach AWS as text.

    The name is shown as written: ``<AWS_`` and underscores never make an access key.
    """
    for where, text in _strings(template, ""):
        for found in _AWS_PLACEHOLDER.findall(text):
            if found not in (ACCOUNT_PLACEHOLDER, REGION_PLACEHOLDER):
                raise ConfigError(
                    f"{source}: {where}: unknown placeholder {found[:40]}; "
                    f"the pipeline fills {ACCOUNT_PLACEHOLDER} and {REGION_PLACEHOLDER} only"
                )


def _filled(value: Any, account: str | None, region: str | None) -> Any:
    if isinstance(value, str):
        if account is not None:
            value = value.replace(ACCOUNT_PLACEHOLDER, account)
        return value.replace(REGION_PLACEHOLDER, region) if region is not None else value
    if isinstance(value, dict):
        return {_filled(k, account, region): _filled(v, account, region) for k, v in value.items()}
    if isinstance(value, list):
        return [_filled(v, account, region) for v in value]
    return copy.deepcopy(value)


def render_task_definition(
    template: dict[str, Any],
    *,
    image: str,
    container: str,
    sha: str | None = None,
    service: str | None = None,
    source: str = "task definition template",
    account: str | None = None,
    region: str | None = None,
) -> dict[str, Any]:
    """RegisterTaskDefinition input for ``image``; the template is not modified.

    ``account``/``region`` fill ``<AWS_ACCOUNT_ID>``/``<AWS_REGION>``; None leaves
    that placeholder as it is (the load-time check renders without an account).
    """
    if account is not None and not _ACCOUNT.match(account):
        raise ConfigError(f"{source}: account {account!r} is not a 12-digit AWS account id")
    check_placeholders(template, source)
    td = {k: _filled(v, account, region) for k, v in template.items() if k not in READ_ONLY}
    unknown = sorted({shown_key(k) for k in set(td) - register_input_keys()})
    if unknown:
        raise ConfigError(
            f"{source}: unknown task definition field(s) {', '.join(unknown)}; "
            "RegisterTaskDefinition does not accept them"
        )
    if not td.get("family"):
        raise ConfigError(f"{source}: family is required")
    containers = td.get("containerDefinitions")
    if not isinstance(containers, list) or not containers or not all(isinstance(c, dict) for c in containers):
        raise ConfigError(f"{source}: containerDefinitions must be a non-empty list of objects")
    if not isinstance(td.get("tags", []), list) or not all(isinstance(t, dict) for t in td.get("tags", [])):
        raise ConfigError(f"{source}: tags must be a list of {{key, value}} objects")
    placeholders = [c for c in containers if PLACEHOLDER in str(c.get("image", ""))]
    if placeholders:
        for c in placeholders:
            c["image"] = str(c["image"]).replace(PLACEHOLDER, image)
    else:
        container_named(td, container, source)["image"] = image
    tags = [t for t in td.get("tags", []) if t.get("key") not in (SHA_TAG, SERVICE_TAG)]
    if sha:
        tags.append({"key": SHA_TAG, "value": sha})
    if service:
        tags.append({"key": SERVICE_TAG, "value": service})
    if tags:
        td["tags"] = tags
    return td


_AWS_NAME = re.compile(r"^[A-Za-z0-9_-]{1,255}$")
# Fargate's task sizes: CPU units -> the memory (MiB) it accepts with them.
FARGATE_SIZES: dict[int, tuple[int, ...]] = {
    256: (512, 1024, 2048), 512: tuple(range(1024, 4097, 1024)), 1024: tuple(range(2048, 8193, 1024)),
    2048: tuple(range(4096, 16385, 1024)), 4096: tuple(range(8192, 30721, 1024)),
    8192: tuple(range(16384, 61441, 4096)), 16384: tuple(range(32768, 122881, 8192)),
}


def check_aws_rules(td: dict[str, Any], container: str, port: int | None, source: str) -> None:
    """What AWS refuses beyond botocore's types, found before a build: names, a Fargate size, the LB port.

    PORT (ecs.container_port when a load balancer routes to the service) must be one
    of the container's portMappings, or the service's tasks could never be registered.
    """
    if not _AWS_NAME.match(str(td["family"])):
        raise ConfigError(f"{source}: family must be 1-255 letters, digits, hyphens or underscores; rename it")
    names = [c.get("name") for c in td["containerDefinitions"]]
    for i, name in enumerate(names):
        if not isinstance(name, str) or not _AWS_NAME.match(name):
            raise ConfigError(
                f"{source}: containerDefinitions[{i}].name must be 1-255 letters, digits, hyphens or underscores"
            )
        if names.index(name) != i:
            raise ConfigError(f"{source}: two containers are named {shown_key(name)}; give each its own name")
        if not td["containerDefinitions"][i].get("image"):
            raise ConfigError(f"{source}: containerDefinitions[{i}] ({name}) has no image; every container needs one")
    if not any(c.get("essential", True) is not False for c in td["containerDefinitions"]):
        raise ConfigError(f"{source}: no container is essential; ECS needs at least one (essential: true)")
    if port is not None:
        mappings = container_named(td, container, source).get("portMappings") or []
        if port not in [m.get("containerPort") for m in mappings if isinstance(m, dict)]:
            raise ConfigError(
                f"{source}: container {container} has no portMappings entry with containerPort {port} "
                f"(ecs.container_port), so the load balancer could not reach it; add one or fix ecs.container_port"
            )
    if "FARGATE" in (td.get("requiresCompatibilities") or []):
        _check_fargate(td, source)
    check_execution_role(td, container, source)


# An image ECR serves: <account>.dkr.ecr.<region>.amazonaws.com[.cn]/..., the account a placeholder or not.
_ECR_IMAGE = re.compile(r"^(\d{12}|<AWS_ACCOUNT_ID>)\.dkr\.ecr(-fips)?\.[^/]+\.amazonaws\.com(\.cn)?/")
# Where no container instance role pulls and logs for the task (AWS's guide names these hosts).
_AGENT_HOSTS = ("FARGATE", "EXTERNAL", "MANAGED_INSTANCES")


def execution_role_needs(td: dict[str, Any], container: str) -> list[str]:
    """Why this task definition needs ``executionRoleArn``, per AWS's task execution IAM role guide.

    The guide: on Fargate, Managed Instances or an external instance, pulling from a
    private ECR repository or sending logs with ``awslogs``; anywhere, private registry
    authentication or secrets from Secrets Manager / Parameter Store. The released
    container's image is always in ECR (the pipeline pushes it there). A task definition
    without ``requiresCompatibilities`` may run on Fargate, so it is held to Fargate's rule.
    """
    hosts = td.get("requiresCompatibilities") or list(_AGENT_HOSTS)
    agent = any(h in _AGENT_HOSTS for h in hosts if isinstance(h, str))
    needs: list[str] = []
    for c in td.get("containerDefinitions") or []:
        if not isinstance(c, dict):
            continue
        name = shown_key(c.get("name"))
        ecr = c.get("name") == container or bool(_ECR_IMAGE.match(str(c.get("image", ""))))
        if agent and ecr:
            needs.append(f"container {name} pulls its image from Amazon ECR")
        log = c.get("logConfiguration")
        if agent and isinstance(log, dict) and log.get("logDriver") == "awslogs":
            needs.append(f"container {name} logs with awslogs")
        if c.get("repositoryCredentials"):
            needs.append(f"container {name} uses private registry authentication (repositoryCredentials)")
        if c.get("secrets") or (isinstance(log, dict) and log.get("secretOptions")):
            needs.append(f"container {name} reads secrets from Secrets Manager or Parameter Store")
    return needs


def check_execution_role(td: dict[str, Any], container: str, source: str) -> None:
    """No ``executionRoleArn`` where ECS needs one: the task would fail to start, after the release began."""
    if td.get("executionRoleArn"):
        return
    needs = execution_role_needs(td, container)
    if needs:
        raise ConfigError(
            f"{source}: executionRoleArn is required: {'; '.join(needs)}, and ECS does that with the task "
            "execution role; add \"executionRoleArn\": \"arn:aws:iam::<AWS_ACCOUNT_ID>:role/ecsTaskExecutionRole\" "
            "(a role with the AmazonECSTaskExecutionRolePolicy managed policy)"
        )


def _check_fargate(td: dict[str, Any], source: str) -> None:
    if td.get("networkMode") != "awsvpc":
        raise ConfigError(f"{source}: requiresCompatibilities FARGATE needs networkMode awsvpc")
    cpu, memory = _units(td.get("cpu"), "vcpu"), _units(td.get("memory"), "gb")
    if cpu is None or memory is None:
        raise ConfigError(
            f"{source}: requiresCompatibilities FARGATE needs task-level cpu and memory, e.g. \"256\" and \"512\""
        )
    if memory not in FARGATE_SIZES.get(cpu, ()):
        offered = FARGATE_SIZES.get(cpu)
        fix = (f"with cpu {cpu}, memory is one of {', '.join(map(str, offered))}" if offered
               else f"cpu is one of {', '.join(map(str, FARGATE_SIZES))}")
        raise ConfigError(f"{source}: Fargate has no task size with cpu {cpu} and memory {memory} MiB; {fix}")


def _units(value: Any, unit: str) -> int | None:
    """CPU units or MiB from "256" or "0.25 vCPU" / "512" or "0.5 GB" (as AWS reads them); None if neither."""
    text = str(value).strip().lower() if isinstance(value, str | int) and not isinstance(value, bool) else ""
    if text.isdigit():
        return int(text)
    found = re.fullmatch(rf"(\d+(?:\.\d+)?)\s*{unit}", text)
    return round(float(found[1]) * 1024) if found else None


_TYPE_WORDS = {"str": "a string", "int": "an integer", "bool": "true or false", "float": "a number",
               "list": "a list", "tuple": "a list", "dict": "an object"}


def _type_names(details: dict[str, Any]) -> str:
    names = [str(t).removeprefix("<class '").removesuffix("'>") for t in details.get("valid_types", [])]
    return " or ".join(dict.fromkeys(_TYPE_WORDS.get(n, n) for n in names)) or "another type"


def check_register_input(td: dict[str, Any], source: str) -> None:
    """Check a rendered task definition against botocore's RegisterTaskDefinition model.

    botocore's own report quotes every wrong value, so its structured errors are
    worded here with the field path and the expected type only.
    """
    import botocore.validate

    report = botocore.validate.ParamValidator().validate(td, _register_input_shape())
    if not report.has_errors():
        return
    lines = []
    for kind, name, details in getattr(report, "_errors", []):
        where = shown_path(str(name).lstrip(".")) or "(top level)"
        if kind == "invalid type":
            lines.append(f"  {where}: expected {_type_names(details)}")
        elif kind == "unknown field":
            lines.append(f"  {where}: unknown field {shown_key(details.get('unknown_param'))}")
        elif kind == "missing required field":
            lines.append(f"  {where}: missing required field {details.get('required_name')}")
        else:
            lines.append(f"  {where}: {kind}")
    raise ConfigError(
        f"{source}: RegisterTaskDefinition would refuse this task definition\n" + "\n".join(lines)
    )


# Values AWS fills in when a field is left out; comparing without them avoids false diffs.
_CONTAINER_DEFAULTS: dict[str, Any] = {
    "cpu": 0,
    "essential": True,
    "environment": [],
    "mountPoints": [],
    "volumesFrom": [],
    "systemControls": [],
    "secrets": [],
    "environmentFiles": [],
    "ulimits": [],
    "dnsServers": [],
    "dnsSearchDomains": [],
    "extraHosts": [],
    "links": [],
    "entryPoint": [],
    "command": [],
}
_TASK_DEFAULTS: dict[str, Any] = {
    "volumes": [],
    "placementConstraints": [],
    "inferenceAccelerators": [],
    "tags": [],
    "runtimePlatform": None,
}


def _clean(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _clean(v) for k, v in value.items() if v is not None and v != {} and v != []}
    if isinstance(value, list):
        return [_clean(v) for v in value]
    return value


def normalize(td: dict[str, Any]) -> dict[str, Any]:
    """A task definition in a canonical form: defaults dropped, name-keyed lists sorted."""
    out = {k: v for k, v in td.items() if k not in READ_ONLY}
    for key, default in _TASK_DEFAULTS.items():
        if key in out and out[key] == default:
            del out[key]
    network = out.get("networkMode")
    containers = []
    for c in out.get("containerDefinitions", []):
        c = {
            k: v
            for k, v in c.items()
            if not (k in _CONTAINER_DEFAULTS and v == _CONTAINER_DEFAULTS[k])
        }
        if "environment" in c:
            c["environment"] = sorted(c["environment"], key=lambda e: str(e.get("name")))
        if "secrets" in c:
            c["secrets"] = sorted(c["secrets"], key=lambda e: str(e.get("name")))
        ports = []
        for p in c.get("portMappings", []):
            p = {k: v for k, v in p.items() if not (k == "protocol" and v == "tcp")}
            if network == "awsvpc" and p.get("hostPort") == p.get("containerPort"):
                p.pop("hostPort", None)
            ports.append(p)
        if ports:
            c["portMappings"] = ports
        containers.append(c)
    if containers:
        out["containerDefinitions"] = sorted(containers, key=lambda c: str(c.get("name")))
    for key in ("cpu", "memory"):
        if key in out:
            out[key] = str(out[key])
    if "tags" in out:
        out["tags"] = sorted(out["tags"], key=lambda t: str(t.get("key")))
    return _clean(out)  # type: ignore[no-any-return]


@dataclass(frozen=True)
class Change:
    path: str
    live: Any
    desired: Any

    def __str__(self) -> str:
        live, desired = (json.dumps(_masked(v, self.path)) for v in (self.live, self.desired))
        if self.live is None:
            return f"+ {self.path}: {desired}"
        if self.desired is None:
            return f"- {self.path}: {live}"
        return f"~ {self.path}: {live} -> {desired}"


# Environment variables whose value a diff never prints (a template should use `secrets`, but some do not).
_SECRET_NAME = re.compile(r"pass|secret|token|key|credential|private|auth|session|cookie", re.IGNORECASE)
_ENV_VALUE = re.compile(r"\.environment\[(?P<name>[^\]]*)\]\.value$")
HIDDEN_VALUE = "<hidden: the variable's name says secret>"


def _masked(value: Any, path: str = "") -> Any:
    """VALUE with the value of every environment entry named like a secret replaced by HIDDEN_VALUE."""
    scalar = _ENV_VALUE.search(path)
    if scalar and _SECRET_NAME.search(scalar["name"]):
        return HIDDEN_VALUE if value is not None else None
    if isinstance(value, list):
        return [_masked(v) for v in value]
    if isinstance(value, dict):
        name = value.get("name")
        if isinstance(name, str) and "value" in value and _SECRET_NAME.search(name):
            return {**value, "value": HIDDEN_VALUE}
        return {k: _masked(v) for k, v in value.items()}
    return value


def _walk(path: str, live: Any, desired: Any, out: list[Change]) -> None:
    if isinstance(live, dict) and isinstance(desired, dict):
        for key in sorted(set(live) | set(desired)):
            _walk(f"{path}.{key}" if path else key, live.get(key), desired.get(key), out)
    elif isinstance(live, list) and isinstance(desired, list) and len(live) == len(desired):
        for i, (a, b) in enumerate(zip(live, desired, strict=True)):
            name = b.get("name") if isinstance(b, dict) else None
            _walk(f"{path}[{name or i}]", a, b, out)
    elif live != desired:
        out.append(Change(path, live, desired))


def diff_task_definitions(live: dict[str, Any], desired: dict[str, Any]) -> list[Change]:
    """Field-level differences after normalising both sides; empty means identical."""
    out: list[Change] = []
    _walk("", normalize(live), normalize(desired), out)
    return out
