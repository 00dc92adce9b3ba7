"""The approval gate: a real flow run pauses on a real Prefect server and is answered."""

from __future__ import annotations

import json
import os

os.environ.setdefault("PREFECT_API_URL", "http://127.0.0.1:4200/api")

import queue
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from prefect import flow, task
from prefect.client.orchestration import SyncPrefectClient
from prefect.client.schemas.objects import StateType
from prefect.context import FlowRunContext
from prefect.exceptions import NotPausedError
from prefect.states import Running

from tasks.core.errors import ApprovalRejected
from tasks.release.approval import ApprovalInput, approve_run, request_approval


@task
def roll_back(service: str) -> str:
    return f"rolled back {service}"


@flow(name="approval-test")
def release_with_approval(service: str, timeout: int, ids: Any) -> str:
    """Stands in for the pipeline: wait for a yes, roll back on anything else."""
    context = FlowRunContext.get()
    assert context is not None and context.flow_run is not None
    ids.put(context.flow_run.id)
    summary = f"### {service}\n\nDeploy `abc1234` to production?"
    try:
        answer = request_approval(service, summary, timeout, poll_interval_seconds=1)
    except ApprovalRejected:
        ids.put(roll_back(service))
        raise
    return f"approved: {answer.comment}"


class Released:
    """Runs the flow in a thread, as a worker would run it in its own process."""

    def __init__(self, timeout: int) -> None:
        self.service = f"shop-{uuid.uuid4().hex[:6]}"
        self.ids: queue.Queue[Any] = queue.Queue()
        self.result: Any = None
        self.thread = threading.Thread(target=self._run, args=(timeout,), daemon=True)
        self.thread.start()
        self.run_id: uuid.UUID = self.ids.get(timeout=30)

    def _run(self, timeout: int) -> None:
        try:
            self.result = release_with_approval(self.service, timeout, self.ids)
        except Exception as exc:  # noqa: BLE001 - handed to the test thread to assert on
            self.result = exc

    def finish(self) -> Any:
        self.thread.join(timeout=60)
        assert not self.thread.is_alive(), "flow run did not finish"
        return self.result


def wait_for(client: SyncPrefectClient, run_id: uuid.UUID, check: Callable[[Any], bool]) -> Any:
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        run = client.read_flow_run(run_id)
        if run.state is not None and check(run.state):
            return run.state
        time.sleep(0.2)
    raise AssertionError(f"flow run {run_id} never reached the expected state")


@pytest.fixture
def cleanup(client: SyncPrefectClient) -> Iterator[list[uuid.UUID]]:
    runs: list[uuid.UUID] = []
    yield runs
    for run_id in runs:
        client.delete_flow_run(run_id)


def test_approved_release_pauses_then_completes(
    client: SyncPrefectClient, cleanup: list[uuid.UUID], capsys: pytest.CaptureFixture[str]
) -> None:
    from flows.cli import main
    from flows.operations import run_url
    from flows.trigger_cli import APPROVE_SCHEMA
    from tests.test_status_all import schema_errors

    release = Released(timeout=60)
    cleanup.append(release.run_id)
    paused = wait_for(client, release.run_id, lambda s: s.is_paused())
    assert paused.type == StateType.PAUSED
    capsys.readouterr()
    assert main(["approve", str(release.run_id), "--comment", "looks good", "--json"]) == 0  # as an operator would
    answered = json.loads(capsys.readouterr().out)  # the environment lines went to stderr
    assert schema_errors(answered, APPROVE_SCHEMA) == [], answered
    assert (answered["answer"], answered["answered"], answered["url"]) == ("approved", True, run_url(release.run_id))
    assert release.finish() == "approved: looks good"
    assert client.read_flow_run(release.run_id).state_type == StateType.COMPLETED
    with pytest.raises(NotPausedError):  # answered once; nothing is waiting any more
        approve_run(release.run_id, approve=True)
    assert main(["approve", str(release.run_id), "--json"]) == 1
    again = json.loads(capsys.readouterr().out)
    assert schema_errors(again, APPROVE_SCHEMA) == [] and not again["answered"] and again["answered_at"] is None
    assert again["error"] == f"run {release.run_id} is not waiting for approval"


def test_rejected_release_raises_and_rolls_back(
    client: SyncPrefectClient, cleanup: list[uuid.UUID]
) -> None:
    release = Released(timeout=60)
    cleanup.append(release.run_id)
    wait_for(client, release.run_id, lambda s: s.is_paused())
    approve_run(str(release.run_id), approve=False, comment="error rate too high")
    error = release.finish()
    assert isinstance(error, ApprovalRejected)
    assert str(error) == f"Release rejected: error rate too high [service={release.service}]"
    assert release.ids.get_nowait() == f"rolled back {release.service}"
    state = client.read_flow_run(release.run_id).state
    assert state is not None and state.is_failed()


def test_unanswered_release_times_out_and_still_rolls_back(
    client: SyncPrefectClient, cleanup: list[uuid.UUID]
) -> None:
    release = Released(timeout=2)
    cleanup.append(release.run_id)
    error = release.finish()
    assert isinstance(error, ApprovalRejected)
    assert error.message == "No approval within 2 s; not releasing"
    assert release.ids.get_nowait() == f"rolled back {release.service}"
    state = client.read_flow_run(release.run_id).state
    # the run ends with the pipeline's own reason, not Prefect's "never resumed"
    assert state is not None and state.is_failed()
    assert state.message is not None and "No approval within 2 s" in state.message


