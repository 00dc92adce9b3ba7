"""ALB metrics from real proxied requests, and alarms evaluated on them.

moto stores metrics and alarms but evaluates nothing; here the listener proxies
count requests per target group, publish them as ``AWS/ApplicationELB`` data
points, and metric alarms on those metrics flip between OK and ALARM.
"""

from __future__ import annotations

import bisect
import json
import operator
import threading
from collections import defaultdict
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Any

from .world import LOCK, arn_suffix, cloudwatch, elbv2, log, now, scaled

NAMESPACE = "AWS/ApplicationELB"
COMPARE: dict[str, tuple[Callable[[float, float], bool], str]] = {
    "GreaterThanOrEqualToThreshold": (operator.ge, "greater than or equal to"),
    "GreaterThanThreshold": (operator.gt, "greater than"),
    "LessThanThreshold": (operator.lt, "less than"),
    "LessThanOrEqualToThreshold": (operator.le, "less than or equal to"),
}
Dims = tuple[tuple[str, str], ...]
UNITS = {"TargetResponseTime": "Seconds", "HealthyHostCount": "Count", "UnHealthyHostCount": "Count"}


class Metrics:
    """ALB request counts, response times and host counts, flushed as data points."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._pending: dict[tuple[str, Dims], float] = defaultdict(float)
        self._timing: dict[Dims, list[float]] = defaultdict(lambda: [0.0, 0.0])
        # (name, dims) -> (time, value) in time order: an alarm reads its few series, not every point
        self._series: dict[tuple[str, Dims], list[tuple[float, float]]] = defaultdict(list)
        self._last_flush = now()

    def record(self, lb_arn: str, tg_arn: str | None, status: int, from_target: bool,
               seconds: float | None = None) -> None:
        lb = (("LoadBalancer", arn_suffix(lb_arn, "app/")),)
        names: list[tuple[str, Dims]] = []
        if tg_arn:
            both = (*lb, ("TargetGroup", arn_suffix(tg_arn, "targetgroup/")))
            names.append(("RequestCount", both))
            if from_target:
                names.append((f"HTTPCode_Target_{status // 100}XX_Count", both))
                names.append((f"HTTPCode_Target_{status // 100}XX_Count", lb))
        names.append(("RequestCount", lb))
        if not from_target and status >= 500:
            names.append(("HTTPCode_ELB_5XX_Count", lb))
        with self._lock:
            for key in names:
                self._pending[key] += 1
            if seconds is not None and tg_arn:
                for dims in ((*lb, ("TargetGroup", arn_suffix(tg_arn, "targetgroup/"))), lb):
                    self._timing[dims][0] += seconds
                    self._timing[dims][1] += 1

    def flush(self) -> None:
        """Publish one data point per metric each (scaled) minute into moto."""
        t = now()
        if t - self._last_flush < scaled(60):
            return
        self._last_flush = t
        gauges = _host_counts()
        with self._lock:
            pending, self._pending = self._pending, defaultdict(float)
            for dims, (total, count) in self._timing.items():
                pending[("TargetResponseTime", dims)] = total / count
            self._timing.clear()
            pending.update(gauges)
            for key, value in pending.items():
                self._series[key].append((t, value))
            horizon = t - scaled(3600 * 6, floor=600)
            for key in list(self._series):
                kept = self._series[key][bisect.bisect_left(self._series[key], horizon, key=lambda p: p[0]):]
                if kept:
                    self._series[key] = kept
                else:
                    del self._series[key]
        if not pending:
            return
        data = [{
            "MetricName": name, "Value": value, "Unit": UNITS.get(name, "Count"),
            "Dimensions": [{"Name": k, "Value": v} for k, v in dims],
            "Timestamp": datetime.now(UTC).replace(tzinfo=None),  # moto compares naive UTC
        } for (name, dims), value in pending.items()]
        with LOCK:
            try:
                backend = cloudwatch()
                backend.put_metric_data(NAMESPACE, data)
                cutoff = datetime.now(UTC).replace(tzinfo=None) - timedelta(hours=3)
                if len(backend.metric_data) > 50000:  # keep moto's linear scans cheap
                    backend.metric_data = [m for m in backend.metric_data
                                           if m.namespace != NAMESPACE or m.timestamp >= cutoff]
            except Exception as exc:  # noqa: BLE001 - metrics must never stop the controller
                log.warning("put_metric_data failed: %s", exc)

    def points(self, name: str, dims: dict[str, str], start: float, end: float) -> list[float]:
        """Data points of a metric whose dimensions include ``dims``, in [start, end)."""
        def matches(key: tuple[str, Dims]) -> bool:
            return key[0] == name and all(dict(key[1]).get(k) == val for k, val in dims.items())

        with self._lock:
            found = [v for key, series in self._series.items() if matches(key)
                     for _, v in series[bisect.bisect_left(series, start, key=lambda p: p[0]):
                                        bisect.bisect_left(series, end, key=lambda p: p[0])]]
            if start <= now() < end:
                found += [v for key, v in self._pending.items() if matches(key)]
        return found


def _host_counts() -> dict[tuple[str, Dims], float]:
    """HealthyHostCount/UnHealthyHostCount per target group behind each load balancer."""
    out: dict[tuple[str, Dims], float] = {}
    with LOCK:
        for tg in list(elbv2().target_groups.values()):
            states = [e["State"] for e in tg.targets.values()]
            if not states:
                continue
            for lb_arn in set(tg.load_balancer_arns):
                dims = (("LoadBalancer", arn_suffix(lb_arn, "app/")),
                        ("TargetGroup", arn_suffix(tg.arn, "targetgroup/")))
                out[("HealthyHostCount", dims)] = float(states.count("healthy"))
                out[("UnHealthyHostCount", dims)] = float(states.count("unhealthy"))
    return out


def _statistic(values: list[float], stat: str) -> float | None:
    if stat == "SampleCount":
        return float(len(values))
    if stat == "Sum":
        return float(sum(values))
    if not values:
        return None
    if stat == "Average":
        return sum(values) / len(values)
    if stat == "Maximum":
        return max(values)
    if stat == "Minimum":
        return min(values)
    return None


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
        period = scaled(float(alarm.period or 60))
        periods = int(alarm.evaluation_periods or 1)
        needed = int(alarm.datapoints_to_alarm or periods)
        dims = {d.name: d.value for d in alarm.dimensions}
        stat = alarm.statistic or "Sum"
        cmp, words = COMPARE[alarm.comparison_operator]
        threshold = float(alarm.threshold)
        t = now()
        values: list[float] = []
        for i in range(periods):
            end = t - i * period
            v = _statistic(self.metrics.points(alarm.metric_name, dims, end - period, end), stat)
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
