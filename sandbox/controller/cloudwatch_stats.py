"""CloudWatch's statistics over (value, count) samples, and the sandbox's metric minute.

Pure functions of the samples (User Guide, "Statistics definitions"): the basic statistics,
percentiles, trimmed and winsorized means, trimmed counts and sums, percentile ranks. The reads
(cloudwatch_reads.py) and the alarms (cloudwatch.py) share them.
"""

from __future__ import annotations

import math
import re
from collections import defaultdict
from typing import Any, NamedTuple

from .world import scaled

NAMESPACE = "AWS/ApplicationELB"
Dims = tuple[tuple[str, str], ...]
Pairs = list[tuple[float, float]]  # (value, count), as PutMetricData's Values and Counts
UNITS = {"TargetResponseTime": "Seconds", "HealthyHostCount": "Count", "UnHealthyHostCount": "Count"}
BASIC = ("SampleCount", "Average", "Sum", "Minimum", "Maximum")


def minute() -> float:
    """One AWS minute on the sandbox's clock: the span of one ALB data point."""
    return scaled(60)


def span(aws_seconds: float) -> float:
    """An AWS period on the sandbox's clock, in whole sandbox minutes (or parts of one)."""
    return float(aws_seconds) / 60.0 * minute()


class Stat(NamedTuple):
    """A parsed statistic: kind, bounds (None: open) and whether the bounds are percentages."""

    kind: str  # SampleCount, Sum, ... | p | tm | wm | tc | ts | pr
    low: float | None = None
    high: float | None = None
    percent: bool = True


# "pNN.NN": a percentile "using up to two decimal places"; trimmed bounds "with up to 10 decimal places"
_SHORT = re.compile(r"^(?:p(\d{1,3}(?:\.\d{1,2})?)|(tm|wm|tc|ts)(\d{1,3}(?:\.\d{1,10})?))$")
_RANGE = re.compile(r"^(TM|WM|TC|TS|PR)\(([^:()]*):([^:()]*)\)$")
_BOUND = re.compile(r"^(\d+(?:\.\d+)?)(%?)$")


def parse_stat(text: str) -> Stat | None:
    """A CloudWatch statistic name (User Guide, "Statistics definitions"), or None when it is none."""
    if text in BASIC:
        return Stat(text)
    if text == "IQM":
        return Stat("tm", 25.0, 75.0)
    short = _SHORT.match(text)
    if short:
        value = float(short.group(1) or short.group(3))
        if value > 100:
            return None
        return Stat("p", value, value) if short.group(1) else Stat(short.group(2), None, value)
    ranged = _RANGE.match(text)
    if not ranged:
        return None
    bounds = [_BOUND.match(b) if b else None for b in ranged.group(2, 3)]
    if any(b is None and raw for b, raw in zip(bounds, ranged.group(2, 3), strict=True)):
        return None
    marks = {b.group(2) for b in bounds if b is not None}
    if not marks or len(marks) > 1:
        return None
    percent = marks == {"%"}
    low, high = (float(b.group(1)) if b is not None else None for b in bounds)
    if (kind := ranged.group(1).lower()) == "pr" and percent:
        return None  # PR's bounds are values: PR(:300), PR(100:2000)
    if percent and any(v is not None and v > 100 for v in (low, high)):
        return None
    if low is not None and high is not None and low >= high:
        return None
    return Stat(kind, low, high, percent)


def _percentile(pairs: Pairs, total: float, p: float) -> float:
    """Nearest rank: the smallest sample with at least p % of the samples at or below it."""
    rank = max(1.0, math.ceil(p / 100.0 * total - 1e-9))
    seen = 0.0
    for value, count in pairs:
        seen += count
        if seen >= rank:
            return value
    return pairs[-1][0]


def _trim(pairs: Pairs, total: float, stat: Stat) -> tuple[Pairs, float, float, float, float]:
    """The samples within STAT's bounds, the counts below and above them, and the values at the bounds."""
    if stat.percent:  # positions: the samples from the low % to the high % of the ordered set
        lo, hi = total * (stat.low or 0.0) / 100.0, total * (100.0 if stat.high is None else stat.high) / 100.0
        kept: Pairs = []
        seen = 0.0
        for value, count in pairs:
            share = max(0.0, min(seen + count, hi) - max(seen, lo))
            if share:
                kept.append((value, share))
            seen += count
        return (kept, lo, total - hi, _percentile(pairs, total, stat.low or 0.0),
                _percentile(pairs, total, 100.0 if stat.high is None else stat.high))
    # values: low exclusive, high inclusive ("PR(100:2000) ... lower bound exclusive, upper inclusive")
    low, high = -math.inf if stat.low is None else stat.low, math.inf if stat.high is None else stat.high
    return ([(v, c) for v, c in pairs if low < v <= high], sum(c for v, c in pairs if v <= low),
            sum(c for v, c in pairs if v > high), low, high)


def statistic(pairs: Pairs, stat: Stat) -> float | None:
    """STAT of the samples (sorted by value); None where CloudWatch has no value."""
    total = sum(c for _, c in pairs)
    if stat.kind == "SampleCount":
        return total if total else None
    if not total:
        return None
    if stat.kind == "Sum":
        return sum(v * c for v, c in pairs)
    if stat.kind == "Average":
        return sum(v * c for v, c in pairs) / total
    if stat.kind == "Minimum":
        return pairs[0][0]
    if stat.kind == "Maximum":
        return pairs[-1][0]
    if pairs[0][0] < 0:
        return None  # "Percentile statistics are not available for metrics when any of the metric values are negative"
    if stat.kind == "p":
        return _percentile(pairs, total, float(stat.high or 0.0))
    kept, below, above, floor_v, ceil_v = _trim(pairs, total, stat)
    count = sum(c for _, c in kept)
    summed = sum(v * c for v, c in kept)
    if stat.kind == "tc":
        return count
    if stat.kind == "ts":
        return summed
    if stat.kind == "pr":
        return 100.0 * count / total
    if stat.kind == "wm":
        return (summed + (below * floor_v if below else 0.0) + (above * ceil_v if above else 0.0)) / total
    return summed / count if count else None  # tm


def pairs_of(samples: list[float]) -> Pairs:
    counts: dict[float, float] = defaultdict(float)
    for value in samples:
        counts[value] += 1
    return sorted(counts.items())


def merge(points: list[tuple[float, Pairs]]) -> Pairs:
    counts: dict[float, float] = defaultdict(float)
    for _, pairs in points:
        for value, count in pairs:
            counts[value] += count
    return sorted(counts.items())


def dims_of(raw: Any) -> Dims:
    return tuple(sorted((str(d.get("Name")), str(d.get("Value"))) for d in raw or []))


def too_few(pairs: Pairs, stat: Stat) -> bool:
    """CloudWatch's guide: the low-sample setting applies below 10/(1-p) data points (p >= 0.5), 10/p below."""
    p = float(stat.high or 0.0) / 100.0
    needed = 10 / (1 - p) if 0.5 <= p < 1 else 10 / p if p > 0 else 0.0
    return sum(c for _, c in pairs) < needed
