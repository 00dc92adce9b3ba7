"""What a CLI release costs in Prefect alone: the same process shape with no AWS or Docker work.

A `deploy-service`-shaped flow run from a fresh process: the flow takes a service name,
runs as many tasks as a rolling release (detect, build, push, register, update, wait,
verify), logs a line in each, and publishes one markdown artifact, as the summary is.
bench_faults times it beside `ecs-pipeline deploy` and the peer, so the table can say how
much of our wall time is the pipeline's own work and how much is Prefect's records.

    uv run python -m bench.prefect_floor SERVICE
    uv run python -m bench.prefect_floor --nothing     (a flow run with no task, no artifact: the floor's floor)
"""

from __future__ import annotations

import sys

from prefect import flow, get_run_logger, task
from prefect.artifacts import create_markdown_artifact
from prefect.cache_policies import NO_CACHE

STAGES = ("detect change", "build", "push", "register", "rolling update", "wait rollout", "verify")


@task(cache_policy=NO_CACHE)
def stage(name: str, service: str) -> str:
    get_run_logger().info("%s %s: nothing to do", name, service)
    return name


@flow(name="bench-prefect-floor", persist_result=True)
def floor(service: str, sha: str | None = None) -> list[str]:
    done = [stage.with_options(task_run_name=f"{name} {service}")(name, service) for name in STAGES]
    create_markdown_artifact(key="bench-prefect-floor", markdown=f"# {service}\n\n{len(done)} stages")
    return done


@flow(name="bench-do-nothing")
def nothing() -> None:
    """A flow run and nothing else: what starting, recording and ending a run costs."""


if __name__ == "__main__":
    if sys.argv[1] == "--nothing":
        nothing()
    else:
        floor(sys.argv[1])
