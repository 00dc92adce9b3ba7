"""Run a buildspec the way CodeBuild does, for a clean checkout of the commit.

Where: by default in a build box (tasks/build/build_box.py), CodeBuild's fresh
container with its own engine, network and processes, the checkout copied in;
``build.runner: host-unsafe`` runs it on the worker instead, as the worker's
user, and is refused for runs a push or a poll started unless the worker allows
it. The phases are one code path either way (tasks/build/shell.py).

Environment: in the box, only what follows; on the worker, its basics first
(BUILD_HOST_ENV). Then the buildspec's ``env.variables``, ``env.parameter-store``
and ``env.secrets-manager`` (read through the pipeline's boto3 clients), then the
project's variables (REPOSITORY_URI, ...), then CodeBuild's own (CODEBUILD_*,
AWS_REGION, ...), later ones winning as in CodeBuild, then the build's own AWS
identity (tasks/build/build_identity.py; none without ``build.role_arn``). Values
from Parameter Store and Secrets Manager and the identity's keys are masked
(``***``, in their encoded forms too) in every log line, artifact and error.
What the build hands back (reports, artifacts, imagedefinitions.json, exported
variables) is read after every process of the build has ended, and checked as
it is read. Artifacts are copied when CodeBuild would upload them
(``BuildRun.uploads_artifacts``).
"""

from __future__ import annotations

import base64
import contextlib
import fcntl
import json
import re
import secrets as token
import shutil
import tempfile
import time
import urllib.parse
import uuid
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field, replace
from fnmatch import fnmatch
from pathlib import Path
from typing import Any

from prefect.artifacts import create_table_artifact

from tasks.aws import parameters
from tasks.aws.clients import AwsClients
from tasks.build import docker_requests, egress, junit, standard_image
from tasks.build.build_box import BuildBox, Resources, open_box
from tasks.build.build_identity import build_credentials
from tasks.build.shell import (
    BuildContainer,
    ContainerError,
    Shell,
    ShellSpec,
    ShellTimeout,
    in_own_pid_namespace,
    read_written,
)
from tasks.build.source import redact_url
from tasks.config.buildspec import BuildSpec, Files, Phase, load_buildspec
from tasks.config.inputs import confined, read_text
from tasks.config.models import ServiceConfig
from tasks.core.errors import BuildError
from tasks.core.report import junit_artifact_key, markdown_text, shorten

Log = Callable[[str], None]
TAIL_LINES = 15
# Commands whose output is docker's progress (build steps, layer by layer): DEBUG, with one line at INFO.
DOCKER_PROGRESS = re.compile(r"(^|[;&|(`]|\$\()\s*docker\s+(image\s+|buildx\s+)?(build|push|pull)\b")
CONTAINER_LABEL = "ecs-pipeline.codebuild"
BUILD_UID = 1000  # the build container's user (the standard image's "build"): the build user outside
TRIGGERED = ("trigger:push", "trigger:poll", "trigger:schedule")


class Masker:
    """Replaces every secret value with ***: as it is, each line of a multi-line one, and encoded.

    A build can print a secret in another form as easily as in clear, so each value is also
    masked base64-encoded (standard and URL-safe alphabets, at each of the three byte
    alignments it can have inside a longer encoded text), URL-encoded and JSON-escaped.
    """

    def __init__(self, values: Iterable[str] = ()) -> None:
        found: set[str] = set()
        for value in values:
            for plain in {value, *(line.strip() for line in value.splitlines())}:
                if plain:
                    found.update(encoded_forms(plain))
        self.values = sorted((v for v in found if v), key=len, reverse=True)

    def add(self, value: str) -> None:
        """VALUE (a password the build handed over) masked from now on, in its encoded forms too."""
        self.values = sorted({*self.values, *(f for f in encoded_forms(value) if f)}, key=len, reverse=True)

    def __call__(self, text: str) -> str:
        for value in self.values:
            text = text.replace(value, "***")
        return text


# An encoded fragment shorter than this would mask ordinary text by chance.
MIN_ENCODED = 6


