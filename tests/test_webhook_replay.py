"""Replays the webhook receiver answers without a run: commits already live, ids seen by another receiver.

Real HTTP requests to the real app (uvicorn on loopback) backed by the session's
Prefect server; the live commit comes from real releases in the sandbox. A
replay is a signed push sent again with a fresh delivery id (the id is not
signed) or with the id already seen, by this receiver, a restarted one or another.
"""

from __future__ import annotations

import contextlib
import json
import threading
import time
import uuid
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
from prefect import flow
from prefect.client.orchestration import SyncPrefectClient
from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterTags
from prefect.states import Cancelled

from flows.pipeline import deploy_service
from flows.webhook import create_app
from harness.git import git
from harness.services import ServiceUnderTest
from tasks.release.live_view import LiveRecord, publish_live
from tasks.release.outcome import outcome_of
from tasks.release.runs import NOT_NEWER
from tasks.triggers.push_runs import PrefectRunStarter
from tasks.triggers.webhook_deliveries import PrefectDeliveries, delivery_variable
from tasks.triggers.webhooks import sign_github
from tests.test_webhook import SECRET, SECRETS, make_service, push_payload, serving


def deliver(url: str, body: dict[str, Any], delivery: str | None = None) -> httpx.Response:
    raw = json.dumps(body).encode()
    headers = {"Content-Type": "application/json", "X-GitHub-Event": "push",
               "X-GitHub-Delivery": delivery or str(uuid.uuid4()), "X-Hub-Signature-256": sign_github(SECRET, raw)}
    return httpx.post(f"{url}/webhook/github", content=raw, headers=headers, timeout=30)


def service_runs(client: SyncPrefectClient, service: str) -> list[str]:
    """Every flow run of SERVICE, whatever its deployment (the real releases' and the receiver's)."""
    runs = client.read_flow_runs(flow_run_filter=FlowRunFilter(tags=FlowRunFilterTags(all_=[f"service:{service}"])))
    return sorted(str(r.id) for r in runs)


def sut_push(sut: ServiceUnderTest, sha: str) -> dict[str, Any]:
    return {"ref": "refs/heads/main", "after": sha, "repository": {"full_name": "acme/app", "clone_url": str(sut.repo)}}


@flow(name="publish-live-view")
def publish_in_a_run(record: LiveRecord) -> None:
    """What a release does when it ends: publish the live view (artifacts are made inside runs)."""
    publish_live(record)


@pytest.fixture
def receiver(deployment: tuple[str, uuid.UUID]) -> Iterator[Any]:
    """receiver(services, deliveries) -> url: a fresh receiver (new process state), stopped after the test."""
    with contextlib.ExitStack() as stack:
        def start(services: list[Any], deliveries: PrefectDeliveries | None = None) -> str:
            app = create_app(services, SECRETS, PrefectRunStarter(deployment[0]), deliveries=deliveries)
            return str(stack.enter_context(serving(app)))

        yield start


# -- (a) a push whose commit is live, or older than live ------------------------------------------


def test_a_replayed_push_of_the_live_commit_starts_no_run(
    released_service: ServiceUnderTest, client: SyncPrefectClient, receiver: Any, monkeypatch: pytest.MonkeyPatch,
) -> None:
    sut = released_service
    monkeypatch.setenv("ECS_PIPELINE_DEPLOYMENTS", str(sut.yaml_path.parent))
    live = git(sut.repo, "rev-parse", "HEAD")
    url = receiver([sut.cfg])
    before = service_runs(client, sut.name)
    answers = [deliver(url, sut_push(sut, live)) for _ in range(3)]  # a recorded push, fresh ids each time
    assert [a.status_code for a in answers] == [200, 200, 200], answers[0].text
    assert answers[0].json()["nothing_to_do"][sut.name].startswith(f"{live[:12]} is already live")
    assert service_runs(client, sut.name) == before

    started = deliver(url, sut_push(sut, "9" * 40))  # the control: a commit that is not live starts its run
    assert started.status_code == 202, started.text
    assert len(service_runs(client, sut.name)) == len(before) + 1


def test_a_replayed_push_of_a_commit_older_than_live_starts_no_run(
    released_service: ServiceUnderTest, client: SyncPrefectClient, receiver: Any, monkeypatch: pytest.MonkeyPatch,
) -> None:
    """v1 was released, then v2 went live over it: v1's recorded push, replayed, has nothing to do."""
    sut = released_service
    monkeypatch.setenv("ECS_PIPELINE_DEPLOYMENTS", str(sut.yaml_path.parent))
    old = git(sut.repo, "rev-parse", "HEAD")
    new = sut.commit("v3")
    assert outcome_of(deploy_service(sut.name, sha=new, return_state=True)) == "Deployed"
    assert "v3" in sut.get("/").text
    url = receiver([sut.cfg])
    before = service_runs(client, sut.name)
    older, current = deliver(url, sut_push(sut, old)), deliver(url, sut_push(sut, new))
    assert (older.status_code, current.status_code) == (200, 200), older.text
    assert older.json()["nothing_to_do"][sut.name].startswith(f"{old[:12]} was released by run")
    assert current.json()["nothing_to_do"][sut.name] == f"{new[:12]} is already live"
    assert service_runs(client, sut.name) == before


