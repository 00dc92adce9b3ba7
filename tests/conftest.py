"""Test session set-up: a sandbox of its own (AWS endpoint, registry, Prefect server), stopped at the end.

Under ``pytest -n N`` (``make test``) every worker gets a sandbox of its own
(``<sandbox>/test-gwK``), so no test sees another's AWS calls, faults or runs.

The tests never write into the sandbox a person is looking at (``make demo``'s
runs, artifacts and concurrency limits stay as they were): the session starts
``python -m sandbox up`` with ``SANDBOX_DIR=<sandbox>/test`` on free loopback
ports, sharing the Docker engine of the outer sandbox when one answers, loads
that env file before Prefect or boto3 read their settings, and runs ``down``
for it when the session ends, failed or not. Its state is wiped at the start,
so every session begins with an empty Prefect server.

``ECS_PIPELINE_TESTS_SANDBOX=shared`` uses the outer sandbox instead (started
if needed and left running): quicker when iterating on one test file.
"""

from __future__ import annotations

import atexit
import functools
import os
import resource
import shutil
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from sandbox.layout import free_ports

ROOT = Path(__file__).resolve().parents[1]
PORT_VARS = ("SANDBOX_AWS_PORT", "SANDBOX_REGISTRY_PORT", "SANDBOX_PREFECT_PORT", "SANDBOX_POSTGRES_PORT")
_stop: list[Callable[[], None]] = []


def _load_env(path: Path) -> None:
    for line in path.read_text().splitlines():
        key, sep, value = line.partition("=")
        if sep and key and not key.startswith("#"):
            os.environ[key.strip()] = value.strip()


def _read_env(path: Path) -> dict[str, str]:
    try:
        lines = path.read_text().splitlines()
    except OSError:
        return {}
    return {k.strip(): v.strip() for k, sep, v in (line.partition("=") for line in lines) if sep}


def _outer_engine(outer: Path) -> str | None:
    """The outer sandbox's Docker engine when it answers: shared, so no second dockerd starts."""
    import docker

    try:
        address = (outer / "docker_host").read_text().strip()  # `up`, or `up --engine-only` (make test)
    except OSError:
        address = _read_env(outer / "env").get("DOCKER_HOST", "")
    if not address:
        return None
    try:
        client = docker.DockerClient(base_url=address, timeout=5)
        client.ping()
        client.close()
    except Exception:  # noqa: BLE001 - no answer: the test sandbox starts its own engine
        return None
    return address


def _sandbox(command: str, env: dict[str, str]) -> None:
    subprocess.run([sys.executable, "-m", "sandbox", command], cwd=ROOT, env=env, check=command == "up")


def session_sandbox(worker: str | None) -> dict[str, str]:
    """The environment of a sandbox for this session (or this xdist worker) only; its `down` is registered."""
    outer = Path(os.environ.get("SANDBOX_DIR") or ROOT / ".sandbox").resolve()
    state = outer / (f"test-{worker}" if worker else "test")
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PREFECT_", "AWS_"))}
    env["SANDBOX_DIR"] = str(state)
    shared = _outer_engine(outer)
    if shared and "DOCKER_HOST" not in os.environ:
        env["DOCKER_HOST"] = shared
    _sandbox("down", env)  # what a killed session left
    stopped: list[bool] = []

    def stop() -> None:
        if not stopped:
            stopped.append(True)
            _sandbox("down", env)

    atexit.register(stop)
    _stop.append(stop)
    # A free port is free when chosen: another process's outgoing connection (the kernel hands those out
    # from the same range) may hold it by the time the server binds it ("Port ... is already in use",
    # seen once for a session's Prefect server). Such a start is tried again on ports chosen anew.
    def start() -> None:
        shutil.rmtree(state, ignore_errors=True)
        env.update({var: str(port) for var, port in zip(PORT_VARS, free_ports(len(PORT_VARS)), strict=True)})
        _sandbox("up", env)

    for _ in range(2):
        try:
            start()
            return env
        except subprocess.CalledProcessError:
            _sandbox("down", env)
    start()
    return env


