"""Seeding: idempotent, the right deployment controller per strategy, clear config errors,
and a sample app image that really answers.

Each test seeds its own prefixed copy of deployments/sample-app.yaml with its
own listener ports, so parallel sessions on the shared sandbox do not collide,
and deletes its services and load balancers afterwards.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import boto3
import docker
import httpx
import pytest
import yaml

from harness.services import HTTP
from sandbox import seed_fleet
from sandbox.layout import REPO, free_ports
from sandbox.manage import load_env
from sandbox.seed import SAMPLE_APP, seed_service
from tasks.config.models import ListenerRef, ServiceConfig, Traffic, load_service

SERVICE_YAML = REPO / "deployments" / "sample-app.yaml"


@pytest.fixture(scope="module")
def sandbox_env() -> dict[str, str]:
    done = subprocess.run(
        [sys.executable, "-m", "sandbox", "up"],
        cwd=REPO,
        check=False,
        capture_output=True,
        text=True,
    )
    assert done.returncode == 0, done.stderr
    return load_env(admin=True)  # the seed's own identity: the deploy user may read only its services


def _client(env: dict[str, str], service: str) -> Any:
    return boto3.client(
        service,
        endpoint_url=env["AWS_ENDPOINT_URL"],
        region_name=env["AWS_REGION"],
        aws_access_key_id=env["AWS_ACCESS_KEY_ID"],
        aws_secret_access_key=env["AWS_SECRET_ACCESS_KEY"],
    )


def _variant(strategy: str) -> ServiceConfig:
    """deployments/sample-app.yaml with STRATEGY, one task and free listener ports."""
    base = load_service(SERVICE_YAML)
    assert base.load_balancer is not None
    lb = base.load_balancer
    prod, test = free_ports(2)
    ports = (prod, test)
    listeners = {
        "production_listener": ListenerRef(
            load_balancer=lb.production_listener.load_balancer, port=ports[0]
        ),
        "test_listener": ListenerRef(load_balancer=lb.test_listener.load_balancer, port=ports[1]),
    }
    traffic = base.strategy.traffic if strategy != "rolling" else Traffic()
    return base.model_copy(
        update={
            "ecs": base.ecs.model_copy(update={"desired_count": 1}),
            "strategy": base.strategy.model_copy(update={"type": strategy, "traffic": traffic}),
            "load_balancer": lb.model_copy(update=listeners),
        }
    )


@pytest.fixture
def prefix(sandbox_env: dict[str, str]) -> Iterator[str]:
    """A fresh name prefix; its services and load balancers are deleted afterwards."""
    p = f"t{uuid.uuid4().hex[:6]}-"
    yield p
    ecs, elbv2 = _client(sandbox_env, "ecs"), _client(sandbox_env, "elbv2")
    for arn in ecs.list_clusters()["clusterArns"]:
        if arn.rsplit("/", 1)[1].startswith(p):
            for svc in ecs.list_services(cluster=arn)["serviceArns"]:
                ecs.delete_service(cluster=arn, service=svc, force=True)
    for lb in elbv2.describe_load_balancers()["LoadBalancers"]:
        if lb["LoadBalancerName"].startswith(p):
            for listener in elbv2.describe_listeners(LoadBalancerArn=lb["LoadBalancerArn"])[
                "Listeners"
            ]:
                elbv2.delete_listener(ListenerArn=listener["ListenerArn"])
            elbv2.delete_load_balancer(LoadBalancerArn=lb["LoadBalancerArn"])


@pytest.mark.parametrize(
    ("strategy", "controller"),
    [("task-sets", "EXTERNAL"), ("codedeploy", "CODE_DEPLOY"), ("rolling", "ECS")],
)
def test_seeding_twice_is_idempotent_with_the_strategys_controller(
    sandbox_env: dict[str, str], prefix: str, strategy: str, controller: str
) -> None:
    config = _variant(strategy)
    first = seed_service(config, prefix=prefix, env=sandbox_env)
    second = seed_service(config, prefix=prefix, env=sandbox_env)
    assert first == second

    ecs, elbv2, cw = (_client(sandbox_env, s) for s in ("ecs", "elbv2", "cloudwatch"))
    cluster = prefix + "demo"
    assert [a for a in ecs.list_clusters()["clusterArns"] if a.endswith("/" + cluster)] == [
        first["cluster_arn"]
    ]
    services = ecs.describe_services(cluster=cluster, services=[prefix + "sample-app"])["services"]
    assert len(services) == 1 and services[0]["deploymentController"]["type"] == controller
    assert services[0]["serviceArn"] == first["service_arn"]
    assert services[0]["desiredCount"] == 1

    tgs = elbv2.describe_target_groups(Names=[prefix + "sample-app-a", prefix + "sample-app-b"])[
        "TargetGroups"
    ]
    assert sorted(t["TargetGroupArn"] for t in tgs) == sorted(first["target_group_arns"])
    for tg in tgs:
        assert (tg["Protocol"], tg["Port"], tg["TargetType"]) == ("HTTP", 8080, "ip")
        assert tg["HealthCheckPath"] == "/health" and tg["HealthCheckIntervalSeconds"] == 5
    listeners = elbv2.describe_listeners(LoadBalancerArn=first["load_balancer_arn"])["Listeners"]
    assert len(listeners) == 2
    for listener in listeners:
        forward = listener["DefaultActions"][0]
        assert forward["Type"] == "forward"
        assert forward["TargetGroupArn"] == first["target_group_arns"][0]
    lb = elbv2.describe_load_balancers(Names=[prefix + "demo-alb"])["LoadBalancers"]
    assert len(lb) == 1 and lb[0]["Scheme"] == "internet-facing" and lb[0]["Type"] == "application"

    alarms = cw.describe_alarms(AlarmNames=[prefix + "sample-app-5xx"])["MetricAlarms"]
    assert len(alarms) == 1
    assert alarms[0]["MetricName"] == "HTTPCode_Target_5XX_Count"
    assert alarms[0]["Dimensions"] == [
        {"Name": "LoadBalancer", "Value": "app/" + first["load_balancer_arn"].split("/app/")[1]}
    ]

    if controller == "EXTERNAL":
        assert "task_definition_arn" not in first
        assert services[0].get("taskSets", []) == []
    else:
        assert first["image"] == f"{sandbox_env['SANDBOX_REGISTRY']}/{prefix}sample-app:seed"
        td = ecs.describe_task_definition(taskDefinition=first["task_definition_arn"])[
            "taskDefinition"
        ]
        assert td["family"] == prefix + "sample-app"
        assert td["containerDefinitions"][0]["image"] == first["image"]
        assert services[0]["loadBalancers"][0]["targetGroupArn"] == first["target_group_arns"][0]
    if controller == "CODE_DEPLOY":
        cd = _client(sandbox_env, "codedeploy")
        group = cd.get_deployment_group(
            applicationName=f"AppECS-{prefix}demo-{prefix}sample-app",
            deploymentGroupName=f"DgpECS-{prefix}demo-{prefix}sample-app",
        )["deploymentGroupInfo"]
        assert group["computePlatform"] == "ECS"
        assert group["deploymentStyle"] == {
            "deploymentType": "BLUE_GREEN",
            "deploymentOption": "WITH_TRAFFIC_CONTROL",
        }
        pair = group["loadBalancerInfo"]["targetGroupPairInfoList"][0]
        assert [t["name"] for t in pair["targetGroups"]] == [
            prefix + "sample-app-a",
            prefix + "sample-app-b",
        ]
        assert pair["prodTrafficRoute"]["listenerArns"] == [first["listener_arns"]["production"]]
        assert pair["testTrafficRoute"]["listenerArns"] == [first["listener_arns"]["test"]]
        assert set(group["autoRollbackConfiguration"]["events"]) == {
            "DEPLOYMENT_FAILURE",
            "DEPLOYMENT_STOP_ON_ALARM",
        }


def test_seed_cli_names_the_file_and_field_of_a_bad_config(tmp_path: Path) -> None:
    bad = tmp_path / "broken.yaml"
    text = SERVICE_YAML.read_text().replace("container_port: 8080", "container_port: eighty")
    bad.write_text(text.replace("type: task-sets", "type: blue-green"))
    done = subprocess.run(
        [sys.executable, "-m", "sandbox", "seed", str(bad)],
        cwd=REPO,
        check=False,
        capture_output=True,
        text=True,
    )
    assert done.returncode == 1
    assert done.stdout == ""
    err = done.stderr.strip()
    assert len(err.splitlines()) == 1, err
    assert str(bad) in err
    assert "ecs.container_port" in err and "strategy.type" in err


def test_seed_cli_reports_unreadable_yaml(tmp_path: Path) -> None:
    bad = tmp_path / "not-yaml.yaml"
    bad.write_text("name: [unclosed\n")
    done = subprocess.run(
        [sys.executable, "-m", "sandbox", "seed", str(bad)],
        cwd=REPO,
        check=False,
        capture_output=True,
        text=True,
    )
    assert done.returncode == 1 and str(bad) in done.stderr and "not valid YAML" in done.stderr


def test_fleet_copies_never_share_a_listener_port(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Every listener of the sandbox binds 127.0.0.1: two copies given one port share one proxy, the
    second copy's URL answering for the first (a run of tests/test_atomic.py read 04's production as
    02's v3 after 04 had rolled back). free_ports here hands out again the ports a call let go, as the
    kernel may: the copies' ports still differ, from each other, from kept ones and the original's."""
    monkeypatch.setattr(seed_fleet, "free_ports", lambda count: list(range(8000, 8000 + count)))
    out = tmp_path / "deployments"

    def ports() -> list[int]:
        found = []
        for path in sorted(out.glob("*.yaml")):
            lb = yaml.safe_load(path.read_text())["load_balancer"]
            found += [lb["production_listener"]["port"], lb["test_listener"]["port"]]
        return found

    seed_fleet.write_copies(SERVICE_YAML, 4, out)
    first = ports()
    assert len(first) == 8 and len(set(first) | {8000, 8001}) == 10, first  # 8000, 8001: the original's
    sorted(out.glob("*.yaml"))[1].unlink()  # copy 02 is written again; the others keep their ports
    seed_fleet.write_copies(SERVICE_YAML, 4, out)
    again = ports()
    assert again[:2] == first[:2] and again[4:] == first[4:], (first, again)
    assert len(set(again) | {8000, 8001}) == 10, again


