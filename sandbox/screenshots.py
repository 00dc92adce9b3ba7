"""`make screenshots`: the key Prefect UI pages of a demo run, rendered by Debian's Chromium, headless.

Playwright drives the system browser (``executable_path``; it downloads none)
against the sandbox's Prefect server after ``make demo``, and writes
docs/screenshots/*.png: the release graph of the last deployed release, the
rolled-back release, its summary artifact, the live view, the fleet view, the
canary analysis that rolled back the slow v5, the
failed build's summary, the deployment page listing every release, the Runs page
(all runs, and with the UI's "Failed" state filter), and the rolled-back event.
"""

from __future__ import annotations

import base64
import os
import shutil
import sys
import time
from pathlib import Path
from typing import Any

from sandbox import manage

OUT = Path(__file__).resolve().parents[1] / "docs" / "screenshots"
SERVICE = os.environ.get("SCREENSHOTS_SERVICE") or "sample-app"  # another service's runs: set it


def browser_path() -> str:
    for name in ("chromium", "chromium-browser"):
        found = shutil.which(name)
        if found:
            return found
    raise SystemExit("no chromium: apt-get install chromium (make screenshots does)")


def signed_in_page(browser: Any, viewport: dict[str, int]) -> Any:
    """A new page of BROWSER signed in to the UI as its sign-in page does: the API's basic-auth string, base64."""
    page = browser.new_page(viewport=viewport)
    auth = os.environ.get("PREFECT_API_AUTH_STRING")
    if auth:
        token = base64.b64encode(auth.encode()).decode()
        page.add_init_script(f"window.localStorage.setItem('prefect-password', '{token}')")
    return page


def pages(ui: str) -> list[tuple[str, str]]:
    """(file name, URL) of each page worth a picture, found through the API; ``#Tab`` opens that tab."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterKey, FlowRunFilter, FlowRunFilterTags
    from prefect.client.schemas.sorting import ArtifactSort, FlowRunSort

    def latest_run(client: Any, tag: str) -> Any:
        runs = client.read_flow_runs(
            flow_run_filter=FlowRunFilter(tags=FlowRunFilterTags(all_=[f"service:{SERVICE}", tag])),
            sort=FlowRunSort.START_TIME_DESC, limit=1,
        )
        if not runs:
            raise SystemExit(f"no {SERVICE} run tagged {tag}: run `make demo` first")
        return runs[0]

    def latest_artifact(client: Any, key: str) -> Any:
        found = client.read_artifacts(
            artifact_filter=ArtifactFilter(key=ArtifactFilterKey(any_=[key])), sort=ArtifactSort.CREATED_DESC, limit=1
        )
        if not found:
            raise SystemExit(f"no {key} artifact: run `make demo` first")
        return found[0]

    with get_client(sync_client=True) as client:
        deployed = latest_run(client, "verdict:deployed")
        rolled_back = latest_run(client, "verdict:rolled-back")
        summary = client.read_artifacts(
            artifact_filter=ArtifactFilter(key=ArtifactFilterKey(any_=[f"{SERVICE}-release"])),
            sort=ArtifactSort.CREATED_DESC,
        )
        summary_id = next((a.id for a in summary if a.flow_run_id == rolled_back.id), summary[0].id)
        live = latest_artifact(client, f"{SERVICE}-live")
        fleet = latest_artifact(client, "fleet-live")
        analysis = latest_artifact(client, "sample-app-analysis-analysis")  # v5's judgement, green against blue
        build_failed = latest_run(client, "verdict:build-failed")
        failed_summary = next((a.id for a in summary if a.flow_run_id == build_failed.id), summary[0].id)
        deployment = client.read_deployment_by_name("deploy-service/deploy-service")
    return [
        ("release-graph", f"{ui}/runs/flow-run/{deployed.id}"),
        ("rolled-back-release", f"{ui}/runs/flow-run/{rolled_back.id}#Details"),  # its state message
        ("release-summary", f"{ui}/artifacts/artifact/{summary_id}"),
        ("live-view", f"{ui}/artifacts/artifact/{live.id}"),
        ("fleet-view", f"{ui}/artifacts/artifact/{fleet.id}"),
        ("canary-analysis", f"{ui}/artifacts/artifact/{analysis.id}"),  # the step that failed: p95 on green
        ("build-failure", f"{ui}/artifacts/artifact/{failed_summary}"),  # the failing test in the first screen
        ("deployment-runs", f"{ui}/deployments/deployment/{deployment.id}"),
        ("failed-runs", f"{ui}/runs?state=Failed"),  # the URL the UI makes when "Failed" is picked
        ("runs", f"{ui}/runs"),  # every run, its verdict at the end of its name
        ("rolled-back-event", rolled_back_event(ui)),
    ]


def rolled_back_event(ui: str) -> str:
    """The page of the last ``ecs-pipeline.deploy.rolled-back`` event of the service."""
    import httpx

    wanted = {"event": {"name": ["ecs-pipeline.deploy.rolled-back"]},
              "resource": {"id": [f"ecs-pipeline.service.{SERVICE}"]}}
    user, _, password = (os.environ.get("PREFECT_API_AUTH_STRING") or ":").partition(":")  # the API's basic auth
    found = httpx.post(f"{ui}/api/events/filter", json={"filter": wanted, "limit": 1}, timeout=30,
                       auth=(user, password) if password else None).json()["events"]
    if not found:
        raise SystemExit(f"no rolled-back event of {SERVICE}: run `make demo` first")
    return f"{ui}/events/event/{found[0]['occurred'][:10]}/{found[0]['id']}"


def main() -> int:
    os.environ.update(manage.load_env())
    from playwright.sync_api import sync_playwright

    ui = os.environ["PREFECT_API_URL"].removesuffix("/api")
    OUT.mkdir(parents=True, exist_ok=True)
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=browser_path(), headless=True, args=["--no-sandbox"])
        page = signed_in_page(browser, {"width": 1440, "height": 960})
        for name, target in pages(ui):
            url, _, tab = target.partition("#")
            page.goto(url, wait_until="networkidle", timeout=60_000)
            if tab:
                page.locator("[role=tab], .p-tab", has_text=tab).first.click()
            time.sleep(3)  # the graph and markdown render after the data arrives
            path = OUT / f"{name}.png"
            page.screenshot(path=str(path))
            print(f"{path} <- {url}", flush=True)
        browser.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