def pytest_configure(config: pytest.Config) -> None:
    if os.environ.get("ECS_PIPELINE_TESTS_NO_SANDBOX"):
        return
    worker = os.environ.get("PYTEST_XDIST_WORKER")
    if worker is None and getattr(config.option, "numprocesses", None):
        return  # the xdist controller runs no test: each worker starts a sandbox of its own
    if os.environ.get("ECS_PIPELINE_TESTS_SANDBOX") == "shared":
        subprocess.run([sys.executable, "-m", "sandbox", "up"], cwd=ROOT, check=True)
        state = Path(os.environ.get("SANDBOX_DIR", ROOT / ".sandbox"))
    else:
        env = session_sandbox(worker)
        state = Path(env["SANDBOX_DIR"])
        os.environ.update({k: env[k] for k in ("SANDBOX_DIR", *PORT_VARS)})
    _load_env(state / "env")
    # Tests set up and inspect as the sandbox's own identity; tests/test_iam_*.py release as users holding
    # only the generated policies.
    if (state / "admin.env").is_file():
        _load_env(state / "admin.env")
    os.environ["PREFECT_LOGGING_LEVEL"] = "WARNING"


def pytest_unconfigure(config: pytest.Config) -> None:
    """Stop the session's sandbox even when tests failed or the run was interrupted."""
    while _stop:
        _stop.pop()()
    if os.environ.get("PYTEST_XDIST_WORKER") is None and getattr(config.option, "numprocesses", None):
        # xdist may end a worker before its own teardown is through: the controller makes sure.
        outer = Path(os.environ.get("SANDBOX_DIR") or ROOT / ".sandbox").resolve()
        env = {k: v for k, v in os.environ.items() if not k.startswith(("PREFECT_", "AWS_"))}
        for state in sorted(outer.glob("test-gw*")):
            _sandbox("down", {**env, "SANDBOX_DIR": str(state)})


@pytest.fixture(scope="module", autouse=True)
def module_services_removed() -> Iterator[None]:
    """Services the module made go when it ends, their alarms and target groups with them.

    The sandbox's controller evaluates every alarm and health-checks every target
    group ten times a second: at 40 services left over it burns half a core, so a
    worker's later modules ran slower the more its earlier ones had made. In a
    session's own sandbox every leftover ``*-5xx`` alarm goes too (the fleet
    tests seed theirs without make_service), except those of services kept for later
    modules (``services.KEPT``); the shared sandbox keeps its own.
    """
    from harness import services

    made_before = len(services.MADE)
    yield
    made, services.MADE[made_before:] = services.MADE[made_before:], []
    for sut in made:
        sut.cleanup()
    if os.environ.get("ECS_PIPELINE_TESTS_SANDBOX") != "shared" and not os.environ.get("ECS_PIPELINE_TESTS_NO_SANDBOX"):
        cloudwatch = services.aws("cloudwatch")
        alarms = [a["AlarmName"] for page in cloudwatch.get_paginator("describe_alarms").paginate()
                  for a in page["MetricAlarms"]
                  if a["AlarmName"].endswith("-5xx") and a["AlarmName"].removesuffix("-5xx") not in services.KEPT]
        for start in range(0, len(alarms), 100):
            cloudwatch.delete_alarms(AlarmNames=alarms[start:start + 100])


@pytest.fixture
def new_service(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Callable[..., Any]]:
    """make_service(...) for this test, found by the pipeline, removed from the sandbox afterwards."""
    from harness.services import ServiceUnderTest, make_service

    made: list[ServiceUnderTest] = []

    def make(**kwargs: Any) -> ServiceUnderTest:
        sut = make_service(tmp_path / f"service{len(made)}", **kwargs)
        monkeypatch.setenv("ECS_PIPELINE_DEPLOYMENTS", str(sut.yaml_path.parent))
        made.append(sut)
        return sut

    yield make
    for sut in made:
        sut.cleanup()


