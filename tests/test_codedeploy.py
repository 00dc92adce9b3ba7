"""strategy: codedeploy end to end: the real flow drives a CodeDeploy deployment group in the sandbox.

Each test seeds its own CODE_DEPLOY service (serving the "seed" release), its
CodeDeploy application and blue/green deployment group, listeners and 5xx
alarm, then releases a commit with deploy-service.
"""

from __future__ import annotations

import shutil
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest

from flows.pipeline import deploy_service
from harness.faults import event_payloads
from harness.services import HTTP, ROOT, ServiceUnderTest, aws, edit_config, make_service, seed_serving, set_checks
from tasks.config import appspec as appspec_mod
from tasks.config.models import appspec_for
from tasks.release.outcome import outcome_of
from tests.test_pipeline import release_artifact


def deploy(name: str) -> Any:
    return deploy_service(name, return_state=True)


def use_appspec(sut: ServiceUnderTest, source: Path) -> None:
    """Point strategy.appspec at a copy of ``source`` next to the service's taskdef.json."""
    shutil.copy(source, sut.yaml_path.parent / sut.name / "appspec.yml")
    edit_config(sut, lambda c: c["strategy"].__setitem__("appspec", f"{sut.name}/appspec.yml"))




def deployments(sut: ServiceUnderTest) -> list[dict[str, Any]]:
    """The group's deployments (pipeline-made and CodeDeploy's rollbacks), oldest first."""
    cfg, cd = sut.cfg, aws("codedeploy")
    ids = cd.list_deployments(
        applicationName=cfg.codedeploy_application, deploymentGroupName=cfg.codedeploy_group
    )["deployments"]
    infos = [cd.get_deployment(deploymentId=i)["deploymentInfo"] for i in ids]
    return sorted(infos, key=lambda i: str(i.get("createTime")))


def serving(sut: ServiceUnderTest) -> list[tuple[str, str]]:
    """(task set ARN, task definition) of every task set of the service."""
    return [(ts["taskSetArn"], ts["taskDefinition"]) for ts in sut.task_sets()]


def settled(sut: ServiceUnderTest, count: int = 1, seconds: float = 30) -> list[tuple[str, str]]:
    """``serving`` once COUNT task sets are left: CodeDeploy removes the other one only after the last
    listener change has propagated (ELB documents it as eventual), so that is waited for, bounded."""
    deadline = time.monotonic() + seconds
    while len(found := serving(sut)) > count and time.monotonic() < deadline:
        time.sleep(0.2)
    return found


@contextmanager
def watching(sut: ServiceUnderTest) -> Iterator[list[str]]:
    """Production's answers to GET / while the block runs (tens of requests a second)."""
    seen: list[str] = []
    stop = threading.Event()

    def hammer() -> None:
        while not stop.is_set():
            try:
                resp = sut.get("/")
                seen.append(f"{resp.status_code} {resp.text.strip()}")
            except Exception as exc:  # noqa: BLE001 - a refused request is an answer too
                seen.append(type(exc).__name__)
            stop.wait(0.02)  # about 40 a second: enough for the alarm, light on a busy machine

    thread = threading.Thread(target=hammer, daemon=True)
    thread.start()
    try:
        yield seen
    finally:
        stop.set()
        thread.join(10)


