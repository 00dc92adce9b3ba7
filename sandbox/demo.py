"""The main job: three releases of the sample app on the sandbox, watched from the outside.

sandbox up → seed sample-app → serve deploy-service → release v1 → commit v2
and release it blue/green while a client sends steady requests to production →
commit a broken v3 and watch it roll back with v2 still serving → the same
commit through CodeDeploy and ECS-native → a slow v5 on a service with canary
analysis, rolled back because its p95 is worse than blue's → summary.
Every release is a flow run of the ``deploy-service`` deployment, so it shows
in the Prefect UI with its stages, artifacts and a Retry button.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Self

import httpx

from sandbox import manage
from sandbox.layout import layout

REPO_ROOT = Path(__file__).resolve().parents[1]
SERVICE_YAML = REPO_ROOT / "deployments" / "sample-app.yaml"
CODEDEPLOY_YAML = REPO_ROOT / "deployments" / "sample-app-cd.yaml"
NATIVE_YAML = REPO_ROOT / "deployments" / "sample-app-native.yaml"
ANALYSIS_YAML = REPO_ROOT / "deployments" / "sample-app-analysis.yaml"
SLOW_MS = 250  # v5 answers this much later than v2: its p95 is many times blue's


def say(msg: str) -> None:
    print(msg, flush=True)


def git(repo: Path, *args: str) -> str:
    cmd = ["git", "-c", "user.name=ecs-pipeline demo", "-c", "user.email=demo@localhost", *args]
    return subprocess.run(cmd, cwd=repo, check=True, capture_output=True, text=True).stdout.strip()


def prepare_repo(repo: Path) -> None:
    """The sample app's own git repository, a copy of examples/sample-app with its busybox.

    A repository an earlier demo left gets the sample app as it is now (a new commit when it changed), so
    its releases have what this demo asks of them (SLOW_MS).
    """
    fresh = not (repo / ".git").exists()
    shutil.copytree(REPO_ROOT / "examples" / "sample-app", repo, ignore=shutil.ignore_patterns("busybox"),
                    dirs_exist_ok=True)
    (repo / "rootfs" / "bin").mkdir(parents=True, exist_ok=True)
    shutil.copy2("/bin/busybox", repo / "rootfs" / "bin" / "busybox")
    (repo / ".gitignore").unlink(missing_ok=True)
    if fresh:
        git(repo, "init", "-q", "-b", "main")
    git(repo, "add", "-A")
    if fresh or git(repo, "status", "--porcelain"):
        git(repo, "commit", "-q", "-m", "sample app" if fresh else "sample app, as examples/sample-app has it now")


def seed_service(cfg: Any) -> dict[str, Any]:
    """The sandbox's seed, as its admin: the service's stack makes its deploy role (``deploy_role_arn``)
    holding the service's generated deploy policy, trusting the worker's user only.

    Imported late because it imports Prefect, which reads its settings on import.
    """
    from sandbox.identities import DEPLOY_USER
    from sandbox.seed import seed_service as seed

    return seed(cfg, deploy_principal=DEPLOY_USER)


def identities(env: dict[str, str], cfg: Any) -> str:
    """Who signs what in this demo, read back from the sandbox's IAM (as its admin)."""
    import boto3

    from sandbox.identities import DEPLOY_USER
    from sandbox.manage import load_env

    admin = load_env(admin=True)
    iam = boto3.client("iam", endpoint_url=env["AWS_ENDPOINT_URL"], region_name=env["AWS_REGION"],
                       aws_access_key_id=admin["AWS_ACCESS_KEY_ID"],
                       aws_secret_access_key=admin["AWS_SECRET_ACCESS_KEY"])
    user = iam.get_user(UserName=DEPLOY_USER)["User"]["Arn"]
    own = [*iam.list_user_policies(UserName=DEPLOY_USER)["PolicyNames"],
           *(p["PolicyName"] for p in iam.list_attached_user_policies(UserName=DEPLOY_USER)["AttachedPolicies"])]
    role = cfg.deploy_role_arn.rsplit("/", 1)[-1]
    held = [p["PolicyName"] for p in iam.list_attached_role_policies(RoleName=role)["AttachedPolicies"]]
    return (f"identities (IAM enforced by the sandbox, by action and resource ARN):\n"
            f"   seeding              the sandbox's own admin key ({layout().admin_env_file}; never given to the "
            f"pipeline)\n"
            f"   worker               {user} (its key in {layout().env_file}), holding only {', '.join(own)}\n"
            f"   {cfg.name} releases  {cfg.deploy_role_arn} (only the worker may assume it), holding only "
            f"{', '.join(held)}\n"
            f"   {cfg.name} builds    {cfg.build.role_arn}, assumed per build, narrowed to its repository")


