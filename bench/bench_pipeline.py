"""Per-stage time of a v1→v2 blue/green release on the warm sandbox, against a peer.

The release runs the real deploy-service flow in-process against the sandbox
(time scale from SANDBOX_TIME_SCALE, so AWS waits are negligible). We report
every stage and the total outside docker build/push. The peer, measured in the
same run on the same sandbox, is fabfuel/ecs-deploy (`ecs deploy CLUSTER
SERVICE --image web IMAGE`): register a revision, UpdateService, wait until the
service is stable — a rolling update without verification, so the ratio is the
price of a verified blue/green switch over an unverified rolling one.

    make bench        # or: uv run python -m bench
"""

from __future__ import annotations

import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
PEER_VENV = ROOT / ".sandbox" / "bench-peer"
ROUNDS = int(os.environ.get("BENCH_ROUNDS", "3"))


def load_sandbox() -> None:
    subprocess.run([sys.executable, "-m", "sandbox", "up"], cwd=ROOT, check=True, stdout=subprocess.DEVNULL)
    from sandbox.manage import load_env

    # The sandbox's own identity: a benchmark's services (a fleet of up to 100) are seeded without
    # deploy policies of their own, and what is measured is the release, not the account's judging.
    os.environ.update(load_env(admin=True))
    os.environ["PREFECT_LOGGING_LEVEL"] = "WARNING"


def outcome_of(state: Any) -> str:
    """Imported when asked: Prefect reads its settings at import, so only after load_sandbox."""
    from tasks.release.outcome import outcome_of as read

    return read(state)


def stage_seconds(flow_run_id: Any) -> dict[str, float]:
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterId

    with get_client(sync_client=True) as client:
        runs = client.read_task_runs(flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=[flow_run_id])))
    out: dict[str, float] = {}
    for r in runs:
        stage = r.name.split(" ")[0] if r.name.startswith(("build", "push")) else r.name.rsplit(" ", 1)[0]
        out[stage] = out.get(stage, 0.0) + r.total_run_time.total_seconds()
    return out


def release_ours(workdir: Path) -> tuple[float, dict[str, float], float, str]:
    """(total s, stages, s outside build/push, v2 image) for one v1→v2 release."""
    from flows.pipeline import deploy_service
    from harness.services import make_service

    sut = make_service(workdir, bake_seconds=0, verify_paths=("/health",))
    os.environ["ECS_PIPELINE_DEPLOYMENTS"] = str(sut.yaml_path.parent)
    assert outcome_of(deploy_service(sut.name, return_state=True)) == "Deployed"
    sut.commit("v2")
    started = time.perf_counter()
    state = deploy_service(sut.name, return_state=True)
    total = time.perf_counter() - started
    assert outcome_of(state) == "Deployed", state.message
    stages = stage_seconds(state.state_details.flow_run_id)
    outside = total - stages.get("build", 0.0) - stages.get("push", 0.0)
    return total, stages, outside, state.result()["sha"]


def ensure_peer() -> Path:
    exe = PEER_VENV / "bin" / "ecs"
    if not exe.exists():
        subprocess.run(["python3", "-m", "venv", str(PEER_VENV)], check=True)
        subprocess.run(
            [str(PEER_VENV / "bin" / "pip"), "install", "-q", "--disable-pip-version-check",
             "ecs-deploy==1.17.0", "boto3>=1.34"],
            check=True,
        )
    return exe


def retag(image: str, tag: str) -> str:
    """Copy IMAGE's manifest to TAG in the registry, through the registry's own HTTP API."""
    import httpx

    registry, rest = image.split("/", 1)
    name, old = rest.rsplit(":", 1)
    accept = "application/vnd.docker.distribution.manifest.v2+json, application/vnd.oci.image.manifest.v1+json"
    got = httpx.get(f"http://{registry}/v2/{name}/manifests/{old}", headers={"Accept": accept})
    got.raise_for_status()
    put = httpx.put(f"http://{registry}/v2/{name}/manifests/{tag}", content=got.content,
                    headers={"Content-Type": got.headers["Content-Type"]})
    put.raise_for_status()
    return f"{registry}/{name}:{tag}"


def release_peer(workdir: Path, exe: Path) -> float:
    """Seconds for `ecs deploy` to roll a service of the same app to a new image."""
    from harness.services import make_service

    sut = make_service(workdir, strategy="rolling")
    cfg = sut.cfg
    image = sut.seeded["image"]
    new_image = retag(image, "v2")  # the same app under a new tag: a real change for the peer
    started = time.perf_counter()
    subprocess.run(
        [str(exe), "deploy", cfg.ecs.cluster, cfg.ecs.service, "--image", "web", new_image,
         "--timeout", "300", "--no-deregister"],
        check=True, env=os.environ, stdout=subprocess.DEVNULL,
    )
    return time.perf_counter() - started


def main() -> int:
    load_sandbox()
    exe = ensure_peer()
    ours: list[float] = []
    outside: list[float] = []
    peer: list[float] = []
    last_stages: dict[str, float] = {}
    for i in range(ROUNDS):
        with tempfile.TemporaryDirectory() as a, tempfile.TemporaryDirectory() as b:
            total, last_stages, out, _ = release_ours(Path(a))
            ours.append(total)
            outside.append(out)
            peer.append(release_peer(Path(b), exe))
        print(f"round {i + 1}: ecs-pipeline {ours[-1]:.2f}s (outside build/push {outside[-1]:.2f}s), "
              f"ecs-deploy {peer[-1]:.2f}s", flush=True)
    print("\nper stage, last round (s):")
    for name, secs in last_stages.items():
        print(f"  {secs:7.3f}  {name}")
    med_ours, med_out, med_peer = (statistics.median(x) for x in (ours, outside, peer))
    print(f"\nmedian of {ROUNDS}: ecs-pipeline v1→v2 blue/green {med_ours:.2f}s, "
          f"outside docker build/push {med_out:.2f}s")
    print(f"median of {ROUNDS}: ecs-deploy rolling update {med_peer:.2f}s")
    print(f"ratio ecs-pipeline (outside build/push) / ecs-deploy: {med_out / med_peer:.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
