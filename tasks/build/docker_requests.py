"""``docker`` in a build without an engine to reach: requests the pipeline checks and runs for it.

A build's container has no container engine socket, its own or anyone's: repository
code that reaches an engine's API can start containers with any mount, network or
privilege that engine allows. What a buildspec needs of Docker is narrow (CodeBuild's
samples: ``docker build``, ``tag``, ``push``, ``login``), so that is what it gets.

The ``docker`` command in the build (``SHIM``, at /usr/bin/docker in the standard
image and /usr/local/bin/docker in ``build.image``) writes its arguments and working
folder to the box's request folder and prints the answer. The pipeline reads each
request as untrusted input and turns it into one Podman command for the box's own
engine, or refuses it (exit status 125, the reason on the build's output):

* build: the context and ``--file`` inside the checkout (``CODEBUILD_SRC_DIR``),
  followed through links and checked again; ``--tag`` local or in the service's
  repository; only the flags in ``BUILD_FLAGS`` (no ``--network``, ``--volume``,
  ``--security-opt``, ``--secret``, ``--output``, ...);
* tag, push: any tag or push target outside the service's repository is refused;
* login, logout: only to the service's registry; the password never on a command
  line (it goes by standard input) and masked like the build's secrets;
* pull, images, image inspect, rmi, version: the box's own images only;
* everything else (``run``, ``exec``, ``create``, ``cp``, ``volume``, ``network``,
  ``system``, ``buildx`` and global options such as ``-H``) is refused.

The command runs as the build user inside the box's namespaces (its files, network
and processes: tasks/build/build_box.py), in the box's cgroups, never as the worker.
"""

from __future__ import annotations

import contextlib
import os
import posixpath
import re
import signal
import subprocess
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from tasks.build.shell import open_written
from tasks.core.waits import Backoff

REFUSED = 125  # docker's own status for an error of the docker command itself
MAX_REQUEST = 256 * 1024
MAX_STDIN = 64 * 1024
REQUEST_NAME = re.compile(r"^[0-9]{1,10}\.[0-9a-f-]{36}$")
HELP = "docs/buildspec.md, the build box"

# The build's docker: asks, waits, prints. /proc/sys/kernel/random/uuid names the request.
SHIM = r"""#!/bin/sh
# docker, in a build: the build reaches no container engine. This hands the command to
# the pipeline, which runs build, tag, push, pull, login, logout, images, image inspect,
# rmi and version in the build's own engine, within what it allows, and prints the answer.
ask=/codebuild/docker/requests answers=/codebuild/docker/answers
id="$$.$(cat /proc/sys/kernel/random/uuid)" || exit 125
next=
{
  printf '%s\0' "$PWD"
  for arg in "$@"; do
    if [ -n "$next" ]; then  # --build-arg NAME without a value takes NAME's value, as docker does
      next=
      case "$arg" in
        *=*) ;;
        [A-Za-z_]*) if ( eval "[ -n \"\${$arg+x}\" ]" ) 2>/dev/null; then eval "arg=\"\$arg=\${$arg}\""; fi ;;
      esac
    fi
    [ "$arg" = --build-arg ] && next=1
    printf '%s\0' "$arg"
  done
} > "$ask/$id.part" || exit 125
case " $* " in *" --password-stdin "*) cat > "$ask/$id.stdin" || exit 125 ;; esac
mv "$ask/$id.part" "$ask/$id.request" || exit 125
pause=0.02  # the answer of a tag comes at once, a build's in seconds or minutes: look less often
while [ ! -e "$answers/$id.status" ]; do
  sleep $pause
  case $pause in 0.02) pause=0.05 ;; 0.05) pause=0.1 ;; 0.1) pause=0.2 ;; esac
done
cat "$answers/$id.output"
read -r status < "$answers/$id.status"
exit "$status"
"""

SRC = "/codebuild/output/src"
REQUESTS, ANSWERS = "/codebuild/docker/requests", "/codebuild/docker/answers"

# Flags each command takes: True when the flag takes a value. Aliases map to one name.
BUILD_FLAGS = {"--tag": True, "--file": True, "--build-arg": True, "--label": True, "--target": True,
               "--platform": True, "--quiet": False, "--no-cache": False, "--pull": False, "--rm": False,
               "--force-rm": False, "--progress": True}