def test_only_the_services_whose_commit_is_live_are_skipped(
    client: SyncPrefectClient, receiver: Any, deployment: tuple[str, uuid.UUID],
) -> None:
    """The live view one service's release published says the pushed commit is live there; the other gets its run."""
    tag = uuid.uuid4().hex[:8]
    live_one, other = make_service(f"rp-live-{tag}", "https://github.com/acme/shop.git"), make_service(
        f"rp-new-{tag}", "https://github.com/acme/shop.git")
    sha = uuid.uuid4().hex + "0" * 8
    publish_in_a_run(LiveRecord(service=live_one.name, sha=sha, traffic="100% on blue"))
    url = receiver([live_one, other])
    answer = deliver(url, push_payload(after=sha))
    assert answer.status_code == 202, answer.text
    assert [s["service"] for s in answer.json()["started"]] == [other.name]
    assert answer.json()["nothing_to_do"] == {live_one.name: f"{sha[:12]} is already live"}
    assert service_runs(client, live_one.name) == [] and len(service_runs(client, other.name)) == 1


def test_a_commit_a_run_refused_as_not_newer_than_live_starts_no_second_run(
    client: SyncPrefectClient, receiver: Any, deployment: tuple[str, uuid.UUID],
) -> None:
    """The first replay of an older commit nobody released makes one run, which refuses it; later ones make none."""
    service = make_service(f"rp-old-{uuid.uuid4().hex[:8]}", "https://github.com/acme/shop.git")
    sha = uuid.uuid4().hex + "3" * 8
    url = receiver([service])
    first = deliver(url, push_payload(after=sha))
    assert first.status_code == 202, first.text
    run_id = uuid.UUID(first.json()["started"][0]["flow_run_id"])
    # How the run ends once it saw the live commit descends from SHA (outcome.final_state's message).
    client.set_flow_run_state(run_id, Cancelled(message=f"{NOT_NEWER}: live {'a' * 12} descends from it"), force=True)
    again = deliver(url, push_payload(after=sha))
    assert again.status_code == 200, again.text
    assert again.json()["nothing_to_do"][service.name].startswith(f"{sha[:12]} is not newer than live")
    assert service_runs(client, service.name) == [str(run_id)]


# -- (b), (c) delivery ids kept in the Prefect server, for every receiver, until they expire ------------


def test_a_delivery_seen_by_one_receiver_is_a_duplicate_for_a_fresh_one(
    client: SyncPrefectClient, receiver: Any,
) -> None:
    service = make_service(f"rp-ids-{uuid.uuid4().hex[:8]}", "https://github.com/acme/shop.git")
    payload, delivery = push_payload(after=uuid.uuid4().hex + "1" * 8), str(uuid.uuid4())
    first = deliver(receiver([service], PrefectDeliveries()), payload, delivery)
    assert first.status_code == 202, first.text
    runs = service_runs(client, service.name)
    assert len(runs) == 1
    restarted = receiver([service], PrefectDeliveries())  # a new process: nothing in memory
    again = deliver(restarted, payload, delivery)
    assert again.status_code == 200 and again.json() == {"duplicate": True, "delivery": delivery}
    assert service_runs(client, service.name) == runs


def test_an_expired_delivery_id_is_accepted_again(client: SyncPrefectClient, receiver: Any) -> None:
    service = make_service(f"rp-ttl-{uuid.uuid4().hex[:8]}", "https://github.com/acme/shop.git")
    payload, delivery = push_payload(after=uuid.uuid4().hex + "2" * 8), str(uuid.uuid4())
    store = PrefectDeliveries(ttl_seconds=1.5)
    url = receiver([service], store)
    first = deliver(url, payload, delivery)
    assert first.status_code == 202, first.text
    assert deliver(receiver([service], PrefectDeliveries(ttl_seconds=1.5)), payload, delivery).json()["duplicate"]
    time.sleep(2)
    later = deliver(url, payload, delivery)
    assert later.status_code == 202, later.text  # the id counts no more; the run's idempotency key still holds:
    assert later.json()["started"] == first.json()["started"]  # the same run, none added
    assert len(service_runs(client, service.name)) == 1

    time.sleep(2)
    assert store.sweep() >= 1  # an expired record is removed from the server
    assert client.read_variable_by_name(delivery_variable(f"github:{delivery}")) is None


def test_receivers_racing_on_the_same_ids_record_each_once() -> None:
    stores = [PrefectDeliveries(), PrefectDeliveries()]
    ids = [f"github:race-{uuid.uuid4().hex}" for _ in range(20)]
    firsts: list[str] = []
    lock = threading.Lock()

    def receive(store: PrefectDeliveries) -> None:
        for delivery in ids:
            if not store.check_and_add(delivery):
                with lock:
                    firsts.append(delivery)

    threads = [threading.Thread(target=receive, args=(stores[i % 2],)) for i in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(firsts) == sorted(ids)  # each id new exactly once across both receivers
    for store in stores:
        store.close()