@pytest.fixture(scope="module")
def released_service(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    """make_service() released once, shared by a module's tests (a service and a first release cost ~10 s)."""
    from flows.pipeline import deploy_service
    from harness.services import make_service
    from tasks.release.outcome import outcome_of

    sut = make_service(tmp_path_factory.mktemp("released"))
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("ECS_PIPELINE_DEPLOYMENTS", str(sut.yaml_path.parent))
        assert outcome_of(deploy_service(sut.name, return_state=True)) == "Deployed"
    yield sut
    sut.cleanup()


@pytest.fixture
def live(released_service: Any, monkeypatch: pytest.MonkeyPatch) -> tuple[Any, str]:
    """The module's released service (all-at-once) and the one version it serves.

    Each test that uses it leaves it converged: one task set, serving one version.
    """
    from harness.faults import serving_versions
    from harness.services import set_traffic

    sut = released_service
    monkeypatch.setenv("ECS_PIPELINE_DEPLOYMENTS", str(sut.yaml_path.parent))
    set_traffic(sut, {"type": "all-at-once"})
    assert [ts["status"] for ts in sut.task_sets()] == ["PRIMARY"], "an earlier test left two task sets"
    (serving,) = serving_versions(sut)
    return sut, serving


@pytest.fixture(scope="module")
def client() -> Iterator[Any]:
    """A Prefect client on this worker's server, for the module's tests."""
    from prefect.client.orchestration import get_client

    with get_client(sync_client=True) as c:
        c.hello()
        yield c


@pytest.fixture(scope="module")
def deployment(client: Any) -> Iterator[tuple[str, Any]]:
    """A stand-in deploy-service deployment unique to this module: runs are created, never run; removed after."""
    import uuid

    from prefect.client.schemas.filters import DeploymentFilter, DeploymentFilterId

    name = f"test-{uuid.uuid4().hex[:10]}"
    dep_id = client.create_deployment(flow_id=client.create_flow_from_name("deploy-service"), name=name,
                                      entrypoint="flows/pipeline.py:deploy_service")
    yield f"deploy-service/{name}", dep_id
    for run in client.read_flow_runs(deployment_filter=DeploymentFilter(id=DeploymentFilterId(any_=[dep_id])),
                                     limit=200):
        client.delete_flow_run(run.id)
    client.delete_deployment(dep_id)


# Seconds each unit (a module, or SAME_UNIT's modules together) took under `make test`, the mean of three
# whole runs on this machine (2026-12-06); the suite hands them out longest first, so the four workers end
# close together. Unlisted modules (under 8 s) go last.
MODULE_SECONDS = {
    "tests/test_kills.py": 145, "tests/test_workers.py": 142, "tests/test_pipeline.py": 109,
    "tests/test_ecs_native.py": 101, "tests/test_fleet_weather.py": 95, "tests/test_weather.py": 94,
    "tests/test_iam_releases.py": 92,
    "tests/test_failures.py": 88, "tests/test_rollback_command.py": 70, "tests/test_fleet_order_release.py": 65,
    "tests/test_approval_suspend.py": 65, "tests/test_analysis_release.py": 62,
    "tests/test_first_contact_codedeploy.py": 58, "tests/test_ui_lists.py": 54,
    "tests/test_first_contact_ecs_native.py": 54, "tests/sandbox/test_emulation_native.py": 53,
    "tests/test_provenance.py": 49, "tests/test_manifest.py": 49, "tests/test_codedeploy.py": 48,
    "tests/test_contract_botocore.py": 47, "tests/test_ui_retry.py": 42, "tests/test_ecs_native_faults.py": 41,
    "tests/test_iam_verify.py": 40, "tests/test_migration.py": 37, "tests/test_iam_preflight.py": 37,
    "tests/test_fleet.py": 37, "tests/test_buildspec_run.py": 37, "tests/test_rolling.py": 36,
    "tests/test_first_contact_listeners.py": 36, "tests/test_cli.py": 36,
    "tests/sandbox/test_emulation_codedeploy.py": 35, "tests/test_locks.py": 31, "tests/test_iam_enforced.py": 27,
    "tests/sandbox/test_seed.py": 27, "tests/test_pipeline_approval.py": 25, "tests/test_webhook_replay.py": 24,
    "tests/test_buildspec_release.py": 23, "tests/attacks/test_attack_build_box.py": 23,
    "tests/sandbox/test_contract.py": 22, "tests/test_build_box.py": 20, "tests/sandbox/test_platform.py": 20,
    "tests/attacks/test_attack_timeout.py": 19, "tests/sandbox/test_emulation_services.py": 18,
    "tests/test_image.py": 17, "tests/test_first_contact_task_sets.py": 17, "tests/test_bad_inputs.py": 16,
    "tests/sandbox/test_emulation_errors.py": 16, "tests/test_iam_policy.py": 14, "tests/test_approval.py": 13,
    "tests/test_triggers.py": 12, "tests/sandbox/test_strict_codedeploy.py": 12,
    "tests/sandbox/test_strict_listeners.py": 11, "tests/test_iam_deploy_role.py": 10,
    "tests/sandbox/test_strict_ecs_native.py": 10, "tests/sandbox/test_emulation_rolling.py": 9,
    # one run on 2026-12-07, modules that grew past 8 s
    "tests/test_heap.py": 13, "tests/attacks/test_attack_dockerfile.py": 13,
}


# Modules that use one seeded fleet between them (tests/test_fleet_order_release.py shared_fleet) go to one
# worker as one unit under `--dist loadfile`: the fleet is seeded and released once, not once per worker.
SAME_UNIT = {"tests/test_atomic.py": "tests/test_fleet_order_release.py"}


def _unit(nodeid: str) -> str:
    module = nodeid.split("::")[0]
    return SAME_UNIT.get(module, module)


def _cpu_seconds() -> float:
    """This worker's CPU-seconds: its own, its reaped children's, its sandbox's servers' (Prefect, AWS, registry)."""
    own, children = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    total = own.ru_utime + own.ru_stime + children.ru_utime + children.ru_stime
    pids = Path(os.environ.get("SANDBOX_DIR", ROOT / ".sandbox")) / "pids"
    for name in ("prefect", "aws", "registry"):
        try:
            pid = (pids / f"{name}.pid").read_text().split()[0]
            fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        except (OSError, IndexError):
            continue
        total += sum(int(f) for f in fields[11:15]) / os.sysconf("SC_CLK_TCK")  # utime stime cutime cstime
    return total


@functools.cache
def _counting_client() -> Any:
    """One Prefect client for the diagnostic, open until the worker exits: building one costs ~20 ms of CPU."""
    from prefect.client.orchestration import get_client

    return get_client(sync_client=True).__enter__()


def _flow_runs() -> int | None:
    """Flow runs on this session's Prefect server so far (releases, fleets, polls), or None without one."""
    if not os.environ.get("PREFECT_API_URL"):
        return None  # get_client() would start an ephemeral server of its own, for every test
    try:
        return int(_counting_client().count_flow_runs())
    except Exception:  # noqa: BLE001 - a diagnostic: no server, no count
        return None


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_protocol(item: pytest.Item, nextitem: pytest.Item | None) -> Iterator[None]:
    """With ECS_PIPELINE_TESTS_CPU=FILE, one line per test: CPU-seconds (see _cpu_seconds), wall seconds, the
    flow runs it made (``-`` without a Prefect server), the xdist worker, when it started (Unix time) and its
    node id.

    A test's wall is mostly waiting (a release's rehearsed AWS minutes), stretched by a busy two-core
    machine: MODULE_SECONDS orders by wall time, and this says which modules cost the machine. Box builds'
    engines and dockerd are not counted. A release costs about 3 CPU-seconds of the whole machine, so the
    flow-run column says where releases could be shared.
    """
    where = os.environ.get("ECS_PIPELINE_TESTS_CPU")
    if not where:
        yield
        return
    runs, cpu, wall, began = _flow_runs(), _cpu_seconds(), time.monotonic(), time.time()
    yield
    cpu, wall, after = _cpu_seconds() - cpu, time.monotonic() - wall, _flow_runs()
    made = "-" if runs is None or after is None else str(after - runs)
    with open(where, "a") as out:
        worker = os.environ.get("PYTEST_XDIST_WORKER", "-")
        out.write(f"{cpu:.2f} {wall:.2f} {made} {worker} {began:.1f} {item.nodeid}\n")


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    items.sort(key=lambda item: -MODULE_SECONDS.get(_unit(item.nodeid), 0))  # stable: units stay whole


@pytest.hookimpl(optionalhook=True)
def pytest_xdist_make_scheduler(config: pytest.Config, log: Any) -> Any:
    """`--dist loadfile`, with SAME_UNIT's modules handed out together."""
    if config.getoption("dist") != "loadfile":
        return None
    from xdist.scheduler import LoadFileScheduling

    class Units(LoadFileScheduling):
        def _split_scope(self, nodeid: str) -> str:
            return _unit(nodeid)

    return Units(config, log)


def pytest_collection_finish() -> None:
    """The test modules and what they import are loaded: settle the heap as a release process does."""
    from tasks.core import heap

    heap.settle()


# -- an IAM-enforcing sandbox server of a test module's own (tests/test_iam_*.py) ---------------------------


@pytest.fixture(scope="module")
def endpoint() -> Iterator[str]:
    """A sandbox server enforcing IAM, for this module only (harness/iam.py); stopped after it."""
    from harness.iam import enforcing_sandbox

    with enforcing_sandbox() as url:
        yield url


@pytest.fixture(scope="module")
def admin(endpoint: str) -> Any:
    """Clients signed with that server's own keys: all-powerful with enforcement on too."""
    from harness.iam import admin_client

    return admin_client(endpoint)