ALIASES = {"-t": "--tag", "-f": "--file", "-q": "--quiet", "-u": "--username", "-p": "--password", "-a": "--all"}
FLAGS: dict[str, dict[str, bool]] = {
    "build": BUILD_FLAGS,
    "tag": {},
    "push": {"--quiet": False},
    "pull": {"--quiet": False, "--platform": True},
    "login": {"--username": True, "--password": True, "--password-stdin": False},
    "logout": {},
    "images": {"--quiet": False, "--all": False, "--digests": False, "--no-trunc": False, "--format": True,
               "--filter": True},
    "image inspect": {"--format": True},
    "rmi": {"--force": False},
    "version": {"--format": True},
}
# docker's names for the same commands
SAME = {"image build": "build", "builder build": "build", "image tag": "tag", "image push": "push",
        "image pull": "pull", "image ls": "images", "image list": "images", "inspect": "image inspect",
        "image rm": "rmi", "image remove": "rmi"}
SHORT_FOR = {"images": {"-f": "--filter"}, "image inspect": {"-f": "--format"}, "rmi": {"-f": "--force"}}


class Refused(Exception):
    """A request the pipeline does not run: the message says which word and why."""


@dataclass(frozen=True)
class Rules:
    """What a build may name: its checkout (in the box and in the container) and its repository."""

    src: Path  # the checkout's copy in the box, CODEBUILD_SRC_DIR in the container
    repository: str  # host[:port]/path of the service's ECR repository, no tag

    @property
    def registry(self) -> str:
        return self.repository.split("/", 1)[0]


@dataclass
class Request:
    words: list[str]
    cwd: str
    stdin: bytes = b""
    secrets: list[str] = field(default_factory=list)


def _command(words: list[str]) -> tuple[str, list[str]]:
    if not words:
        raise Refused("docker: name a command (build, tag, push, pull, login, logout, images, image inspect, "
                      "rmi, version)")
    if words[0].startswith("-"):
        raise Refused(f"docker {words[0]}: global options are not available in a build; the pipeline chooses "
                      f"the engine, and it is the build's own ({HELP})")
    two = " ".join(words[:2])
    if two in SAME or two in FLAGS:
        return SAME.get(two, two), words[2:]
    one = SAME.get(words[0], words[0])
    if one in FLAGS:
        return one, words[1:]
    hint = {"run": "; run tests in the build's own shell, or as a RUN step of the Dockerfile",
            "exec": "; commands run in the build's own shell",
            "buildx": "; use docker build"}.get(words[0], "")
    raise Refused(f"docker {two if words[0] in ('image', 'buildx', 'builder') else words[0]} is not available in "
                  "a build: the build reaches no container engine, and the pipeline runs build, tag, push, pull, "
                  f"login, logout, images, image inspect, rmi and version for it{hint} ({HELP})")


def _flags(command: str, rest: list[str]) -> tuple[list[tuple[str, str | None]], list[str]]:
    """(flag, value) pairs and the positional words of REST, every flag checked against the command's list."""
    allowed, short = FLAGS[command], {**ALIASES, **SHORT_FOR.get(command, {})}
    flags: list[tuple[str, str | None]] = []
    positional: list[str] = []
    words = iter(rest)
    for word in words:
        if word == "--":
            positional += list(words)
            break
        if not word.startswith("-") or word == "-":
            positional.append(word)
            continue
        name, eq, given = word.partition("=")
        name = short.get(name, name)
        if name not in allowed:
            raise Refused(f"docker {command} {name}: this option is not available in a build "
                          f"(allowed: {', '.join(sorted(allowed)) or 'none'}; {HELP})")
        if allowed[name]:
            value = given if eq else next(words, None)
            if value is None:
                raise Refused(f"docker {command} {name}: needs a value")
            flags.append((name, value))
        elif eq and given.lower() not in ("true", "false", "always"):
            raise Refused(f"docker {command} {name}={given}: this option takes no value here")
        elif given.lower() != "false":
            flags.append((name, None))
    return flags, positional


def _reference(name: str, command: str) -> str:
    if not re.fullmatch(r"[a-z0-9][a-z0-9._:/@-]*", name.lower()) or len(name) > 512:
        raise Refused(f"docker {command}: {name!r} is not an image reference")
    return name


