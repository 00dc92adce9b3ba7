"""What the failure tests share: production load, sandbox faults and weather, a release in a process to kill.

Everything goes through the sandbox's HTTP endpoints (faults, request log) and
AWS's own APIs; nothing here reaches into the pipeline.
"""

from __future__ import annotations

import base64
import os
import signal
import subprocess
import sys
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any
from uuid import UUID

import httpx
from prefect.client.orchestration import get_client
from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterName

from harness.services import HTTP, ROOT, ServiceUnderTest, aws

PIPELINE_AGENT = "ecs-pipeline"  # the User-Agent part of every pipeline boto3 client


def control(method: str, path: str, body: dict[str, Any] | None = None) -> dict[str, Any]:
    url = f"{os.environ['AWS_ENDPOINT_URL']}{path}"
    resp = HTTP.request(method, url, json=body, timeout=10)
    resp.raise_for_status()
    return dict(resp.json())


def add_fault(**spec: Any) -> None:
    control("POST", "/_sandbox/faults", spec)


def clear_faults(name: str) -> None:
    control("DELETE", f"/_sandbox/faults?name={name}")


@contextmanager
def weather(name: str, seed: int, rate: float = 0.3) -> Iterator[None]:
    """A share of the pipeline's AWS calls answered 2:1 throttling : HTTP 500 (20 % + 10 % at 0.3)."""
    add_fault(name=name, rate=rate, seed=seed, codes=["throttling", "500"], weights={"throttling": 2, "500": 1},
              agent=PIPELINE_AGENT)
    try:
        yield
    finally:
        clear_faults(name)


def weather_hits(name: str) -> int:
    found = [f for f in control("GET", "/_sandbox/faults")["faults"] if f.get("name") == name]
    return int(found[0].get("hits", 0)) if found else 0


def last_request() -> int:
    return int(control("GET", "/_sandbox/requests?since=0")["last"])


def calls_since(seq: int, match: str | None = None) -> Counter[str]:
    """Operation → how many AWS calls the sandbox answered after ``seq`` (only those naming ``match``)."""
    query = f"/_sandbox/requests?since={seq}" + (f"&match={match}" if match else "")
    return Counter(r["operation"] for r in control("GET", query)["requests"])


class Load:
    """Steady GETs on production: how many failed, and which versions answered."""

    def __init__(self, sut: ServiceUnderTest, pause: float = 0.03) -> None:
        self.url, self.pause = sut.prod_url + "/", pause
        self.ok = 0
        self.failed: list[str] = []
        self.versions: Counter[str] = Counter()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        with httpx.Client(timeout=5) as client:
            while not self._stop.is_set():
                try:
                    resp = client.get(self.url)
                    if resp.status_code == 200:
                        self.ok += 1
                        self.versions[version_of(resp.text)] += 1
                    else:
                        self.failed.append(f"{resp.status_code} {resp.text.strip()[:80]}")
                except httpx.HTTPError as exc:
                    self.failed.append(type(exc).__name__)
                self._stop.wait(self.pause)

    def __enter__(self) -> Load:
        self._thread.start()
        return self

    def __exit__(self, *_: object) -> None:
        self._stop.set()
        self._thread.join(10)


def version_of(body: str) -> str:
    """'v2' from 'sample-app v2: hello from ecs-pipeline'."""
    return body.split(":", 1)[0].removeprefix("sample-app ").strip()


def serving_versions(sut: ServiceUnderTest, n: int = 10) -> set[str]:
    return {version_of(sut.get("/").text) for _ in range(n)}


def image_count(sut: ServiceUnderTest) -> int:
    """Images in the service's ECR repository, as ECR's API lists them."""
    return len(aws("ecr").describe_images(repositoryName=sut.cfg.ecr.repository)["imageDetails"])


def wait_until(check: Callable[[], Any], timeout: float, what: str, interval: float = 0.1) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        got = check()
        if got:
            return got
        if time.monotonic() > deadline:
            raise AssertionError(f"gave up after {timeout:.0f}s waiting for {what}")
        time.sleep(interval)


