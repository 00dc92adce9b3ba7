"""deploy-service end to end against the sandbox and a real Prefect server.

Each test makes its own service (git repo, YAML, ECS service, ALB, target
groups, alarm) and releases it with the real flow: real git, real docker
build and push to the registry, real AWS calls over HTTP, real containers.
The failure tests share one service released once (``live``): each starts
from the version it serves and leaves one task set serving one version.
"""

from __future__ import annotations

import json
import os
import threading
import time
from collections.abc import Callable
from typing import Any

import httpx
import pytest
from prefect.client.orchestration import get_client
from prefect.client.schemas.actions import GlobalConcurrencyLimitUpdate
from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterKey, FlowRunFilter, FlowRunFilterId
from prefect.client.schemas.sorting import ArtifactSort

from flows.pipeline import deploy_service
from harness.faults import image_count, prefect_api_headers, serving_versions, wait_until
from harness.git import git
from harness.services import HTTP, ServiceUnderTest, aws, refuse_next_call
from tasks.core.report import artifact_key
from tasks.core.settings import Settings
from tasks.release.locks import lock_name
from tasks.release.outcome import outcome_of
from tests.test_locks import cleanup as cleanup_lock
from tests.test_locks import start_holder


@pytest.fixture
def service(new_service: Callable[..., ServiceUnderTest]) -> ServiceUnderTest:
    return new_service()


def deploy(name: str, **kwargs: Any) -> Any:
    return deploy_service(name, return_state=True, **kwargs)


def data(state: Any) -> dict[str, Any]:
    result = state.result(raise_on_failure=False)
    return result if isinstance(result, dict) else {}


def test_first_deploy_then_blue_green_then_no_change(service: ServiceUnderTest) -> None:
    v1 = deploy(service.name)
    assert v1.is_completed(), v1.message
    assert outcome_of(v1) == "Deployed"
    assert "v1" in service.get("/").text
    assert sorted(data(v1)["done"]) == ["build", "push", "register"]

    sha2 = service.commit("v2")
    v2 = deploy(service.name)
    assert outcome_of(v2) == "Deployed", v2.message
    assert data(v2)["sha"] == sha2
    assert "v2" in service.get("/").text
    sets = service.task_sets()
    assert [ts["status"] for ts in sets] == ["PRIMARY"], "blue is torn down after the bake"

    again = deploy(service.name)
    assert again.is_completed()
    assert outcome_of(again) == "No change"
    assert len(service.revisions()) == 2

    # What people and automations see.
    summary = release_artifact(service.name)
    assert f"`{sha2}`" in summary and "Deployed" in summary and "| deploy green |" in summary
    seen = wait_for_events(service.name, {"started", "traffic-shifted", "succeeded"})
    assert {"started", "traffic-shifted", "succeeded"} <= seen


def release_artifact(service: str) -> str:
    with get_client(sync_client=True) as client:
        found = client.read_artifacts(
            artifact_filter=ArtifactFilter(key=ArtifactFilterKey(any_=[f"{service}-release"])),
            sort=ArtifactSort.CREATED_DESC,
            limit=5,
        )
    return "\n".join(str(a.data) for a in found)


def wait_for_events(service: str, wanted: set[str], timeout: float = 20) -> set[str]:
    """Event names (after ecs-pipeline.deploy.) seen on the service's resource."""
    api = os.environ["PREFECT_API_URL"]
    body = {"filter": {"any_resource": {"id": [f"ecs-pipeline.service.{service}"]},
                       "occurred": {"since": "2000-01-01T00:00:00Z"}}, "limit": 50}
    deadline = time.monotonic() + timeout
    seen: set[str] = set()
    while time.monotonic() < deadline and not wanted <= seen:
        events = HTTP.post(f"{api}/events/filter", json=body, timeout=10,
                            headers=prefect_api_headers()).json()["events"]
        seen = {e["event"].removeprefix("ecs-pipeline.deploy.") for e in events}
        time.sleep(0.5)
    return seen


