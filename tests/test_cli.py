"""The lines a person sees from `ecs-pipeline`: deploy, --dry-run, status, render, diff, rollback.

Every command first says where its AWS calls and Prefect runs go; from a fresh
shell in the checkout that is the sandbox's, read from .sandbox/env before
Prefect is imported, unless the environment chose AWS itself.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest
from prefect import flow, get_client, tags
from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterTags

from flows.cli import load_sandbox_env, main
from flows.operations import DIFF_SCHEMA, ROLLBACK_SCHEMA, STATUS_ALL_SCHEMA, STATUS_ONE_SCHEMA, run_url
from harness.services import ServiceUnderTest, aws
from tests.test_status_all import schema_errors

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture
def service(new_service: Callable[..., ServiceUnderTest]) -> ServiceUnderTest:
    return new_service()


def run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str]:
    """Exit code and what the command printed after its environment lines (stdout, then stderr)."""
    code = main(list(argv))
    out = capsys.readouterr()
    header, err = out.err.splitlines()[:3], out.err.splitlines()[3:]
    assert header[0] == f"aws: {os.environ['AWS_ENDPOINT_URL']} (sandbox), time scale 60", out.err
    assert header[1] == f"prefect: {os.environ['PREFECT_API_URL']}", out.err
    assert header[2].startswith("env: using the sandbox ("), "the environment points at the sandbox: said quietly"
    return code, out.out + "".join(line + "\n" for line in err)


def test_dry_run_deploy_status_render_diff_and_rollback(
    service: ServiceUnderTest, capsys: pytest.CaptureFixture[str]
) -> None:
    sha1 = service.commit("v1b")
    code, out = run(capsys, "deploy", service.name, "--dry-run")
    assert code == 0
    assert f"release {sha1} (live: nothing)" in out
    assert "build + push: would run" in out
    assert "strategy task-sets: production 100%" in out
    assert service.task_sets() == [], "a dry run changes nothing"

    code, out = run(capsys, "deploy", service.name)
    assert (code, out.strip().splitlines()[-1].split(":")[0]) == (0, "Deployed"), out
    with get_client(sync_client=True) as client:  # the branch head was asked for: named and tagged once resolved
        [released] = client.read_flow_runs(
            flow_run_filter=FlowRunFilter(tags=FlowRunFilterTags(all_=[f"service:{service.name}"]))
        )
    assert released.name.startswith(f"deploy {service.name}@{sha1[:7]}"), released.name
    assert {f"sha:{sha1}", "trigger:cli", "verdict:deployed"} <= set(released.tags), released.tags
    # The command makes the run itself: its parameters read as the flow's own call would list them.
    assert released.parameters == {"service": service.name, "sha": None, "force": False, "allow_older": False,
                                   "task_definition": None}, released.parameters

    code, out = run(capsys, "deploy", service.name, "--dry-run")
    assert "no change: production already runs this commit" in out

    code, out = run(capsys, "status", service.name)
    assert code == 0
    assert f"live commit: {sha1}, since " in out and " ago)" in out, out
    assert f"production traffic: green [{service.name}-a] 100 %" in out, "the release's green, by target group"
    assert f"PRIMARY {service.name}:1 running 1 [{service.name}-a]" in out, out
    assert "drift from the last release: none" in out, "AWS serves what the release put live"
    [line] = [line for line in out.splitlines() if line.endswith(f"  Deployed  {run_url(released.id)}")]
    assert f"  {released.name}  " in line and " ago)  " in line, "when (local, how long ago), name, outcome, link"

    code, out = run(capsys, "status", service.name, "--json")
    one = json.loads(out)
    assert schema_errors(one, STATUS_ONE_SCHEMA) == [], one
    assert (one["live"]["sha"], one["running"], one["desired"]) == (sha1, 1, 1)
    assert one["traffic"] == [{"role": "green", "target_group": f"{service.name}-a", "weight": 100}]
    assert one["last_outcome"]["url"] == run_url(released.id) and one["release_in_flight"] is None
    assert one["drift"] == {"drifted": False, "detail": None}

    code, out = run(capsys, "render", service.name, "--image", "example/app:1")
    rendered = json.loads(out)
    assert rendered["family"] == service.name
    assert rendered["containerDefinitions"][0]["image"] == "example/app:1"

    code, out = run(capsys, "diff", service.name)
    assert out.strip() == "no differences", out
    code, out = run(capsys, "diff", service.name, "--image", "example/app:2", "--json", "--exit-code")
    diff = json.loads(out)
    assert code == 1 and schema_errors(diff, DIFF_SCHEMA) == [], diff
    assert (diff["task_definition"], diff["image"], diff["differs"]) == (f"{service.name}:1", "example/app:2", True)
    [change] = [c for c in diff["changes"] if c["path"].endswith(".image")]
    assert change["kind"] == "changed" and change["line"].endswith('-> "example/app:2"'), diff

    service.commit("v2")
    code, out = run(capsys, "deploy", service.name)
    assert code == 0, out
    assert "v2" in service.get("/").text

    code, out = run(capsys, "rollback", service.name, "--json")
    assert code == 0, out
    rolled = json.loads(out)
    assert schema_errors(rolled, ROLLBACK_SCHEMA) == [], rolled
    assert (rolled["outcome"], rolled["state"], rolled["production_restored"]) == ("Deployed", "COMPLETED", True)
    assert rolled["url"] == run_url(rolled["run_id"]), rolled
    assert "v1b" in service.get("/").text

    # Every service of the deployments folder (this one), in a table and as JSON.
    code, out = run(capsys, "status")
    [row] = [line for line in out.splitlines() if line.startswith(f"│ {service.name} ")]
    assert f" {sha1[:7]} (" in row and " task-sets " in row and " 1 of 1 " in row and " Deployed " in row, out
    assert f"green [{service.name}-a] 100 %" in row, "back on A by releasing v1b again: that release's green"
    code, out = run(capsys, "status", "--json")
    every = json.loads(out)
    assert schema_errors(every, STATUS_ALL_SCHEMA) == [], every
    assert [(s["service"], s["live"]["sha"], s["error"]) for s in every["services"]] == [(service.name, sha1, None)]
    assert [r["outcome"] for r in every["services"][0]["last_runs"][:2]] == ["Deployed", "Deployed"]
    assert every["services"][0]["drift"] == {"drifted": False, "detail": None}
    assert row.rstrip(" │").endswith("│ none"), "the drift column"

    # By hand, no release: v2's revision made the primary task set (scaled to nothing: no container starts).
    live = every["services"][0]["live"]["task_definition"].rsplit("/", 1)[-1]
    v2 = next(arn for arn in service.revisions() if not arn.endswith(f"/{live}"))
    ecs, cfg = aws("ecs"), service.cfg
    [primary] = [ts for ts in service.task_sets() if ts["status"] == "PRIMARY"]
    made = ecs.create_task_set(
        cluster=cfg.ecs.cluster, service=cfg.ecs.service, taskDefinition=v2, launchType="FARGATE",
        loadBalancers=primary["loadBalancers"], scale={"value": 0, "unit": "PERCENT"},
        **({"networkConfiguration": primary["networkConfiguration"]} if "networkConfiguration" in primary else {}),
    )["taskSet"]
    ecs.update_service_primary_task_set(cluster=cfg.ecs.cluster, service=cfg.ecs.service,
                                        primaryTaskSet=made["taskSetArn"])
    code, out = run(capsys, "status", service.name, "--json")
    drift = json.loads(out)["drift"]
    assert drift["drifted"], drift
    by_hand = v2.rsplit("/", 1)[-1]
    assert drift["detail"].startswith(f"live task definition {by_hand}, last release put {live} live"), drift
    code, out = run(capsys, "status")
    [row] = [line for line in out.splitlines() if line.startswith(f"│ {service.name} ")]
    assert "│ drifted: " in row, out


def test_unknown_service_is_a_clear_error(service: ServiceUnderTest, capsys: pytest.CaptureFixture[str]) -> None:
    code, out = run(capsys, "status", "no-such-service")
    assert code == 2
    assert "error: no service named 'no-such-service'" in out
    assert service.name in out, "the known services are listed"


def fresh_shell(tmp_path: Path, *argv: str, **env: str) -> tuple[int, list[str]]:
    """``env -i PATH=... HOME=...`` running the CLI from the checkout, as a person's new terminal does."""
    home = tmp_path / "home"
    home.mkdir(exist_ok=True)
    clean = {"PATH": os.environ["PATH"], "HOME": str(home), **env}
    sandbox_dir = os.environ.get("SANDBOX_DIR")
    if sandbox_dir and Path(sandbox_dir).resolve() != (ROOT / ".sandbox").resolve():
        clean["SANDBOX_DIR"] = sandbox_dir  # a test session on another sandbox
    done = subprocess.run(
        ["env", "-i", *(f"{k}={v}" for k, v in clean.items()), sys.executable, "-m", "flows.cli", *argv],
        cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, timeout=300, check=False,
    )
    return done.returncode, done.stdout.splitlines()


