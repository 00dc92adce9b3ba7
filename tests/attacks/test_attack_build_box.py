"""Attack: a pusher's buildspec reaches past its build, into the worker, its engine, its network or its files.

Every test is the attacker's buildspec through run_buildspec, in the default
build box (tasks/build/build_box.py), against the session's real sandbox: the
pipeline's Docker engine, moto, the Prefect server and the registry are running
on 127.0.0.1. Each asserts the attack fails, and that nothing outside the box
changed (the engine's containers, the worker's files, the processes left).
"""

from __future__ import annotations

import os
import random
import shlex
import subprocess
import time
from pathlib import Path
from urllib.parse import urlsplit

import docker
import pytest

from tasks.core.errors import BuildError
from tasks.core.settings import Settings
from tests.attacks.builds import Build, service

PROBE_IMAGE = [  # an image of the build's own, made in its box from the standard image's busybox
    "cp /bin/busybox . && printf 'FROM scratch\\nCOPY busybox /bin/busybox\\n' > Dockerfile.probe",
    "docker build -q -t probe -f Dockerfile.probe . >/dev/null 2>&1 && echo probe-built",
]


def in_engine(script: str, *mount: str) -> list[str]:
    """Commands that run SCRIPT as a RUN step of a docker build (root in the box's engine, with MOUNT)."""
    step = " ".join(f"--mount={m}" for m in mount)
    command = '["/bin/busybox", "sh", "-c", "' + script.replace('"', '\\"') + '"]'
    return ["printf '%s\\n' 'FROM probe' " + shlex.quote(f"RUN {step} {command}") + " > Dockerfile.step",
            "docker build --no-cache -f Dockerfile.step . 2>&1 | grep -v '^STEP\\|^COMMIT\\|^-->\\|^[0-9a-f]\\{64\\}$'"]


def port_of(url: str) -> int:
    return int(urlsplit(url if "://" in url else f"http://{url}").port or 0)


def test_a_build_finds_no_engine_socket_to_reach(tmp_path: Path) -> None:
    """DESIGN.md: repository code is never given the pipeline's sockets; here it is given none at all."""
    socket_path = os.environ["DOCKER_HOST"].removeprefix("unix://")
    marker = f"atk-{random.randint(100_000, 999_999)}"
    run = Build(service(tmp_path), tmp_path)
    run(["echo DOCKER_HOST=${DOCKER_HOST-unset}",
         f"ls {socket_path} /var/run/docker.sock /run/podman/podman.sock 2>&1 || true",
         "find / -type s 2>/dev/null | sed 's/^/socket file: /'; echo sockets-searched",
         # the box's network namespace lists its sockets: a path must not be in the build's view, and no
         # abstract stream socket (which a shared network namespace would let it reach) may listen
         "tail -n +2 /proc/net/unix | while read -r _ _ _ flags type _ _ path; do "
         "case $path in @*) [ $type = 0001 ] && [ $flags = 00010000 ] && echo \"listening: $path\";; "
         "'') ;; *) [ -e \"$path\" ] && echo \"reachable: $path\";; esac; done; echo sockets-checked",
         f"docker -H unix://{socket_path} run --name {marker} busybox true; echo status=$?",
         f"docker --host=unix://{socket_path} images; echo status=$?",
         f"docker images --url unix://{socket_path}; echo status=$?",
         "docker version --format 'engine={{.Server.Version}}'"])
    out = "\n".join(run.output())
    assert "DOCKER_HOST=unset" in out
    assert f"ls: {socket_path}: No such file or directory" in out and "ls: /var/run/docker.sock: No such" in out
    assert "socket file:" not in out and "sockets-searched" in out, out
    assert "listening:" not in out and "reachable:" not in out and "sockets-checked" in out, out
    assert out.count("global options are not available in a build") == 2, out
    assert "docker images --url: this option is not available in a build" in out
    assert out.count("status=125") == 3, out
    ours = docker.from_env().version()["Version"]
    assert "engine=4." in out and f"engine={ours}" not in out, "the build's docker asks the box's own engine"
    engine = docker.from_env()
    assert engine.containers.list(all=True, filters={"name": marker}) == [], "nothing started in the engine"


