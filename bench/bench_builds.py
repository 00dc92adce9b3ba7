"""What a build box costs: the sample app's buildspec in a box and on the worker, the same commits, one run.

One service of the sample app (its repository, with busybox committed, and its ECR repository in
the sandbox), two configs that differ only in ``build.runner`` (container, the default, and
host-unsafe). Each round commits a release of the app (app.env, as a release changes it) and every
mode builds that commit: the buildspec runs its tests, docker build, docker push to the service's
repository (a new tag: the commit's) and writes imagedefinitions.json. One warm-up round, then
BENCH_ROUNDS, the box taking turns going first. Every build is a real one: ``run_buildspec`` is
called directly (the build stage would skip a commit whose image ECR has) on a fresh checkout.

Modes: host-unsafe is a host build as before the box, on the worker's Docker engine with its
layer cache (the previous release's layers); "host, cold cache" is the same after emptying that
engine of images and build cache, which is where every box starts (an engine and image storage
of its own): it tells the box's own overhead from the cache it cannot have. It runs only when
DOCKER_HOST is the engine the sandbox started (emptying another engine would lose its images).

We time the whole ``run_buildspec`` call and split it at the build's log lines: start-up (the call
to its first command: for a box, the box, its engine and the build container), each phase, and
the wind-down (the last phase to the return: for a box, stopping it; then reports and artifacts).
The goal: a box costs at most 1.5 s more than a host build (median against median).

    uv run python -m bench builds     (or `make bench`, which runs every benchmark)
    BENCH_ROUNDS=10 uv run python -m bench builds
"""

from __future__ import annotations

import os
import statistics
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from bench.bench_pipeline import load_sandbox

ROUNDS = int(os.environ.get("BENCH_ROUNDS", "5"))
BUDGET = 1.5  # seconds a box may add to a host build of the sample app
HOST, COLD, BOX = "host-unsafe", "host, cold cache", "container"
MODES = {HOST: "host-unsafe", COLD: "host-unsafe", BOX: "container"}  # label: build.runner
PHASES = ("pre_build", "build", "post_build")


@dataclass
class Timing:
    """One build: the whole call and its parts, in seconds."""

    total: float
    parts: dict[str, float] = field(default_factory=dict)


class TimedLog:
    """The build's INFO lines with when they came: phases are read from them afterwards."""

    def __init__(self) -> None:
        self.lines: list[tuple[float, str]] = []

    def __call__(self, line: str) -> None:
        self.lines.append((time.perf_counter(), line))

    def parts(self, started: float, ended: float) -> dict[str, float]:
        """start-up, each phase, wind-down: the call split at its first line and each phase's last."""
        if not self.lines:
            return {}
        out = {"start-up": self.lines[0][0] - started}
        mark = self.lines[0][0]
        for at, line in self.lines:
            phase = line[1:].split("]", 1)[0] if line.startswith("[") else ""
            if phase in PHASES and "] Phase complete:" in line:
                out[phase] = at - mark
                mark = at
        out["wind-down"] = ended - mark
        return out


def config_for(yaml_path: Path, runner: str) -> Any:
    """The service's config with the repository's buildspec.yml, run by RUNNER."""
    from tasks.config.models import parse_service

    data = yaml.safe_load(yaml_path.read_text())
    data["build"] = {"buildspec": "buildspec.yml", "runner": runner}
    return parse_service(data, source=str(yaml_path), base_dir=yaml_path.parent.resolve())


def engine_is_ours() -> bool:
    """Whether DOCKER_HOST is the engine the sandbox started: only that one may be emptied."""
    from sandbox.engine import own_socket

    return os.environ.get("DOCKER_HOST") == f"unix://{own_socket(Path(os.environ['SANDBOX_DIR']))}"


def empty_engine() -> None:
    """The sandbox's Docker engine without images or build cache: where a build box starts."""
    import docker

    client = docker.DockerClient(base_url=os.environ["DOCKER_HOST"])
    try:
        client.images.prune(filters={"dangling": False})
        client.api.prune_builds(all=True)
    finally:
        client.close()


def round_order(i: int, modes: tuple[str, ...]) -> tuple[str, ...]:
    """The box first every other round; the warm host build always before the cold one, which empties its cache."""
    order = (BOX, HOST, COLD) if i % 2 else (HOST, COLD, BOX)
    return tuple(mode for mode in order if mode in modes)


