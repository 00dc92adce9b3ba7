"""`python -m bench [NAME ...]`: every benchmark, or the named ones.

The release benchmark, the strategies, what a release costs, the failure benchmarks, the webhook
latency benchmark, fleets (on two workers; 20 services against one at a realistic time scale and at
the rehearsal's; AWS calls with 100 waiting), then build boxes against host builds (names: pipeline,
strategies, cost, faults, webhook, fleet, fleetscale, fleetpolls, atomic, analysis, builds). The last
line compares runs (bench/figures.py); a run of every
benchmark (or any run with BENCH_RESULTS=1) writes its whole report to bench/RESULTS.md, so a change
in cost shows up in review.
"""

import io
import os
import platform
import subprocess
import sys
import time
from datetime import UTC, datetime
from pathlib import Path

RESULTS = Path(__file__).with_name("RESULTS.md")


class Tee(io.TextIOBase):
    """Prints as before and keeps a copy for RESULTS.md."""

    def __init__(self, out: io.TextIOBase) -> None:
        self.out, self.kept = out, io.StringIO()

    def write(self, text: str) -> int:
        self.kept.write(text)
        return self.out.write(text)

    def flush(self) -> None:
        self.out.flush()


def machine() -> str:
    cpu = next((line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                if line.startswith("model name")), platform.processor() or "?")
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True,
                            check=False).stdout.strip()
    return (f"{platform.node()}: {os.cpu_count()} CPUs ({cpu}), Linux {platform.release()}, "
            f"Python {platform.python_version()}, commit {commit or '?'}")


def write_results(report: str, seconds: float, ran: list[str]) -> None:
    started = datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC")
    which = "every benchmark" if ran == list(NAMES) else f"only {', '.join(ran)} (BENCH_RESULTS=1)"
    RESULTS.write_text(
        "# Benchmark results\n\n"
        "The latest full `make bench` (every benchmark, one run, one machine); it writes this file.\n\n"
        f"- date: {started}\n- machine: {machine()}\n- benchmarks: {which}\n- took: {seconds / 60:.1f} min\n\n"
        f"```\n{report.rstrip()}\n```\n"
    )


NAMES = ("pipeline", "strategies", "cost", "faults", "webhook", "fleet", "fleetscale", "fleetpolls", "atomic",
         "analysis", "builds")
chosen = sys.argv[1:] or list(NAMES)
unknown = [name for name in chosen if name not in NAMES]
if unknown:
    sys.exit(f"unknown benchmark {', '.join(unknown)}; choose from {', '.join(NAMES)}")

from bench.bench_pipeline import load_sandbox  # noqa: E402

load_sandbox()  # before anything imports Prefect, which reads its settings (the sandbox's server) at import

from bench import (  # noqa: E402
    bench_analysis,
    bench_atomic,
    bench_builds,
    bench_cost,
    bench_faults,
    bench_fleet,
    bench_fleet_polls,
    bench_fleet_scale,
    bench_pipeline,
    bench_strategies,
    bench_webhook,
)


def webhook() -> int:
    bench_webhook.main()
    return 0


MAINS = {"pipeline": bench_pipeline.main, "strategies": bench_strategies.main, "cost": bench_cost.main,
         "faults": bench_faults.main, "webhook": webhook, "fleet": bench_fleet.main,
         "fleetscale": bench_fleet_scale.main, "fleetpolls": bench_fleet_polls.main,
         "atomic": bench_atomic.main, "analysis": bench_analysis.main,
         "builds": bench_builds.main}
from bench.figures import cost_line  # noqa: E402

full = not sys.argv[1:] or os.environ.get("BENCH_RESULTS") == "1"  # a partial run only when asked
tee = Tee(sys.stdout)  # type: ignore[arg-type]
sys.stdout = tee
began = time.monotonic()
code = 0
for name in chosen:
    sys.argv = sys.argv[:1]  # webhook and fleet read their own options
    code = MAINS[name]() or code
print(f"\n{cost_line()}", flush=True)
sys.stdout = tee.out
if full:
    write_results(tee.kept.getvalue(), time.monotonic() - began, chosen)
sys.exit(code)