def test_failed_http_check_rolls_back_and_v1_keeps_serving(live: tuple[ServiceUnderTest, str]) -> None:
    service, before = live
    serving = image_of(next(ts for ts in service.task_sets() if ts["status"] == "PRIMARY")["taskDefinition"])
    assert handed_over(service) == (serving, serving, serving), "the release that went live handed it over"
    service.commit("broken-root", broken="root")
    state = deploy(service.name)
    assert state.is_failed()
    assert outcome_of(state) == "Rolled back"
    assert "GET / failed verification: returned 500" in (state.message or "")
    assert serving_versions(service) == {before}
    assert [ts["status"] for ts in service.task_sets()] == ["PRIMARY"], "green is removed"
    # CodePipeline's hand-over files and their artifacts name what serves, never the rolled-back build.
    (primary,) = service.task_sets()
    assert image_of(primary["taskDefinition"]) == serving != image_of(service.revisions()[-1])
    assert handed_over(service) == (serving, serving, serving)


def image_of(task_definition: str) -> str:
    found = aws("ecs").describe_task_definition(taskDefinition=task_definition)["taskDefinition"]
    return str(found["containerDefinitions"][0]["image"])


def handed_over(service: ServiceUnderTest) -> tuple[str, str, str]:
    """The image imagedefinitions.json, imageDetail.json and the latest hand-over artifact name."""
    folder = Settings().artifacts_dir / service.name
    (definition,) = json.loads((folder / "imagedefinitions.json").read_text())
    detail = json.loads((folder / "imageDetail.json").read_text())["ImageURI"]
    key = artifact_key(service.name, "handover")
    with get_client(sync_client=True) as client:
        (latest,) = client.read_artifacts(
            artifact_filter=ArtifactFilter(key=ArtifactFilterKey(any_=[key])),
            sort=ArtifactSort.CREATED_DESC,
            limit=1,
        )
    (named,) = json.loads(str(latest.data).split("```json\n", 1)[1].split("\n```", 1)[0])
    return str(definition["imageUri"]), str(detail), str(named["imageUri"])


def test_green_that_never_gets_healthy_rolls_back(live: tuple[ServiceUnderTest, str]) -> None:
    sut, before = live
    assert sut.cfg.timeouts.green_healthy_seconds == 60
    sut.commit("sick", broken="health")
    state = deploy(sut.name)
    assert outcome_of(state) == "Rolled back"
    assert "Task failed ELB health checks" in (state.message or "")
    assert serving_versions(sut) == {before}
    assert len(sut.task_sets()) == 1


def test_build_error_deploys_nothing(live: tuple[ServiceUnderTest, str]) -> None:
    service, before = live
    revisions = service.revisions()
    service.commit("unbuildable", dockerfile_extra="RUN this-command-does-not-exist\n")
    try:
        state = deploy(service.name)
        assert state.is_failed()
        assert "Dockerfile" in (state.message or "")
        assert service.revisions() == revisions
        assert serving_versions(service) == {before}
    finally:  # the next test's commit builds again
        git(service.repo, "checkout", "HEAD~1", "--", "Dockerfile")


def test_rerun_after_failure_resumes_without_repeating(live: tuple[ServiceUnderTest, str]) -> None:
    service, before = live
    service.commit("refused")
    # The next CreateTaskSet is refused as AWS would refuse it: a permanent error.
    refuse_next_call("CreateTaskSet", "AccessDeniedException", match=service.name)
    failed = deploy(service.name)
    assert failed.is_failed()
    assert "AccessDeniedException" in (failed.message or "")
    assert serving_versions(service) == {before}
    revisions = service.revisions()

    rerun = deploy(service.name)
    assert outcome_of(rerun) == "Deployed", rerun.message
    assert data(rerun)["done"] == [], "build, push and register were already done"
    assert service.revisions() == revisions, "no second task definition revision"
    assert serving_versions(service) == {"refused"}


def task_times(run_id: Any, last: str) -> list[tuple[str, Any, Any]]:
    """(name, start, end) of RUN_ID's task runs, once the server has recorded one whose name starts with
    LAST and every one's end (task runs are recorded from events, a moment after they happen)."""

    with get_client(sync_client=True) as client:  # one client for every look: building one costs ~20 ms of CPU

        def recorded() -> list[tuple[str, Any, Any]] | None:
            tasks = client.read_task_runs(flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=[run_id])))
            times = [(t.name, t.start_time, t.end_time) for t in tasks]
            done = any(name.startswith(last) for name, _, _ in times) and all(s and e for _, s, e in times)
            return times if done else None

        found: list[tuple[str, Any, Any]] = wait_until(recorded, 30, f"the task runs of {run_id}")
    return found