def iam_tally(env: dict[str, str], since: int) -> tuple[int, int, int]:
    """The pipeline's AWS calls since SINCE (its clients' User-Agent), how many IAM refused, the last number."""
    found = httpx.get(f"{env['AWS_ENDPOINT_URL']}/_sandbox/requests",
                      params={"since": since, "agent": "ecs-pipeline"}, timeout=10).json()
    calls = found["requests"]
    return len(calls), sum(1 for c in calls if c.get("denied")), int(found["last"])


def commit_release(repo: Path, version: str, broken: str = "", slow_ms: int = 0) -> str:
    (repo / "app.env").write_text(f"VERSION={version}\nBROKEN={broken}\n" + (f"SLOW_MS={slow_ms}\n" if slow_ms else ""))
    git(repo, "add", "app.env")
    what = f" (broken: {broken})" if broken else f" (slow: {slow_ms} ms)" if slow_ms else ""
    git(repo, "commit", "-q", "--allow-empty", "-m", f"release {version}{what}")
    return git(repo, "rev-parse", "HEAD")


@dataclass
class Load:
    """A steady client on the production listener, counting what did not answer 200."""

    url: str
    interval: float = 0.02
    sent: int = 0
    failed: int = 0
    versions: dict[str, int] = field(default_factory=dict)
    _stop: threading.Event = field(default_factory=threading.Event)
    _thread: threading.Thread | None = None

    def _run(self) -> None:
        with httpx.Client(timeout=5) as client:
            while not self._stop.is_set():
                self.sent += 1
                try:
                    resp = client.get(self.url)
                    if resp.status_code != 200:
                        self.failed += 1
                    else:
                        version = resp.text.split(":")[0].strip()
                        self.versions[version] = self.versions.get(version, 0) + 1
                except httpx.HTTPError:
                    self.failed += 1
                time.sleep(self.interval)

    def __enter__(self) -> Self:
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        if self._thread:
            self._thread.join(10)


def start_server(env: dict[str, str], log: Path) -> subprocess.Popen[bytes]:
    """`ecs-pipeline serve` in its own process: it runs each release as a deployment flow run."""
    out = log.open("ab")
    return subprocess.Popen(
        [sys.executable, "-m", "flows.cli", "serve"],
        cwd=REPO_ROOT, env={"PREFECT_RUNNER_POLL_FREQUENCY": "1", **env}, stdout=out, stderr=subprocess.STDOUT,
        start_new_session=True,
    )


def wait_for_deployment(name: str, timeout: float = 60) -> None:
    from prefect.client.orchestration import get_client
    from prefect.exceptions import ObjectNotFound

    deadline = time.monotonic() + timeout
    with get_client(sync_client=True) as client:
        while True:
            try:
                client.read_deployment_by_name(name)
                return
            except ObjectNotFound:  # the served process has not registered it yet
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.5)


def release(service: str, sha: str) -> Any:
    from prefect.deployments import run_deployment

    from tasks.release.runs import run_tags

    return run_deployment(
        "deploy-service/deploy-service",
        parameters={"service": service, "sha": sha},
        tags=run_tags(service, sha, "demo"),
        timeout=900,
        poll_interval=1,
    )


def stage_times(flow_run_id: Any) -> list[tuple[str, float]]:
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterId
    from prefect.client.schemas.sorting import TaskRunSort

    with get_client(sync_client=True) as client:
        runs = client.read_task_runs(
            flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=[flow_run_id])),
            sort=TaskRunSort.EXPECTED_START_TIME_ASC,
        )
    return [(r.name, r.total_run_time.total_seconds()) for r in runs]


