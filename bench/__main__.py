"""`python -m bench [NAME ...]`: every benchmark, or the named ones.

The release benchmark, the strategies, the failure benchmarks, the webhook latency benchmark,
fleets, then build boxes against host builds (names: pipeline, strategies, faults, webhook,
fleet, builds).
"""

import sys

NAMES = ("pipeline", "strategies", "faults", "webhook", "fleet", "builds")
chosen = sys.argv[1:] or list(NAMES)
unknown = [name for name in chosen if name not in NAMES]
if unknown:
    sys.exit(f"unknown benchmark {', '.join(unknown)}; choose from {', '.join(NAMES)}")

from bench.bench_pipeline import load_sandbox  # noqa: E402

load_sandbox()  # before anything imports Prefect, which reads its settings (the sandbox's server) at import

from bench import (  # noqa: E402
    bench_builds,
    bench_faults,
    bench_fleet,
    bench_pipeline,
    bench_strategies,
    bench_webhook,
)


def webhook() -> int:
    bench_webhook.main()
    return 0


MAINS = {"pipeline": bench_pipeline.main, "strategies": bench_strategies.main, "faults": bench_faults.main,
         "webhook": webhook, "fleet": bench_fleet.main, "builds": bench_builds.main}
code = 0
for name in chosen:
    sys.argv = sys.argv[:1]  # webhook and fleet read their own options
    code = MAINS[name]() or code
sys.exit(code)