def measure(workdir: Path, modes: tuple[str, ...]) -> dict[str, list[Timing]]:
    """A warm-up round then ROUNDS rounds, each a new commit of the sample app built in every mode."""
    from prefect import flow

    from harness.git import git
    from harness.services import make_service
    from tasks.aws.clients import AwsClients
    from tasks.build import buildspec_runner, source
    from tasks.core.settings import Settings

    sut = make_service(workdir)
    try:
        clients = AwsClients(Settings(artifacts_dir=workdir / "artifacts"))
        configs = {mode: config_for(sut.yaml_path, MODES[mode]) for mode in modes}
        uri = str(sut.seeded["repository_uri"])

        def build_once(mode: str, sha: str) -> Timing:
            cfg = configs[mode]
            if mode == COLD:
                empty_engine()
            tree = source.checkout(cfg.repo_location, sha, clients.settings.cache / "git")  # clean: a host build writes
            spec = buildspec_runner.buildspec_for(cfg, tree, sha)
            assert spec is not None
            log = TimedLog()
            started = time.perf_counter()
            ran = buildspec_runner.run_buildspec(cfg, clients, spec, sha, tree, uri, log, detail=lambda _line: None)
            ended = time.perf_counter()
            pushed = [d.get("imageUri", "") for d in ran.image_definitions or []]
            assert pushed == [f"{uri}:{sha[:7]}"], f"{mode}: imagedefinitions.json names {pushed}"
            assert ran.reports and all(r.counts["passed"] == len(r.cases) for r in ran.reports), \
                f"{mode}: tests {[r.headline() for r in ran.reports]}"
            return Timing(ended - started, log.parts(started, ended))

        @flow(name="bench-builds", persist_result=False)
        def builds() -> dict[str, list[Timing]]:
            """Test reports are artifacts of a run, as in a release (no parameters: nothing to serialise)."""
            out: dict[str, list[Timing]] = {mode: [] for mode in modes}
            for i in range(ROUNDS + 1):
                sha = sut.commit(f"bench-{i}") if i else git(sut.repo, "rev-parse", "HEAD")
                done = {mode: build_once(mode, sha) for mode in round_order(i, modes)}
                if i:
                    for mode, timing in done.items():
                        out[mode].append(timing)
                print(f"{f'round {i}' if i else 'warm-up'} ({sha[:7]}): "
                      + ", ".join(f"{m} {t.total:.2f}s" for m, t in done.items()), flush=True)
            return out

        return builds()
    finally:
        sut.cleanup()


def spread(values: list[float]) -> str:
    return f"{statistics.median(values):8.2f} {min(values):8.2f} {max(values):8.2f}"


def median_of(runs: list[Timing], part: str = "") -> float:
    return statistics.median(t.parts.get(part, 0.0) if part else t.total for t in runs)


def report(timings: dict[str, list[Timing]]) -> bool:
    """The table; whether the box stays within the budget of a host build."""
    print(f"\n== the sample app's buildspec, {ROUNDS} commits built in each mode (s: median, min, max)")
    print(f"   {'':<22}" + "".join(f"{mode:>29}" for mode in timings))
    for part in ("", "start-up", *PHASES, "wind-down"):
        cells = [spread([t.parts.get(part, 0.0) if part else t.total for t in runs]) for runs in timings.values()]
        print(f"   {part or 'whole run_buildspec':<22}" + "".join(f"{cell:>29}" for cell in cells))
    box = timings[BOX]
    within = True
    print()
    for base in (m for m in (HOST, COLD) if m in timings):
        extra = median_of(box) - median_of(timings[base])
        startup = median_of(box, "start-up") - median_of(timings[base], "start-up")
        print(f"   {BOX} - {base}: {extra:+.2f}s (median against median; start-up {startup:+.2f}s of it), "
              f"{BOX} / {base}: {median_of(box) / median_of(timings[base]):.2f}x")
        if base == HOST:
            within = extra <= BUDGET
    print(f"   goal, a build box at most {BUDGET:.1f}s more than a host build ({HOST}): "
          f"{'met' if within else 'NOT met'}")
    return within


def main() -> int:
    load_sandbox()
    if os.geteuid() != 0:
        print("bench builds: a build box is made by a worker running as root; run the benchmark as root")
        return 1
    modes: tuple[str, ...] = (HOST, COLD, BOX)
    if not engine_is_ours():
        modes = (HOST, BOX)
        print(f"bench builds: DOCKER_HOST is not the sandbox's own engine: no '{COLD}' builds (they empty it)")
    with tempfile.TemporaryDirectory() as work:
        timings = measure(Path(work), modes)
    return 0 if report(timings) else 1


if __name__ == "__main__":
    sys.exit(main())
