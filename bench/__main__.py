"""`python -m bench`: the release benchmark, the failure benchmarks, the webhook latency benchmark, then fleets."""

import sys

from bench.bench_pipeline import load_sandbox

load_sandbox()  # before anything imports Prefect, which reads its settings (the sandbox's server) at import

from bench import bench_faults, bench_fleet, bench_pipeline, bench_strategies, bench_webhook  # noqa: E402

code = bench_pipeline.main()
code = bench_strategies.main() or code
code = bench_faults.main() or code
sys.argv = sys.argv[:1]
bench_webhook.main()
sys.argv = sys.argv[:1]
code = bench_fleet.main() or code
sys.exit(code)
