"""strategy: ecs-native end to end: ECS moves the listener rules, the pipeline verifies at the pause."""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest

from flows.pipeline import deploy_service
from harness.services import ServiceUnderTest, aws, edit_config, make_service, seed_serving, set_traffic
from sandbox.seed_native import TRUST_ECS
from tasks.release.outcome import outcome_of
from tests.test_codedeploy import watching


def native(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, traffic: dict[str, Any]) -> ServiceUnderTest:
    monkeypatch.setenv("ECS_PIPELINE_DEPLOYMENTS", str(tmp_path / "deployments"))
    monkeypatch.setenv("ECS_PIPELINE_ARTIFACTS_DIR", str(tmp_path / "artifacts"))
    sut = make_service(tmp_path, strategy="ecs-native", traffic=traffic, bake_seconds=60)
    seed_serving(sut)
    return sut


def deployments(sut: ServiceUnderTest) -> list[dict[str, Any]]:
    cfg, ecs = sut.cfg, aws("ecs")
    arns = [d["serviceDeploymentArn"] for d in ecs.list_service_deployments(
        cluster=cfg.ecs.cluster, service=cfg.ecs.service)["serviceDeployments"]]
    return list(ecs.describe_service_deployments(serviceDeploymentArns=arns)["serviceDeployments"])


@contextmanager
def weights(sut: ServiceUnderTest) -> Iterator[list[float]]:
    """Green's production weight of the newest service deployment started inside the block, each time it changes."""
    seen: list[float] = []
    stop = threading.Event()
    before = {d["serviceDeploymentArn"] for d in deployments(sut)}

    def look() -> None:
        ecs, cfg = aws("ecs"), sut.cfg
        while not stop.is_set():
            listed = ecs.list_service_deployments(cluster=cfg.ecs.cluster, service=cfg.ecs.service)
            arns = [d["serviceDeploymentArn"] for d in listed["serviceDeployments"]]
            if arns and arns[0] not in before:  # the newest only: one describe a look
                newest = ecs.describe_service_deployments(serviceDeploymentArns=arns[:1])["serviceDeployments"][0]
                weight = newest["targetServiceRevision"]["requestedProductionTrafficWeight"]
                if not seen or seen[-1] != weight:
                    seen.append(weight)
            stop.wait(0.1)

    thread = threading.Thread(target=look, daemon=True)
    thread.start()
    try:
        yield seen
    finally:
        stop.set()
        thread.join(10)


STEPS = [
    ({"type": "all-at-once"}, [100.0]),
    ({"type": "canary", "percent": 20, "interval_seconds": 180}, [20.0, 100.0]),
    ({"type": "linear", "percent": 50, "interval_seconds": 180}, [50.0, 100.0]),
]


