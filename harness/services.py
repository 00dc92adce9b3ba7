"""A throw-away service in the sandbox: its own git repo, YAML, task definition and AWS resources."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from http.cookiejar import CookieJar, DefaultCookiePolicy
from pathlib import Path
from typing import Any

import boto3
import httpx
import yaml
from botocore.config import Config
from botocore.exceptions import ClientError

from harness.git import git
from sandbox.layout import free_ports
from sandbox.seed import seed_service
from tasks.config.models import ServiceConfig, load_service
from tasks.core.errors import PipelineError
from tasks.core.settings import DEFAULT_MAX_ATTEMPTS

ROOT = Path(__file__).resolve().parents[1]
SAMPLE_APP = ROOT / "examples" / "sample-app"
ACCOUNT = "123456789012"  # the sandbox's account


# Every service make_service made, for the end-of-module clean-up (tests/conftest.py).
MADE: list[ServiceUnderTest] = []
# Services that outlive the module that made them (a fleet shared by several modules): their alarms stay.
KEPT: set[str] = set()


def free_port() -> int:
    return free_ports(1)[0]


_AWS: dict[tuple[str, ...], Any] = {}
# One client for every plain HTTP call of the harness (probes of production, the sandbox's control endpoints,
# the Prefect API's): httpx.get builds a client per call, and with it a TLS context from the CA bundle, about
# 20 ms of CPU even for http:// (a poll every 0.1 s spent a fifth of a core on it). A new connection per call
# (as httpx.get opens): a kept-alive connection would hold a probe to the target its first request reached.
# It keeps no cookie either, as httpx.get does not: no call carries what an earlier one was given.
HTTP = httpx.Client(timeout=5, limits=httpx.Limits(max_keepalive_connections=0),
                    cookies=CookieJar(DefaultCookiePolicy(allowed_domains=[])))


def aws(service: str) -> Any:
    """A client with the pipeline's own retry policy: tests ride out throttling as real AWS needs.

    Made once per service and the environment's endpoint, region and key (the admin's or a user's).
    """
    key = (service, *(os.environ.get(k, "") for k in ("AWS_ENDPOINT_URL", "AWS_REGION", "AWS_DEFAULT_REGION",
                                                        "AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY")))
    client = _AWS.get(key)
    if client is None:
        retries = {"mode": "standard", "total_max_attempts": DEFAULT_MAX_ATTEMPTS}
        client = _AWS[key] = boto3.client(service, config=Config(retries=retries))
    return client


@dataclass
class ServiceUnderTest:
    name: str
    repo: Path
    yaml_path: Path
    prod_url: str
    test_url: str
    seeded: dict[str, Any]

    def commit(self, version: str, broken: str = "", dockerfile_extra: str = "") -> str:
        (self.repo / "app.env").write_text(f"VERSION={version}\nBROKEN={broken}\n")
        if dockerfile_extra:
            with (self.repo / "Dockerfile").open("a") as f:
                f.write(dockerfile_extra)
        git(self.repo, "add", "-A")
        git(self.repo, "commit", "-q", "-m", f"release {version}")
        sync_deploy_policy(self)  # the buildspec on the branch names what the policy grants
        return git(self.repo, "rev-parse", "HEAD")

    @property
    def cfg(self):  # type: ignore[no-untyped-def]
        return load_service(self.yaml_path)

    def get(self, path: str = "/") -> httpx.Response:
        return HTTP.get(self.prod_url + path)

    def task_sets(self) -> list[dict[str, Any]]:
        cfg = self.cfg
        svc = aws("ecs").describe_services(cluster=cfg.ecs.cluster, services=[cfg.ecs.service])["services"][0]
        return list(svc.get("taskSets", []))

    def cleanup(self) -> None:
        """Delete the ECS service (its containers stop), the load balancer (its proxies close), the
        target groups (health-checked) and the alarms: the sandbox's controller looks at every alarm
        and target group ten times a second, so what a test leaves slows every test after it."""
        cfg = self.cfg
        ecs, elbv2 = aws("ecs"), aws("elbv2")
        with contextlib.suppress(ClientError):
            ecs.delete_service(cluster=cfg.ecs.cluster, service=cfg.ecs.service, force=True)
        arn = self.seeded.get("load_balancer_arn")
        if arn:
            with contextlib.suppress(ClientError):
                elbv2.delete_load_balancer(LoadBalancerArn=arn)
        with contextlib.suppress(ClientError):
            groups = elbv2.describe_target_groups(Names=list(cfg.load_balancer.target_groups))["TargetGroups"]
            for group in groups:
                with contextlib.suppress(ClientError):
                    elbv2.delete_target_group(TargetGroupArn=group["TargetGroupArn"])
        if cfg.verify.alarms:
            with contextlib.suppress(ClientError):
                aws("cloudwatch").delete_alarms(AlarmNames=list(cfg.verify.alarms))

    def revisions(self) -> list[str]:
        return list(aws("ecs").list_task_definitions(familyPrefix=self.name)["taskDefinitionArns"])


def edit_config(sut: ServiceUnderTest, change: Callable[[dict[str, Any]], None]) -> None:
    """Apply CHANGE to the service's YAML as a dict (the next release reads it), and to its deploy role's
    policy what the changed config needs, as a team updates its stack with its config."""
    config = yaml.safe_load(sut.yaml_path.read_text())
    change(config)
    sut.yaml_path.write_text(yaml.safe_dump(config, sort_keys=False))
    sync_deploy_policy(sut)


def policy_document(policy_arn: str) -> dict[str, Any]:
    """The default version's document of a managed policy."""
    iam = aws("iam")
    version = iam.get_policy(PolicyArn=policy_arn)["Policy"]["DefaultVersionId"]
    found = iam.get_policy_version(PolicyArn=policy_arn, VersionId=version)["PolicyVersion"]["Document"]
    return json.loads(found) if isinstance(found, str) else dict(found)


