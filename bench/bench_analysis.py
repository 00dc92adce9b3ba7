"""How often canary analysis fails a good green, and how often it catches a 20 % slower one.

A task-sets service with a 50 % canary step whose steady clients keep both
target groups busy; blue is the sample app made 50 ms slow (so a response time
is the app's, not the sandbox proxy's jitter). Two green releases are held at
the step: one identical to blue (every failed window is a false positive), and
one slower by 20 % of blue's measured p95 (every passed window is a miss).
During each, the step is cut into WINDOWS consecutive windows of
WINDOW_MINUTES AWS minutes, each read with the pipeline's own GetMetricData
(tasks/aws/metrics.read_window) and judged by its own judgement
(tasks/release/analysis.judge) under several rules: thresholds and
mann-whitney, p95 limits 1.1x and 1.25x. The releases themselves judge nothing
(no analysis in their config): they only hold green beside blue.

    uv run python -m bench.bench_analysis        (the sandbox is brought up if needed)
"""

from __future__ import annotations

import contextlib
import os
import statistics
import sys
import tempfile
import threading
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from bench.bench_pipeline import load_sandbox

WINDOWS = 24
WINDOW_MINUTES = 5  # a canary step's usual length; five minute-samples a side let Mann-Whitney reach 0.05
BASE_MS = 50
CLIENTS = 4
RULES: dict[str, dict[str, Any]] = {
    "thresholds, p95 <= 1.25x": {"method": "thresholds"},
    "thresholds, p95 <= 1.1x": {"method": "thresholds", "latency_p95": {"max_ratio": 1.1}},
    "mann-whitney, p95 <= 1.25x": {"method": "mann-whitney"},
    "mann-whitney, p95 <= 1.1x": {"method": "mann-whitney", "latency_p95": {"max_ratio": 1.1}},
}


def commit(sut: Any, version: str, slow_ms: int) -> None:
    from harness.git import git

    (sut.repo / "app.env").write_text(f"VERSION={version}\nBROKEN=\nSLOW_MS={slow_ms}\nERROR_PERCENT=0\n")
    git(sut.repo, "add", "-A")
    git(sut.repo, "commit", "-q", "-m", f"release {version}")


def pair_at_step(sut: Any) -> Any | None:
    """Green's and blue's target groups once production is split 50/50 (None before)."""
    from harness.faults import production_listener
    from tasks.aws.metrics import Pair
    from tasks.aws.traffic import weights_of

    listener = production_listener(sut)
    weights = weights_of(listener)
    if sorted(weights.values()) != [50, 50]:
        return None
    primary = next(ts for ts in sut.task_sets() if ts["status"] == "PRIMARY")["loadBalancers"][0]["targetGroupArn"]
    green = next(arn for arn in weights if arn != primary)
    return Pair(listener["ListenerArn"], green, primary)


def sample(sut: Any, windows: list[Any], stop: threading.Event) -> None:
    """WINDOWS consecutive step windows, read as each closes (a minute is readable once it has closed)."""
    from harness.services import aws
    from tasks.aws import metrics

    pair = None
    while pair is None and not stop.is_set():
        pair = pair_at_step(sut)
        time.sleep(0.2)
    if pair is None:
        return
    scale = float(os.environ.get("ECS_PIPELINE_TIME_SCALE", "60"))
    minute = 60 / scale
    start = datetime.fromtimestamp((int(time.time() / minute) + 2) * minute, UTC)  # a whole minute, settled
    length = timedelta(seconds=WINDOW_MINUTES * minute)
    while len(windows) < WINDOWS and not stop.is_set():
        end = start + length
        time.sleep(max(0.0, (end - datetime.now(UTC)).total_seconds() + 1.5 * minute))
        windows.append(metrics.read_window(aws("cloudwatch"), pair, start, end, time_scale=scale, samples=True))
        start = end