def encoded_forms(secret: str) -> set[str]:
    """SECRET and the forms a build could print it in."""
    raw = secret.encode()
    forms = {secret, urllib.parse.quote(secret, safe=""), urllib.parse.quote_plus(secret),
             json.dumps(secret)[1:-1], json.dumps(secret, ensure_ascii=False)[1:-1]}
    for skip in range(3):  # the secret starts at byte 0, 1 or 2 of a base64 group
        encoded = base64.b64encode(b"\0" * skip + raw).decode().rstrip("=")
        first = (skip * 8 + 5) // 6  # characters that hold bits of the bytes before the secret
        last = (skip + len(raw)) * 8 // 6  # characters whose bits are all the secret's
        core = encoded[first:last]
        if len(core) >= MIN_ENCODED:
            forms.update({core, core.replace("+", "-").replace("/", "_")})
    return {f for f in forms if f}


@dataclass(frozen=True)
class Failure:
    phase: str
    command: str
    status: int | str
    tail: tuple[str, ...]

    def message(self) -> str:
        quoted = "\n".join(f"  | {line}" for line in self.tail) or "  | (no output)"
        how = f"exited {self.status}" if isinstance(self.status, int) else str(self.status)
        return f"buildspec failed in phase {self.phase}: command `{self.command}` {how}; last output:\n{quoted}"


@dataclass
class BuildRun:
    """What a buildspec run did: phases, the first failure, exported values, files and reports."""

    phases: list[tuple[str, str]] = field(default_factory=list)
    failure: Failure | None = None
    exported: dict[str, str] = field(default_factory=dict)
    artifacts: list[Path] = field(default_factory=list)
    reports: list[junit.Report] = field(default_factory=list)
    report_keys: dict[str, str] = field(default_factory=dict)  # report group: its table artifact's key
    image_definitions: list[dict[str, Any]] | None = None
    stopped_in: str | None = None  # the phase whose failure ended the build

    def uploads_artifacts(self) -> bool:
        """CodeBuild's UPLOAD_ARTIFACTS: attempted whenever the build got to its BUILD phase, failed or not;
        not when a failed install or pre_build ended the build (it goes to FINALIZING), nor after a timeout."""
        if self.failure is None:
            return True
        timed_out = any(state == "TIMED_OUT" for _, state in self.phases)
        return not timed_out and self.stopped_in not in ("install", "pre_build")

    def notes(self) -> list[str]:
        """For the release summary (markdown): what the build wrote is escaped there, as plain text."""
        out = [f"buildspec: {', '.join(f'{p} {s}' for p, s in self.phases)}"]
        out += [markdown_text(f"tests ({r.group}): {r.lead()}") for r in self.reports]
        out += [markdown_text(f"exported {k}={v}") for k, v in self.exported.items()]
        return out


def resolve_env(spec: BuildSpec, clients: AwsClients) -> tuple[dict[str, str], list[str]]:
    """The buildspec's variables with Parameter Store and Secrets Manager values; and the values to mask."""
    values = dict(spec.env.variables)
    hidden: list[str] = []
    ssm = clients.get("ssm") if spec.env.parameter_store else None
    for var, name in spec.env.parameter_store.items():
        value = parameters.parameter_value(ssm, name)
        if value is None:
            raise BuildError(f"env.parameter-store.{var}: parameter {name} not found in Parameter Store")
        values[var] = value
        hidden.append(values[var])
    for var, ref in spec.env.secrets_manager.items():
        values[var] = secret_value(clients, var, ref)
        hidden.append(values[var])
    return values, hidden