def set_policy_document(policy_arn: str, document: dict[str, Any]) -> None:
    """A new default version of the managed policy (IAM keeps five at most: the oldest others go)."""
    iam = aws("iam")
    versions = iam.list_policy_versions(PolicyArn=policy_arn)["Versions"]
    for old in sorted((v for v in versions if not v["IsDefaultVersion"]), key=lambda v: v["CreateDate"])[:-3]:
        iam.delete_policy_version(PolicyArn=policy_arn, VersionId=old["VersionId"])
    iam.create_policy_version(PolicyArn=policy_arn, PolicyDocument=json.dumps(document), SetAsDefault=True)


def sync_deploy_policy(sut: ServiceUnderTest) -> None:
    """The service's deploy role holds what ``ecs-pipeline iam`` generates (deploy and verify) for its config
    as it is now."""
    from flows.iam_cli import policy_for
    from tasks.release.permissions import Scope

    inputs = _policy_inputs(sut)
    if not sut.seeded or inputs == _SYNCED.get(sut.name):
        return  # nothing the policies are generated from changed since the last sync
    try:
        cfg = sut.cfg
    except PipelineError:  # a test wrote a broken file on purpose: nothing to grant for it
        return
    if not cfg.deploy_role_arn:
        return
    for role in ("deploy", "verify"):
        want = policy_for(cfg, role, Scope(ACCOUNT, "us-east-1"), None, [], cfg.deploy_role_arn).document
        arn = f"arn:aws:iam::{ACCOUNT}:policy/{cfg.ecs.service}-{role}"
        if policy_document(arn) != want:
            set_policy_document(arn, want)
    _SYNCED[sut.name] = inputs


_SYNCED: dict[str, str] = {}  # service -> the inputs its policies were last generated from


def _policy_inputs(sut: ServiceUnderTest) -> str:
    """What the generated policies depend on: the YAML, its task definition files, the repository's buildspec."""
    own = sut.yaml_path.parent / sut.name
    files = [sut.yaml_path, *sorted(own.glob("*")), sut.repo / "buildspec.yml"]
    return "\0".join(f"{f}\0{f.read_text()}" for f in files if f.is_file())


def set_traffic(sut: ServiceUnderTest, traffic: dict[str, Any]) -> None:
    """strategy.traffic of the service's YAML."""
    edit_config(sut, lambda c: c["strategy"].__setitem__("traffic", traffic))


def set_checks(sut: ServiceUnderTest, **fields: Any) -> None:
    """Fields of every verify.http check in the service's YAML."""
    edit_config(sut, lambda c: [check.update(fields) for check in c["verify"]["http"]])


def refuse_next_call(operation: str, code: str, match: str, service: str = "ecs") -> None:
    """Make the sandbox answer the next matching call with a permanent AWS error."""
    HTTP.post(
        f"{aws(service).meta.endpoint_url}/_sandbox/faults",
        json={"service": service, "operation": operation, "code": code, "status": 400,
              "message": "not allowed", "count": 1, "match": match},
    ).raise_for_status()


