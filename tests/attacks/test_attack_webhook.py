"""Attacks on the webhook receiver: a replayable push without a delivery id, forged and oversized requests.

Real HTTP requests to the real app (uvicorn on loopback) backed by a real Prefect
server: an attack is refused with a clear answer, starts no run, and leaves a log
line naming the sender's address, the reason and the delivery id, never the body
or a secret.
"""

from __future__ import annotations

import json
import logging
import uuid
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
from prefect.client.schemas.filters import DeploymentFilter, DeploymentFilterId

from flows.webhook import create_app
from tasks.triggers.push_runs import PrefectRunStarter
from tasks.triggers.webhook_deliveries import SenderLimits
from tasks.triggers.webhooks import sign_github
from tests.test_webhook import SECRET, SECRETS, make_service, push_payload, serving


@pytest.fixture(scope="module")
def receiver(deployment: tuple[str, uuid.UUID]) -> Iterator[str]:
    service = make_service("atk-" + uuid.uuid4().hex[:8], "https://github.com/acme/shop.git")
    app = create_app([service], SECRETS, PrefectRunStarter(deployment_name=deployment[0]), max_body_bytes=4096)
    with serving(app) as url:
        yield url


def runs(client: Any, deployment: tuple[str, uuid.UUID]) -> int:
    return len(client.read_flow_runs(deployment_filter=DeploymentFilter(id=DeploymentFilterId(any_=[deployment[1]]))))


def github(body: bytes, **extra: str) -> dict[str, str]:
    return {"Content-Type": "application/json", "X-GitHub-Event": "push",
            "X-Hub-Signature-256": sign_github(SECRET, body), **extra}


def test_a_signed_push_without_a_delivery_id_starts_nothing(
    receiver: str, client: Any, deployment: tuple[str, uuid.UUID], caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.WARNING, logger="ecs_pipeline.webhook")
    body = json.dumps(push_payload()).encode()
    before = runs(client, deployment)
    answers = [httpx.post(f"{receiver}/webhook/github", content=body, headers=github(body)) for _ in range(3)]
    assert [a.status_code for a in answers] == [400, 400, 400]
    assert "needs its delivery id (x-github-delivery)" in answers[0].json()["error"]
    assert runs(client, deployment) == before
    refusals = [r.getMessage() for r in caplog.records if "Refused" in r.getMessage()]
    assert len(refusals) == 3 and all("from 127.0.0.1 (delivery (none)): 400" in r for r in refusals)
    assert SECRET not in caplog.text and body.decode() not in caplog.text


def test_forged_and_oversized_requests_are_refused_and_logged_without_body_or_secret(
    receiver: str, client: Any, deployment: tuple[str, uuid.UUID], caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.WARNING, logger="ecs_pipeline.webhook")
    body = json.dumps(push_payload()).encode()
    before = runs(client, deployment)
    forged = github(body, **{"X-GitHub-Delivery": "d-forged-1"})
    forged["X-Hub-Signature-256"] = sign_github("a guess", body)
    huge = b'{"pad": "' + b"x" * 8192 + b'"}'
    answers = [
        httpx.post(f"{receiver}/webhook/github", content=body, headers=forged),
        httpx.post(f"{receiver}/webhook/github", content=huge,
                   headers=github(huge, **{"X-GitHub-Delivery": "d-huge-1"})),
        httpx.post(f"{receiver}/webhook/github", content=body,
                   headers=github(body, **{"X-GitHub-Delivery": "bad id; rm -rf"})),
    ]
    assert [a.status_code for a in answers] == [401, 413, 400]
    assert runs(client, deployment) == before
    lines = "\n".join(r.getMessage() for r in caplog.records)
    assert "(delivery d-forged-1): 401" in lines and "(delivery d-huge-1): 413" in lines
    assert "(delivery (invalid)): 400" in lines and "rm -rf" not in lines
    assert SECRET not in caplog.text and "xxxxxxxx" not in caplog.text and '"ref"' not in caplog.text


def test_a_flood_of_signed_deliveries_is_held_to_the_senders_rate(
    deployment: tuple[str, uuid.UUID], caplog: pytest.LogCaptureFixture,
) -> None:
    """A captured signed push (or a leaked secret) replayed fast: past the sender's budget, 429 and no work."""
    caplog.set_level(logging.WARNING, logger="ecs_pipeline.webhook")
    app = create_app([], SECRETS, PrefectRunStarter(deployment_name=deployment[0]),
                     limits=SenderLimits(per_minute=3, concurrent=2))
    body = json.dumps(push_payload(full_name="acme/unknown")).encode()
    with serving(app) as url:
        answers = [httpx.post(f"{url}/webhook/github", content=body,
                              headers=github(body, **{"X-GitHub-Delivery": f"d-flood-{i}"})) for i in range(5)]
        forged = httpx.post(f"{url}/webhook/github", content=body, headers={**github(body), "X-Hub-Signature-256":
                                                                            sign_github("a guess", body)})
    assert [a.status_code for a in answers] == [200, 200, 200, 429, 429]
    assert 1 <= int(answers[3].headers["Retry-After"]) <= 60
    assert "more than 3 github deliveries in a minute" in answers[3].json()["error"]
    assert forged.status_code == 401  # an unauthenticated request never uses up the sender's budget
    assert sum("(delivery d-flood-" in r.getMessage() and ": 429 " in r.getMessage() for r in caplog.records) == 2