def green_weight(sut: ServiceUnderTest) -> int:
    """Production's share on the target group that is not the primary task set's."""
    sets = sut.task_sets()
    primary_tg = next((ts["loadBalancers"][0]["targetGroupArn"] for ts in sets if ts["status"] == "PRIMARY"), None)
    listener = production_listener(sut)
    groups = listener["DefaultActions"][0].get("ForwardConfig", {}).get("TargetGroups", [])
    total = sum(int(g.get("Weight", 0)) for g in groups) or 1
    return sum(round(100 * int(g.get("Weight", 0)) / total) for g in groups if g["TargetGroupArn"] != primary_tg)


def production_listener(sut: ServiceUnderTest) -> dict[str, Any]:
    elbv2, port = aws("elbv2"), int(sut.prod_url.rsplit(":", 1)[1])
    lb = elbv2.describe_load_balancers(Names=[f"{sut.name}-alb"])["LoadBalancers"][0]
    listeners = elbv2.describe_listeners(LoadBalancerArn=lb["LoadBalancerArn"])["Listeners"]
    return dict(next(x for x in listeners if x["Port"] == port))


class Released:
    """``python -m flows.cli deploy SERVICE`` in its own process, to be killed like a crashed worker."""

    def __init__(self, sut: ServiceUnderTest, log: Path, **env: str) -> None:
        self.sut = sut
        self.log = log
        environ = {**os.environ, "ECS_PIPELINE_DEPLOYMENTS": str(sut.yaml_path.parent), **env}
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "flows.cli", "deploy", sut.name], cwd=ROOT, env=environ,
            stdout=log.open("wb"), stderr=subprocess.STDOUT, start_new_session=True,
        )

    def kill(self) -> float:
        """SIGKILL to the release's process group (no rollback, no last words); the time it happened."""
        os.killpg(self.proc.pid, signal.SIGKILL)
        self.proc.wait(10)
        return time.monotonic()

    def output(self) -> str:
        return self.log.read_text(errors="replace")


def flow_runs(service: str) -> list[Any]:
    """The service's deploy-service runs, oldest first."""
    with get_client(sync_client=True) as client:
        runs = client.read_flow_runs(flow_run_filter=FlowRunFilter(name=FlowRunFilterName(like_=f"deploy {service}")))
    return sorted(runs, key=lambda r: r.created)


def run_state(run_id: UUID) -> Any:
    with get_client(sync_client=True) as client:
        return client.read_flow_run(run_id).state


def events(service: str) -> list[tuple[str, dict[str, Any]]]:
    """(name after ecs-pipeline.deploy., payload) of the service's events, as automations see them."""
    body = {"filter": {"any_resource": {"id": [f"ecs-pipeline.service.{service}"]},
                       "occurred": {"since": "2000-01-01T00:00:00Z"}}, "limit": 50}
    found = HTTP.post(f"{os.environ['PREFECT_API_URL']}/events/filter", json=body, timeout=10,
                       headers=prefect_api_headers()).json()["events"]
    return [(e["event"].removeprefix("ecs-pipeline.deploy."), e.get("payload") or {}) for e in found]


def event_payloads(service: str, name: str, timeout: float = 30) -> list[dict[str, Any]]:
    """Payloads of the service's NAME events, once at least one is stored.

    The server persists events in batches a few seconds after they are sent,
    so a run that has just ended may not have its last event stored yet.
    """
    return wait_until(lambda: [p for got, p in events(service) if got == name], timeout, f"a {name} event",
                      interval=0.5)


def cancel(run_id: UUID, why: str) -> None:
    """What the UI's Cancel and `prefect flow-run cancel` do: the run goes Cancelling."""
    from prefect.states import Cancelling

    with get_client(sync_client=True) as client:
        client.set_flow_run_state(run_id, Cancelling(message=why), force=True)


def prefect_api_headers() -> dict[str, str]:
    """The basic auth the sandbox's Prefect API asks for (PREFECT_API_AUTH_STRING), for plain HTTP calls."""
    auth = os.environ.get("PREFECT_API_AUTH_STRING")
    return {"Authorization": "Basic " + base64.b64encode(auth.encode()).decode()} if auth else {}