WIDENED = {  # a docker command a build may not have run for it, and the words of its refusal
    "docker run --rm --privileged -v /:/h probe true": "docker run is not available in a build",
    "docker exec codebuild true": "docker exec is not available in a build",
    "docker create probe": "docker create is not available in a build",
    "docker cp probe:/bin/busybox .": "docker cp is not available in a build",
    "docker volume create v": "docker volume is not available in a build",
    "docker system prune -f": "docker system is not available in a build",
    "docker buildx build .": "docker buildx build is not available in a build",
    "docker build --network host -t x .": "docker build --network: this option is not available",
    "docker build --security-opt seccomp=unconfined .": "docker build --security-opt: this option is not",
    "docker build -v /:/h .": "docker build -v: this option is not available",
    "docker build --secret id=s,src=/etc/shadow .": "docker build --secret: this option is not available",
    "docker build --output type=local,dest=/tmp/o .": "docker build --output: this option is not available",
    "docker build --add-host x:127.0.0.9 .": "docker build --add-host: this option is not available",
    "docker build --build-context x=/ .": "docker build --build-context: this option is not available",
    "docker build /etc": "docker build: context /etc is outside the checkout",
    "docker build ..": "docker build: context .. is outside the checkout",
    "docker build -f /etc/passwd .": "docker build: --file /etc/passwd is outside the checkout",
    "ln -sfn / escape && docker build escape": "docker build: context escape leaves the checkout through a symbolic",
    "docker build https://git.example.com/x.git": "must be a folder of the checkout",
    "docker build -t 127.0.0.1:1/other:1 .": "tag 127.0.0.1:1/other:1 is outside this service's repository",
    "docker tag probe 127.0.0.1:1/repository-of-another:1": "is outside this service's repository",
    "docker tag probe 127.0.0.1:1/repo-two:1": "is outside this service's repository",
    "docker push 127.0.0.1:1/other:1": "image 127.0.0.1:1/other:1 is outside this service's repository",
    "docker push probe": "image probe is outside this service's repository",
    "echo pw | docker login -u AWS --password-stdin registry.example.com": "name this service's registry, 127.0.0.1:1",
    "docker login -u AWS -p pw": "name this service's registry",
    "docker pull -a probe": "docker pull --all: this option is not available",
    "docker images --format '{{json .}}' --storage-driver vfs": "docker images --storage-driver: this option",
}


def test_a_docker_command_wider_than_a_build_needs_is_refused_and_never_run(tmp_path: Path) -> None:
    run = Build(service(tmp_path), tmp_path, uri="127.0.0.1:1/repo")
    run([*PROBE_IMAGE, "docker images -q | wc -l", "docker inspect --format '{{.Os}}' probe",
         *(f"{command} 2>&1; echo status=$?" for command in WIDENED),
         "docker images -q | wc -l"])
    out = run.output()
    assert out[:3] == ["probe-built", "1", "linux"], "what a build needs still runs: " + str(out)
    for command, words in WIDENED.items():
        assert any(words in line for line in out), f"{command}: {words!r} not in the output: {out}"
    assert out.count("status=125") == len(WIDENED), out
    assert out[-1] == "1", "no refused build made an image"


def test_a_request_written_by_hand_is_read_as_untrusted(tmp_path: Path) -> None:
    """The request folder is the build's: a link, a pipe or a huge file in it is refused, never followed."""
    run = Build(service(tmp_path), tmp_path)
    answers = "/codebuild/docker/answers"
    wait = f"while [ ! -e {answers}/$id.status ]; do sleep 0.05; done; cat {answers}/$id.output"
    run([f"cd /codebuild/docker/requests && id=1.{'a' * 36} && ln -s /etc/passwd $id.request && {wait}",
         f"cd /codebuild/docker/requests && id=2.{'b' * 36} && mkfifo $id.request && {wait}",
         # renamed into place whole, as the box's client does: written in place, the pipeline may read it
         # half-written and refuse it as incomplete first (seen on a loaded machine), not for its size
         f"cd /codebuild/docker/requests && id=3.{'c' * 36} && head -c 300000 /dev/zero > $id.part"
         f" && mv $id.part $id.request && {wait}",
         f"cd /codebuild/docker/requests && id=4.{'d' * 36} && printf 'cwd' > $id.request && {wait}",
         f"cd /codebuild/docker/requests && id=5.{'e' * 36} && mkdir $id.request && {wait}",
         f"touch {answers}/planted 2>&1 || true"])
    out = run.output()
    assert out[:2] == ["docker: the request file 1.{}.request is not a regular file".format("a" * 36),
                       "docker: the request file 2.{}.request is not a regular file".format("b" * 36)], out
    assert out[2:4] == ["docker: the request is larger than 256 KiB", "docker: the request is incomplete"], out
    assert out[4] == "docker: the request file 5.{}.request is not a regular file".format("e" * 36), out
    assert "Read-only file system" in out[5], "the answers are the pipeline's alone"


