"""`python -m bench`: the release benchmark, the failure benchmarks, then the webhook latency benchmark."""

import sys

from bench import bench_faults, bench_pipeline, bench_strategies, bench_webhook

code = bench_pipeline.main()
code = bench_strategies.main() or code
code = bench_faults.main() or code
sys.argv = sys.argv[:1]
bench_webhook.main()
sys.exit(code)
