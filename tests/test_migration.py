"""The migration gate: a one-off task of the new revision after green is up, before production moves.

Real releases of one seeded service (module-scoped): a failing migration rolls back with blue serving
every production request; a timed-out one is stopped; a passing one's output is in the run's log. Then
RunTask held to ECS's documented rules by the sandbox, and the pure parts (policy, wave gate) by tables.
"""

from __future__ import annotations

import contextlib
import json
import logging
import re
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import botocore.session
import pytest
from botocore.exceptions import ClientError
from prefect import flow, task
from prefect.cache_policies import NO_CACHE
from prefect.client.orchestration import get_client
from prefect.client.schemas.filters import LogFilter, LogFilterFlowRunId
from prefect.task_runners import ThreadPoolTaskRunner

from flows.pipeline import deploy_service
from harness.faults import Load, serving_versions, wait_until
from harness.services import ServiceUnderTest, aws, edit_config, make_service
from sandbox.controller.iam_eval import Need
from sandbox.controller.iam_resources import Where, needs
from tasks.config.models import parse_service
from tasks.core.errors import ConfigError, DeployError
from tasks.release import migration
from tasks.release.fleet_plan import WaveGate, in_wave, wave_of
from tasks.release.outcome import outcome_of, reason_in
from tasks.release.permissions import Scope, deploy_policy

FAILING = ["sh", "-c", "echo 'applying 0007_add_column'; echo 'ERROR: column already exists' >&2; exit 3"]
PASSING = ["sh", "-c", "echo 'applying 0007_add_column'; echo \"aws variables: $(/bin/busybox env | "
           "/bin/busybox grep -c AWS_)\"; [ -e /var/run/docker.sock ] && echo 'docker socket' || echo 'no docker "
           "socket'; echo 'migrated to 0007'"]


def set_migrate(sut: ServiceUnderTest, **migrate: Any) -> None:
    edit_config(sut, lambda c: c.__setitem__("migrate", migrate))


@pytest.fixture(scope="module")
def sut(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServiceUnderTest]:
    """A seeded task-sets service (v1 committed, nothing live yet) whose image runs a command through busybox."""
    made = make_service(tmp_path_factory.mktemp("migration"))
    path = made.yaml_path.parent / made.name / "taskdef.json"
    taskdef = json.loads(path.read_text())
    web = taskdef["containerDefinitions"][0]
    web["entryPoint"], web["command"] = ["/bin/busybox"], ["sh", "/start.sh"]  # a command override replaces CMD
    web["logConfiguration"]["options"]["awslogs-group"] = f"/ecs/{made.name}"
    path.write_text(json.dumps(taskdef, indent=2))
    with contextlib.suppress(ClientError):
        aws("logs").create_log_group(logGroupName=f"/ecs/{made.name}")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("ECS_PIPELINE_DEPLOYMENTS", str(made.yaml_path.parent))
        yield made


def run_logs(state: Any, last: str) -> list[str]:
    """The flow run's log lines as the Prefect server has them, once the line LAST is among them (this
    process sends its log lines to the server in batches)."""
    run_id = state.state_details.flow_run_id

    def read() -> list[str]:
        logs: list[Any] = []
        with get_client(sync_client=True) as client:
            while page := client.read_logs(log_filter=LogFilter(flow_run_id=LogFilterFlowRunId(any_=[run_id])),
                                           limit=200, offset=len(logs)):  # fmt: skip
                logs.extend(page)
        found = [entry.message for entry in logs]
        return found if last in found else []

    return list(wait_until(read, 20, f"the run's log line {last!r}", interval=0.5))


def migration_tasks(sut: ServiceUnderTest) -> list[dict[str, Any]]:
    ecs, cluster = aws("ecs"), sut.cfg.ecs.cluster
    arns = [a for status in ("RUNNING", "STOPPED")
            for a in ecs.list_tasks(cluster=cluster, desiredStatus=status)["taskArns"]]
    found = ecs.describe_tasks(cluster=cluster, tasks=arns)["tasks"] if arns else []
    return [t for t in found if str(t.get("startedBy", "")).startswith(migration.STARTED_BY_PREFIX)]


@contextlib.contextmanager
def run_logs_at_info() -> Iterator[None]:
    """The run's INFO lines go to the Prefect server, as a worker's do (the tests' own level is WARNING)."""
    loggers = [logging.getLogger(n) for n in ("prefect.flow_runs", "prefect.task_runs")]
    before = [lg.level for lg in loggers]
    for lg in loggers:
        lg.setLevel(logging.INFO)
    try:
        yield
    finally:
        for lg, level in zip(loggers, before, strict=True):
            lg.setLevel(level)


