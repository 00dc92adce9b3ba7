"""Fixtures for the AWS-emulation tests: a running sandbox, test images, AWS helpers.

Uses the sandbox already answering on 127.0.0.1:4566 when there is one;
otherwise starts Docker, the registry and ``python -m sandbox.server`` itself
and stops exactly what it started.
"""

from __future__ import annotations

import io
import json
import os
import shutil
import socket
import subprocess
import sys
import tarfile
import tempfile
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import boto3
import docker
import pytest
from botocore.config import Config

from sandbox.layout import free_ports

ROOT = Path(__file__).resolve().parents[2]
# What a client of real AWS needs (the pipeline's own policy): tests never lean on a quick give-up.
CONFIG = Config(retries={"mode": "standard", "total_max_attempts": 10}, connect_timeout=5, read_timeout=30)
BUSYBOX = "/bin/busybox"
IMAGE_REPO = "emu-web"


def endpoint() -> str:
    """The sandbox's AWS endpoint, read when asked: the session's env file is loaded after this module."""
    return os.environ.get("SANDBOX_ENDPOINT") or os.environ.get("AWS_ENDPOINT_URL") or "http://127.0.0.1:4566"


def registry() -> str:
    return os.environ.get("SANDBOX_REGISTRY", "127.0.0.1:5000")


def http_get(url: str, timeout: float = 5.0) -> tuple[int, str]:
    """Status and body of a GET, errors included (a 5xx is an answer, not an exception)."""
    try:
        with urllib.request.urlopen(url, timeout=timeout) as resp:
            return resp.status, resp.read().decode()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read().decode("utf-8", "replace")


def answers(url: str) -> bool:
    try:
        return http_get(url, 2)[0] == 200
    except OSError:
        return False


def wait_for(check: Callable[[], Any], timeout: float, what: str, interval: float = 0.2) -> Any:
    """Poll until ``check`` returns something truthy; fail with ``what`` on timeout."""
    deadline = time.monotonic() + timeout
    last: Any = None
    while time.monotonic() < deadline:
        last = check()
        if last:
            return last
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout}s waiting for {what} (last: {last!r})")


# sandbox/controller/proxy.py: a listener change reaches its proxy this many AWS seconds after it is made
# (ELB: "requests could be routed using the previous rule configuration for a short time")
PROPAGATION_SECONDS = 30.0
TICK_SECONDS = 0.1  # the controller's loop: a proxy notices a change at its next tick at the latest
PROPAGATION_PERIODS = 5  # what a test waits, at most, for a listener change to serve


def propagation(time_scale: float) -> float:
    """One listener propagation period at TIME_SCALE, in seconds (the sandbox's floor of 0.2 s included)."""
    return max(PROPAGATION_SECONDS / time_scale, 0.2) + TICK_SECONDS


class Eventually:
    """Bounded waits for what the sandbox documents as eventual: a listener change, a removal after it."""

    def __init__(self, period: float) -> None:
        self.period = period

    def __call__(self, check: Callable[[], Any], what: str) -> Any:
        """Poll CHECK for a few propagation periods (a listener change serves, a task set goes, after one)."""
        return wait_for(check, PROPAGATION_PERIODS * self.period, what, interval=0.05)

    def answer(self, get: Callable[[], tuple[int, str]], want: tuple[int, str], what: str) -> None:
        """Poll GET until it answers WANT; the old configuration answers until the change propagated."""
        deadline = time.monotonic() + PROPAGATION_PERIODS * self.period
        while (got := get()) != want:
            assert time.monotonic() < deadline, f"{what}: answers {got!r}, not {want!r}, {PROPAGATION_PERIODS} " \
                f"propagation periods on"
            time.sleep(0.05)

    def settle(self) -> None:
        """Wait out one propagation period: every listener change made before the call now serves."""
        time.sleep(self.period)


class _Started:
    """Processes this session started, stopped in reverse order."""

    def __init__(self) -> None:
        self.procs: list[subprocess.Popen[bytes]] = []
        self.tmp = Path(tempfile.mkdtemp(prefix="emu-sandbox-"))

    def spawn(self, args: list[str], env: dict[str, str] | None = None, log: str = "log") -> None:
        out = open(self.tmp / log, "wb")  # noqa: SIM115 - lives as long as the process
        self.procs.append(subprocess.Popen(args, stdout=out, stderr=subprocess.STDOUT, env=env,
                                           cwd=ROOT))

    def stop(self) -> None:
        for proc in reversed(self.procs):
            proc.terminate()
            try:
                proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                proc.kill()
        netns = self.tmp / "docker" / "exec" / "netns" / "default"
        if netns.exists():  # dockerd leaves its network namespace mounted
            subprocess.run(["umount", "-l", str(netns)], check=False, capture_output=True)
        for _ in range(10):  # a lazy unmount can keep a file busy for a moment
            shutil.rmtree(self.tmp, ignore_errors=True)
            if not self.tmp.exists():
                break
            time.sleep(0.5)