def secret_value(clients: AwsClients, var: str, ref: str) -> str:
    """``secret-id:json-key:version-stage:version-id`` (the id may be an ARN, which has colons)."""
    parts = ref.split(":")
    head = 7 if ref.startswith("arn:") else 1
    secret_id, rest = ":".join(parts[:head]), [*parts[head:], "", "", ""]
    key, stage, version = rest[0], rest[1], rest[2]
    text = parameters.secret_string(clients.get("secretsmanager"), secret_id, stage, version)
    if text is None:
        raise BuildError(f"env.secrets-manager.{var}: secret {secret_id} not found in Secrets Manager")
    if not key:
        return text
    try:
        return str(json.loads(text)[key])
    except (ValueError, KeyError, TypeError):
        raise BuildError(
            f"env.secrets-manager.{var}: secret {secret_id} is not JSON with a key {key}; check the json-key"
        ) from None


def build_number(cache: Path, service: str) -> int:
    """CODEBUILD_BUILD_NUMBER: this service's builds on this worker, counted from 1."""
    path = cache / "codebuild" / f"{service}.number"
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("a+") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        f.seek(0)
        number = int(f.read().strip() or 0) + 1
        f.seek(0)
        f.truncate()
        f.write(str(number))
    return number


def standard_env(cfg: ServiceConfig, clients: AwsClients, sha: str, src: str, uri: str,
                 image: str) -> dict[str, str]:
    """The project's variables and CodeBuild's own, as CodeBuild sets them for a build of SHA."""
    region = clients.settings.region
    account = str(clients.get("sts").get_caller_identity()["Account"])
    build_uuid = str(uuid.uuid4())
    project = cfg.name
    return {
        "AWS_ACCOUNT_ID": account, "IMAGE_REPO_NAME": cfg.ecr.repository, "REPOSITORY_URI": uri,
        "CONTAINER_NAME": cfg.ecs.container,
        "AWS_REGION": region, "AWS_DEFAULT_REGION": region, "CODEBUILD_CI": "true",
        "CODEBUILD_BUILD_ID": f"{project}:{build_uuid}",
        "CODEBUILD_BUILD_ARN": f"arn:aws:codebuild:{region}:{account}:build/{project}:{build_uuid}",
        "CODEBUILD_BUILD_NUMBER": str(build_number(clients.settings.cache, cfg.name)),
        "CODEBUILD_BUILD_IMAGE": image, "CODEBUILD_BUILD_SUCCEEDING": "1",
        "CODEBUILD_INITIATOR": f"ecs-pipeline/{project}", "CODEBUILD_LOG_PATH": build_uuid,
        "CODEBUILD_RESOLVED_SOURCE_VERSION": sha, "CODEBUILD_SOURCE_VERSION": sha,
        "CODEBUILD_SOURCE_REPO_URL": redact_url(cfg.source.repo), "CODEBUILD_SRC_DIR": src,
        "CODEBUILD_START_TIME": str(int(time.time() * 1000)),
    }


@contextlib.contextmanager
def build_shell(cfg: ServiceConfig, host: ShellSpec, worker: dict[str, str], deadline: float) -> Iterator[Shell]:
    """The one shell session the phases run in, on the worker (``build.runner: host-unsafe``)."""
    session = Shell(replace(host, argv=in_own_pid_namespace(host.argv)), deadline)
    try:
        yield session
    finally:
        session.close()