@flow(name="cli-environment-check")
def marker_run() -> str:
    return "recorded"


def test_a_fresh_shell_uses_the_sandbox_prefect_server(service: ServiceUnderTest, tmp_path: Path) -> None:
    with tags(f"service:{service.name}"):
        state = marker_run(return_state=True)
    run_id = str(state.state_details.flow_run_id)
    deployments = str(service.yaml_path.parent)
    code, lines = fresh_shell(tmp_path, "status", service.name, ECS_PIPELINE_DEPLOYMENTS=deployments)
    assert code == 0, lines
    assert lines[0] == f"aws: {os.environ['AWS_ENDPOINT_URL']} (sandbox), time scale 60", lines
    assert f"prefect: {os.environ['PREFECT_API_URL']}" in lines, lines
    assert not any("temporary server" in line for line in lines), lines
    assert any(line.startswith("env: using the sandbox (") for line in lines), lines
    assert any(run_id in line for line in lines), "the run recorded on the sandbox's server is listed"


@pytest.mark.parametrize(
    ("env", "reason"),
    [
        ({"AWS_ENDPOINT_URL": ""}, "AWS_ENDPOINT_URL is set in the environment"),
        ({"ECS_PIPELINE_NO_SANDBOX": "1"}, "ECS_PIPELINE_NO_SANDBOX is set"),
    ],
)
def test_a_chosen_real_account_keeps_the_sandbox_out(tmp_path: Path, env: dict[str, str], reason: str) -> None:
    deployments = str(ROOT / "deployments")
    code, lines = fresh_shell(
        tmp_path, "render", "sample-app", "--image", "example/app:1", ECS_PIPELINE_DEPLOYMENTS=deployments, **env
    )
    assert code == 0, lines
    assert lines[0] == "aws: AWS us-east-1", "real AWS, no endpoint and no time scale"
    env_line = next(line for line in lines if line.startswith("env: "))
    assert env_line.endswith(f"/env not read ({reason})"), lines
    assert not any(line.startswith("prefect: http://127.0.0.1") for line in lines), lines
    rendered = json.loads("\n".join(lines[lines.index(env_line) + 1:]))
    assert rendered["containerDefinitions"][0]["image"] == "example/app:1"


