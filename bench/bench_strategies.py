"""The same v1→v2 release of the same app through task-sets, CodeDeploy and ECS-native, in one run.

Each strategy gets its own throw-away service (harness/services.make_service)
seeded with v1 serving; the time is the deploy-service flow from start to
"Deployed" for v2 (build and push included, the same for all three; bake 0,
all-at-once), so the differences are each strategy's own steps and waits: the
per-stage seconds below the totals show which.

    uv run python -m bench    # after bench_pipeline
    uv run python -c "import sys; from bench import bench_strategies as b; sys.exit(b.main())"  # alone
"""

from __future__ import annotations

import os
import tempfile
import time
from pathlib import Path

from bench.bench_pipeline import load_sandbox, stage_seconds

STRATEGIES = ("task-sets", "codedeploy", "ecs-native")


def release(strategy: str, workdir: Path) -> tuple[float, str, dict[str, float]]:
    """(seconds, outcome, seconds per stage) of one v1→v2 release through STRATEGY."""
    from flows.pipeline import deploy_service
    from harness.services import make_service, seed_serving
    from tasks.release.outcome import outcome_of

    sut = make_service(workdir, strategy=strategy, bake_seconds=0, verify_paths=("/health",))
    os.environ["ECS_PIPELINE_DEPLOYMENTS"] = str(sut.yaml_path.parent)
    try:
        if strategy == "task-sets":
            assert outcome_of(deploy_service(sut.name, return_state=True)) == "Deployed"
        else:
            seed_serving(sut)
        sut.commit("v2")
        started = time.perf_counter()
        state = deploy_service(sut.name, return_state=True)
        seconds = time.perf_counter() - started
        return seconds, outcome_of(state), stage_seconds(state.state_details.flow_run_id)
    finally:
        sut.cleanup()


def main() -> int:
    load_sandbox()
    print("\n== one v1→v2 release of the same app per strategy (same sandbox, same run)")
    failed = 0
    stages: dict[str, dict[str, float]] = {}
    for strategy in STRATEGIES:
        with tempfile.TemporaryDirectory(prefix=f"bench-{strategy}-") as tmp:
            seconds, state, stages[strategy] = release(strategy, Path(tmp))
        failed += state != "Deployed"
        print(f"   {strategy:<11} {state:<12} {seconds:6.1f}s", flush=True)
    for strategy, per_stage in stages.items():
        slowest = sorted(per_stage.items(), key=lambda kv: -kv[1])[:6]
        print(f"   {strategy:<11} " + ", ".join(f"{name} {secs:.1f}s" for name, secs in slowest))
    return 1 if failed else 0