@contextlib.contextmanager
def box_shell(cfg: ServiceConfig, box: BuildBox, env: dict[str, str], shell: str,
              deadline: float) -> Iterator[Shell]:
    """The one shell session the phases run in, in a container of the build box's own engine.

    The container: the standard image read-only (or ``build.image``, pulled into the box),
    every capability dropped, no new privileges, a non-root user, the box's network; the
    checkout's copy at SRC, the command files read-only, one folder for values read back,
    and the folders of its ``docker`` command, whose requests ANSWERER answers. No engine
    socket, and nothing of the worker's environment.
    """
    podman = shutil.which("podman") or "podman"
    cli = (podman, "--remote", "--url", box.engine_url)
    name, label = f"codebuild-{cfg.name}-{token.token_hex(4)}", f"{CONTAINER_LABEL}={cfg.name}"
    image: tuple[str, ...]
    if cfg.build.image:
        shim = box.image_root / standard_image.DOCKER_COMMAND
        image = ("-v", f"{shim}:{standard_image.DOCKER_IN_BUILD_IMAGE}:ro", "--pull", "always", cfg.build.image)
    else:
        image = ("--read-only", "--rootfs", str(box.image_root))
    run = (*cli, "run", "--rm", "-i", "--name", name, "--label", label, "--network", "host",
           "--userns", f"keep-id:uid={BUILD_UID},gid={BUILD_UID}", "--user", f"{BUILD_UID}:{BUILD_UID}",
           "--cap-drop", "ALL", "--security-opt", "no-new-privileges", "--tmpfs", "/tmp:mode=1777",
           "-v", f"{box.src}:{standard_image.SRC}", "-v", f"{box.scripts}:{standard_image.SCRIPTS}:ro",
           "-v", f"{box.values}:{standard_image.VALUES}", "-v", f"{box.requests}:{docker_requests.REQUESTS}",
           "-v", f"{box.answers}:{docker_requests.ANSWERS}:ro", "-w", standard_image.SRC, *image, shell)
    # The client passes `-e NAME` values from its own environment: no value on a command line.
    session = (*cli, "exec", "-i", "-w", standard_image.SRC, *[a for n in env for a in ("-e", n)], name, shell)
    container = BuildContainer(run, env, name, label, cli=cli, remove=("rm", "--force", "--time", "0"))
    try:
        container.start(deadline)
    except ContainerError as exc:
        what = f"build.image {cfg.build.image}" if cfg.build.image else f"the standard image {standard_image.NAME}"
        raise BuildError(f"{what}: the build container did not start: {exc}", service=cfg.name) from None
    spec = ShellSpec(session, env, box.folder, shell, box.scripts, Path(standard_image.SCRIPTS), box.values,
                     Path(standard_image.VALUES))
    session_shell = Shell(spec, deadline)
    try:
        yield session_shell
    finally:
        container.close()  # first: a command still running stops with its container
        session_shell.close()


def box_limits(cfg: ServiceConfig) -> Resources:
    """build.resources as the box's limits."""
    return Resources(cfg.build.resources.memory_mib, cfg.build.resources.cpus, cfg.build.resources.pids)


def box_egress(cfg: ServiceConfig, clients: AwsClients, uri: str, identity: dict[str, str]) -> list[tuple[str, int]]:
    """What the build box may reach: its registry, build.image's, build.egress, and with an AWS identity, AWS."""
    wanted = [egress.parse_endpoint(uri.split("/", 1)[0], "the service's registry")]
    if cfg.build.image and "/" in cfg.build.image:
        first = cfg.build.image.split("/", 1)[0]
        if "." in first or ":" in first or first == "localhost":
            wanted.append(egress.parse_endpoint(first, "build.image"))
    wanted += [egress.parse_endpoint(e) for e in cfg.build.egress]
    if "AWS_ACCESS_KEY_ID" in identity:
        endpoint, region = clients.settings.endpoint_url, clients.settings.region
        if endpoint:
            wanted.append(egress.parse_endpoint(endpoint, "AWS_ENDPOINT_URL"))
        else:
            wanted += [(f"{api}.{region}.amazonaws.com", 443) for api in ("api.ecr", "sts", "ssm", "secretsmanager")]
    return wanted


def refuse_host_build(cfg: ServiceConfig, clients: AwsClients, tags: Iterable[str]) -> None:
    """build.runner: host-unsafe runs a pusher's commands as the worker: never for a push or a poll by default."""
    started_by = sorted(t for t in tags if t in TRIGGERED)
    if started_by and not clients.settings.allow_host_builds:
        raise BuildError(
            f"build.runner: host-unsafe is refused for this run ({', '.join(started_by)}): it would run the "
            "repository's commands on the worker, as the worker's user or in the worker's Docker engine; use "
            "build.runner: container, or set ECS_PIPELINE_ALLOW_HOST_BUILDS=true on the worker to allow it",
            service=cfg.name)


