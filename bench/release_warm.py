"""One release in a warm process: what each further release costs a process that already runs some.

A worker, `serve` or a fleet run starts once and releases many times, so its
cost per release is the release's own work, not Python's start and Prefect's
import. This process releases SERVICE once to warm up (every import made,
every client built), says ``BENCH ready``, waits for a line on stdin (the
bench commits the next version and zeroes its counters meanwhile), releases
again and prints ``BENCH {json}``: CPU-seconds of this process (all its
threads, and the git it ran), wall seconds and the outcome; once per line, until stdin ends.

    uv run python -m bench.release_warm SERVICE    (driven by bench/bench_cost.py)
"""

from __future__ import annotations

import json
import resource
import sys
import time


def cpu_seconds() -> float:
    own, children = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + children.ru_utime + children.ru_stime


def main() -> int:
    from flows.pipeline import deploy_service
    from tasks.release.outcome import outcome_of

    service = sys.argv[1]
    warm = outcome_of(deploy_service(service, return_state=True))
    print(f"BENCH ready {warm}", flush=True)
    while sys.stdin.readline():  # one line: one more release (the bench committed the next version)
        cpu, started = cpu_seconds(), time.perf_counter()
        state = deploy_service(service, return_state=True)
        took, cpu = time.perf_counter() - started, cpu_seconds() - cpu
        print("BENCH " + json.dumps({"cpu": cpu, "wall": took, "outcome": outcome_of(state),
                                     "message": state.message}), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