def test_a_build_reaches_only_its_registry_on_the_network(tmp_path: Path) -> None:
    registry = os.environ["SANDBOX_REGISTRY"]
    moto, prefect = port_of(os.environ["AWS_ENDPOINT_URL"]), port_of(os.environ["PREFECT_API_URL"])
    run = Build(service(tmp_path), tmp_path, uri=f"{registry}/atk-registry")
    probe = "if echo | nc -w 2 127.0.0.1 {port} >/dev/null 2>&1; then echo {name}=open; else echo {name}=closed; fi"
    run([probe.format(port=port_of(registry), name="registry"), probe.format(port=moto, name="aws"),
         probe.format(port=prefect, name="prefect"), "tail -n +3 /proc/net/dev | cut -d: -f1 | tr -d ' '",
         *PROBE_IMAGE,
         *in_engine(f"echo | /bin/busybox nc -w 2 127.0.0.1 {prefect} 2>/dev/null && echo via-engine=open "
                    "|| echo via-engine=closed")])
    assert run.output() == ["registry=open", "aws=closed", "prefect=closed", "lo", "probe-built",
                            "via-engine=closed"]


def test_a_build_cannot_read_the_workers_files(tmp_path: Path) -> None:
    secret = os.environ["AWS_SECRET_ACCESS_KEY"]
    sandbox_env = Path(os.environ["SANDBOX_DIR"]) / "env"
    worker_files = [str(sandbox_env), str(Path.home() / ".bashrc"), str(Settings().cache), "/etc/shadow"]
    run = Build(service(tmp_path), tmp_path)
    # A RUN step's bind mount names a folder of the context; an engine that let it name the host's (as
    # buildah before 1.35 did, CVE-2024-1753) still shows only the box's view, as the build user.
    run([*(f"cat {path} 2>&1 | head -c 300 || true" for path in worker_files),
         *PROBE_IMAGE,
         *in_engine("/bin/busybox ls /h; echo listed; " + "; ".join(
             f"/bin/busybox head -c 300 /h{path} 2>&1" for path in worker_files), "type=bind,source=/,target=/h"),
         *in_engine("/bin/busybox ls /h 2>&1", f"type=bind,source={sandbox_env.parent},target=/h")])
    out = "\n".join(run.output())
    assert secret not in out and "AWS_SECRET_ACCESS_KEY" not in out and "root:" not in out, out
    listed = out.split("probe-built\n", 1)[1].split("\nlisted")[0].split("\n")
    assert "Dockerfile.probe" in listed, f"the step listed the context: {listed}"
    assert not {"root", "home", "work", "opt", "srv", "etc", "usr"} & set(listed), f"the context only: {listed}"
    assert out.count("No such file or directory") + out.count("Permission denied") >= 2 * len(worker_files), out


