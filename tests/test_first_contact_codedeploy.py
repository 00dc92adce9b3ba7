"""First contact with a real account, codedeploy: what the sandbox now plays as AWS does.

An appspec hook may hold its lifecycle event for up to an hour (the sandbox
models the hook's function as a delay); the release's waits are derived from
the service's own settings, so a slow hook is waited for. GetDeployment's
appspec content is always null, so a dead run's deployment is found by its
replacement task set's task definition and finished forward. One CODE_DEPLOY
service is shared by the module's tests (its seeding costs ~10 s).
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from flows.pipeline import deploy_service
from harness.faults import Released, control, wait_until
from harness.services import ServiceUnderTest, aws, edit_config, make_service, seed_serving
from tasks.release.outcome import outcome_of
from tests.test_pipeline import release_artifact

STALE = "5"
HOOK_MINUTES = 10  # rehearsal minutes: 10 s at the sandbox's time scale, twice the rollout_seconds set below


def deploy(name: str) -> Any:
    return deploy_service(name, return_state=True)


@pytest.fixture(scope="module")
def cd_service(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServiceUnderTest]:
    """A seeded CODE_DEPLOY service whose appspec hangs a hook on AfterAllowTestTraffic."""
    sut = make_service(tmp_path_factory.mktemp("first-contact-cd"), strategy="codedeploy")
    hook = f"{sut.name}-after-test-traffic"
    (sut.yaml_path.parent / sut.name / "appspec.yml").write_text(
        "version: 0.0\nResources:\n  - TargetService:\n      Type: AWS::ECS::Service\n      Properties:\n"
        "        TaskDefinition: <TASK_DEFINITION>\n        LoadBalancerInfo:\n"
        "          ContainerName: web\n          ContainerPort: 8080\n"
        f"Hooks:\n  - AfterAllowTestTraffic: arn:aws:lambda:us-east-1:123456789012:function:{hook}\n"
    )
    edit_config(sut, lambda c: c["strategy"].__setitem__("appspec", f"{sut.name}/appspec.yml"))
    seed_serving(sut)
    yield sut
    sut.cleanup()


@pytest.fixture
def service(cd_service: ServiceUnderTest, monkeypatch: pytest.MonkeyPatch) -> ServiceUnderTest:
    monkeypatch.setenv("ECS_PIPELINE_DEPLOYMENTS", str(cd_service.yaml_path.parent))
    monkeypatch.setenv("ECS_PIPELINE_LOCK_STALE_SECONDS", STALE)
    return cd_service


def hook_function(sut: ServiceUnderTest, seconds: float) -> None:
    """The AfterAllowTestTraffic hook's function reports Succeeded SECONDS (AWS time) after it is invoked."""
    control("POST", "/_sandbox/hooks", {"function": f"{sut.name}-after-test-traffic", "seconds": seconds,
                                        "status": "Succeeded"})


def group_deployments(sut: ServiceUnderTest) -> list[dict[str, Any]]:
    cfg, cd = sut.cfg, aws("codedeploy")
    ids = cd.list_deployments(applicationName=cfg.codedeploy_application,
                              deploymentGroupName=cfg.codedeploy_group)["deployments"]
    return [cd.get_deployment(deploymentId=i)["deploymentInfo"] for i in ids]


def lifecycle_event(sut: ServiceUnderTest, dep_id: str, name: str) -> dict[str, Any]:
    cfg, cd = sut.cfg, aws("codedeploy")
    target = cd.get_deployment_target(deploymentId=dep_id, targetId=f"{cfg.ecs.cluster}:{cfg.ecs.service}")
    events = target["deploymentTarget"]["ecsTarget"]["lifecycleEvents"]
    return dict(next(e for e in events if e["lifecycleEventName"] == name))


def test_a_slow_hook_is_waited_for(service: ServiceUnderTest) -> None:
    """The wait for Ready counts the appspec's hooks (an hour each by default) and the target group's
    health checks, not a fixed 360 s or the rollout timeout: a hook that takes 10 rehearsal minutes
    (twice this service's rollout_seconds of 5) holds the release, which then completes."""
    sut = service
    hook_function(sut, HOOK_MINUTES * 60)
    edit_config(sut, lambda c: c.setdefault("timeouts", {}).__setitem__("rollout_seconds", 5))
    state = deploy(sut.name)
    assert outcome_of(state) == "Deployed", state.message
    assert "v1" in sut.get("/").text
    (dep,) = [d for d in group_deployments(sut) if d.get("creator") != "codeDeployRollback"]
    assert dep["status"] == "Succeeded"
    event = lifecycle_event(sut, dep["deploymentId"], "AfterAllowTestTraffic")
    assert event["status"] == "Succeeded"
    held = (event["endTime"] - event["startTime"]).total_seconds()
    assert held >= HOOK_MINUTES * 0.9, f"the hook held its event {held:.1f}s"
    invoked = [i for i in control("GET", "/_sandbox/hooks")["invocations"] if i["DeploymentId"] == dep["deploymentId"]]
    assert [i["lifecycleEvent"] for i in invoked] == ["AfterAllowTestTraffic"]


def test_a_dead_runs_deployment_is_finished_forward(service: ServiceUnderTest, tmp_path: Path) -> None:
    """GetDeployment's appSpecContent.content is always null on AWS: the rerun finds the dead run's
    deployment in its termination wait by its replacement task set's task definition (the live one)
    and lets CodeDeploy finish it, instead of leaving blue up and calling the release done."""
    sut = service
    hook_function(sut, 0)
    cfg = sut.cfg
    aws("codedeploy").update_deployment_group(
        applicationName=cfg.codedeploy_application, currentDeploymentGroupName=cfg.codedeploy_group,
        blueGreenDeploymentConfiguration={
            "terminateBlueInstancesOnDeploymentSuccess": {"action": "TERMINATE", "terminationWaitTimeInMinutes": 60},
            "deploymentReadyOption": {"actionOnTimeout": "STOP_DEPLOYMENT", "waitTimeInMinutes": 30}})
    edit_config(sut, lambda c: c.__setitem__("bake_seconds", 3600))  # the bake outlasts the kill
    sut.commit("v2")
    before = {d["deploymentId"] for d in group_deployments(sut)}
    release = Released(sut, tmp_path / "killed.log", ECS_PIPELINE_LOCK_STALE_SECONDS=STALE)

    def in_termination_wait() -> str | None:
        for d in group_deployments(sut):
            if d["deploymentId"] not in before and d.get("instanceTerminationWaitTimeStarted"):
                return str(d["deploymentId"])
        return None

    dep_id = wait_until(in_termination_wait, 180, "the dead run's deployment in its termination wait")
    release.kill()
    info = aws("codedeploy").get_deployment(deploymentId=dep_id)["deploymentInfo"]
    assert info["status"] == "InProgress"
    assert info["revision"]["appSpecContent"].get("content") is None
    assert len(sut.task_sets()) == 2, "blue is kept through the termination wait"

    rerun = deploy(sut.name)
    assert outcome_of(rerun) == "Deployed", rerun.message
    assert aws("codedeploy").get_deployment(deploymentId=dep_id)["deploymentInfo"]["status"] == "Succeeded"
    assert len(sut.task_sets()) == 1, "CodeDeploy removed blue"
    assert "v2" in sut.get("/").text
    assert f"finished CodeDeploy deployment {dep_id} from its termination wait" in release_artifact(sut.name)