def test_the_env_file_fills_in_only_what_the_environment_leaves_unset(tmp_path: Path) -> None:
    (tmp_path / "env").write_text("AWS_ENDPOINT_URL=http://127.0.0.1:1\nPREFECT_API_URL=http://file\nAWS_REGION=x\n")
    environ = {"SANDBOX_DIR": str(tmp_path), "AWS_REGION": "eu-west-1"}
    assert load_sandbox_env(environ) == f"using the sandbox ({tmp_path / 'env'})"
    assert environ["AWS_REGION"] == "eu-west-1" and environ["PREFECT_API_URL"] == "http://file"
    for chosen in ({"AWS_ENDPOINT_URL": ""}, {"ECS_PIPELINE_NO_SANDBOX": "1"}):
        environ = {"SANDBOX_DIR": str(tmp_path), **chosen}
        assert "not read" in load_sandbox_env(environ)
        assert environ == {"SANDBOX_DIR": str(tmp_path), **chosen}, "nothing of the sandbox comes back"
    # After `. .sandbox/env` the environment already points at the sandbox: said as such, quietly.
    environ = {"SANDBOX_DIR": str(tmp_path), "AWS_ENDPOINT_URL": "http://127.0.0.1:1"}
    assert load_sandbox_env(environ) == f"using the sandbox ({tmp_path / 'env'})"
    assert environ["PREFECT_API_URL"] == "http://file", "what the shell did not export is filled in"
    environ = {"SANDBOX_DIR": str(tmp_path), "AWS_ENDPOINT_URL": "http://127.0.0.1:2"}
    assert load_sandbox_env(environ) == f"{tmp_path / 'env'} not read (AWS_ENDPOINT_URL is set in the environment)"
    assert "PREFECT_API_URL" not in environ


