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

import base64
import bisect
import hashlib
import json
import math
import operator
import re
import threading
from collections import defaultdict
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any, NamedTuple

from .ecr_api import ApiError
from .world import LOCK, arn_suffix, cloudwatch, elbv2, log, now, scaled

NAMESPACE = "AWS/ApplicationELB"
COMPARE: dict[str, tuple[Callable[[float, float], bool], str]] = {
    "GreaterThanOrEqualToThreshold": (operator.ge, "greater than or equal to"),
    "GreaterThanThreshold": (operator.gt, "greater than"),
    "LessThanThreshold": (operator.lt, "less than"),
    "LessThanOrEqualToThreshold": (operator.le, "less than or equal to"),
}
Dims = tuple[tuple[str, str], ...]
Pairs = list[tuple[float, float]]  # (value, count), as PutMetricData's Values and Counts
UNITS = {"TargetResponseTime": "Seconds", "HealthyHostCount": "Count", "UnHealthyHostCount": "Count"}
BASIC = ("SampleCount", "Average", "Sum", "Minimum", "Maximum")
MAX_STATISTICS_POINTS = 1440  # GetMetricStatistics: "If you request more than 1,440 data points, ... an error"
MAX_DATA_POINTS = 100800  # GetMetricData: "If you omit this, the default of 100,800 is used."


def minute() -> float:
    """One AWS minute on the sandbox's clock: the span of one ALB data point."""
    return scaled(60)


def span(aws_seconds: float) -> float:
    """An AWS period on the sandbox's clock, in whole sandbox minutes (or parts of one)."""
    return float(aws_seconds) / 60.0 * minute()


# ---------------------------------------------------------------- statistics from (value, count) samples

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
                    pairs = _pairs(samples)
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
                found = found + [(m * minute(), _pairs(b[key])) for m, b in sorted(self._open.items())
                                 if key in b and start <= m * minute() < end]
        return found


def _pairs(samples: list[float]) -> Pairs:
    counts: dict[float, float] = defaultdict(float)
    for value in samples:
        counts[value] += 1
    return sorted(counts.items())


def _merge(points: list[tuple[float, Pairs]]) -> Pairs:
    counts: dict[float, float] = defaultdict(float)
    for _, pairs in points:
        for value, count in pairs:
            counts[value] += count
    return sorted(counts.items())


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


# ---------------------------------------------------------------- GetMetricStatistics and GetMetricData

def _time(value: Any, name: str) -> float:
    if value is None:
        raise ApiError("MissingParameter", f"The parameter {name} is required.")
    if isinstance(value, int | float):
        return float(value)
    try:
        return datetime.fromisoformat(str(value).replace("Z", "+00:00")).timestamp()
    except ValueError:
        raise ApiError("InvalidParameterValue", f"The parameter {name} is not a time stamp: {value!r}.") from None


def _period(value: Any, name: str, error: str = "InvalidParameterValue") -> int:
    """ALB metrics have regular resolution: "a period can be as short as one minute (60 seconds) and must
    be a multiple of 60" (botocore's model, MetricStat.Period); the sandbox refuses any other."""
    if value is None:
        raise ApiError("MissingParameter", f"The parameter {name} is required.")
    period = int(value)
    if period < 60 or period % 60:
        raise ApiError(error, f"The parameter {name} must be a multiple of 60 for {NAMESPACE} metrics, "
                              f"which have regular (1-minute) resolution; got {period}.")
    return period


def _first_bucket(start: float) -> float:
    """StartTime rounded down: a whole minute, 5 minutes past 15 days ago, an hour past 63 days ago."""
    age = now() - start
    unit = span(3600) if age > span(63 * 86400) else span(300) if age > span(15 * 86400) else minute()
    return math.floor(start / unit) * unit


def _dims(raw: Any) -> Dims:
    return tuple(sorted((str(d.get("Name")), str(d.get("Value"))) for d in raw or []))