def make_service(
    workdir: Path,
    *,
    strategy: str = "task-sets",
    traffic: dict[str, Any] | None = None,
    verify_paths: tuple[str, ...] = ("/health", "/"),
    bake_seconds: float = 0,
    green_timeout: int = 60,
    desired_count: int = 1,
    approval: str = "none",
    network: bool = True,
    seed: Callable[[ServiceConfig], dict[str, Any]] | None = None,
    deploy_role: bool | None = None,
) -> ServiceUnderTest:
    """A new service named t<random>, seeded in the sandbox (by SEED, default seed_service), with v1
    committed (not deployed).

    DEPLOY_ROLE (default: with the default SEED): the service names ``deploy_role_arn`` ``<name>-deploy``,
    which its stack makes holding only the generated deploy policy, so its releases, status and rollbacks
    are judged by the sandbox's IAM as that role; the tests' own calls stay the sandbox admin's.

    A task-sets service gets the seeded subnets and security group as its ``network`` (a new EXTERNAL
    service has no primary task set to take them from) unless NETWORK is false.
    """
    name = "t" + uuid.uuid4().hex[:8]
    repo = workdir / "repo"
    shutil.copytree(SAMPLE_APP, repo, ignore=shutil.ignore_patterns("busybox"))
    (repo / "rootfs" / "bin").mkdir(parents=True, exist_ok=True)
    shutil.copy2("/bin/busybox", repo / "rootfs" / "bin" / "busybox")
    (repo / ".gitignore").unlink(missing_ok=True)  # the repo carries its busybox, as the demo's does
    git(repo, "init", "-q", "-b", "main")
    deployments = workdir / "deployments"
    (deployments / name).mkdir(parents=True)
    taskdef = json.loads((ROOT / "deployments" / "sample-app" / "taskdef.json").read_text())
    taskdef["family"] = name
    (deployments / name / "taskdef.json").write_text(json.dumps(taskdef, indent=2))
    prod, test = free_ports(2)
    config = {
        "name": name,
        "source": {"repo": str(repo), "branch": "main"},
        "ecr": {"repository": name},
        "ecs": {"cluster": f"{name}-cluster", "service": name, "container": "web",
                "container_port": 8080, "desired_count": desired_count},
        "task_definition": f"{name}/taskdef.json",
        "strategy": {"type": strategy},
        "load_balancer": {
            "production_listener": {"load_balancer": f"{name}-alb", "port": prod},
            "test_listener": {"load_balancer": f"{name}-alb", "port": test},
            "target_groups": [f"{name}-a", f"{name}-b"],
        },
        "verify": {
            "http": [{"path": p, "consecutive": 2, "attempts": 10, "interval_seconds": 0.1} for p in verify_paths],
            "alarms": [f"{name}-5xx"],
        },
        "bake_seconds": bake_seconds,
        "timeouts": {"green_healthy_seconds": green_timeout},
        "approval": approval,
    }
    if deploy_role if deploy_role is not None else seed is None:
        config["deploy_role_arn"] = f"arn:aws:iam::{ACCOUNT}:role/{name}-deploy"
    if strategy != "rolling":  # rolling does not shift traffic: the field is refused there
        config["strategy"]["traffic"] = traffic or {"type": "all-at-once"}
    yaml_path = deployments / f"{name}.yaml"
    yaml_path.write_text(yaml.safe_dump(config, sort_keys=False))
    sut = ServiceUnderTest(name, repo, yaml_path, f"http://127.0.0.1:{prod}", f"http://127.0.0.1:{test}", {})
    sut.commit("v1")
    sut.seeded = (seed or seed_service)(load_service(yaml_path))
    _SYNCED[name] = _policy_inputs(sut)  # its stack's policies were generated from these
    MADE.append(sut)
    if strategy == "task-sets" and network:
        edit_config(sut, lambda c: c.__setitem__("network", {
            "subnets": sut.seeded["subnets"], "security_groups": [sut.seeded["security_group"]]}))
    return sut

def seed_serving(sut: ServiceUnderTest, timeout: float = 60) -> None:
    """The seeded service answers with the seed release (its tasks start after seeding)."""
    deadline = time.monotonic() + timeout

    def answer() -> str:
        try:
            return sut.get("/").text
        except httpx.TransportError:  # the listener's proxy binds a moment after seeding
            return ""

    while "sample-app seed" not in answer():
        assert time.monotonic() < deadline, "the seeded service never served"
        time.sleep(0.3)
