"""Webhook latency: signed POST until the 202 naming the Scheduled flow run(s).

Measured against the Prefect server at $PREFECT_API_URL (the sandbox's by
default), with a throw-away deploy-service deployment removed afterwards.
Peers measured in the same run:

* a bare Starlette handler that only checks the HMAC (the HTTP floor), and
* one ``create_flow_run_from_deployment`` call from a warm client (the API floor).

    uv run python bench/bench_webhook.py [--requests 50]
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import statistics
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

os.environ.setdefault("PREFECT_API_URL", "http://127.0.0.1:4200/api")

import httpx
import uvicorn
from prefect.client.orchestration import SyncPrefectClient, get_client
from prefect.client.schemas.filters import DeploymentFilter, DeploymentFilterId
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from flows.webhook import create_app
from tasks.config.models import ServiceConfig, parse_service
from tasks.triggers.push_runs import PrefectRunStarter
from tasks.triggers.webhook_secrets import WebhookSecrets
from tasks.triggers.webhooks import sign_github, verify_github_signature

SECRET = "bench-secret-not-used-anywhere-else"


def service(name: str) -> ServiceConfig:
    data = {
        "name": name,
        "source": {"repo": "https://github.com/acme/shop.git"},
        "ecr": {"repository": name},
        "ecs": {"cluster": "bench", "service": name, "container": "web", "container_port": 80},
        "task_definition": "taskdef.json",
        "strategy": {"type": "rolling"},
    }
    return parse_service(data, source=f"{name}.yaml")


def payload(sha: str) -> bytes:
    repo = {
        "full_name": "acme/shop",
        "clone_url": "https://github.com/acme/shop.git",
        "ssh_url": "git@github.com:acme/shop.git",
        "html_url": "https://github.com/acme/shop",
    }
    body = {"ref": "refs/heads/main", "after": sha, "deleted": False, "repository": repo}
    return json.dumps(body).encode()


def bare_app() -> Starlette:
    async def hook(request: Request) -> JSONResponse:
        body = await request.body()
        ok = verify_github_signature(SECRET, body, request.headers.get("x-hub-signature-256"))
        return JSONResponse({"ok": ok}, status_code=202 if ok else 401)

    return Starlette(routes=[Route("/webhook/github", hook, methods=["POST"])])


@contextmanager
def serving(app: Any) -> Iterator[str]:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    while not server.started:
        time.sleep(0.01)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(timeout=10)


def time_posts(
    url: str, n: int, check: Callable[[httpx.Response], None], gap: float
) -> list[float]:
    samples = []
    with httpx.Client(timeout=30) as http:
        for i in range(n + 3):  # three warm-up requests are not counted
            body = payload(uuid.uuid4().hex + uuid.uuid4().hex[:8])
            headers = {
                "Content-Type": "application/json",
                "X-GitHub-Event": "push",
                "X-GitHub-Delivery": str(uuid.uuid4()),
                "X-Hub-Signature-256": sign_github(SECRET, body),
            }
            start = time.perf_counter()
            answer = http.post(f"{url}/webhook/github", content=body, headers=headers)
            elapsed = time.perf_counter() - start
            check(answer)
            if i >= 3:
                samples.append(elapsed * 1000)
            time.sleep(gap)
    return samples


def time_api_floor(client: SyncPrefectClient, dep_id: uuid.UUID, n: int, gap: float) -> list[float]:
    samples = []
    for _ in range(n):
        start = time.perf_counter()
        client.create_flow_run_from_deployment(dep_id, parameters={"service": "floor", "sha": None})
        samples.append((time.perf_counter() - start) * 1000)
        time.sleep(gap)
    return samples


def report(name: str, samples: list[float]) -> float:
    median = statistics.median(samples)
    p95 = sorted(samples)[int(len(samples) * 0.95) - 1]
    print(f"{name:<44} median {median:7.1f} ms   p95 {p95:7.1f} ms   n={len(samples)}")
    return median


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=50)
    parser.add_argument(
        "--gap-ms", type=float, default=250, help="pause between requests (0: back to back)"
    )
    args = parser.parse_args()
    n = args.requests
    gap = args.gap_ms / 1000
    tag = uuid.uuid4().hex[:8]
    with get_client(sync_client=True) as client:
        flow_id = client.create_flow_from_name("deploy-service")
        dep_id = client.create_deployment(flow_id=flow_id, name=f"bench-{tag}", entrypoint="x:y")
        try:
            run(client, dep_id, f"deploy-service/bench-{tag}", tag, n, gap)
        finally:
            runs = client.read_flow_runs(
                deployment_filter=DeploymentFilter(id=DeploymentFilterId(any_=[dep_id]))
            )
            for r in runs:
                client.delete_flow_run(r.id)
            client.delete_deployment(dep_id)


def run(
    client: SyncPrefectClient, dep_id: uuid.UUID, dep_name: str, tag: str, n: int, gap: float
) -> None:
    started: list[str] = []

    def scheduled(answer: httpx.Response) -> None:
        assert answer.status_code == 202, answer.text
        started.extend(s["flow_run_id"] for s in answer.json()["started"])

    def accepted(answer: httpx.Response) -> None:
        assert answer.status_code == 202, answer.text

    api = os.environ["PREFECT_API_URL"]
    print(f"Prefect API {api}; {n} requests each, {gap * 1000:.0f} ms apart\n")
    one = [service(f"bench-{tag}")]
    with serving(create_app(one, WebhookSecrets({"github": SECRET}), PrefectRunStarter(dep_name))) as url:
        ours = report("ecs-pipeline webhook, 1 service", time_posts(url, n, scheduled, gap))
    three = [service(f"bench-{tag}-{i}") for i in range(3)]
    with serving(create_app(three, WebhookSecrets({"github": SECRET}), PrefectRunStarter(dep_name))) as url:
        report("ecs-pipeline webhook, 3 services", time_posts(url, n, scheduled, gap))
    with serving(bare_app()) as url:
        bare = report("peer: bare Starlette, HMAC check only", time_posts(url, n, accepted, gap))
    floor = report(
        "peer: one create_flow_run_from_deployment", time_api_floor(client, dep_id, n, gap)
    )

    states = {client.read_flow_run(uuid.UUID(i)).state_type for i in started[-5:]}
    print(f"\nlast runs answered are {', '.join(sorted(str(s.value) for s in states if s))}")
    print(f"ratio webhook / bare HMAC handler:   {ours / bare:6.1f}x")
    print(f"ratio webhook / one API create call: {ours / floor:6.2f}x")


if __name__ == "__main__":
    main()