def run_phase(phase: Phase, shell: Shell, mask: Masker, log: Log, detail: Log | None = None) -> Failure | None:
    """The phase's commands until one fails, then its finally block; the first failure.

    A docker build, push or pull command's output goes to DETAIL (a run logger's
    debug level) and its last line to LOG: the INFO log keeps one line per docker command.
    """
    failure: Failure | None = None
    tail: deque[str] = deque(maxlen=TAIL_LINES)
    sink, lines = log, 0  # where the running command's output goes; how many lines it wrote

    def out(line: str) -> None:
        nonlocal lines
        tail.append(mask(line))
        lines += 1
        sink(tail[-1])

    for block, commands in (("commands", phase.commands), ("finally", phase.finally_)):
        for command in commands:
            if block == "commands" and failure is not None:
                break
            log(f"[{phase.name}] Running command {mask(command)}")
            tail.clear()
            lines = 0
            sink = detail if detail is not None and DOCKER_PROGRESS.search(command) else log
            status = shell.run(command, out)
            if sink is not log and lines:
                log(f"[{phase.name}] {tail[-1].strip() or 'docker'} ({lines} lines of docker output at DEBUG)")
            if status != 0 and failure is None:
                failure = Failure(phase.name, mask(command), status, tuple(tail))
    log(f"[{phase.name}] Phase complete: {phase.name.upper()} State: {'FAILED' if failure else 'SUCCEEDED'}")
    return failure


def run_phases(spec: BuildSpec, shell: Shell, mask: Masker, log: Log, result: BuildRun,
               detail: Log | None = None) -> None:
    """install, pre_build, build, post_build with CodeBuild's transitions after a failure."""
    for phase in spec.phases:
        if result.failure is not None:
            shell.run("CODEBUILD_BUILD_SUCCEEDING=0; export CODEBUILD_BUILD_SUCCEEDING", lambda _line: None)
        try:
            failed = run_phase(phase, shell, mask, log, detail)
        except ShellTimeout:
            failed = Failure(phase.name, "(running)", "timed out (build.timeout_seconds)", ())
            result.phases.append((phase.name, "TIMED_OUT"))
            result.failure, result.stopped_in = result.failure or failed, phase.name
            return
        result.phases.append((phase.name, "FAILED" if failed else "SUCCEEDED"))
        if failed:
            result.failure = result.failure or failed
            if not phase.continues_after_failure():
                result.stopped_in = phase.name
                return


def matching_files(src: Path, files: Files, field: str) -> list[tuple[Path, str]]:
    """(file, its name in the output) for a file set: regular files inside the source folder only.

    The build wrote these files: a symbolic link (to a worker's file, or through a linked folder)
    fails the build naming FIELD rather than being followed into an artifact or a report.
    """
    root = src.resolve()
    base = (src / files.base_directory).resolve()
    if not base.is_relative_to(root):
        raise BuildError(f"{field}: base-directory {files.base_directory} leaves the source folder (a link?)")
    found: dict[Path, str] = {}
    for pattern in files.files:
        for path in sorted(base.glob(pattern)):
            rel = path.relative_to(base).as_posix()
            if any(fnmatch(rel, ex) for ex in files.exclude):
                continue
            if _linked(path, base):
                raise BuildError(f"{field}: {rel} is a symbolic link (or lies under one); "
                                 "artifacts and reports take regular files only")
            if not path.is_file():
                continue
            found[path] = path.name if files.discard_paths else rel
    return list(found.items())


def _linked(path: Path, base: Path) -> bool:
    """Whether PATH or a folder between BASE and it is a symbolic link."""
    current = path
    while current != base and current != current.parent:
        if current.is_symlink():
            return True
        current = current.parent
    return False


REPORT_DESCRIPTION_CHARS = 300