def hold_green(sut: Any, version: str, slow_ms: int) -> list[Any]:
    """Release VERSION (SLOW_MS) under steady load, held at 50 % long enough to read WINDOWS windows."""
    from flows.pipeline import deploy_service
    from harness.faults import Load
    from tasks.release.outcome import outcome_of

    commit(sut, version, slow_ms)
    windows: list[Any] = []
    stop = threading.Event()
    sampler = threading.Thread(target=sample, args=(sut, windows, stop), daemon=True)
    with contextlib.ExitStack() as stack:
        for _ in range(CLIENTS):
            stack.enter_context(Load(sut, pause=0.005))
        sampler.start()
        state = deploy_service(sut.name, return_state=True)
        stop.set()
        sampler.join(30)
    print(f"   {version} (SLOW_MS={slow_ms}): {outcome_of(state)}, {len(windows)} windows read", flush=True)
    return windows


def rates(windows: list[Any]) -> dict[str, tuple[int, int, int]]:
    """Per rule: (failed, inconclusive, judged) windows."""
    from tasks.config.models import Analysis
    from tasks.release.analysis import judge

    out = {}
    for name, rule in RULES.items():
        verdicts = [judge(Analysis(**rule), w, "a window").verdict for w in windows]
        out[name] = (verdicts.count("fail"), verdicts.count("inconclusive"), len(verdicts))
    return out


def ratios(windows: list[Any]) -> tuple[float, float]:
    """Median green/blue p95 ratio, and blue's median p95 (ms), over windows with data on both sides."""
    pairs = [(w.green.latency_ms["p95"], w.blue.latency_ms["p95"]) for w in windows
             if w.green.latency_ms.get("p95") and w.blue.latency_ms.get("p95")]
    return statistics.median(g / b for g, b in pairs), statistics.median(b for _, b in pairs)


def main() -> int:
    load_sandbox()
    from flows.pipeline import deploy_service
    from harness.services import make_service
    from tasks.release.outcome import outcome_of

    interval = (WINDOWS + 2) * WINDOW_MINUTES * 60 + 120  # AWS seconds at 50 %: the windows and their start
    print(f"\n== canary analysis: {WINDOWS} windows of {WINDOW_MINUTES} AWS minutes per green, "
          f"{CLIENTS} steady clients, blue SLOW_MS={BASE_MS}", flush=True)
    with tempfile.TemporaryDirectory(prefix="bench-analysis-") as tmp:
        sut = make_service(Path(tmp), traffic={"type": "canary", "percent": 50, "interval_seconds": interval},
                           verify_paths=("/health",), deploy_role=False)
        os.environ["ECS_PIPELINE_DEPLOYMENTS"] = str(sut.yaml_path.parent)
        try:
            commit(sut, "v1", BASE_MS)
            assert outcome_of(deploy_service(sut.name, return_state=True)) == "Deployed"
            equal = hold_green(sut, "v2", BASE_MS)
            equal_ratio, blue_p95 = ratios(equal)
            extra = max(1, round(0.2 * blue_p95))
            slow = hold_green(sut, "v3", BASE_MS + extra)
            slow_ratio, _ = ratios(slow)
        finally:
            sut.cleanup()
    print(f"   equal green: median p95 ratio {equal_ratio:.2f} (blue's median p95 {blue_p95:.0f} ms)")
    print(f"   slower green: SLOW_MS +{extra} ms, median p95 ratio {slow_ratio:.2f}")
    print(f"   {'rule':<28} {'false positives (equal)':>26} {'detected (20 % slower)':>24}"
          "   (inc.: inconclusive windows, too few requests)")
    equal_rates, slow_rates = rates(equal), rates(slow)
    for name in RULES:
        fp, fp_inc, n = equal_rates[name]
        hit, hit_inc, m = slow_rates[name]
        print(f"   {name:<28} {f'{fp}/{n} ({100 * fp / n:.0f} %)':>18}{f', {fp_inc} inc.':>8} "
              f"{f'{hit}/{m} ({100 * hit / m:.0f} %)':>16}{f', {hit_inc} inc.':>8}")
    return 0 if len(equal) >= 20 and len(slow) >= 20 else 1


if __name__ == "__main__":
    sys.exit(main())