def report(label: str, run: Any, load: Load | None, ui: str) -> dict[str, Any]:
    from tasks.release.outcome import outcome_of

    state = run.state
    say(f"\n== {label}: {state.message or state.name}")
    for name, secs in stage_times(run.id):
        say(f"   {secs:7.2f}s  {name}")
    if load is not None:
        seen = ", ".join(f"{v}: {n}" for v, n in sorted(load.versions.items()))
        say(f"   production requests: {load.sent} sent, {load.failed} failed ({seen})")
    say(f"   {ui}/runs/flow-run/{run.id}")
    return {"label": label, "state": outcome_of(state), "reason": state.message or "",
            "failed": load.failed if load else None,
            "sent": load.sent if load else None, "seconds": run.total_run_time.total_seconds()}


def latest_table(key: str) -> tuple[str, list[dict[str, Any]]] | None:
    """The newest table artifact under KEY: its description and rows; None when there is none."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterKey
    from prefect.client.schemas.sorting import ArtifactSort

    with get_client(sync_client=True) as client:
        found = client.read_artifacts(artifact_filter=ArtifactFilter(key=ArtifactFilterKey(any_=[key])),
                                      sort=ArtifactSort.CREATED_DESC, limit=1)
    if not found:
        return None
    data = found[0].data
    rows = json.loads(data) if isinstance(data, str) else data if isinstance(data, list) else []
    return found[0].description or "", [r for r in rows if isinstance(r, dict)]


def test_report(service: str) -> str:
    """The buildspec's JUnit report of the last build, as its table artifact holds it."""
    from tasks.core.report import junit_artifact_key

    table = latest_table(junit_artifact_key(service, "sample-app-tests"))  # the sample buildspec's report group
    if table is None:
        return "   (no test report)"
    description, rows = table
    return "\n".join([f"   {description}", *(f"     {r['status']:7} {r['test']} {r['message']}" for r in rows)])


def analysis_table(service: str) -> str:
    """The last canary analysis of SERVICE's runs, as its table artifact holds it."""
    from tasks.core.report import artifact_key

    key = artifact_key(service, "analysis")
    table = latest_table(key)
    if table is None:
        return "   (no analysis table)"
    lines = [f"   analysis table (artifact {key}):"]
    lines += [f"     {r['metric']:9} blue {r['blue']:16} green {r['green']:16} {r['verdict']:13} {r['rule']}"
              for r in table[1]]
    return "\n".join(lines)


def release_analysed(repo: Path, good: str, ui: str) -> dict[str, Any]:
    """A slow v5 on the service with canary analysis: GOOD first (blue), then v5 under load, rolled back."""
    from tasks.config.models import load_service

    cfg = load_service(ANALYSIS_YAML)
    seed_service(cfg)
    prod = f"http://127.0.0.1:{cfg.load_balancer.production_listener.port}/"  # type: ignore[union-attr]
    say(f"\nseeded {cfg.name} (task sets, canary analysis; releases as {cfg.deploy_role_arn}), production {prod}")
    first = release(cfg.name, good)
    say(f"   blue: v2 released first ({first.state.message or first.state.name})")
    sha5 = commit_release(repo, "v5", slow_ms=SLOW_MS)
    with Load(prod) as load:
        result = report(f"v5 (slow: +{SLOW_MS} ms; canary analysis against blue)", release(cfg.name, sha5), load, ui)
    say(analysis_table(cfg.name))
    return result


def wait_serving(url: str, timeout: float = 120) -> None:
    """Until the seeded service answers, so the count below is about the release alone."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            if httpx.get(url, timeout=2).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        if time.monotonic() > deadline:
            raise RuntimeError(f"{url} did not answer 200 within {timeout:.0f}s after seeding")
        time.sleep(0.5)


def release_elsewhere(yaml: Path, seeded_as: str, label: str, sha: str, ui: str) -> dict[str, Any]:
    """The same commit through another strategy's copy of the app, seeded as that strategy needs."""
    from tasks.config.models import load_service

    cfg = load_service(yaml)
    seed_service(cfg)
    prod = f"http://127.0.0.1:{cfg.load_balancer.production_listener.port}/"  # type: ignore[union-attr]
    say(f"\nseeded {cfg.name} ({seeded_as}; releases as {cfg.deploy_role_arn}), production {prod}")
    wait_serving(prod)
    with Load(prod) as load:
        return report(label, release(cfg.name, sha), load, ui)