def publish_reports(cfg: ServiceConfig, spec: BuildSpec, src: Path, mask: Masker, result: BuildRun) -> None:
    """Each JUnit report group as a Prefect table artifact: failing tests first, with their messages and times.

    The description leads with the failing tests too, cut at a word: a list of artifacts shows only it.
    """
    for group, files in spec.reports.items():
        paths = [p for p, _ in matching_files(src, files, f"reports.{group}.files")]
        report = junit.read_report(group, paths)
        result.reports.append(report)
        key = junit_artifact_key(cfg.name, group, result.report_keys.values())
        result.report_keys[group] = key
        rows = [{k: mask(v) for k, v in row.items()} for row in report.rows()]
        lead = report.lead() + ("" if not report.failing() else f"; {report.headline()}")
        create_table_artifact(
            table=rows or [{"status": "", "test": "(no test cases found)", "time": "", "message": ""}],
            key=key,
            description=markdown_text(mask(f"{cfg.name} tests ({group}): "
                                           + shorten(lead, REPORT_DESCRIPTION_CHARS, "(all in the table)"))),
        )


def failed_tests(result: BuildRun) -> list[str]:
    """A line for each report with failing tests, to lead a failed build's message (masked by the caller)."""
    return [f"{r.lead()}; test report: artifact {result.report_keys.get(r.group, r.group)}"
            for r in result.reports if r.failing()]


def copy_artifacts(cfg: ServiceConfig, spec: BuildSpec, src: Path, out_dir: Path, result: BuildRun,
                   required: bool = True) -> Path | None:
    """``artifacts.files`` copied to ARTIFACTS_DIR/<service>/<name or build>/ (the last build's, replaced).

    As CodeBuild's UPLOAD_ARTIFACTS phase, a file list that matches nothing fails the build
    ("CLIENT_ERROR: no matching artifact paths found") when REQUIRED; a failed build's kept
    artifacts (``on-failure: UPLOAD``) are not required, so its own failure stays the message.
    """
    if spec.artifacts is None:
        return None
    own = (out_dir / cfg.name).resolve()
    target = own / (spec.artifacts.name or "build")
    if target.resolve().parent != own:  # the buildspec's name is checked at load; this holds whatever it says
        raise BuildError(f"artifacts.name {spec.artifacts.name!r} leaves the service's artifacts folder")
    files = matching_files(src, spec.artifacts, "artifacts.files")
    if required and not files:
        patterns = ", ".join(spec.artifacts.files)
        raise BuildError(f"artifacts.files: no matching artifact paths found ({patterns} under "
                         f"{spec.artifacts.base_directory}); write them in the build or fix the patterns",
                         service=cfg.name)
    shutil.rmtree(target, ignore_errors=True)
    for path, name in files:
        dest = target / name
        dest.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(path, dest)
        result.artifacts.append(dest)
    return target


def read_image_definitions(src: Path, result: BuildRun) -> None:
    """imagedefinitions.json from the artifacts (else the source root): the image the buildspec pushed."""
    named = [p for p in result.artifacts if p.name == "imagedefinitions.json"]
    defs = named[0] if named else src / "imagedefinitions.json"
    if defs.is_symlink():
        raise BuildError("imagedefinitions.json written by the buildspec is a symbolic link; write the file itself")
    text = read_written(defs)
    if text is not None:
        try:
            data = json.loads(text)
        except ValueError:
            raise BuildError("imagedefinitions.json written by the buildspec is not JSON") from None
        if not isinstance(data, list) or not all(isinstance(e, dict) for e in data):
            raise BuildError('imagedefinitions.json must be a list of {"name": ..., "imageUri": ...}')
        result.image_definitions = data


