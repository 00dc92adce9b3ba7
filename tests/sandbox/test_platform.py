"""The sandbox's processes: idempotent `up`, `status`, loopback only, no bridge, env file.

These run against the shared sandbox (started here if it is not up) and never
call `down` on it: other test sessions use it at the same time. `down` is
tested on a separate sandbox with its own state dir and ports.
"""

from __future__ import annotations

import contextlib
import ipaddress
import os
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path

import boto3
import pytest

from sandbox import engine, procs
from sandbox.identities import DEPLOY_USER
from sandbox.layout import ENV_KEYS, PICK_FLOOR, REPO, free_ports
from sandbox.manage import load_env

CLI = [sys.executable, "-m", "sandbox"]


def run_cli(
    *args: str, env: dict[str, str] | None = None, timeout: float = 400
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*CLI, *args],
        cwd=REPO,
        env=env or dict(os.environ),
        check=False,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


@pytest.fixture(scope="module")
def sandbox_env() -> dict[str, str]:
    """The shared sandbox, brought up if needed (a no-op when it already answers)."""
    done = run_cli("up")
    assert done.returncode == 0, done.stderr
    return load_env()


def test_second_up_is_a_quick_no_op(sandbox_env: dict[str, str]) -> None:
    t0 = time.monotonic()
    done = run_cli("up")
    took = time.monotonic() - t0
    print(f"warm `python -m sandbox up` took {took:.2f} s")
    assert done.returncode == 0, done.stderr
    assert "already up" in done.stdout


def test_status_lists_every_component_healthy(sandbox_env: dict[str, str]) -> None:
    done = run_cli("status")
    assert done.returncode == 0, done.stdout + done.stderr
    rows = {line.split()[0]: line.split() for line in done.stdout.splitlines()[1:]}
    assert set(rows) - {"postgres"} == {"engine", "registry", "aws", "prefect", "busybox"}  # postgres: up --postgres
    assert all(row[2] == "ok" for row in rows.values()), done.stdout
    assert rows["aws"][3] == sandbox_env["AWS_ENDPOINT_URL"]
    assert rows["engine"][3] == sandbox_env["DOCKER_HOST"]


def _descendants(roots: set[int]) -> set[int]:
    parents: dict[int, int] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        parents[int(stat.parent.name)] = int(fields[1])
    found = set(roots)
    grew = True
    while grew:
        more = {pid for pid, ppid in parents.items() if ppid in found} - found
        found |= more
        grew = bool(more)
    return found


def _socket_inodes(pids: set[int]) -> set[str]:
    inodes: set[str] = set()
    for pid in pids:
        try:
            for fd in Path(f"/proc/{pid}/fd").iterdir():
                target = os.readlink(fd)
                if target.startswith("socket:["):
                    inodes.add(target[8:-1])
        except OSError:
            continue
    return inodes


def _listening(inodes: set[str]) -> list[tuple[str, int]]:
    """(address, port) of LISTEN sockets among INODES, from /proc/net/tcp and tcp6."""
    out = []
    for table, family in (("/proc/net/tcp", socket.AF_INET), ("/proc/net/tcp6", socket.AF_INET6)):
        for line in Path(table).read_text().splitlines()[1:]:
            cols = line.split()
            if cols[3] != "0A" or cols[9] not in inodes:
                continue
            addr_hex, port_hex = cols[1].split(":")
            raw = bytes.fromhex(addr_hex)
            words = b"".join(raw[i : i + 4][::-1] for i in range(0, len(raw), 4))
            out.append((socket.inet_ntop(family, words), int(port_hex, 16)))
    return out


def _is_loopback(addr: str) -> bool:
    ip = ipaddress.ip_address(addr)
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped
    return ip.is_loopback


def test_every_listening_socket_is_on_loopback(sandbox_env: dict[str, str]) -> None:
    """Sockets of the processes `up` started (listener proxies too), and the component ports."""
    state = Path(sandbox_env["SANDBOX_DIR"])
    recorded = {procs.read_pidfile(p) for p in (state / "pids").glob("*.pid")}
    roots = {r.pid for r in recorded if r is not None and procs.alive(r)}
    sockets = set(_listening(_socket_inodes(_descendants(roots))))
    urls = (
        sandbox_env["AWS_ENDPOINT_URL"],
        "http://" + sandbox_env["SANDBOX_REGISTRY"],
        sandbox_env["PREFECT_API_URL"].removesuffix("/api"),
    )
    for url in urls:
        port = int(url.rsplit(":", 1)[1])
        found = procs.listening_addresses(port)
        assert found, f"nothing listens on port {port}"
        sockets |= {(addr, port) for addr in found}
    print("listening:", sorted(sockets, key=lambda s: s[1]))
    assert [s for s in sockets if not _is_loopback(s[0])] == []


def test_engine_has_no_bridge_network(sandbox_env: dict[str, str]) -> None:
    docker = shutil.which("docker")
    assert docker, "the docker CLI comes with Debian's docker.io"
    done = subprocess.run(
        [docker, "network", "ls", "--format", "{{.Name}} {{.Driver}}"],
        env={**os.environ, "DOCKER_HOST": sandbox_env["DOCKER_HOST"]},
        capture_output=True,
        text=True,
        check=True,
    )
    drivers = {line.split()[1] for line in done.stdout.splitlines()}
    assert drivers <= {"host", "null"}, done.stdout