def test_releases_move_production_by_the_configured_steps(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Three releases of one service, one per traffic shape: one service and seed instead of three.

    A step's bake is 3 AWS minutes (3 s at the sandbox's time scale): many looks at the weights, even on a busy
    machine.
    """
    sut = native(tmp_path, monkeypatch, STEPS[0][0])
    for version, (traffic, steps) in enumerate(STEPS, start=2):
        set_traffic(sut, traffic)
        sut.commit(f"v{version}")
        with watching(sut) as seen, weights(sut) as moved:
            state = deploy_service(sut.name, return_state=True)
        assert outcome_of(state) == "Deployed", (traffic, state.message)
        newest = deployments(sut)[0]
        assert (newest["status"], newest["lifecycleStage"]) == ("SUCCESSFUL", "CLEAN_UP")
        assert newest["deploymentConfiguration"]["strategy"] == {"all-at-once": "BLUE_GREEN"}.get(
            traffic["type"], traffic["type"].upper())
        assert [w for w in moved if w] == steps, traffic
        assert all(f"sample-app v{version}" in sut.get("/").text for _ in range(5))
        assert seen and all(s.startswith("200 ") for s in seen), f"a failed production request during {traffic}"


def test_failed_verification_at_the_pause_rolls_back_before_production(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    sut = native(tmp_path, monkeypatch, {"type": "canary", "percent": 20, "interval_seconds": 60})
    sut.commit("v2-500", broken="root")  # healthy for the load balancer, / answers 500
    with watching(sut) as seen, weights(sut) as moved:
        state = deploy_service(sut.name, return_state=True)
    assert outcome_of(state) == "Rolled back", state.message
    message = state.message or ""
    # the checks' 500s through the test listener may trip the 5xx alarm first: ECS rolls back on it too
    assert message.startswith("Rolled back: GET / failed verification: returned 500") or "-5xx" in message, message
    assert "; ECS: Service deployment rolled back because " in message  # ECS's own words follow
    newest = deployments(sut)[0]
    assert newest["status"] == "ROLLBACK_SUCCESSFUL"
    assert [w for w in moved if w] == [], "production never on green"
    assert seen and all(s == "200 sample-app seed: hello from ecs-pipeline" for s in seen)


def test_stop_from_outside_is_reported_and_a_rerun_resumes(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    sut = native(tmp_path, monkeypatch, {"type": "all-at-once"})
    sut.commit("v2")
    cfg = sut.cfg
    stopper = threading.Thread(target=stop_at_pause, args=(sut,), daemon=True)
    stopper.start()
    state = deploy_service(sut.name, return_state=True)
    stopper.join(60)
    assert outcome_of(state) == "Rolled back", state.message
    assert "StopServiceDeployment" in (state.message or "")
    before = len(sut.revisions())
    again = deploy_service(sut.name, return_state=True)
    assert outcome_of(again) == "Deployed", again.message
    assert len(sut.revisions()) == before, "the rerun registered no new revision"
    newest = deployments(sut)
    assert newest[0]["status"] == "SUCCESSFUL" and len(newest) == 3  # seed, stopped, the rerun's
    assert cfg.ecs.service


def stop_at_pause(sut: ServiceUnderTest) -> None:
    """An operator stops the service deployment while it waits at the verification pause."""
    import time

    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        deps = deployments(sut)
        if len(deps) > 1 and any(h["status"] == "AWAITING_ACTION" for h in deps[0].get("lifecycleHookDetails", [])):
            aws("ecs").stop_service_deployment(serviceDeploymentArn=deps[0]["serviceDeploymentArn"],
                                               stopType="ROLLBACK")
            return
        time.sleep(0.05)


def test_migrate_a_codedeploy_service_dry_run_then_apply(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    from flows.cli import main
    from flows.migrate import MIGRATE_SCHEMA, migrate, migration_lines
    from tests.test_status_all import schema_errors

    monkeypatch.setenv("ECS_PIPELINE_DEPLOYMENTS", str(tmp_path / "deployments"))
    from tasks.core.errors import ConfigError

    sut = make_service(tmp_path, strategy="codedeploy")
    seed_serving(sut)
    cfg, ecs, elbv2 = sut.cfg, aws("ecs"), aws("elbv2")
    role = f"{sut.name}-ecs-infrastructure"
    edit_config(sut, lambda c: c["strategy"].__setitem__("infrastructure_role", role))
    with pytest.raises(ConfigError, match=f"IAM has no role {role}"):  # checked before anything changes
        migrate(sut.name, "ecs-native", apply=True)
    aws("iam").create_role(RoleName=role, AssumeRolePolicyDocument=json.dumps(TRUST_ECS))
    rules_before = {arn: len(elbv2.describe_rules(ListenerArn=arn)["Rules"]) for arn in listener_arns(sut)}
    lines = migration_lines(migrate(sut.name, "ecs-native", apply=False))
    assert lines[-1].startswith("dry run: nothing changed")
    assert sum("create a rule forwarding to both target groups" in line for line in lines) == 2
    capsys.readouterr()
    assert main(["migrate", sut.name, "--json"]) == 0
    planned = json.loads(capsys.readouterr().out)  # the environment lines went to stderr
    assert schema_errors(planned, MIGRATE_SCHEMA) == [], planned
    assert not planned["applied"] and planned["service_deployment"] is None
    assert [(r["use"], r["rule"], r["created"]) for r in planned["listener_rules"]] == [
        ("production", None, True), ("test", None, True)], "a dry run names the rules it would create"
    svc = ecs.describe_services(cluster=cfg.ecs.cluster, services=[cfg.ecs.service])["services"][0]
    assert svc["deploymentController"]["type"] == "CODE_DEPLOY"
    assert {arn: len(elbv2.describe_rules(ListenerArn=arn)["Rules"]) for arn in listener_arns(sut)} == rules_before
    with watching(sut) as seen:
        assert main(["migrate", sut.name, "--apply", "--json"]) == 0
    done = json.loads(capsys.readouterr().out)
    assert schema_errors(done, MIGRATE_SCHEMA) == [], done
    assert done["applied"] and done["service_deployment"].startswith("arn:") and done["finished_at"]
    svc = ecs.describe_services(cluster=cfg.ecs.cluster, services=[cfg.ecs.service])["services"][0]
    assert svc["deploymentController"]["type"] == "ECS"
    assert svc["deploymentConfiguration"]["strategy"] == "BLUE_GREEN"
    adv = svc["loadBalancers"][0]["advancedConfiguration"]
    assert adv["roleArn"].endswith(f":role/{role}") and done["role_arn"] == adv["roleArn"]
    assert [r["rule"] for r in done["listener_rules"]] == [adv["productionListenerRule"], adv["testListenerRule"]]
    assert (done["production_target_group"], done["alternate_target_group"]) == (
        svc["loadBalancers"][0]["targetGroupArn"], adv["alternateTargetGroupArn"])
    groups = {svc["loadBalancers"][0]["targetGroupArn"], adv["alternateTargetGroupArn"]}
    for key, listener in zip(("productionListenerRule", "testListenerRule"), listener_arns(sut), strict=True):
        rule = next(r for r in elbv2.describe_rules(ListenerArn=listener)["Rules"] if r["RuleArn"] == adv[key])
        assert not rule["IsDefault"] and {g["TargetGroupArn"] for g in rule["Actions"][0]["ForwardConfig"][
            "TargetGroups"]} == groups, "the rule ECS moves holds both target groups"
    assert seen and all(s == "200 sample-app seed: hello from ecs-pipeline" for s in seen)


def listener_arns(sut: ServiceUnderTest) -> list[str]:
    """The production and the test listener's ARNs."""
    elbv2, lb = aws("elbv2"), sut.cfg.load_balancer
    assert lb is not None
    found = elbv2.describe_load_balancers(Names=[lb.production_listener.load_balancer])["LoadBalancers"][0]
    by_port = {x["Port"]: x["ListenerArn"] for x in elbv2.describe_listeners(
        LoadBalancerArn=found["LoadBalancerArn"])["Listeners"]}
    return [by_port[lb.production_listener.port], by_port[lb.test_listener.port]]