def _build(client: Any, tmp_path: Path, version: str, broken: str) -> str:
    """Build the sample app as the demo repository would: busybox copied into the context."""
    ctx = tmp_path / f"ctx-{version}-{broken or 'ok'}"
    shutil.copytree(SAMPLE_APP, ctx, ignore=shutil.ignore_patterns("busybox"))
    prepared = subprocess.run(
        [str(ctx / "prepare.sh")], check=False, capture_output=True, text=True
    )
    assert prepared.returncode == 0, prepared.stderr
    (ctx / "app.env").write_text(f"VERSION={version}\nBROKEN={broken}\n")
    tag = f"sample-app-test:{version}-{broken or 'ok'}"
    client.images.build(path=str(ctx), tag=tag, rm=True, forcerm=True)
    return tag


def _get_when_up(url: str, deadline_s: float = 10) -> httpx.Response:
    deadline = time.monotonic() + deadline_s
    while True:
        try:
            return HTTP.get(url, timeout=2)
        except httpx.TransportError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.1)


@pytest.mark.parametrize(
    ("broken", "root_status", "health_status"),
    [("", 200, 200), ("root", 500, 200), ("health", 200, 404)],
)
def test_sample_app_answers_per_its_broken_mode(
    sandbox_env: dict[str, str], tmp_path: Path, broken: str, root_status: int, health_status: int
) -> None:
    client = docker.DockerClient(base_url=sandbox_env["DOCKER_HOST"])
    (port,) = free_ports(1)
    tag = _build(client, tmp_path, "v7", broken)
    container = client.containers.run(
        tag,
        detach=True,
        network_mode="host",
        environment={"PORT": str(port), "GREETING": "hi there"},
    )
    try:
        root = _get_when_up(f"http://127.0.0.1:{port}/")
        health = HTTP.get(f"http://127.0.0.1:{port}/health", timeout=2)
        assert root.status_code == root_status
        assert health.status_code == health_status
        if root_status == 200:
            assert root.text.strip() == "sample-app v7: hi there"
        if health_status == 200:
            assert health.text.strip() == "ok"
        logs = container.logs().decode()
        assert f"sample-app v7 listening on 127.0.0.1:{port}" in logs
    finally:
        container.remove(force=True)
        client.close()