def main() -> int:
    started = time.monotonic()
    manage.up(say)
    env = {**os.environ, **manage.load_env()}
    os.environ.update(env)
    setup_seconds = time.monotonic() - started

    from tasks.config.models import load_service
    from tasks.core.report import junit_artifact_key

    cfg = load_service(SERVICE_YAML)
    repo = Path(cfg.repo_location)
    repo.parent.mkdir(parents=True, exist_ok=True)
    prepare_repo(repo)
    pipeline_started = time.monotonic()
    seeded = seed_service(cfg)
    prod = f"http://127.0.0.1:{cfg.load_balancer.production_listener.port}/"  # type: ignore[union-attr]
    ui = env["PREFECT_API_URL"].removesuffix("/api")
    say(f"seeded {cfg.name}: cluster {seeded['cluster']}, production listener {prod}")
    say(identities(env, cfg))
    *_, calls_since = iam_tally(env, 0)

    server = start_server(env, Path(env["SANDBOX_DIR"]) / "logs" / "serve.log")
    try:
        wait_for_deployment("deploy-service/deploy-service")
        results = [report("v1", release(cfg.name, commit_release(repo, "v1")), None, ui)]
        sha2 = commit_release(repo, "v2")
        with Load(prod) as load2:
            results.append(report("v2 (blue/green)", release(cfg.name, sha2), load2, ui))
        sha3 = commit_release(repo, "v3", broken="root")
        with Load(prod) as load3:
            results.append(report("v3 (broken: / answers 500; fails its tests)", release(cfg.name, sha3), load3, ui))
        say(f"   test report: {ui}/artifacts (key {junit_artifact_key(cfg.name, 'sample-app-tests')})\n"
            + test_report(cfg.name))
        sha4 = commit_release(repo, "v4", broken="config")
        with Load(prod) as load4:
            results.append(report("v4 (passes its tests, / answers 500 in production)", release(cfg.name, sha4),
                                  load4, ui))
        serving = httpx.get(prod, timeout=5).text.strip()
        results.append(release_elsewhere(CODEDEPLOY_YAML, "CodeDeploy application and blue/green group",
                                         "v2 via CodeDeploy (canary)", sha2, ui))
        results.append(release_elsewhere(NATIVE_YAML, "ECS controller, strategy CANARY, no CodeDeploy",
                                         "v2 via ECS-native blue/green (canary)", sha2, ui))
        results.append(release_analysed(repo, sha2, ui))
        pipeline_seconds = time.monotonic() - pipeline_started
    finally:
        os.killpg(server.pid, signal.SIGTERM)
        server.wait(30)

    say("\n== Summary")
    say(f"   sandbox up: {setup_seconds:.1f}s; seed and {len(results)} releases: {pipeline_seconds:.1f}s")
    for r in results:
        extra = f", {r['failed']} of {r['sent']} production requests failed" if r["sent"] is not None else ""
        say(f"   {r['label']}: {r['state']} in {r['seconds']:.1f}s{extra}")
    say(f"   production now answers: {serving}")
    calls, refused, _ = iam_tally(env, calls_since)
    say(f"   AWS calls the pipeline made (as the worker and the deploy roles): {calls}, refused by IAM: {refused}")
    say(f"   Prefect UI: {ui} (flow runs of deploy-service; artifacts hold each release summary; "
        f"sign in with PREFECT_API_AUTH_STRING from {layout().env_file})")
    ok = (
        [r["state"] for r in results]
        == ["Deployed", "Deployed", "Failed", "Rolled back", "Deployed", "Deployed", "Rolled back"]
        and "analysis failed" in results[-1]["reason"] and "p95" in results[-1]["reason"]
        and all(r["failed"] in (0, None) for r in results)
        and serving.startswith("sample-app v2")
        and refused == 0
    )
    say("demo " + ("succeeded" if ok else "FAILED: see above"))
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