class MetricReads:
    """GetMetricStatistics and GetMetricData on the ALB namespace, from the recorded samples."""

    def __init__(self, metrics: Metrics) -> None:
        self.metrics = metrics

    def handlers(self) -> dict[str, Callable[[dict[str, Any]], dict[str, Any] | None]]:
        return {"GetMetricStatistics": self.get_metric_statistics, "GetMetricData": self.get_metric_data}

    def _series(self, name: str, dims: Dims, unit: str | None, start: float, end: float,
                period: int) -> list[tuple[float, Pairs]]:
        """(bucket start, merged samples) of each period with data in [start, end)."""
        if unit and unit != UNITS.get(name, "Count"):
            return []  # "If you specify a unit that does not match the data collected, the results ... are null"
        first, step = _first_bucket(start), span(period)
        if now() - start > span(15 * 86400) and period % 300:
            return []  # "Start time between 15 and 63 days ago - Use a multiple of 300 seconds ... or no data"
        buckets: dict[int, list[tuple[float, Pairs]]] = defaultdict(list)
        for point in self.metrics.data(name, dims, first, end):
            buckets[int((point[0] - first) // step + 1e-9)].append(point)
        return [(first + i * step, _merge(points)) for i, points in sorted(buckets.items())]

    def get_metric_statistics(self, params: dict[str, Any]) -> dict[str, Any] | None:
        if params.get("Namespace") != NAMESPACE:
            return None  # other namespaces: moto's own answer
        name = params.get("MetricName")
        if not name:
            raise ApiError("MissingParameter", "The parameter MetricName is required.")
        start, end = _time(params.get("StartTime"), "StartTime"), _time(params.get("EndTime"), "EndTime")
        period = _period(params.get("Period"), "Period")
        basic, extended = params.get("Statistics") or [], params.get("ExtendedStatistics") or []
        if bool(basic) == bool(extended):
            raise ApiError("InvalidParameterCombination",
                           "Must specify either Statistics or ExtendedStatistics, but not both.")
        bad = [s for s in basic if s not in BASIC] + [s for s in extended if (parse_stat(s) or Stat("")).kind != "p"]
        if bad:
            raise ApiError("InvalidParameterValue", f"The statistic {bad[0]!r} is not valid: Statistics takes "
                           f"{', '.join(BASIC)}; ExtendedStatistics takes percentiles p0.0 to p100 (p95, p99.9).")
        if start >= end:
            raise ApiError("InvalidParameterValue", "The parameter StartTime must be less than the parameter EndTime.")
        wanted = math.ceil((end - _first_bucket(start)) / span(period) - 1e-9)
        if wanted > MAX_STATISTICS_POINTS:
            raise ApiError("InvalidParameterCombination",
                           f"You have requested up to {wanted:,} datapoints, which exceeds the limit of 1,440. "
                           "You may reduce the datapoints requested by increasing Period, "
                           "or decreasing the time range.")
        points = []
        for stamp, pairs in self._series(name, _dims(params.get("Dimensions")), params.get("Unit"),
                                         start, end, period):
            point: dict[str, Any] = {"Timestamp": stamp, "Unit": UNITS.get(name, "Count")}
            for stat in basic:
                point[stat] = statistic(pairs, Stat(stat))
            values = {s: statistic(pairs, parse_stat(s) or Stat("")) for s in extended}
            if extended:
                point["ExtendedStatistics"] = {s: v for s, v in values.items() if v is not None}
            points.append(point)
        points.reverse()  # "Data points are not returned in chronological order."
        return {"Label": name, "Datapoints": points}

    def get_metric_data(self, params: dict[str, Any]) -> dict[str, Any] | None:
        queries = params.get("MetricDataQueries") or []
        if any("MetricStat" not in q or q["MetricStat"].get("Metric", {}).get("Namespace") != NAMESPACE
               for q in queries):
            return None  # math expressions and other namespaces: moto's own answer
        if not queries:
            raise ApiError("MissingParameter", "The parameter MetricDataQueries is required.")
        if len(queries) > 500:
            raise ApiError("ValidationError", "A GetMetricData call can include as many as 500 MetricDataQuery "
                           f"structures; it has {len(queries)}.")
        start, end = _time(params.get("StartTime"), "StartTime"), _time(params.get("EndTime"), "EndTime")
        if start >= end:
            raise ApiError("ValidationError", "The parameter StartTime must be less than the parameter EndTime.")
        ids = [str(q.get("Id") or "") for q in queries]
        for i, (qid, query) in enumerate(zip(ids, queries, strict=True), 1):
            where = f"MetricDataQueries.member.{i}"
            if not re.fullmatch(r"[a-z][A-Za-z0-9_]*", qid) or ids.count(qid) > 1:
                raise ApiError("ValidationError", f"The value {qid!r} for parameter {where}.Id is not valid: a "
                               "unique name of letters, digits and underscores starting with a lowercase letter.")
            _period(query["MetricStat"].get("Period"), f"{where}.MetricStat.Period", "ValidationError")
            if parse_stat(str(query["MetricStat"].get("Stat"))) is None:
                raise ApiError("ValidationError", f"The value {query['MetricStat'].get('Stat')!r} for parameter "
                               f"{where}.MetricStat.Stat is not a CloudWatch statistic (Sum, Average, SampleCount, "
                               "Minimum, Maximum, p95, p99.9, tm90, TM(10%:90%), tc90, ts90, wm90, PR(:0.3), IQM).")
        descending = params.get("ScanBy", "TimestampDescending") != "TimestampAscending"
        results = []
        for qid, query in zip(ids, queries, strict=True):
            if query.get("ReturnData") is False:
                continue
            ms = query["MetricStat"]
            name, stat = str(ms["Metric"].get("MetricName") or ""), parse_stat(str(ms["Stat"])) or Stat("")
            points = [(t, v) for t, pairs in self._series(name, _dims(ms["Metric"].get("Dimensions")),
                                                           ms.get("Unit"), start, end, int(ms["Period"]))
                      if (v := statistic(pairs, stat)) is not None]
            if descending:
                points.reverse()
            results.append({"Id": qid, "Label": query.get("Label") or name, "points": points})
        return _page(results, params)


def _page(results: list[dict[str, Any]], params: dict[str, Any]) -> dict[str, Any]:
    """At most MaxDatapoints values per answer; the rest behind NextToken (status PartialData)."""
    request = json.dumps({k: v for k, v in params.items() if k != "NextToken"}, sort_keys=True, default=str)
    offset = 0
    if params.get("NextToken"):
        try:
            token = json.loads(base64.b64decode(params["NextToken"]))
            offset = int(token["offset"])
            assert token["request"] == hash_text(request)
        except Exception:  # noqa: BLE001 - any token not ours
            raise ApiError("InvalidNextToken", "The service returned an invalid next token.") from None
    budget = int(params.get("MaxDatapoints") or MAX_DATA_POINTS)
    out, seen, emitted = [], 0, 0
    for result in results:
        points = result.pop("points")
        lo = min(max(offset - seen, 0), len(points))
        hi = min(len(points), lo + max(budget - emitted, 0))
        emitted += hi - lo
        seen += len(points)
        out.append({**result, "Timestamps": [t for t, _ in points[lo:hi]], "Values": [v for _, v in points[lo:hi]],
                    "StatusCode": "Complete" if hi == len(points) else "PartialData", "Messages": []})
    answer: dict[str, Any] = {"MetricDataResults": out, "Messages": []}
    if offset + emitted < seen:
        answer["NextToken"] = base64.b64encode(json.dumps(
            {"offset": offset + emitted, "request": hash_text(request)}).encode()).decode()
    return answer


def hash_text(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()[:16]


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
        dims = _dims({"Name": d.name, "Value": d.value} for d in alarm.dimensions)
        stat = parse_stat(alarm.extended_statistic or "") or parse_stat(alarm.statistic or "Sum") or Stat("Sum")
        cmp, words = COMPARE[alarm.comparison_operator]
        threshold = float(alarm.threshold)
        t = now()
        values: list[float] = []
        for i in range(periods):
            end = t - i * period
            # a data point counts when its minute overlaps the period; the open minute counts as well
            pairs = _merge(self.metrics.data(alarm.metric_name, dims, end - period - minute() + 1e-9, end, True))
            v = statistic(pairs, stat)
            if stat.kind == "p" and _too_few(pairs, stat) and alarm.evaluate_low_sample_count_percentile == "ignore":
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


def _too_few(pairs: Pairs, stat: Stat) -> bool:
    """CloudWatch's guide: the low-sample setting applies below 10/(1-p) data points (p >= 0.5), 10/p below."""
    p = float(stat.high or 0.0) / 100.0
    needed = 10 / (1 - p) if 0.5 <= p < 1 else 10 / p if p > 0 else 0.0
    return sum(c for _, c in pairs) < needed


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
