"""ALB metrics from real proxied requests, read back with CloudWatch's statistics, and alarms on them.

moto stores metrics and alarms but evaluates nothing and knows no percentile; here the listener
proxies record every request per target group and load balancer. Each (time-scaled) minute closes
into one data point per metric, a set of values with counts as an ALB publishes them: RequestCount
and HTTPCode_*_Count as the value 1 counted once per request (ALB's guide: "Minimum, Maximum, and
Average all return 1"), TargetResponseTime as every request's own time. GetMetricStatistics and
GetMetricData on ``AWS/ApplicationELB`` are answered from those samples, percentiles and trimmed
statistics included, once their minute has closed; other namespaces and math expressions stay
moto's. Metric alarms on the ALB metrics flip between OK and ALARM.

Time: timestamps are wall-clock; every AWS duration (a Period, the minute a data point covers, the
minute a StartTime is rounded down to) is divided by the time scale, as every other wait is.
"""

from __future__ import annotations

import bisect
import json
import operator
import threading
from collections import defaultdict
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

from .cloudwatch_reads import MetricReads
from .cloudwatch_stats import (
    NAMESPACE,
    UNITS,
    Dims,
    Pairs,
    Stat,
    dims_of,
    merge,
    minute,
    pairs_of,
    parse_stat,
    span,
    statistic,
    too_few,
)
from .world import LOCK, arn_suffix, cloudwatch, elbv2, log, now, scaled

__all__ = ["AlarmEvaluator", "MetricReads", "Metrics", "Stat", "describe_alarm_history", "parse_stat", "statistic"]

COMPARE: dict[str, tuple[Callable[[float, float], bool], str]] = {
    "GreaterThanOrEqualToThreshold": (operator.ge, "greater than or equal to"),
    "GreaterThanThreshold": (operator.gt, "greater than"),
    "LessThanThreshold": (operator.lt, "less than"),
    "LessThanOrEqualToThreshold": (operator.le, "less than or equal to"),
}


# ---------------------------------------------------------------- the samples

