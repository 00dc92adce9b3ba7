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
RUN = "docker run --rm --network host"  # the box's own network: its engine has no other


def port_of(url: str) -> int:
    return int(urlsplit(url if "://" in url else f"http://{url}").port or 0)


def test_a_build_cannot_reach_the_pipelines_docker_engine(tmp_path: Path) -> None:
    socket_path = os.environ["DOCKER_HOST"].removeprefix("unix://")
    marker = f"atk-{random.randint(100_000, 999_999)}"
    run = Build(service(tmp_path), tmp_path)
    run([f"ls {socket_path} /var/run/docker.sock 2>&1 || true",
         f"docker -H unix://{socket_path} run --name {marker} --label {marker}=1 busybox true 2>&1 | tail -1 || true",
         "docker version --format 'engine={{.Server.Version}}'",
         *PROBE_IMAGE,
         # The engine may make a missing path in its own /tmp (a folder of the box's): never the socket.
         f"{RUN} -v {socket_path}:/s probe /bin/busybox sh -c 'test -S /s && echo SOCKET || echo no-socket' "
         "2>&1 || echo no-socket",
         f"{RUN} -v {Path(socket_path).parent}:/d probe /bin/busybox sh -c "
         f"'test -S /d/{Path(socket_path).name} && echo SOCKET || echo no-socket' 2>&1 || echo no-socket"])
    out = "\n".join(run.output())
    assert f"ls: {socket_path}: No such file or directory" in out, out
    assert "Cannot connect to the Docker daemon" in out or "no such file" in out.lower()
    ours = docker.from_env().version()["Version"]
    assert "engine=4." in out and f"engine={ours}" not in out, "docker reaches the box's own engine only"
    assert "probe-built" in out
    assert "SOCKET" not in out and out.count("no-socket") >= 2, "the socket is not there to mount"
    engine = docker.from_env()
    assert engine.containers.list(all=True, filters={"label": marker}) == [], "nothing started in the engine"
    assert engine.images.list(name="probe") == [], "the build's image never reached the pipeline's engine"


def test_a_build_reaches_only_its_registry_on_the_network(tmp_path: Path) -> None:
    registry = os.environ["SANDBOX_REGISTRY"]
    moto, prefect = port_of(os.environ["AWS_ENDPOINT_URL"]), port_of(os.environ["PREFECT_API_URL"])
    run = Build(service(tmp_path), tmp_path, uri=f"{registry}/atk-registry")
    probe = "if echo | nc -w 2 127.0.0.1 {port} >/dev/null 2>&1; then echo {name}=open; else echo {name}=closed; fi"
    run([probe.format(port=port_of(registry), name="registry"), probe.format(port=moto, name="aws"),
         probe.format(port=prefect, name="prefect"), "tail -n +3 /proc/net/dev | cut -d: -f1 | tr -d ' '",
         *PROBE_IMAGE, f"{RUN} probe /bin/busybox sh -c "
         f"'echo | nc -w 2 127.0.0.1 {prefect} 2>/dev/null && echo via-engine=open || echo via-engine=closed'"])
    assert run.output() == ["registry=open", "aws=closed", "prefect=closed", "lo", "probe-built",
                            "via-engine=closed"]


def test_a_build_cannot_read_the_workers_files(tmp_path: Path) -> None:
    secret = os.environ["AWS_SECRET_ACCESS_KEY"]
    sandbox_env = Path(os.environ["SANDBOX_DIR"]) / "env"
    worker_files = [str(sandbox_env), str(Path.home() / ".bashrc"), str(Settings().cache), "/etc/shadow"]
    run = Build(service(tmp_path), tmp_path)
    run([*(f"cat {path} 2>&1 | head -c 300 || true" for path in worker_files),
         *PROBE_IMAGE,
         f"{RUN} -v /:/h probe /bin/busybox ls /h",
         *(f"{RUN} -v /:/h probe /bin/busybox cat /h{path} 2>&1 | head -c 300 || true"
           for path in worker_files),
         f"{RUN} -v {sandbox_env.parent}:/s probe /bin/busybox ls /s 2>&1 || true"])
    out = "\n".join(run.output())
    assert secret not in out and "AWS_SECRET_ACCESS_KEY" not in out and "root:" not in out, out
    listed = out.split("probe-built\n", 1)[1].split("\n")
    root_view = set(listed[: listed.index("var") + 1])
    assert not {"root", "home", "work", "opt", "srv"} & root_view, f"the engine's root is minimal: {root_view}"
    assert out.count("No such file or directory") + out.count("Permission denied") >= 2 * len(worker_files)


def test_a_build_cannot_become_root_on_the_host(tmp_path: Path) -> None:
    mark = random.randint(100_000, 999_999)
    planted = [Path(f"/usr/pwned-{mark}"), Path(f"/etc/pwned-{mark}"), Path(f"/tmp/pwned-{mark}")]
    seen: dict[str, str] = {}
    run = Build(service(tmp_path), tmp_path)

    def look(line: str) -> None:  # while the build runs: who its processes are on the worker
        run.lines.append(line)
        if line == "sleeping":  # the backgrounded sleep may not have started yet on a loaded machine: look again
            deadline, pid = time.monotonic() + 10, []
            while not pid and time.monotonic() < deadline:
                pid = subprocess.run(["pgrep", "-f", f"sleep {mark}"], capture_output=True, text=True).stdout.split()
                if not pid:
                    time.sleep(0.1)
            seen["uid"] = Path(f"/proc/{pid[0]}/status").read_text().split("Uid:")[1].split()[0] if pid else ""

    run.log = look
    run([f"sleep {mark} & echo sleeping; sleep 1", "id -u", "grep CapEff /proc/self/status | tr -d '\\t'",
         *PROBE_IMAGE,
         f"{RUN} --privileged --user 0 -v /:/h probe /bin/busybox sh -c "
         f"'touch /h/usr/pwned-{mark} /h/etc/pwned-{mark} /h/tmp/pwned-{mark}; id -u' 2>&1 || true"])
    out = run.output()
    assert out[1:3] == ["1000", "CapEff:0000000000000000"], out
    assert seen["uid"] and seen["uid"] != "0", "the build's processes run as the unprivileged build user"
    assert "Read-only file system" in "\n".join(out)
    assert not any(p.exists() for p in planted), "nothing written on the worker, even as the engine's root"


def test_one_build_cannot_plant_an_image_for_the_next(tmp_path: Path) -> None:
    registry = os.environ["SANDBOX_REGISTRY"]
    name = f"{registry}/base-{random.randint(1000, 9999)}:1"
    first, second = Build(service(tmp_path), tmp_path), Build(service(tmp_path / "b"), tmp_path / "b")
    first([*PROBE_IMAGE, f"docker tag probe {name} && echo planted"])
    second([f"docker image inspect {name} >/dev/null 2>&1 && echo found || echo absent",
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