def _docker_ok(host: str) -> bool:
    try:
        docker.DockerClient(base_url=host, timeout=5).ping()
        return True
    except Exception:  # noqa: BLE001 - any failure means "not usable"
        return False


def _ensure_docker(started: _Started) -> str:
    for host in filter(None, [os.environ.get("DOCKER_HOST"), "unix:///var/run/docker.sock"]):
        if _docker_ok(host):
            return host
    root = started.tmp / "docker"
    root.mkdir()
    sock = f"unix://{root}/docker.sock"
    started.spawn(["dockerd", "--bridge=none", "--iptables=false", "--ip-masq=false",
                   "--ip6tables=false", f"--data-root={root}/data", f"--exec-root={root}/exec",
                   f"--pidfile={root}/d.pid", "-H", sock], log="dockerd.log")
    wait_for(lambda: _docker_ok(sock), 60, "dockerd")
    return sock


def _ensure_registry(started: _Started) -> None:
    reg = registry()
    if answers(f"http://{reg}/v2/"):
        return
    cfg = started.tmp / "registry.yml"
    cfg.write_text(f"version: 0.1\nstorage:\n  filesystem:\n    rootdirectory: {started.tmp}/reg\n"
                   f"http:\n  addr: {reg}\n")
    started.spawn(["docker-registry", "serve", str(cfg)], log="registry.log")
    wait_for(lambda: answers(f"http://{reg}/v2/"), 30, "registry")


@pytest.fixture(scope="session")
def emu_sandbox() -> Iterator[dict[str, str]]:
    """The running sandbox endpoint and Docker host."""
    started = _Started()
    try:
        docker_host = _ensure_docker(started)
        _ensure_registry(started)
        url, reg = endpoint(), registry()
        if not answers(f"{url}/_sandbox/health"):
            env = dict(os.environ, DOCKER_HOST=docker_host, SANDBOX_REGISTRY=reg)
            env.setdefault("SANDBOX_TIME_SCALE", "60")
            port = url.rsplit(":", 1)[-1]
            started.spawn([sys.executable, "-m", "sandbox.server", "--host", "127.0.0.1",
                           "--port", port], env=env, log="server.log")
            wait_for(lambda: answers(f"{url}/_sandbox/health"), 60, "sandbox server")
        yield {"endpoint": url, "docker_host": docker_host}
    finally:
        started.stop()


@pytest.fixture(scope="session")
def emu_aws(emu_sandbox: dict[str, str]) -> Callable[[str], Any]:
    """A boto3 client factory for the sandbox endpoint."""
    def client(service: str) -> Any:
        return boto3.client(service, endpoint_url=emu_sandbox["endpoint"], region_name="us-east-1",
                            aws_access_key_id=os.environ.get("AWS_ACCESS_KEY_ID", "testing"),
                            aws_secret_access_key=os.environ.get("AWS_SECRET_ACCESS_KEY", "testing"),
                            config=CONFIG)
    return client


def _context(files: dict[str, tuple[bytes, int]]) -> io.BytesIO:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tar:
        for name, (data, mode) in files.items():
            info = tarfile.TarInfo(name)
            info.size, info.mode = len(data), mode
            tar.addfile(info, io.BytesIO(data))
    buf.seek(0)
    return buf


CGI_500 = (b"#!/bin/busybox sh\nprintf 'Status: 500 Internal Server Error\\r\\n"
           b"Content-Type: text/plain\\r\\n\\r\\nboom\\n'\n")