class Metrics:
    """ALB request counts, response times and host counts per (time-scaled) minute."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        # minute index -> (name, dims) -> samples, while that minute is still open
        self._open: dict[int, dict[tuple[str, Dims], list[float]]] = defaultdict(lambda: defaultdict(list))
        # (name, dims) -> [(minute start, samples sorted by value)] in time order, closed minutes only
        self._series: dict[tuple[str, Dims], list[tuple[float, Pairs]]] = defaultdict(list)

    def record(self, lb_arn: str, tg_arn: str | None, status: int, from_target: bool,
               seconds: float | None = None) -> None:
        lb = (("LoadBalancer", arn_suffix(lb_arn, "app/")),)
        both = tuple(sorted((*lb, ("TargetGroup", arn_suffix(tg_arn, "targetgroup/"))))) if tg_arn else None
        names: list[tuple[str, Dims]] = [("RequestCount", lb)]
        if both:
            names.append(("RequestCount", both))
            if from_target:
                names += [(f"HTTPCode_Target_{status // 100}XX_Count", both),
                          (f"HTTPCode_Target_{status // 100}XX_Count", lb)]
        if not from_target and status >= 500:
            names.append(("HTTPCode_ELB_5XX_Count", lb))
        with self._lock:
            bucket = self._open[int(now() // minute())]
            for key in names:
                bucket[key].append(1.0)
            if seconds is not None and both:
                bucket[("TargetResponseTime", both)].append(seconds)
                bucket[("TargetResponseTime", lb)].append(seconds)

    def flush(self) -> None:
        """Close every minute that has ended: one data point per metric, also put into moto."""
        current = int(now() // minute())
        with self._lock:
            closed = sorted(m for m in self._open if m < current)
            if not closed:
                return
            done = {m: self._open.pop(m) for m in closed}
        gauges = _host_counts()
        if gauges:
            done.setdefault(closed[-1], defaultdict(list)).update(gauges)
        published: list[tuple[float, str, Dims, Pairs]] = []
        with self._lock:
            for m, metrics in done.items():
                stamp = m * minute()
                for key, samples in metrics.items():
                    pairs = pairs_of(samples)
                    self._series[key].append((stamp, pairs))
                    published.append((stamp, *key, pairs))
            horizon = now() - scaled(3600 * 6, floor=600)
            for key in list(self._series):
                kept = self._series[key][bisect.bisect_left(self._series[key], horizon, key=lambda p: p[0]):]
                if kept:
                    self._series[key] = kept
                else:
                    del self._series[key]
        _publish(published, horizon)

    def data(self, name: str, dims: Dims, start: float, end: float,
             open_minutes: bool = False) -> list[tuple[float, Pairs]]:
        """Data points of exactly this metric (name and dimension set) stamped in [start, end).

        ``open_minutes`` adds the minutes still open, each stamped with its start (alarms look at them).
        """
        key = (name, tuple(sorted(dims)))
        with self._lock:
            series = self._series.get(key, [])
            found = series[bisect.bisect_left(series, start, key=lambda p: p[0]):
                           bisect.bisect_left(series, end, key=lambda p: p[0])]
            if open_minutes:
                found = found + [(m * minute(), pairs_of(b[key])) for m, b in sorted(self._open.items())
                                 if key in b and start <= m * minute() < end]
        return found


def _publish(points: list[tuple[float, str, Dims, Pairs]], horizon: float) -> None:
    """moto keeps a statistic set per data point (for ListMetrics); reads are answered here."""
    data = [{
        "MetricName": name, "Unit": UNITS.get(name, "Count"),
        "StatisticValues": {"SampleCount": sum(c for _, c in pairs), "Sum": sum(v * c for v, c in pairs),
                            "Minimum": pairs[0][0], "Maximum": pairs[-1][0]},
        "Dimensions": [{"Name": k, "Value": v} for k, v in dims],
        "Timestamp": datetime.fromtimestamp(stamp, UTC).replace(tzinfo=None),  # moto compares naive UTC
    } for stamp, name, dims, pairs in points if pairs]
    if not data:
        return
    with LOCK:
        try:
            backend = cloudwatch()
            backend.put_metric_data(NAMESPACE, data)
            if len(backend.metric_data) > 20000:  # keep moto's linear scans cheap
                cutoff = datetime.fromtimestamp(horizon, UTC).replace(tzinfo=None)
                backend.metric_data = [m for m in backend.metric_data
                                       if m.namespace != NAMESPACE or m.timestamp >= cutoff]
        except Exception as exc:  # noqa: BLE001 - metrics must never stop the controller
            log.warning("put_metric_data failed: %s", exc)


def _host_counts() -> dict[tuple[str, Dims], list[float]]:
    """HealthyHostCount/UnHealthyHostCount per target group behind each load balancer."""
    out: dict[tuple[str, Dims], list[float]] = {}
    with LOCK:
        for tg in list(elbv2().target_groups.values()):
            states = [e["State"] for e in tg.targets.values()]
            if not states:
                continue
            for lb_arn in set(tg.load_balancer_arns):
                dims = tuple(sorted((("LoadBalancer", arn_suffix(lb_arn, "app/")),
                                     ("TargetGroup", arn_suffix(tg.arn, "targetgroup/")))))
                out[("HealthyHostCount", dims)] = [float(states.count("healthy"))]
                out[("UnHealthyHostCount", dims)] = [float(states.count("unhealthy"))]
    return out


# ---------------------------------------------------------------- alarms

class AlarmEvaluator:
    """Evaluates metric alarms on AWS/ApplicationELB metrics, like CloudWatch would."""

    def __init__(self, metrics: Metrics) -> None:
        self.metrics = metrics

    def tick(self) -> None:
        with LOCK:
            alarms = [a for a in cloudwatch().alarms.values()
                      if a.namespace == NAMESPACE and a.metric_name and a.comparison_operator in COMPARE]
        for alarm in alarms:
            self._evaluate(alarm)

    def _evaluate(self, alarm: Any) -> None:
        period = span(float(alarm.period or 60))
        periods = int(alarm.evaluation_periods or 1)
        needed = int(alarm.datapoints_to_alarm or periods)
        dims = dims_of({"Name": d.name, "Value": d.value} for d in alarm.dimensions)
        stat = parse_stat(alarm.extended_statistic or "") or parse_stat(alarm.statistic or "Sum") or Stat("Sum")
        cmp, words = COMPARE[alarm.comparison_operator]
        threshold = float(alarm.threshold)
        t = now()
        values: list[float] = []
        for i in range(periods):
            end = t - i * period
            # a data point counts when its minute overlaps the period; the open minute counts as well
            pairs = merge(self.metrics.data(alarm.metric_name, dims, end - period - minute() + 1e-9, end, True))
            v = statistic(pairs, stat)
            if stat.kind == "p" and too_few(pairs, stat) and alarm.evaluate_low_sample_count_percentile == "ignore":
                return  # "the alarm state does not change during periods with too few data points"
            if v is None:
                v = 0.0 if alarm.treat_missing_data != "breaching" else threshold
            values.append(v)
        breaching = [v for v in values if cmp(v, threshold)]
        state = "ALARM" if len(breaching) >= needed else "OK"
        if state == alarm.state_value:
            return
        shown = ", ".join(f"{v:.1f}" for v in values)
        verb = "was" if state == "ALARM" else "was not"
        reason = (f"Threshold Crossed: {len(values)} datapoint(s) [{shown}] {verb} "
                  f"{words} the threshold ({threshold:.1f}).")
        with LOCK:
            alarm.update_state(reason, "{}", state)
        log.info("alarm %s -> %s: %s", alarm.name, state, reason)


def describe_alarm_history(params: dict[str, Any]) -> dict[str, Any]:
    """DescribeAlarmHistory from moto's alarm state changes (moto records them but lacks the call).

    Newest first, like CloudWatch; only StateUpdate items exist in the sandbox.
    """
    wanted = params.get("AlarmName")
    kind = params.get("HistoryItemType")
    start, end = params.get("StartDate"), params.get("EndDate")
    items: list[dict[str, Any]] = []
    if kind not in (None, "StateUpdate"):
        return {"AlarmHistoryItems": []}
    for alarm in cloudwatch().alarms.values():
        if wanted and alarm.name != wanted:
            continue
        states = [(h[3], h[4]) for h in alarm.history] + [(alarm.state_value, alarm.state_updated_timestamp)]
        # the reason of each new state: the next record's, the current one's for the last change
        reasons = [h[1] for h in alarm.history[1:]] + [alarm.state_reason] if alarm.history else []
        for (old, _), (new, at), reason in zip(states[:-1], states[1:], reasons, strict=True):
            stamp = at.replace(tzinfo=at.tzinfo or UTC).timestamp()
            if (start is not None and stamp < float(start)) or (end is not None and stamp > float(end)):
                continue
            items.append({
                "AlarmName": alarm.name, "AlarmType": "MetricAlarm", "Timestamp": stamp,
                "HistoryItemType": "StateUpdate", "HistorySummary": f"Alarm updated from {old} to {new}",
                "HistoryData": json.dumps({"version": "1.0", "oldState": {"stateValue": old},
                                           "newState": {"stateValue": new, "stateReason": reason}}),
            })
    items.sort(key=lambda i: i["Timestamp"], reverse=params.get("ScanBy") != "TimestampAscending")
    limit = int(params.get("MaxRecords") or 100)
    return {"AlarmHistoryItems": items[:limit]}