def test_env_file_has_the_documented_keys_and_no_real_credentials(
    sandbox_env: dict[str, str],
) -> None:
    text = (Path(sandbox_env["SANDBOX_DIR"]) / "env").read_text()
    assert [line.split("=", 1)[0] for line in text.splitlines()] == list(ENV_KEYS)
    assert '"' not in text and "'" not in text
    state = Path(sandbox_env["SANDBOX_DIR"])
    admin = load_env(admin=True)
    # The pipeline signs as the sandbox's deploy user, never with the sandbox's own (admin) key, and
    # both files are readable by their owner only.
    assert sandbox_env["AWS_ACCESS_KEY_ID"] != admin["AWS_ACCESS_KEY_ID"]
    assert admin["AWS_SECRET_ACCESS_KEY"] not in text
    assert (state / "env").stat().st_mode & 0o077 == 0
    assert (state / "admin.env").stat().st_mode & 0o077 == 0
    iam = boto3.client("iam", endpoint_url=sandbox_env["AWS_ENDPOINT_URL"], region_name="us-east-1",
                       aws_access_key_id=admin["AWS_ACCESS_KEY_ID"],
                       aws_secret_access_key=admin["AWS_SECRET_ACCESS_KEY"])
    keys = iam.list_access_keys(UserName=DEPLOY_USER)["AccessKeyMetadata"]
    assert [k["AccessKeyId"] for k in keys] == [sandbox_env["AWS_ACCESS_KEY_ID"]]
    assert sandbox_env["AWS_ENDPOINT_URL"].startswith("http://127.0.0.1:")
    assert sandbox_env["PREFECT_API_URL"].startswith("http://127.0.0.1:")
    assert sandbox_env["SANDBOX_REGISTRY"].startswith("127.0.0.1:")


def test_long_state_dirs_put_the_docker_socket_under_run() -> None:
    short = Path("/tmp/sb")
    long = Path("/tmp/" + "x" * 120)
    assert engine.own_socket(short) == short / "docker.sock"
    moved = engine.own_socket(long)
    assert str(moved).startswith("/run/ecs-pipeline/") and len(str(moved)) < 108
    assert len(str(engine.exec_root(long))) < 40


def test_picked_ports_are_free_distinct_and_below_the_kernels_ephemeral_range() -> None:
    """A port picked inside the ephemeral range can become an outgoing connection's local end before the
    server binds it (a test session's Prefect server once could not bind its port): picked ports sit
    between PICK_FLOOR and that range, and ports other listeners hold are never picked."""
    low = int(Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()[0])
    with contextlib.ExitStack() as held:
        taken = set()
        for port in range(PICK_FLOOR, low, 31):  # about 400 of the range's ports held by listeners
            sock = held.enter_context(socket.socket())
            with contextlib.suppress(OSError):
                sock.bind(("127.0.0.1", port))
                sock.listen()
                taken.add(port)
        picked = [free_ports(25) for _ in range(20)]
    assert len(taken) > 300
    every = [port for ports in picked for port in ports]
    assert all(PICK_FLOOR <= port < low for port in every), (min(every), max(every))
    assert not taken & set(every), sorted(taken & set(every))
    assert all(len(set(ports)) == 25 for ports in picked)


@pytest.mark.timeout(600)  # a second Prefect server starts slowly on a busy 2-core machine
def test_down_stops_only_what_up_started(sandbox_env: dict[str, str], tmp_path: Path) -> None:
    """A separate sandbox: its own engine, ports and state; a registry it found is left running.

    Asks for the shared sandbox only so that its `up` has installed the Debian packages.
    """
    state = tmp_path / "sb"
    state.mkdir()
    reg_port, aws_port, prefect_port = free_ports(3)
    env = {k: v for k, v in os.environ.items() if k != "DOCKER_HOST"}
    env.update(
        SANDBOX_DIR=str(state),
        SANDBOX_AWS_PORT=str(aws_port),
        SANDBOX_REGISTRY_PORT=str(reg_port),
        SANDBOX_PREFECT_PORT=str(prefect_port),
    )
    # A registry that was there before `up`, as a user's own would be.
    config = tmp_path / "registry.yml"
    config.write_text(
        f"version: 0.1\nstorage:\n  filesystem:\n    rootdirectory: {tmp_path / 'reg'}\n"
        f"http:\n  addr: 127.0.0.1:{reg_port}\n"
    )
    theirs = subprocess.Popen(
        ["docker-registry", "serve", str(config)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        deadline = time.monotonic() + 20
        while not procs.http_ok(f"http://127.0.0.1:{reg_port}/v2/") and time.monotonic() < deadline:
            time.sleep(0.1)
        t0 = time.monotonic()
        up = run_cli("up", env=env)
        print(f"isolated `up` (own engine, aws, prefect) took {time.monotonic() - t0:.1f} s")
        assert up.returncode == 0, up.stderr
        status = run_cli("status", env=env)
        assert status.returncode == 0, status.stdout
        assert "not started by the sandbox" in next(
            li for li in status.stdout.splitlines() if li.startswith("registry")
        )
        started = {p.stem: procs.read_pidfile(p) for p in (state / "pids").glob("*.pid")}
        assert set(started) == {"engine", "aws", "prefect"}
        docker_host = (state / "env").read_text().split("DOCKER_HOST=")[1].split()[0]

        down = run_cli("down", env=env)
        assert down.returncode == 0, down.stderr
        assert not any(procs.alive(rec) for rec in started.values())
        assert not engine.engine_answers(docker_host)
        assert theirs.poll() is None, "down stopped a registry it did not start"
        assert procs.http_ok(f"http://127.0.0.1:{reg_port}/v2/")
        after = run_cli("status", env=env)
        assert after.returncode == 1
        assert not (state / "env").exists()
    finally:
        run_cli("down", env=env)
        theirs.terminate()
        theirs.wait(timeout=10)