def run_buildspec(cfg: ServiceConfig, clients: AwsClients, spec: BuildSpec, sha: str, src: Path,
                  uri: str, log: Log, detail: Log | None = None, tags: Iterable[str] = ()) -> BuildRun:
    """Run SPEC for the checkout SRC; a BuildError (masked) when a phase failed, after reports (and artifacts)
    are published. TAGS: the flow run's (a ``trigger:`` tag says a push or a poll started it).

    DETAIL takes docker's progress output (see run_phase); without it, LOG takes every line.
    """
    variables, hidden = resolve_env(spec, clients)
    deadline = time.monotonic() + cfg.build.timeout_seconds
    if cfg.build.runner == "host-unsafe":
        refuse_host_build(cfg, clients, tags)
        codebuild = standard_env(cfg, clients, sha, str(src), uri, "host")
        identity = build_credentials(cfg, clients, spec, codebuild["AWS_ACCOUNT_ID"], codebuild["CODEBUILD_LOG_PATH"])
        mask = masker_for(hidden, identity)
        env = {**clients.settings.build_host_env, **variables, **codebuild, **identity}
        with tempfile.TemporaryDirectory(prefix=f"codebuild-{token.token_hex(4)}-") as scripts, \
                build_shell(cfg, ShellSpec((spec.env.shell,), env, src, spec.env.shell, Path(scripts)),
                            clients.settings.build_host_env, deadline) as shell:
            result = run_in(spec, shell, mask, log, detail)
        return hand_back(cfg, clients, spec, src, mask, result, log)
    codebuild = standard_env(cfg, clients, sha, standard_image.SRC, uri, cfg.build.image or standard_image.NAME)
    identity = build_credentials(cfg, clients, spec, codebuild["AWS_ACCOUNT_ID"], codebuild["CODEBUILD_LOG_PATH"])
    mask = masker_for(hidden, identity)
    if "AWS_ACCESS_KEY_ID" in identity and clients.settings.endpoint_url:
        identity = {**identity, "AWS_ENDPOINT_URL": clients.settings.endpoint_url}
    env = {"HOME": "/tmp", **variables, **codebuild, **identity}
    with open_box(src, clients.settings.build_boxes, clients.settings.build_user, box_limits(cfg),
                  box_egress(cfg, clients, uri, identity), deadline) as box:
        rules = docker_requests.Rules(box.src, uri)
        with docker_requests.Answerer(box.requests, box.answers, rules, box.client(), deadline, mask.add), \
                box_shell(cfg, box, env, spec.env.shell, deadline) as shell:
            result = run_in(spec, shell, mask, log, detail)
        box.stop()  # nothing of the build runs while its files are read
        return hand_back(cfg, clients, spec, box.src, mask, result, log)


def masker_for(hidden: list[str], identity: dict[str, str]) -> Masker:
    return Masker([*hidden, *(v for k, v in identity.items() if k in ("AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN"))])


def run_in(spec: BuildSpec, shell: Shell, mask: Masker, log: Log, detail: Log | None) -> BuildRun:
    result = BuildRun()
    run_phases(spec, shell, mask, log, result, detail)
    if result.failure is None:
        result.exported = {k: mask(v) for k, v in shell.capture(spec.env.exported).items()}
    return result


def hand_back(cfg: ServiceConfig, clients: AwsClients, spec: BuildSpec, src: Path, mask: Masker, result: BuildRun,
              log: Log) -> BuildRun:
    """Reports, artifacts and imagedefinitions.json from the build's folder SRC, checked as they are read."""
    out = clients.settings.artifacts_dir
    publish_reports(cfg, spec, src, mask, result)
    if result.failure is not None:
        where = copy_artifacts(cfg, spec, src, out, result, required=False) if result.uploads_artifacts() else None
        kept = f"\nartifacts of the failed build (no hand-over): {where}" if where is not None else ""
        if kept:
            log(kept.strip())
        tests = "".join(f"{mask(line)}\n" for line in failed_tests(result))
        raise BuildError(tests + result.failure.message() + kept, service=cfg.name)
    copy_artifacts(cfg, spec, src, out, result)
    read_image_definitions(src, result)
    return result


def buildspec_for(cfg: ServiceConfig, tree: Path, sha: str) -> BuildSpec | None:
    """The service's buildspec: inline in its YAML, or a file of the commit (inside the checkout)."""
    inline = cfg.build.inline_buildspec()
    if inline is not None or not isinstance(cfg.build.buildspec, str):
        return inline
    where = f"the repository at {sha[:7]}"
    path = confined(tree, cfg.build.buildspec, "build.buildspec", where)
    return load_buildspec(read_text(path, "build.buildspec", where), f"{cfg.build.buildspec} ({where})")
