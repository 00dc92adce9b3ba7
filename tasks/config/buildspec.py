"""CodeBuild's buildspec.yml, read and checked before anything runs (pure: no shell, AWS or Prefect).

Only what the pipeline really does is accepted; every other key CodeBuild knows
(``batch``, ``cache``, ``proxy``, ``run-as``, ``runtime-versions``, ...) is refused
with a message naming it, never ignored. Errors give the key's path and never
quote a value (a buildspec's env may hold secrets' names next to values).

Phase transitions follow CodeBuild's (docs: "Build phase transitions"):
a failed ``install``/``pre_build``/``post_build`` ends the build, a failed
``build`` still runs ``post_build`` (with CODEBUILD_BUILD_SUCCEEDING=0);
``on-failure: ABORT`` ends it after any phase, ``CONTINUE`` goes on to the next
phase. A build with a failed phase fails, whatever ran after it.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any, Literal

from tasks.config.inputs import parse_yaml, shown_key
from tasks.core.errors import ConfigError

PHASES = ("install", "pre_build", "build", "post_build")
SHELLS = {"bash": "bash", "/bin/sh": "/bin/sh", "sh": "/bin/sh"}
REPORT_FORMATS = ("JUNITXML",)
OnFailure = Literal["ABORT", "CONTINUE"]

# Keys CodeBuild knows that the pipeline does not do, and what to do instead.
UNSUPPORTED = {
    "run-as": "commands run as the worker's (or the build image's) user; remove run-as",
    "proxy": "the pipeline runs no CodeBuild proxy; remove proxy",
    "batch": "batch builds are not supported; use one buildspec per service",
    "cache": "build caches are not supported; remove cache (the git checkout and Docker's layer cache persist)",
    "git-credential-helper": "the checkout is made by the pipeline before the build; remove git-credential-helper",
    "runtime-versions": "runtime-versions needs CodeBuild's managed images; install tools in install commands "
    "or pick a build.image that has them",
    "secondary-artifacts": "only one artifact set is kept; remove secondary-artifacts",
    "s3-prefix": "artifacts are written to the pipeline's artifacts folder, not S3; remove s3-prefix",
    "enable-symlinks": "remove enable-symlinks (files are copied as they are)",
}
TOP_KEYS = ("version", "env", "phases", "reports", "artifacts")
SHELL_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
ARTIFACT_NAME = re.compile(r"(?!\.+$)[A-Za-z0-9._-]{1,100}")
ENV_KEYS = ("shell", "variables", "parameter-store", "secrets-manager", "exported-variables")
PHASE_KEYS = ("on-failure", "commands", "finally")
REPORT_KEYS = ("files", "base-directory", "discard-paths", "file-format")
ARTIFACT_KEYS = ("files", "name", "base-directory", "discard-paths", "exclude-paths")


@dataclass(frozen=True)
class Phase:
    name: str
    commands: tuple[str, ...] = ()
    finally_: tuple[str, ...] = ()
    on_failure: OnFailure | None = None

    def continues_after_failure(self) -> bool:
        """Whether the next phase still runs after this one failed (CodeBuild's transitions)."""
        if self.on_failure is not None:
            return self.on_failure == "CONTINUE"
        return self.name == "build"


@dataclass(frozen=True)
class Env:
    shell: str = "/bin/sh"
    variables: dict[str, str] = field(default_factory=dict)
    parameter_store: dict[str, str] = field(default_factory=dict)
    secrets_manager: dict[str, str] = field(default_factory=dict)
    exported: tuple[str, ...] = ()


@dataclass(frozen=True)
class Files:
    """A file set: ``reports.<group>`` or ``artifacts``."""

    files: tuple[str, ...]
    base_directory: str = "."
    discard_paths: bool = False
    exclude: tuple[str, ...] = ()
    name: str = ""


@dataclass(frozen=True)
class BuildSpec:
    env: Env
    phases: tuple[Phase, ...]
    reports: dict[str, Files] = field(default_factory=dict)
    artifacts: Files | None = None


class _Where:
    """Errors that name the buildspec and the key path."""

    def __init__(self, source: str) -> None:
        self.source = source

    def fail(self, path: str, problem: str) -> ConfigError:
        return ConfigError(f"{self.source}: {path}: {problem}")

    def mapping(self, value: Any, path: str, allowed: tuple[str, ...]) -> dict[str, Any]:
        if not isinstance(value, dict):
            raise self.fail(path, "expected a mapping")
        for key in value:
            if key in UNSUPPORTED:
                raise self.fail(f"{path}.{key}" if path != "(top level)" else str(key),
                                f"not supported: {UNSUPPORTED[key]}")
            if key not in allowed:
                where = f"{path}.{shown_key(key)}" if path != "(top level)" else shown_key(key)
                raise self.fail(where, f"unknown or unsupported key; supported here: {', '.join(allowed)}")
        return value

    def text(self, value: Any, path: str) -> str:
        if isinstance(value, bool) or not isinstance(value, str | int | float):
            raise self.fail(path, "expected text (quote it: a ': ' inside makes YAML read a mapping)")
        return str(value)

    def texts(self, value: Any, path: str) -> tuple[str, ...]:
        if isinstance(value, str):
            return (value,)
        if not isinstance(value, list):
            raise self.fail(path, "expected a list")
        return tuple(self.text(v, f"{path}[{i}]") for i, v in enumerate(value))

    def names(self, value: Any, path: str) -> dict[str, str]:
        if value is None:
            return {}
        if not isinstance(value, dict):
            raise self.fail(path, "expected a mapping of NAME: value")
        out = {}
        for key, v in value.items():
            name = str(key)
            if not name.replace("_", "a").isalnum() or name[0].isdigit():
                raise self.fail(f"{path}.{shown_key(name)}", "not a shell variable name (letters, digits, _)")
            if name.startswith("CODEBUILD_"):
                raise self.fail(f"{path}.{shown_key(name)}",
                                "the CODEBUILD_ prefix is reserved for CodeBuild's own variables")
            out[name] = self.text(v, f"{path}.{name}")
        return out

    def flag(self, value: Any, path: str) -> bool:
        if isinstance(value, bool):
            return value
        if value in ("yes", "no", "true", "false"):
            return value in ("yes", "true")
        raise self.fail(path, "expected yes or no")


def _env(w: _Where, data: Any) -> Env:
    env = w.mapping(data or {}, "env", ENV_KEYS)
    shell = w.text(env.get("shell", "/bin/sh"), "env.shell")
    if shell not in SHELLS:
        raise w.fail("env.shell", "supported shells are bash and /bin/sh (Linux)")
    variables = w.names(env.get("variables"), "env.variables")
    params = w.names(env.get("parameter-store"), "env.parameter-store")
    secrets = w.names(env.get("secrets-manager"), "env.secrets-manager")
    seen: dict[str, str] = {}
    for source, names in (("variables", variables), ("parameter-store", params), ("secrets-manager", secrets)):
        for name in names:
            if name in seen:
                raise w.fail(f"env.{source}.{name}", f"also set in env.{seen[name]}; set each variable once")
            seen[name] = source
    exported = w.texts(env.get("exported-variables", []), "env.exported-variables")
    for i, name in enumerate(exported):
        if not SHELL_NAME.fullmatch(name):
            # the names are read back out of the build's shell: anything but a name would be shell code
            raise w.fail(f"env.exported-variables[{i}]", "not a shell variable name ([A-Za-z_][A-Za-z0-9_]*)")
    for name in secrets:
        if name in exported:
            raise w.fail(f"env.exported-variables.{name}", "a Secrets Manager value is never exported")
    return Env(SHELLS[shell], variables, params, secrets, exported)


def _phase(w: _Where, name: str, data: Any) -> Phase:
    path = f"phases.{name}"
    body = w.mapping(data if data is not None else {}, path, PHASE_KEYS)
    on_failure = body.get("on-failure")
    if on_failure is not None and on_failure not in ("ABORT", "CONTINUE"):
        raise w.fail(f"{path}.on-failure", "expected ABORT or CONTINUE (RETRY is not supported)")
    return Phase(
        name,
        commands=w.texts(body.get("commands", []), f"{path}.commands"),
        finally_=w.texts(body.get("finally", []), f"{path}.finally"),
        on_failure=on_failure,
    )


def _files(w: _Where, data: Any, path: str, allowed: tuple[str, ...]) -> Files:
    body = w.mapping(data, path, allowed)
    if "files" not in body:
        raise w.fail(f"{path}.files", "required: the file patterns to collect")
    fmt = body.get("file-format", "JUNITXML")
    if fmt not in REPORT_FORMATS:
        raise w.fail(f"{path}.file-format", "only JUNITXML test reports are supported")
    base = w.text(body.get("base-directory", "."), f"{path}.base-directory")
    if base.startswith(("/", "~")) or ".." in base.replace("\\", "/").split("/"):
        raise w.fail(f"{path}.base-directory", "must stay inside the source folder (no absolute path, no '..')")
    return Files(
        files=w.texts(body["files"], f"{path}.files"),
        base_directory=base,
        discard_paths=w.flag(body.get("discard-paths", False), f"{path}.discard-paths"),
        exclude=w.texts(body.get("exclude-paths", []), f"{path}.exclude-paths"),
        name=_artifact_name(w, body.get("name", ""), f"{path}.name"),
    )


def _artifact_name(w: _Where, value: Any, path: str) -> str:
    """One folder name under the service's own artifacts folder: never a path that leaves it."""
    name = w.text(value, path)
    if name and not ARTIFACT_NAME.fullmatch(name):
        raise w.fail(path, "must be one folder name (letters, digits, '.', '_', '-'; no '/', no '..')")
    return name


def parse_buildspec(data: Any, source: str) -> BuildSpec:
    """Validated buildspec data (a YAML mapping); ConfigError naming the key otherwise."""
    w = _Where(source)
    top = w.mapping(data, "(top level)", TOP_KEYS)
    version = top.get("version")
    if str(version) != "0.2":
        raise w.fail("version", "must be 0.2 (0.1 runs every command in its own shell, which is not supported)")
    phases_data = w.mapping(top.get("phases") or {}, "phases", PHASES)
    phases = tuple(_phase(w, name, phases_data[name]) for name in PHASES if name in phases_data)
    if not any(p.commands for p in phases):
        raise w.fail("phases", "no commands in any phase; add commands to install, pre_build, build or post_build")
    reports_data = top.get("reports") or {}
    if not isinstance(reports_data, dict):
        raise w.fail("reports", "expected a mapping of report group name to its files")
    reports = {str(group): _files(w, body, f"reports.{group}", REPORT_KEYS) for group, body in reports_data.items()}
    artifacts = _files(w, top["artifacts"], "artifacts", ARTIFACT_KEYS) if top.get("artifacts") else None
    return BuildSpec(_env(w, top.get("env")), phases, reports, artifacts)


def load_buildspec(text: str, source: str) -> BuildSpec:
    """Buildspec YAML text to a validated BuildSpec."""
    return parse_buildspec(parse_yaml(text, source, "buildspec"), source)
