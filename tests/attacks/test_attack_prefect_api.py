"""Attack: anything on the machine (a build's commands included) calls the Prefect API to start a release.

The sandbox's Prefect API asks for basic auth (PREFECT_SERVER_API_AUTH_STRING); its
clients take the credentials from the sandbox's env file. Without them no run is
read, created or moved back with ``allow_older``.
"""

from __future__ import annotations

import os
import uuid
from typing import Any

import httpx
from prefect.client.schemas.filters import DeploymentFilter, DeploymentFilterId

from harness.faults import prefect_api_headers


def test_the_prefect_api_refuses_calls_without_its_credentials(deployment: tuple[str, uuid.UUID], client: Any) -> None:
    api = os.environ["PREFECT_API_URL"]
    assert os.environ.get("PREFECT_API_AUTH_STRING"), "the sandbox's env names the API's credentials"
    dep_id = deployment[1]

    def runs() -> int:
        found = client.read_flow_runs(deployment_filter=DeploymentFilter(id=DeploymentFilterId(any_=[dep_id])))
        return len(found)

    before = runs()
    start = {"parameters": {"service": "sample-app", "sha": "0" * 40, "allow_older": True}}
    refused = [
        httpx.post(f"{api}/deployments/{dep_id}/create_flow_run", json=start, timeout=10),
        httpx.post(f"{api}/flow_runs/filter", json={}, timeout=10),
        httpx.post(f"{api}/deployments/{dep_id}/create_flow_run", json=start, timeout=10,
                   headers={"Authorization": "Basic " + "ZWNzLXBpcGVsaW5lOmd1ZXNz"}),  # ecs-pipeline:guess
    ]
    assert [r.status_code for r in refused] == [401, 401, 401]
    assert runs() == before  # nothing was started
    assert httpx.get(f"{api}/health", timeout=10).status_code == 200  # probes stay open
    allowed = httpx.post(f"{api}/flow_runs/filter", json={"limit": 1}, timeout=10, headers=prefect_api_headers())
    assert allowed.status_code == 200