CGI_SLOW = (b"#!/bin/busybox sh\n/bin/busybox sleep 2\nprintf 'Content-Type: text/plain\\r\\n\\r\\nslow done\\n'\n")
CLASH_PORT = 47931
SERVE = '["/bin/busybox","sh","-c","exec /bin/busybox httpd -f -p 127.0.0.1:$PORT -h /www"]'
VARIANTS: dict[str, tuple[dict[str, tuple[bytes, int]], str]] = {
    "blue": ({"www/index.html": (b"blue\n", 0o644), "www/health": (b"ok\n", 0o644)}, SERVE),
    "green": ({"www/index.html": (b"green\n", 0o644), "www/health": (b"ok\n", 0o644)}, SERVE),
    "v1": ({"www/index.html": (b"v1\n", 0o644), "www/health": (b"ok\n", 0o644)}, SERVE),
    "v2": ({"www/index.html": (b"v2\n", 0o644), "www/health": (b"ok\n", 0o644)}, SERVE),
    # "/" answers 500 but /health passes: a release that deploys fine and then fails users
    "error500": ({"www/health": (b"ok\n", 0o644), "www/cgi-bin/index.cgi": (CGI_500, 0o755)}, SERVE),
    # /cgi-bin/slow.cgi answers after two seconds: a request in flight while its target drains
    "slow": ({"www/index.html": (b"slow\n", 0o644), "www/health": (b"ok\n", 0o644),
              "www/cgi-bin/slow.cgi": (CGI_SLOW, 0o755)}, SERVE),
    # ignores PORT and binds a fixed port: a clash on the shared host network
    "clash": ({"www/index.html": (b"x\n", 0o644)},
              f'["/bin/busybox","sh","-c","exec /bin/busybox httpd -f -p 127.0.0.1:{CLASH_PORT} -h /www"]'),
    # no /health: the target group's health check never passes
    "nohealth": ({"www/index.html": (b"broken\n", 0o644)}, SERVE),
    "exit3": ({"www/index.html": (b"x\n", 0o644)},
              '["/bin/busybox","sh","-c","echo config missing: DATABASE_URL >&2; exit 3"]'),
}


@pytest.fixture(scope="session")
def emu_images(emu_sandbox: dict[str, str]) -> dict[str, str]:
    """Test images built FROM scratch with static busybox, pushed to the local registry."""
    client = docker.DockerClient(base_url=emu_sandbox["docker_host"], timeout=120)
    busybox = Path(BUSYBOX).read_bytes()
    out: dict[str, str] = {}
    for tag, (files, cmd) in VARIANTS.items():
        dockerfile = f"FROM scratch\nCOPY busybox /bin/busybox\nCOPY www /www\nCMD {cmd}\n"
        ctx = dict(files, Dockerfile=(dockerfile.encode(), 0o644), busybox=(busybox, 0o755))
        ref = f"{registry()}/{IMAGE_REPO}:{tag}"
        client.images.build(fileobj=_context(ctx), custom_context=True, tag=ref, rm=True)
        for line in client.images.push(f"{registry()}/{IMAGE_REPO}", tag=tag, stream=True, decode=True):
            assert "error" not in line, line
        out[tag] = ref
    return out


@pytest.fixture(scope="session")
def emu_net(emu_aws: Callable[[str], Any]) -> dict[str, Any]:
    """A VPC with two subnets and a security group in moto (load balancers and awsvpc task sets need them)."""
    ec2 = emu_aws("ec2")
    vpc = ec2.create_vpc(CidrBlock="127.120.0.0/16")["Vpc"]["VpcId"]
    subnets = [ec2.create_subnet(VpcId=vpc, CidrBlock=f"127.120.{i}.0/24",
                                 AvailabilityZone=f"us-east-1{z}")["Subnet"]["SubnetId"]
               for i, z in ((1, "a"), (2, "b"))]
    sg = ec2.create_security_group(GroupName=f"emu-{uuid.uuid4().hex[:6]}", Description="emulation tests",
                                   VpcId=vpc)["GroupId"]
    return {"vpc": vpc, "subnets": subnets, "security_group": sg}


def unique(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:6]}"