def test_a_passing_migration_logs_its_output_into_the_run(sut: ServiceUnderTest) -> None:
    set_migrate(sut, command=PASSING)
    with run_logs_at_info():
        state = deploy_service(sut.name, return_state=True)  # v1, the first release
    assert outcome_of(state) == "Deployed", state.message
    lines = run_logs(state, "migration | migrated to 0007")
    assert "migration | applying 0007_add_column" in lines and "migration | migrated to 0007" in lines, lines
    # the task gets the task definition's environment only: no credentials, no Docker socket
    assert "migration | aws variables: 0" in lines and "migration | no docker socket" in lines, lines
    assert serving_versions(sut) == {"v1"}
    # a rerun of this revision finds its migration done (ECS lists the stopped task) and does not run it again
    [task_set] = sut.task_sets()
    done, running = migration.earlier_runs(aws("ecs"), sut.cfg.ecs.cluster, task_set["taskDefinition"], "web")
    assert done is not None and running is None and done["stopCode"] == "EssentialContainerExited"


def test_a_failing_migration_rolls_back_before_production_moves(sut: ServiceUnderTest) -> None:
    set_migrate(sut, command=FAILING)
    sut.commit("v2")
    with Load(sut) as load:
        state = deploy_service(sut.name, return_state=True)
    assert outcome_of(state) == "Rolled back", state.message
    reason = reason_in(state)
    assert "migration `sh -c" in reason and "exited with code 3" in reason, reason
    assert "ERROR: column already exists" in reason, reason  # its last log lines, from CloudWatch Logs
    assert "production on blue" in (state.message or "")
    # blue served every production request, and green never got one: production never moved
    assert load.failed == [], load.failed[:5]
    assert set(load.versions) == {"v1"} and load.ok > 0, load.versions
    assert [ts["status"] for ts in sut.task_sets()] == ["PRIMARY"]
    [task] = [t for t in migration_tasks(sut) if t["containers"][0].get("exitCode") != 0]
    assert task["stopCode"] == "EssentialContainerExited" and task["containers"][0]["exitCode"] == 3


def test_a_migration_past_its_timeout_is_stopped_and_rolls_back(sut: ServiceUnderTest) -> None:
    set_migrate(sut, command=["sh", "-c", "echo 'locking table'; sleep 60"], timeout_seconds=180)  # 3 s scaled
    state = deploy_service(sut.name, return_state=True)  # v2 again: the failed migration is run again
    assert outcome_of(state) == "Rolled back", state.message
    assert "timed out after" in reason_in(state) and "locking table" in reason_in(state), reason_in(state)
    stopped = [t for t in migration_tasks(sut) if t.get("stopCode") == "UserInitiated"]
    assert len(stopped) == 1 and stopped[0]["lastStatus"] == "STOPPED", migration_tasks(sut)
    assert "timed out" in stopped[0]["stoppedReason"]
    assert serving_versions(sut) == {"v1"}


# --- RunTask as ECS documents it (the sandbox) ----------------------------------------------------------


def run_task_doc(member: str) -> str:
    model = botocore.session.get_session().get_service_model("ecs")
    return re.sub(r"<[^>]+>", "", str(model.operation_model("RunTask").input_shape.members[member].documentation))


def test_run_task_is_as_strict_as_ecs(sut: ServiceUnderTest) -> None:
    ecs, cfg = aws("ecs"), sut.cfg
    family = f"{sut.name}-strict"
    td = ecs.register_task_definition(
        family=family, networkMode="awsvpc", requiresCompatibilities=["FARGATE"], cpu="256", memory="512",
        containerDefinitions=[{"name": "web", "image": "busybox", "essential": True}],
    )["taskDefinition"]["taskDefinitionArn"]
    base = {"cluster": cfg.ecs.cluster, "taskDefinition": td, "launchType": "FARGATE"}
    # "This parameter is required for task definitions that use the awsvpc network mode to receive their
    # own elastic network interface, and it isn't supported for other network modes."
    assert "required for task definitions that use the awsvpc network mode" in run_task_doc("networkConfiguration")
    with pytest.raises(ClientError) as missing:
        ecs.run_task(**base)
    assert missing.value.response["Error"]["Code"] == "InvalidParameterException"
    assert "Network Configuration must be provided" in str(missing.value)
    network = {"awsvpcConfiguration": {"subnets": list(sut.seeded["subnets"])}}
    # ECS's answer to an override of a container the task definition does not have (InvalidParameterException):
    # "Override for container named django is not a container in the TaskDefinition."
    with pytest.raises(ClientError) as unknown:
        ecs.run_task(**base, networkConfiguration=network,
                     overrides={"containerOverrides": [{"name": "migrate", "command": ["true"]}]})
    assert unknown.value.response["Error"]["Code"] == "InvalidParameterException"
    assert "Override for container named migrate is not a container in the TaskDefinition" in str(unknown.value)
    with pytest.raises(ClientError) as no_cluster:
        ecs.run_task(**{**base, "cluster": f"{sut.name}-nowhere"}, networkConfiguration=network)
    assert no_cluster.value.response["Error"]["Code"] == "ClusterNotFoundException"
    with pytest.raises(ClientError) as no_td:
        ecs.run_task(**{**base, "taskDefinition": f"{family}:99"}, networkConfiguration=network)
    assert no_td.value.response["Error"]["Code"] == "ClientException"
    with pytest.raises(ClientError) as no_task:
        ecs.stop_task(cluster=cfg.ecs.cluster, task="0123456789abcdef0123456789abcdef")
    assert no_task.value.response["Error"]["Code"] == "InvalidParameterException"