@pytest.fixture
def deployments_dir(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Path:
    monkeypatch.setenv("ECS_PIPELINE_DEPLOYMENTS", str(tmp_path / "deployments"))
    monkeypatch.setenv("ECS_PIPELINE_ARTIFACTS_DIR", str(tmp_path / "artifacts"))
    return tmp_path


def test_canary_release_succeeds_and_removes_the_original(deployments_dir: Path) -> None:
    sut = make_service(
        deployments_dir, strategy="codedeploy", traffic={"type": "canary", "percent": 50, "interval_seconds": 60}
    )
    use_appspec(sut, ROOT / "deployments" / "sample-app" / "appspec.yml")
    seed_serving(sut)
    with watching(sut) as seen:
        state = deploy(sut.name)
    assert outcome_of(state) == "Deployed", state.message
    assert state.message == f"Deployed: {sut.name}@{state.result()['sha'][:7]} serves 100% of production"
    assert all("sample-app v1" in sut.get("/").text for _ in range(5))
    assert {"200 sample-app seed: hello from ecs-pipeline", "200 sample-app v1: hello from ecs-pipeline"} <= set(seen)
    assert seen[-1].startswith("200 sample-app v1"), "no going back once production moved"
    live_td = state.result()["task_definition"]
    assert settled(sut) == [(sut.task_sets()[0]["taskSetArn"], live_td)], "original task set removed"
    assert sut.task_sets()[0]["status"] == "PRIMARY"
    (dep,) = deployments(sut)
    assert dep["status"] == "Succeeded"
    assert dep["deploymentConfigName"] == "EcsPipeline.ECSCanary50Percent1Minutes"
    # GetDeployment never returns the appspec ("always null" on AWS); its sha256 names the one rendered for live_td
    rendered = appspec_mod.appspec_content(appspec_for(sut.cfg, live_td))
    assert dep["revision"]["appSpecContent"].get("content") is None
    assert dep["revision"]["appSpecContent"]["sha256"] == appspec_mod.content_sha256(rendered)
    # What a person sees: every CodeDeploy stage timed, and the deployment, with no link to an AWS console that
    # has no such deployment (the sandbox's endpoint is not AWS's).
    summary = release_artifact(sut.name)
    assert f"CodeDeploy deployment `{dep['deploymentId']}`" in summary
    assert "console.aws.amazon.com" not in summary
    stages = ("codedeploy create", "wait ready", "verify", "continue to production", "watch shift", "bake", "finish")
    for stage in stages:
        assert f"| {stage} |" in summary
    green = sut.task_sets()[0]["loadBalancers"][0]["targetGroupArn"].split("/")[1]  # targetgroup/<name>/<id>
    assert f"| Production traffic | 100% green [{green}] |" in summary
    shifted = event_payloads(sut.name, "traffic-shifted")
    assert shifted and all(e["target_group"] == green for e in shifted), "each shift names green's target group"
    assert outcome_of(deploy(sut.name)) == "No change"


def test_a_deployment_in_progress_for_another_revision_blocks_the_release(deployments_dir: Path) -> None:
    sut = make_service(deployments_dir, strategy="codedeploy", green_timeout=3)
    seed_serving(sut)
    cfg, cd = sut.cfg, aws("codedeploy")
    other_td = sut.seeded["task_definition_arn"]
    appspec = (ROOT / "deployments" / "sample-app" / "appspec.yml").read_text()
    other = cd.create_deployment(
        applicationName=cfg.codedeploy_application,
        deploymentGroupName=cfg.codedeploy_group,
        revision={"revisionType": "AppSpecContent",
                  "appSpecContent": {"content": appspec.replace("<TASK_DEFINITION>", other_td)}},
    )["deploymentId"]
    state = deploy(sut.name)
    assert state.is_failed() and outcome_of(state) != "Rolled back", state.message
    assert f"deployment {other} ({other_td}) is still " in (state.message or "")
    assert "blocks this release; let it finish or stop it" in (state.message or "")
    assert [d["deploymentId"] for d in deployments(sut)] == [other], "no second deployment raced it"
    assert cd.get_deployment(deploymentId=other)["deploymentInfo"]["status"] not in ("Stopped", "Failed")


def test_failed_test_listener_check_stops_before_production_moves(deployments_dir: Path) -> None:
    sut = make_service(deployments_dir, strategy="codedeploy")
    # Three failing checks stay under the 5xx alarm (5 a minute), so the pipeline stops it.
    set_checks(sut, attempts=3)
    seed_serving(sut)
    original = serving(sut)
    sut.commit("v2-broken", broken="root")
    with watching(sut) as seen:
        state = deploy(sut.name)
    assert state.is_failed() and outcome_of(state) == "Rolled back", state.message
    message = state.message or ""
    # Either our StopDeployment after the failed check, or CodeDeploy's own stop on the
    # 5xx alarm those checks feed, ends it; both reasons are in the message when both happened.
    assert "GET / failed verification: returned 500 on 3 of 3 checks" in message, message
    (dep,) = deployments(sut)[:1]
    assert dep["status"] == "Stopped" and dep["rollbackInfo"]["rollbackDeploymentId"]
    assert f"CodeDeploy deployment {dep['deploymentId']} Stopped: " in message, message
    assert seen and not any("v2" in s for s in seen), "production never answered the new release"
    # StopDeployment left the original task set serving, alone (once the stopped one is removed).
    assert settled(sut) == original and sut.task_sets()[0]["status"] == "PRIMARY"
    assert all("sample-app seed" in sut.get("/").text for _ in range(5))
    assert "sample-app seed" in httpx_get(sut.test_url + "/"), "test listener back on the original"


def httpx_get(url: str) -> str:

    return HTTP.get(url, timeout=5).text


def test_alarm_during_the_canary_rolls_back(deployments_dir: Path) -> None:
    sut = make_service(
        deployments_dir,
        strategy="codedeploy",
        traffic={"type": "canary", "percent": 50, "interval_seconds": 3600},
        verify_paths=("/health",),
    )
    seed_serving(sut)
    original = serving(sut)
    sut.commit("v2-500", broken="root")  # / answers 500, /health is fine
    with watching(sut) as seen:
        state = deploy(sut.name)
    assert outcome_of(state) == "Rolled back", state.message
    assert f"{sut.name}-5xx" in (state.message or "")
    # CodeDeploy stops on the alarm, or our watch sees it first and stops the deployment:
    # either way the alarm is the reason given.
    message = state.message or ""
    assert ("One or more alarms have been activated" in message
            or "alarm in ALARM during the traffic shift" in message), message
    assert any(s.startswith("500") for s in seen), "the canary did take production traffic"
    (dep,) = deployments(sut)[:1]
    assert dep["status"] == "Stopped"
    assert settled(sut) == original
    assert all("sample-app seed" in sut.get("/").text for _ in range(10))