class Stack:
    """A cluster, load balancer (prod + test listener) and two target groups for one test."""

    def __init__(self, aws: Callable[[str], Any], net: dict[str, Any], name: str,
                 health_path: str = "/health") -> None:
        self.name = name
        self.ecs, self.elb = aws("ecs"), aws("elbv2")
        # CreateTaskSet's networkConfiguration: an awsvpc task definition needs one (ECS refuses it without)
        self.network = {"awsvpcConfiguration": {"subnets": net["subnets"], "securityGroups": [net["security_group"]]}}
        self.ecs.create_cluster(clusterName=name)
        lb = self.elb.create_load_balancer(Name=name, Subnets=net["subnets"], Type="application")
        self.lb_arn = lb["LoadBalancers"][0]["LoadBalancerArn"]
        self.dns = lb["LoadBalancers"][0]["DNSName"]
        self.tgs = [self.elb.create_target_group(
            Name=f"{name}-{c}", Protocol="HTTP", Port=80, VpcId=net["vpc"], TargetType="ip",
            HealthCheckPath=health_path, HealthCheckIntervalSeconds=5, HealthCheckTimeoutSeconds=2,
            HealthyThresholdCount=2, UnhealthyThresholdCount=2,
            Matcher={"HttpCode": "200"})["TargetGroups"][0]["TargetGroupArn"] for c in ("a", "b")]
        for tg in self.tgs:
            self.elb.modify_target_group_attributes(TargetGroupArn=tg, Attributes=[
                {"Key": "deregistration_delay.timeout_seconds", "Value": "5"}])
        self.prod_port, self.test_port = free_ports(2)
        self.prod = self._listener(self.prod_port, self.tgs[0])
        self.test = self._listener(self.test_port, self.tgs[0])

    def _listener(self, port: int, tg: str) -> str:
        res = self.elb.create_listener(LoadBalancerArn=self.lb_arn, Protocol="HTTP", Port=port,
                                       DefaultActions=[{"Type": "forward", "TargetGroupArn": tg}])
        arn: str = res["Listeners"][0]["ListenerArn"]
        wait_for(lambda: _bound(port), 10, f"listener proxy on {port}")
        return arn

    def task_definition(self, image: str, log_group: str | None = None) -> str:
        container: dict[str, Any] = {
            "name": "web", "image": image, "essential": True,
            "portMappings": [{"containerPort": 8080, "protocol": "tcp"}],
            "environment": [{"name": "APP", "value": self.name}]}
        if log_group:
            container["logConfiguration"] = {"logDriver": "awslogs", "options": {
                "awslogs-group": log_group, "awslogs-region": "us-east-1",
                "awslogs-stream-prefix": "web", "awslogs-create-group": "true"}}
        res = self.ecs.register_task_definition(
            family=f"{self.name}-app", networkMode="awsvpc", requiresCompatibilities=["FARGATE"],
            cpu="256", memory="512", containerDefinitions=[container])
        arn: str = res["taskDefinition"]["taskDefinitionArn"]
        return arn

    def get(self, port: int | None = None, path: str = "/") -> tuple[int, str]:
        return http_get(f"http://{self.dns}:{port or self.prod_port}{path}")

    def teardown(self) -> None:
        """Delete services (the sandbox then drains and removes their containers) and the LB."""
        for arn in self.ecs.list_services(cluster=self.name)["serviceArns"]:
            self.ecs.delete_service(cluster=self.name, service=arn, force=True)
        self.elb.delete_load_balancer(LoadBalancerArn=self.lb_arn)

    def lb(self, tg: str) -> list[dict[str, Any]]:
        return [{"targetGroupArn": tg, "containerName": "web", "containerPort": 8080}]


def _bound(port: int) -> bool:
    with socket.socket() as s:
        s.settimeout(0.5)
        return s.connect_ex(("127.0.0.1", port)) == 0


@pytest.fixture
def emu_stack(emu_aws: Callable[[str], Any], emu_net: dict[str, Any]) -> Iterator[Callable[..., Stack]]:
    """Builds stacks for a test and removes their services and load balancer afterwards."""
    made: list[Stack] = []

    def make(prefix: str, **kwargs: Any) -> Stack:
        stack = Stack(emu_aws, emu_net, unique(prefix), **kwargs)
        made.append(stack)
        return stack

    yield make
    for stack in made:
        stack.teardown()


def sandbox_state() -> dict[str, Any]:
    return dict(json.loads(http_get(f"{endpoint()}/_sandbox/state")[1]))


@pytest.fixture(scope="session")
def emu(emu_sandbox: dict[str, str]) -> Any:
    """Helper functions for the tests (conftest modules are not importable by name)."""
    from types import SimpleNamespace

    eventually = Eventually(propagation(float(sandbox_state()["timeScale"])))
    return SimpleNamespace(wait_for=wait_for, http_get=http_get, state=sandbox_state, clash_port=CLASH_PORT,
                           endpoint=emu_sandbox["endpoint"], docker_host=emu_sandbox["docker_host"],
                           eventually=eventually)