# --- pure: the check before any call, the policy, the wave gate --------------------------------------------


def service_with(tmp_path: Path, container: dict[str, Any], migrate: dict[str, Any] | None) -> Any:
    (tmp_path / "td.json").write_text(json.dumps({
        "family": "shop", "networkMode": "awsvpc", "requiresCompatibilities": ["FARGATE"], "cpu": "256",
        "memory": "512", "executionRoleArn": "arn:aws:iam::<AWS_ACCOUNT_ID>:role/ecsTaskExecutionRole",
        "containerDefinitions": [{"name": "web", "image": "<IMAGE1_NAME>", "essential": True,
                                  "portMappings": [{"containerPort": 8080}], **container}]}))
    data: dict[str, Any] = {
        "name": "shop", "source": {"repo": str(tmp_path), "branch": "main"}, "ecr": {"repository": "shop"},
        "ecs": {"cluster": "prod", "service": "shop", "container": "web", "container_port": 8080},
        "task_definition": "td.json", "strategy": {"type": "rolling"},
    }
    if migrate is not None:
        data["migrate"] = migrate
    return parse_service(data, source="shop.yaml", base_dir=tmp_path)


AWSLOGS = {"logConfiguration": {"logDriver": "awslogs", "options": {
    "awslogs-group": "/ecs/shop", "awslogs-region": "<AWS_REGION>", "awslogs-stream-prefix": "web"}}}


def test_a_migration_whose_container_logs_elsewhere_is_refused_before_any_call(tmp_path: Path) -> None:
    cfg = service_with(tmp_path, {"logConfiguration": {"logDriver": "json-file"}}, {"command": ["migrate"]})
    with pytest.raises(ConfigError) as refused:
        migration.check_migration(cfg)
    assert "td.json" in str(refused.value) and "awslogs-stream-prefix" in str(refused.value)
    other = service_with(tmp_path, AWSLOGS, {"command": ["migrate"], "container": "worker"})
    with pytest.raises(ConfigError, match="no container named 'worker'"):
        migration.check_migration(other)
    migration.check_migration(service_with(tmp_path, AWSLOGS, {"command": ["migrate"]}))


def test_the_deploy_policy_grants_the_migration_only_to_services_that_have_one(tmp_path: Path) -> None:
    scope = Scope("123456789012", "eu-west-1")
    td = {"family": "shop", "executionRoleArn": "arn:aws:iam::<AWS_ACCOUNT_ID>:role/ecsTaskExecutionRole",
          "containerDefinitions": [{"name": "web", **AWSLOGS}]}
    plain = deploy_policy(service_with(tmp_path, AWSLOGS, None), td, None, scope)
    assert not {"ecs:RunTask", "ecs:StopTask", "logs:GetLogEvents"} & plain.actions()
    gated = deploy_policy(service_with(tmp_path, AWSLOGS, {"command": ["migrate"]}), td, None, scope)
    by_sid = {s["Sid"]: s for s in gated.document["Statement"]}
    assert by_sid["RunTheMigrationTask"]["Resource"] == "arn:aws:ecs:eu-west-1:123456789012:task-definition/shop:*"
    assert by_sid["RunTheMigrationTask"]["Condition"] == {
        "ArnEquals": {"ecs:cluster": "arn:aws:ecs:eu-west-1:123456789012:cluster/prod"}}
    assert by_sid["FollowAndStopTheMigrationTask"]["Resource"] == "arn:aws:ecs:eu-west-1:123456789012:task/prod/*"
    assert by_sid["ReadTheMigrationLogs"]["Resource"] == "arn:aws:logs:eu-west-1:123456789012:log-group:/ecs/shop:*"
    assert "iam:PassRole" in gated.actions()  # RunTask passes the execution role to ECS tasks


