"""Green's and blue's ALB metrics over one traffic step, read in one GetMetricData call.

An Application Load Balancer publishes, per target group, ``RequestCount``,
``HTTPCode_Target_5XX_Count`` and ``TargetResponseTime`` (seconds) in namespace
``AWS/ApplicationELB`` with the dimensions ``TargetGroup`` ("targetgroup/<name>/<id>")
and ``LoadBalancer`` ("app/<name>/<id>"), one data point a minute. A window is
read twice in the same call: as one period covering all of it (counts and the
percentiles the rules judge) and, for the statistical test, as one-minute
periods (each a sample of that minute's percentile).

CloudWatch's period rules (GetMetricData, MetricStat.Period): "For metrics
with regular resolution, a period can be as short as one minute (60 seconds)
and must be a multiple of 60"; a start time less than 15 days ago is rounded
down to the whole minute. So the whole-window period is the window rounded up
to whole minutes plus one, so the rounded start still yields a single data
point. In a time-scaled rehearsal the window's wall seconds are AWS seconds
divided by the time scale: the request names periods in AWS seconds, times in
wall time, as the sandbox plays them.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

NAMESPACE = "AWS/ApplicationELB"
MINUTE = 60  # the shortest period of a regular-resolution metric
PERCENTILES = ("p50", "p95", "p99")


def target_group_dimension(arn: str) -> str:
    """``targetgroup/<name>/<id>`` from a target group ARN, as the ALB names it in its metrics."""
    _, _, rest = arn.partition(":targetgroup/")
    if not rest:
        raise ValueError(f"not a target group ARN: {arn}")
    return f"targetgroup/{rest}"


def load_balancer_dimension(arn: str) -> str:
    """``app/<name>/<id>`` from a load balancer's or one of its listeners' ARNs."""
    _, _, rest = arn.partition(":loadbalancer/")
    if not rest:
        _, _, rest = arn.partition(":listener/")
    parts = rest.split("/")
    if len(parts) < 3 or parts[0] != "app":
        raise ValueError(f"not an Application Load Balancer or listener ARN: {arn}")
    return "/".join(parts[:3])


@dataclass(frozen=True)
class Pair:
    """Whose metrics to compare: green's and blue's target groups behind one load balancer."""

    load_balancer: str  # a load balancer or listener ARN
    green_target_group: str
    blue_target_group: str


@dataclass(frozen=True)
class Side:
    """One target group over a window: requests, 5xx from its targets, response-time percentiles in ms
    over the whole window (None: no data), and the percentiles minute by minute (the test's samples)."""

    requests: int
    errors: int
    latency_ms: dict[str, float | None] = field(default_factory=dict)
    samples_ms: dict[str, list[float]] = field(default_factory=dict)


@dataclass(frozen=True)
class Window:
    start: datetime
    end: datetime
    period: int  # AWS seconds of the whole-window period
    green: Side
    blue: Side


def whole_period(start: datetime, end: datetime, time_scale: float) -> int:
    """The whole window as one regular-resolution period (AWS seconds): whole minutes, one more for the
    start CloudWatch rounds down."""
    aws_seconds = max(0.0, (end - start).total_seconds()) * time_scale
    return (math.ceil(aws_seconds / MINUTE) + 1) * MINUTE


def _stat(query_id: str, name: str, dims: list[dict[str, str]], stat: str, period: int) -> dict[str, Any]:
    return {"Id": query_id, "ReturnData": True, "MetricStat": {
        "Metric": {"Namespace": NAMESPACE, "MetricName": name, "Dimensions": dims},
        "Period": period, "Stat": stat}}


def queries(pair: Pair, period: int, percentiles: Sequence[str], samples: bool) -> list[dict[str, Any]]:
    """GetMetricData's MetricDataQueries for both target groups: ids ``<g|b>_<what>[_m]`` (``_m``: by minute)."""
    lb = load_balancer_dimension(pair.load_balancer)
    out: list[dict[str, Any]] = []
    for side, arn in (("g", pair.green_target_group), ("b", pair.blue_target_group)):
        dims = [{"Name": "TargetGroup", "Value": target_group_dimension(arn)}, {"Name": "LoadBalancer", "Value": lb}]
        out.append(_stat(f"{side}_requests", "RequestCount", dims, "Sum", period))
        out.append(_stat(f"{side}_errors", "HTTPCode_Target_5XX_Count", dims, "Sum", period))
        for p in percentiles:
            out.append(_stat(f"{side}_{p}", "TargetResponseTime", dims, p, period))
            if samples:
                out.append(_stat(f"{side}_{p}_m", "TargetResponseTime", dims, p, MINUTE))
    return out


def _side(values: dict[str, list[float]], side: str, percentiles: Sequence[str]) -> Side:
    latency: dict[str, float | None] = {}
    samples: dict[str, list[float]] = {}
    for p in percentiles:
        found = values.get(f"{side}_{p}") or []
        # One data point covers the window (whole_period); were there more, the first covers most of it.
        latency[p] = found[0] * 1000 if found else None
        samples[p] = [v * 1000 for v in values.get(f"{side}_{p}_m") or []]
    return Side(round(sum(values.get(f"{side}_requests") or [])), round(sum(values.get(f"{side}_errors") or [])),
                latency, samples)


def read_window(cloudwatch: Any, pair: Pair, start: datetime, end: datetime, *, time_scale: float = 1.0,
                percentiles: Sequence[str] = PERCENTILES, samples: bool = False) -> Window:
    """Both target groups' metrics over [START, END) (wall times), in one GetMetricData call (pages followed)."""
    period = whole_period(start, end, time_scale)
    request: dict[str, Any] = {"MetricDataQueries": queries(pair, period, percentiles, samples),
                               "StartTime": start, "EndTime": end, "ScanBy": "TimestampAscending"}
    values: dict[str, list[float]] = {}
    while True:
        answer = cloudwatch.get_metric_data(**request)
        for result in answer.get("MetricDataResults") or []:
            values.setdefault(result["Id"], []).extend(float(v) for v in result.get("Values") or [])
        token = answer.get("NextToken")
        if not token:
            break
        request["NextToken"] = token
    return Window(start, end, period, _side(values, "g", percentiles), _side(values, "b", percentiles))
