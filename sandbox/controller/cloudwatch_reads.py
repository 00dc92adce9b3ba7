"""GetMetricStatistics and GetMetricData on ``AWS/ApplicationELB``, answered from the recorded samples.

Other namespaces and math expressions return None: moto answers them. Validation follows botocore's
model and the API reference (quoted where a limit or an error comes from).
"""

from __future__ import annotations

import base64
import hashlib
import json
import math
import re
from collections import defaultdict
from collections.abc import Callable
from datetime import datetime
from typing import TYPE_CHECKING, Any

from .cloudwatch_stats import (
    BASIC,
    NAMESPACE,
    UNITS,
    Dims,
    Pairs,
    Stat,
    dims_of,
    merge,
    minute,
    parse_stat,
    span,
    statistic,
)
from .ecr_api import ApiError
from .world import now

if TYPE_CHECKING:
    from .cloudwatch import Metrics

MAX_STATISTICS_POINTS = 1440  # GetMetricStatistics: "If you request more than 1,440 data points, ... an error"
MAX_DATA_POINTS = 100800  # GetMetricData: "If you omit this, the default of 100,800 is used."


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
        return [(first + i * step, merge(points)) for i, points in sorted(buckets.items())]

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
        for stamp, pairs in self._series(name, dims_of(params.get("Dimensions")), params.get("Unit"),
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
            points = [(t, v) for t, pairs in self._series(name, dims_of(ms["Metric"].get("Dimensions")),
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