def _registry_of(name: str) -> str | None:
    first, slash, _ = name.partition("/")
    return first if slash and ("." in first or ":" in first or first == "localhost") else None


def _own(name: str, rules: Rules, command: str, what: str) -> str:
    """NAME when it is local (no registry) or in the service's repository; Refused otherwise."""
    _reference(name, command)
    registry = _registry_of(name)
    if registry is None and command != "push":
        return name
    base = re.split(r"[:@]", name.split("/", 1)[1], maxsplit=1)[0] if registry else ""
    if registry == rules.registry and f"{registry}/{base}" == rules.repository:
        return name
    raise Refused(f"docker {command}: {what} {name} is outside this service's repository {rules.repository}; "
                  "a build pushes to its own repository only")


def _inside(path: str, cwd: str, rules: Rules, command: str, what: str) -> str:
    """PATH (the container's, relative to CWD) as the box's path, when it lies inside the checkout."""
    if "://" in path or path == "-" or path.startswith("git@"):
        raise Refused(f"docker {command}: {what} {path!r} must be a folder of the checkout ({SRC})")
    seen = posixpath.normpath(posixpath.join(cwd, path))
    if seen != SRC and not seen.startswith(SRC + "/"):
        raise Refused(f"docker {command}: {what} {path} is outside the checkout ({SRC}); "
                      "build from the source folder")
    boxed = rules.src / posixpath.relpath(seen, SRC)
    real = Path(os.path.realpath(boxed))
    if not real.is_relative_to(rules.src.resolve()):
        raise Refused(f"docker {command}: {what} {path} leaves the checkout through a symbolic link")
    return str(real)


def plan(request: Request, rules: Rules) -> list[str]:
    """The Podman words for REQUEST (after ``podman --remote --url ...``); Refused when it asks for more."""
    command, rest = _command(request.words)
    flags, positional = _flags(command, rest)
    out: list[str] = []
    if command == "build":
        if len(positional) != 1:
            raise Refused("docker build: name one context folder (e.g. docker build -t NAME .)")
        for name, value in flags:
            if name == "--progress":
                continue
            if name == "--tag":
                out += ["--tag", _own(str(value), rules, command, "tag")]
            elif name == "--file":
                out += ["--file", _inside(str(value), request.cwd, rules, command, "--file")]
            elif name == "--pull":
                out.append("--pull=always")
            else:
                out += [name] if value is None else [name, value]
        return ["build", *out, _inside(positional[0], request.cwd, rules, command, "context")]
    if command == "tag":
        if len(positional) != 2:
            raise Refused("docker tag: name a source image and a target (docker tag SOURCE TARGET)")
        return ["tag", _reference(positional[0], command), _own(positional[1], rules, command, "target")]
    if command == "push":
        if len(positional) != 1:
            raise Refused("docker push: name one image of this service's repository")
        return ["push", *(n for n, _ in flags), _own(positional[0], rules, command, "image")]
    if command == "pull":
        if len(positional) != 1:
            raise Refused("docker pull: name one image")
        return ["pull", *_words(flags), _reference(positional[0], command)]
    if command in ("login", "logout"):
        if len(positional) != 1 or positional[0] != rules.registry:
            raise Refused(f"docker {command}: name this service's registry, {rules.registry} (it is the only one "
                          "a build may use)")
        if command == "logout":
            return ["logout", rules.registry]
        values = dict(flags)
        password = values.get("--password")
        if password is None and "--password-stdin" in values:
            password = request.stdin.decode("utf-8", "replace").rstrip("\r\n")
        if not password or not values.get("--username"):
            raise Refused("docker login: give --username and --password-stdin (the password on standard input)")
        request.secrets.append(password)
        request.stdin = password.encode()
        return ["login", "--username", str(values["--username"]), "--password-stdin", rules.registry]
    names = [_reference(p, command) for p in positional]
    if command == "images" and len(names) > 1:
        raise Refused("docker images: name at most one repository")
    if command in ("image inspect", "rmi") and not names:
        raise Refused(f"docker {command}: name an image")
    if command == "version" and names:
        raise Refused("docker version takes no arguments")
    return [*command.split(), *_words(flags), *names]


def _words(flags: list[tuple[str, str | None]]) -> list[str]:
    return [w for name, value in flags for w in ((name,) if value is None else (name, value))]