def test_approval_form_has_the_fields_a_person_fills() -> None:
    fields = ApprovalInput.model_fields
    assert set(fields) == {"approve", "comment"} and fields["comment"].default == ""


@pytest.mark.parametrize(
    ("strategy", "seconds", "refused"),
    [
        ("codedeploy", 2880 * 60, False),
        ("codedeploy", 2880 * 60 + 1, True),  # CodeDeploy holds a deployment at Ready 2 days at most
        ("ecs-native", 1209600, False),  # the PAUSE hook's 20160 minutes
        ("task-sets", 1209600, False),
        ("rolling", 1209600, False),
    ],
)
def test_an_approval_wait_longer_than_the_strategy_holds_green_is_refused(
    strategy: str, seconds: int, refused: bool
) -> None:
    from tasks.config.models import ServiceConfig, parse_service
    from tasks.core.errors import ConfigError
    from tasks.release.approval import check_approval_window

    base = {
        "name": "shop", "source": {"repo": "https://example.com/shop.git"}, "ecr": {"repository": "shop"},
        "ecs": {"cluster": "c", "service": "shop", "container": "web", "container_port": 8080},
        "task_definition": "shop/taskdef.json", "strategy": {"type": strategy},
        "approval": "required", "approval_timeout_seconds": seconds,
    }
    if strategy != "rolling":
        base["load_balancer"] = {"production_listener": {"load_balancer": "alb", "port": 80},
                                 "test_listener": {"load_balancer": "alb", "port": 8080},
                                 "target_groups": ["a", "b"]}
    if not refused:
        cfg = ServiceConfig.model_validate(base)
        check_approval_window(cfg)
        check_approval_window(cfg.model_copy(update={"approval": "none"}))
        return
    # Loading the file refuses it, naming the field; the release's own check (at flow start) refuses it too.
    with pytest.raises(ConfigError, match=r"shop.yaml: invalid service config\n  \(top level\): "
                       r"approval_timeout_seconds is 172801, but CodeDeploy holds a deployment at Ready for "
                       r"at most 2880 minutes: set 172800 or less"):
        parse_service(base, source="shop.yaml")
    cfg = ServiceConfig.model_validate({**base, "approval_timeout_seconds": 172800}).model_copy(
        update={"approval_timeout_seconds": seconds})
    with pytest.raises(ConfigError) as caught:
        check_approval_window(cfg)
    assert str(caught.value).startswith(
        "shop: approval_timeout_seconds is 172801, longer than strategy codedeploy can wait: CodeDeploy holds a "
        "blue/green deployment at Ready at most 2880 minutes (2 days: deploymentReadyOption.waitTimeInMinutes); "
        "set approval_timeout_seconds to 172800 or less"
    ), caught.value
    check_approval_window(cfg.model_copy(update={"approval": "none"}))  # no approval: nothing to hold


@flow(name="approval-lock-test")
def hold_slot(service: str, reserved: Any, give_up_after: float | None) -> str | None:
    from prefect.runtime import flow_run

    from tasks.release.locks import service_lock

    with service_lock(service, str(flow_run.get_id()), stale_after=2.0, give_up_after=give_up_after,
                      reserved=reserved) as held:
        return held.took_over_from


def test_a_suspended_release_keeps_its_service_until_it_ends(
    client: SyncPrefectClient, cleanup: list[uuid.UUID]
) -> None:
    """Its heartbeat stopped long ago, yet the service is its own: it waits, not dead; once it ended (Prefect's
    timeout fails it), the next run takes the service and reconciles what it left."""
    from prefect.client.schemas.actions import VariableCreate
    from prefect.states import Failed, Suspended

    from tasks.release.locks import GaveWay, ServiceBusy, heartbeat_name, read_heartbeat

    service = f"shop-{uuid.uuid4().hex[:6]}"
    waiting = client.create_flow_run(flow=hold_slot, parameters={"service": service})
    cleanup.append(waiting.id)
    client.set_flow_run_state(waiting.id, Running(), force=True)
    client.set_flow_run_state(waiting.id, Suspended(timeout_seconds=600, pause_key="approval"), force=True)
    client.create_variable(VariableCreate(name=heartbeat_name(service), value={
        "run": str(waiting.id), "lease": str(uuid.uuid4()), "at": time.time() - 3600, "suspended": True}))

    with pytest.raises(ServiceBusy):
        hold_slot(service, lambda holder: "wait", give_up_after=1.0)
    with pytest.raises(GaveWay) as gave_way:
        hold_slot(service, lambda holder: "give way", give_up_after=None)
    assert gave_way.value.holder == str(waiting.id)
    state = client.read_flow_run(waiting.id).state
    assert state is not None and state.name == "Suspended", "a suspended run is not a dead holder"

    client.set_flow_run_state(waiting.id, Failed(message="The flow was suspended and never resumed."), force=True)
    assert hold_slot(service, lambda holder: "wait", give_up_after=10.0) == str(waiting.id)
    assert read_heartbeat(client, service) is None, "the taker let the service go again"
