"""`python -m bench`: the release benchmark, the webhook latency benchmark, then the fleet benchmark."""

import sys

from bench import bench_fleet, bench_pipeline, bench_strategies, bench_webhook

code = bench_pipeline.main()
code = bench_strategies.main() or code
sys.argv = sys.argv[:1]
bench_webhook.main()
sys.argv = sys.argv[:1]
code = bench_fleet.main() or code
sys.exit(code)