def read_request(folder: Path, name: str) -> Request:
    """The request NAME in FOLDER (written by the build): regular files only, of bounded size, then removed."""
    try:
        data = _read_own(folder / f"{name}.request", MAX_REQUEST)
        stdin = _read_own(folder / f"{name}.stdin", MAX_STDIN) if (folder / f"{name}.stdin").exists() else b""
    finally:
        for suffix in (".request", ".stdin"):
            with contextlib.suppress(OSError):
                (folder / f"{name}{suffix}").unlink(missing_ok=True)
    try:
        words = data.decode("utf-8").split("\0")
    except UnicodeDecodeError:
        raise Refused("docker: the command's words are not UTF-8") from None
    if len(words) < 2 or words[-1] != "":
        raise Refused("docker: the request is incomplete")
    return Request(words[1:-1], words[0], stdin)


def _read_own(path: Path, limit: int) -> bytes:
    f = open_written(path)
    if f is None:
        raise Refused(f"docker: the request file {path.name} is not a regular file")
    with f:
        data = f.read(limit + 1)
    if len(data) > limit:
        raise Refused(f"docker: the request is larger than {limit // 1024} KiB")
    return data


class Answerer:
    """Answers the build's docker requests while its shell runs: one at a time, each as one Podman command.

    CLIENT is the argv that runs ``podman --remote`` as the build user inside the box;
    SECRET is called with each password a login carries, before anything is printed.
    """

    POLL = (0.02, 0.2)  # the first pause after a request, and the longest while none comes

    def __init__(self, requests: Path, answers: Path, rules: Rules, client: list[str], deadline: float,
                 secret: Callable[[str], None]) -> None:
        self.requests, self.answers, self.rules, self.client = requests, answers, rules, client
        self.deadline, self.secret = deadline, secret
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._serve, name="build-docker-requests", daemon=True)
        self.answered: list[tuple[list[str], int]] = []  # (the Podman words or the refused request, status)
        self._seen: set[str] = set()  # each request is answered once, whatever is left in the folder

    def __enter__(self) -> Answerer:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(10)

    def _serve(self) -> None:
        """Looks at the folder POLL[0] after a request, backing off to POLL[1] apart while none comes."""
        pauses = Backoff(self.POLL[0], 2, self.POLL[1])
        while not self._stop.is_set():
            for path in sorted(self.requests.glob("*.request")):
                name = path.name.removesuffix(".request")
                if REQUEST_NAME.fullmatch(name) and name not in self._seen and not self._stop.is_set():
                    self._seen.add(name)
                    pauses = Backoff(self.POLL[0], 2, self.POLL[1])  # the next request may follow at once
                    try:
                        self._answer(name)
                    except (OSError, subprocess.SubprocessError, ValueError) as exc:  # never leave docker waiting
                        with contextlib.suppress(OSError):
                            self._write(name, f"docker: the pipeline could not answer: {exc}\n".encode(), REFUSED)
            self._stop.wait(next(pauses))

    def _answer(self, name: str) -> None:
        try:
            request = read_request(self.requests, name)
            words = plan(request, self.rules)
        except Refused as refused:
            self.answered.append(([], REFUSED))
            self._write(name, f"{refused}\n".encode(), REFUSED)
            return
        for value in request.secrets:
            self.secret(value)
        status, output = self._run(words, request.stdin)
        self.answered.append((words, status))
        self._write(name, output, status)

    def _run(self, words: list[str], stdin: bytes) -> tuple[int, bytes]:
        left = self.deadline - time.monotonic()
        if left <= 0:
            return REFUSED, b"docker: the build's time is up (build.timeout_seconds)\n"
        proc = subprocess.Popen([*self.client, *words], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                stderr=subprocess.STDOUT, start_new_session=True)
        try:
            output, _ = proc.communicate(stdin, timeout=left)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(OSError):
                os.killpg(proc.pid, signal.SIGKILL)
            output, _ = proc.communicate()
            return REFUSED, output + b"\ndocker: stopped at the build's timeout (build.timeout_seconds)\n"
        return proc.returncode, output

    def _write(self, name: str, output: bytes, status: int) -> None:
        (self.answers / f"{name}.output").write_bytes(output)
        part = self.answers / f".{name}.status"
        part.write_text(f"{status}\n")
        os.chmod(part, 0o644)
        part.rename(self.answers / f"{name}.status")