def test_the_sandbox_judges_the_migrations_calls_on_their_resources() -> None:
    """What the Service Authorization Reference names: RunTask on the task definition with ecs:cluster (and the
    roles it passes), StopTask on the task, GetLogEvents on the log stream."""
    where, arn = Where("us-east-1", "123456789012"), "arn:aws:ecs:us-east-1:123456789012"
    cluster = {"ecs:cluster": f"{arn}:cluster/prod"}
    assert needs("ecs", "RunTask", {"cluster": "prod", "taskDefinition": "iam-never-registered:3", "overrides": {
        "executionRoleArn": "execRole"}}, where) == [
        Need("ecs:RunTask", f"{arn}:task-definition/iam-never-registered:3", cluster),
        Need("iam:PassRole", "arn:aws:iam::123456789012:role/execRole",
             {"iam:PassedToService": "ecs-tasks.amazonaws.com"})]
    assert needs("ecs", "StopTask", {"cluster": "prod", "task": "abc"}, where) == [
        Need("ecs:StopTask", f"{arn}:task/prod/abc", cluster)]
    assert needs("logs", "GetLogEvents", {"logGroupName": "/ecs/shop", "logStreamName": "web/web/abc"}, where) == [
        Need("logs:GetLogEvents", "arn:aws:logs:us-east-1:123456789012:log-group:/ecs/shop:log-stream:web/web/abc")]


def test_a_wave_gate_holds_each_service_until_the_others_passed_or_ended() -> None:
    gate = WaveGate(["a", "b", "c"], timeout_seconds=5)
    passed: list[str] = []

    def release(name: str, fails: bool = False) -> None:
        with in_wave(gate, name):
            assert wave_of(name) is gate and wave_of("other") is None
            if fails:
                return  # ended before its migration: it lets the others go
            time.sleep(0.2 if name == "b" else 0)
            gate.hold(name)
            passed.append(name)

    threads = [threading.Thread(target=release, args=(n, n == "c")) for n in ("a", "b", "c")]
    for t in threads:
        t.start()
    time.sleep(0.1)
    assert passed == []  # a waits for b, still before its migration
    for t in threads:
        t.join(5)
    assert sorted(passed) == ["a", "b"]
    late = WaveGate(["x", "y"], timeout_seconds=0.3)
    with pytest.raises(DeployError, match=r"pass their migrations \(y\)"):
        late.hold("x")


@flow(name="wave-child")
def wave_child(name: str) -> bool:
    return wave_of(name) is not None


@task(cache_policy=NO_CACHE)
def in_a_wave(name: str, gate: WaveGate) -> bool:
    with in_wave(gate, name):  # as flows/fleet.release_here runs deploy-service
        return wave_child(name)


@flow(name="wave-of-one", task_runner=ThreadPoolTaskRunner(max_workers=1))
def wave_of_one() -> bool:
    return in_a_wave.submit("a", WaveGate(["a"], timeout_seconds=5)).result()


def test_a_fleet_childs_flow_run_sees_its_wave() -> None:
    """The fleet's threads hand the gate to deploy-service through the context: a child flow run called in a
    thread runner's task keeps it."""
    assert wave_of_one() is True


def test_started_by_names_the_revision_within_ecs_limits() -> None:
    arn = "arn:aws:ecs:us-east-1:123456789012:task-definition/shop:12"
    assert migration.started_by(arn) == "ecs-pipeline-migrate/shop-12"
    long = migration.started_by(f"arn:aws:ecs:us-east-1:1:task-definition/{'x' * 255}:7")
    assert len(long) <= 128 and long.endswith("-7")


@pytest.mark.parametrize(("task", "timed_out", "words"), [
    ({"containers": [{"name": "web", "exitCode": 0}]}, None, None),
    ({"containers": [{"name": "web", "exitCode": 3}], "stopCode": "EssentialContainerExited",
      "stoppedReason": "Essential container in task exited"}, None, "exited with code 3 (task t1); last lines: b / c"),
    ({"containers": [{"name": "web"}], "stopCode": "TaskFailedToStart",
      "stoppedReason": "CannotPullContainerError: pull image manifest has been retried"}, None,
     "did not run to an exit code: CannotPullContainerError: pull image manifest has been retried (task t1)"),
    ({"containers": [{"name": "web", "exitCode": 137}], "stopCode": "UserInitiated",
      "stoppedReason": "Task stopped by user"}, None, "exited with code 137 (task t1, ECS: Task stopped by user)"),
    ({"containers": [{"name": "web", "exitCode": 0}], "stopCode": "UserInitiated"}, 900.4,
     "timed out after 900s (migrate.timeout_seconds) and was stopped (task t1)"),
])
def test_the_verdict_names_the_command_the_exit_code_and_the_last_lines(
        tmp_path: Path, task: dict[str, Any], timed_out: float | None, words: str | None) -> None:
    cfg = service_with(tmp_path, AWSLOGS, {"command": ["./manage.py", "migrate"]})
    reason = migration.verdict(cfg, {"taskArn": "arn:aws:ecs:us-east-1:1:task/prod/t1", **task}, ["b", "c"], timed_out)
    if words is None:
        assert reason is None
    else:
        assert reason is not None and reason.startswith("migration `./manage.py migrate` ") and words in reason, reason