def test_a_release_beside_a_running_one_under_a_disabled_limit_fails_changing_nothing(
    service: ServiceUnderTest,
) -> None:
    """A person disabled the service's deploy limit while a run holds the service: the next release gets a
    slot anyway, and ends Failed (summary, live view, failed event) before it builds or moves anything."""
    before = (service.task_sets(), service.revisions(), image_count(service))
    holder, holder_run = start_holder(service.name)
    try:
        with get_client(sync_client=True) as client:
            client.update_global_concurrency_limit(lock_name(service.name),
                                                   GlobalConcurrencyLimitUpdate(active=False))
        state = deploy(service.name)
        assert outcome_of(state) == "Failed", state
        assert state.message.startswith(f"Failed: the Prefect concurrency limit {lock_name(service.name)} is "
                                        "disabled"), state.message
        assert holder_run in state.message and state.message.endswith("(production unchanged)"), state.message
        assert "is disabled" in release_artifact(service.name), "the release summary says why"
        assert "failed" in wait_for_events(service.name, {"failed"})
        after = (service.task_sets(), service.revisions(), image_count(service))
        assert after == before, "nothing built, registered or moved"
        assert holder.poll() is None
    finally:
        holder.kill()
        holder.wait(timeout=10)
        cleanup_lock(service.name)


def test_second_run_for_the_same_service_waits(service: ServiceUnderTest) -> None:
    states: dict[str, Any] = {}

    def run(key: str) -> None:
        states[key] = deploy(service.name)

    first = threading.Thread(target=run, args=("a",))
    second = threading.Thread(target=run, args=("b",))
    first.start()
    time.sleep(0.5)
    second.start()
    first.join(180)
    second.join(180)
    deployed = [k for k, s in states.items() if outcome_of(s) == "Deployed"]
    assert len(deployed) == 1, {k: s.name for k, s in states.items()}
    other = "b" if deployed == ["a"] else "a"
    # Had they raced, both would have built and deployed v1. The one that waited for the
    # slot finds it live, or gives way to the run created after it (same SHA).
    assert outcome_of(states[other]) in ("No change", "Superseded"), states[other]
    if outcome_of(states[other]) == "No change":  # it waited for the slot, then found v1 live: its first
        # step started after the release's last step under the slot ended (task runs as the server recorded
        # them; when each thread returned says nothing of it: a run's ending outlasts its final state)
        released = max(end for _, _, end in task_times(states[deployed[0]].state_details.flow_run_id, "teardown"))
        looked = min(start for _, start, _ in task_times(states[other].state_details.flow_run_id, "detect"))
        assert looked >= released, (looked, released)
    assert len(service.revisions()) == 1, "one build, one registration: the two never raced"


def test_alarm_during_canary_rolls_back(new_service: Callable[..., ServiceUnderTest]) -> None:
    """Green passes verify (/health only) but fails real users: the 5xx alarm stops the canary."""
    sut = new_service(
        traffic={"type": "canary", "percent": 20, "interval_seconds": 3600},
        verify_paths=("/health",),
    )
    assert outcome_of(deploy(sut.name)) == "Deployed"
    sut.commit("v2-bad-root", broken="root")
    stop = threading.Event()
    codes: list[int] = []

    def users() -> None:
        with httpx.Client(timeout=5) as client:
            while not stop.is_set():
                codes.append(client.get(sut.prod_url + "/").status_code)
                time.sleep(0.01)

    client_thread = threading.Thread(target=users)
    client_thread.start()
    try:
        state = deploy(sut.name)
    finally:
        stop.set()
        client_thread.join(10)
    assert outcome_of(state) == "Rolled back", state.message
    assert "alarm in ALARM during the 20% step" in (state.message or "")
    assert 500 in codes, "some users met the canary"
    assert codes.count(500) < len(codes) / 2, "most traffic stayed on blue"
    assert all(sut.get("/").status_code == 200 for _ in range(20))
    assert [ts["status"] for ts in sut.task_sets()] == ["PRIMARY"]