def test_serve_refuses_a_deployment_that_belongs_to_a_work_pool() -> None:
    """`prefect deploy --all` made deploy-service for the workers: serving it here would steal and crash its runs."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.actions import WorkPoolCreate

    from flows.pipeline import deploy_service

    pool = "serve-test-pool"
    with get_client(sync_client=True) as client:
        client.create_work_pool(WorkPoolCreate(name=pool, type="process"), overwrite=True)
        made = client.create_deployment(flow_id=client.create_flow(deploy_service), name="deploy-service",
                                        work_pool_name=pool, entrypoint="flows/pipeline.py:deploy_service")
        try:
            # A regression would serve forever: the timeout ends it and fails the test.
            done = subprocess.run([sys.executable, "-m", "flows.cli", "serve"], cwd=ROOT, capture_output=True,
                                  text=True, timeout=300, stdin=subprocess.DEVNULL)
            still = client.read_deployment(made)
        finally:
            client.delete_deployment(made)
            client.delete_work_pool(pool)
    assert done.returncode == 2, done.stderr[-2000:]
    assert "deployment deploy-service/deploy-service belongs to work pool 'serve-test-pool'" in done.stderr
    assert "prefect worker start --pool serve-test-pool" in done.stderr and "prefect deployment delete" in done.stderr
    assert still.work_pool_name == pool, "the workers' deployment is left as it was"


def test_only_aws_endpoint_url_chooses_where_aws_calls_go(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The printed `aws:` line is the truth: a service's own endpoint variable or a profile's is not used."""
    from tasks.aws.clients import shared_client
    from tasks.core.settings import Settings

    config = tmp_path / "aws-config"
    config.write_text("[default]\nendpoint_url = http://127.0.0.1:9\n")
    monkeypatch.setenv("AWS_CONFIG_FILE", str(config))
    monkeypatch.setenv("AWS_ENDPOINT_URL_ECS", "http://127.0.0.1:9")
    real = Settings(endpoint_url=None, region="eu-west-3")
    assert real.describe() == "AWS eu-west-3" and real.effective_time_scale == 1
    assert shared_client(real, "ecs").meta.endpoint_url == "https://ecs.eu-west-3.amazonaws.com"
    assert shared_client(real, "elbv2").meta.endpoint_url == "https://elasticloadbalancing.eu-west-3.amazonaws.com"
    sandbox = Settings(region="eu-west-3")
    assert shared_client(sandbox, "ecs").meta.endpoint_url == os.environ["AWS_ENDPOINT_URL"]


def test_no_sandbox_set_to_0_or_false_still_uses_the_sandbox(tmp_path: Path) -> None:
    """ECS_PIPELINE_NO_SANDBOX=0 reads as "no, do not keep the sandbox out": it never sends a run to real AWS."""
    (tmp_path / "env").write_text("AWS_ENDPOINT_URL=http://127.0.0.1:1\n")
    for off in ("0", "false", "No", " "):
        environ = {"SANDBOX_DIR": str(tmp_path), "ECS_PIPELINE_NO_SANDBOX": off}
        assert load_sandbox_env(environ) == f"using the sandbox ({tmp_path / 'env'})", off
        assert environ["AWS_ENDPOINT_URL"] == "http://127.0.0.1:1"
    for on in ("1", "true", "yes"):
        environ = {"SANDBOX_DIR": str(tmp_path), "ECS_PIPELINE_NO_SANDBOX": on}
        assert "not read" in load_sandbox_env(environ) and "AWS_ENDPOINT_URL" not in environ, on