def test_seeded_image_serves_version_seed(sandbox_env: dict[str, str], prefix: str) -> None:
    first = seed_service(_variant("rolling"), prefix=prefix, env=sandbox_env)
    client = docker.DockerClient(base_url=sandbox_env["DOCKER_HOST"])
    (port,) = free_ports(1)
    container = client.containers.run(
        first["image"], detach=True, network_mode="host", environment={"PORT": str(port)}
    )
    try:
        root = _get_when_up(f"http://127.0.0.1:{port}/")
        assert root.status_code == 200 and root.text.startswith("sample-app seed:")
    finally:
        container.remove(force=True)
        client.close()


@pytest.mark.parametrize("strategy", ["codedeploy", "rolling"])
def test_seeded_service_serves_the_seed_version_through_its_listeners(
    sandbox_env: dict[str, str], prefix: str, strategy: str
) -> None:
    """What a user has before the first pipeline run: a live service behind the ALB."""
    config = _variant(strategy)
    seed_service(config, prefix=prefix, env=sandbox_env)
    assert config.load_balancer is not None
    prod = config.load_balancer.production_listener.port
    test = config.load_balancer.test_listener.port
    deadline = time.monotonic() + 90
    status = 0
    while time.monotonic() < deadline:
        try:
            answer = HTTP.get(f"http://127.0.0.1:{prod}/", timeout=2)
            status = answer.status_code
            if status == 200:
                break
        except httpx.TransportError:
            pass
        time.sleep(0.5)
    assert status == 200, f"production listener on {prod} answered {status}"
    assert answer.text.strip() == "sample-app seed: hello from ecs-pipeline"
    assert HTTP.get(f"http://127.0.0.1:{test}/health", timeout=2).text.strip() == "ok"