def test_a_build_cannot_become_root_on_the_host(tmp_path: Path) -> None:
    mark = random.randint(100_000, 999_999)
    planted = [Path(f"/usr/pwned-{mark}"), Path(f"/etc/pwned-{mark}"), Path(f"/tmp/pwned-{mark}")]
    seen: dict[str, str] = {}
    run = Build(service(tmp_path), tmp_path)

    def look(line: str) -> None:  # while the build runs: who its processes are on the worker
        run.lines.append(line)
        if line in ("sleeping", "step sleeping"):  # the sleep may not have started yet on a loaded machine
            deadline, pid = time.monotonic() + 10, []
            while not pid and time.monotonic() < deadline:
                pid = subprocess.run(["pgrep", "-f", f"sleep {mark}"], capture_output=True, text=True).stdout.split()
                if not pid:
                    time.sleep(0.1)
            seen[line] = Path(f"/proc/{pid[0]}/status").read_text().split("Uid:")[1].split()[0] if pid else ""

    run.log = look
    touch = " ".join(f"/h{p}" for p in planted)
    run([f"sleep {mark} & echo sleeping; sleep 1", "id -u", "grep CapEff /proc/self/status | tr -d '\\t'",
         *PROBE_IMAGE,
         *in_engine(f"/bin/busybox sleep {mark} & echo step sleeping; /bin/busybox sleep 1; /bin/busybox id -u; "
                    f"/bin/busybox touch {touch} 2>&1; /bin/busybox mkdir /h/usr/x 2>&1",
                    "type=bind,source=/,target=/h,rw")])
    out = run.output()
    assert out[1:3] == ["1000", "CapEff:0000000000000000"], out
    assert seen.get("sleeping") and seen["sleeping"] != "0", "the build's processes run as the unprivileged user"
    assert "0" in out, "root in the engine's RUN step..."
    assert seen.get("step sleeping") and seen["step sleeping"] != "0", "...is the unprivileged build user outside"
    assert not any(p.exists() for p in planted), "nothing written on the worker, even as the engine's root"


def test_one_build_cannot_plant_an_image_for_the_next(tmp_path: Path) -> None:
    registry = os.environ["SANDBOX_REGISTRY"]
    uri = f"{registry}/base-{random.randint(1000, 9999)}"
    first = Build(service(tmp_path), tmp_path, uri=uri)
    second = Build(service(tmp_path / "b"), tmp_path / "b", uri=uri)
    first([*PROBE_IMAGE, f"docker tag probe {uri}:1 && echo planted"])
    second([f"docker image inspect {uri}:1 >/dev/null 2>&1 && echo found || echo absent",
            "docker images -q | wc -l"])
    assert first.output()[-1] == "planted"
    assert second.output() == ["absent", "0"], "every build starts with an empty image store"


def test_a_fork_bomb_stays_inside_the_box_and_dies_with_it(tmp_path: Path) -> None:
    mark = random.randint(100_000, 999_999)
    run = Build(service(tmp_path, resources={"pids": 200}), tmp_path)
    counted: list[int] = []

    def count(line: str) -> None:  # `echo` is the shell's own: it needs no process when none is left
        run.lines.append(line)
        if line == "spawned":
            found = subprocess.run(["pgrep", "-f", f"sleep {mark}"], capture_output=True, text=True).stdout
            counted.append(len(found.split()))

    run.log = count
    run([f"i=0; while [ $i -lt 400 ]; do (sleep {mark} 2>/dev/null &) 2>/dev/null; i=$((i + 1)); done; true",
         "echo spawned"])
    assert counted and 0 < counted[0] < 200, f"the box's process limit held: {counted} of 400 started"
    deadline = time.monotonic() + 5
    while subprocess.run(["pgrep", "-f", f"sleep {mark}"], capture_output=True).returncode == 0:
        assert time.monotonic() < deadline, "processes of the box outlived it"
        time.sleep(0.1)


def test_host_builds_are_refused_for_triggered_runs(tmp_path: Path) -> None:
    mark = tmp_path / "ran-on-the-worker"
    cfg = service(tmp_path, runner="host-unsafe")
    with pytest.raises(BuildError) as err:
        Build(cfg, tmp_path)([f"touch {mark}"], tags=("trigger:push", "service:x"))
    assert "build.runner: host-unsafe is refused for this run (trigger:push)" in err.value.message
    assert "ECS_PIPELINE_ALLOW_HOST_BUILDS" in err.value.message
    assert not mark.exists(), "not one command ran"
    allowed = Settings(artifacts_dir=tmp_path / "artifacts", allow_host_builds=True)
    Build(cfg, tmp_path, settings=allowed)([f"touch {mark}"], tags=("trigger:push",))
    assert mark.exists(), "the worker's setting lets it run"
    mark.unlink()
    Build(cfg, tmp_path)([f"touch {mark}"], tags=("trigger:cli",))
    assert mark.exists(), "a run a person started may use it"
