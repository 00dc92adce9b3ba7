"""Canary analysis, pure: the judgement of a step window by the service's rules, and the GetMetricData
request it is read with (checked against botocore's model). No AWS, no Docker, no Prefect."""

from __future__ import annotations

import re
from datetime import UTC, datetime, timedelta
from typing import Any

import boto3
import pytest
from botocore.validate import ParamValidator

from tasks.aws import metrics
from tasks.aws.metrics import Pair, Side, Window
from tasks.config.models import Analysis, ErrorRateRule, LatencyRule
from tasks.release.analysis import judge, smallest_p

X = "\u00d7"  # the multiplication sign the reasons use
T0 = datetime(2026, 1, 1, 12, 0, tzinfo=UTC)
LB = "arn:aws:elasticloadbalancing:us-east-1:123456789012:listener/app/web/50dc6c495c0c9188/f2f7dc8efc522ab2"
GREEN = "arn:aws:elasticloadbalancing:us-east-1:123456789012:targetgroup/web-b/73e2d6bc24d8a067"
BLUE = "arn:aws:elasticloadbalancing:us-east-1:123456789012:targetgroup/web-a/943f017f100becff"


def side(requests: int, errors: int = 0, p95: float | None = 100.0, samples: list[float] | None = None,
         p50: float | None = 50.0, p99: float | None = 200.0) -> Side:
    return Side(requests, errors, {"p50": p50, "p95": p95, "p99": p99},
                {"p50": [], "p95": samples or [], "p99": []})


def window(green: Side, blue: Side) -> Window:
    return Window(T0, T0 + timedelta(minutes=5), 360, green, blue)


THRESHOLDS = Analysis()  # min_requests 50, error rate +0.01, p95 x1.25
MW = Analysis(method="mann-whitney")


@pytest.mark.parametrize(("green", "blue", "verdict", "reason"), [
    (side(500), side(500), "pass", ""),
    (side(500, p95=124.9), side(500, p95=100), "pass", ""),
    (side(500, p95=412), side(500, p95=180), "fail", f"p95 412 ms on green vs 180 ms on blue: 2.29{X}, limit 1.25{X}"),
    (side(480, errors=15), side(480), "fail", "5xx rate 3.1 % on green vs 0.0 % on blue: +3.1 points, limit +1.0"),
    (side(1000, errors=20), side(1000, errors=12), "pass", ""),  # +0.8 points
    (side(1000, errors=25), side(1000, errors=12), "fail", "5xx rate 2.5 % on green vs 1.2 % on blue: +1.3 points"),
    (side(49), side(500), "inconclusive", "too few requests: 49 on green (at least 50 on each)"),
    (side(500), side(10), "inconclusive", "too few requests: 10 on blue"),
    (side(0), side(0), "inconclusive", "0 on green, 0 on blue"),
    (side(49, errors=49, p95=9000), side(500), "inconclusive", "too few requests"),  # alarms catch disasters
    (side(500, p95=None), side(500), "inconclusive", "p95 has no data on green"),
    (side(500, p95=5), side(500, p95=0.0), "fail", f"p95 5 ms on green vs 0 ms on blue: inf{X}"),
    (side(500, p95=0.0), side(500, p95=0.0), "pass", ""),
    (side(500, errors=40, p95=400), side(500, p95=100), "fail", "5xx rate 8.0 %"),
])
def test_thresholds(green: Side, blue: Side, verdict: str, reason: str) -> None:
    found = judge(THRESHOLDS, window(green, blue), "the 10% step")
    assert found.verdict == verdict
    assert reason in found.reason
    if verdict == "pass":
        assert found.reason == ""


def test_both_failures_are_named_and_rows_are_the_table() -> None:
    found = judge(THRESHOLDS, window(side(500, errors=40, p95=400), side(500, p95=100)), "the 10% step")
    assert "5xx rate 8.0 % on green vs 0.0 % on blue" in found.reason
    assert f"p95 400 ms on green vs 100 ms on blue: 4.00{X}, limit 1.25{X}" in found.reason
    table = [r.as_table() for r in found.rows]
    assert [r["metric"] for r in table] == ["requests", "5xx rate", "p95"]
    assert table[2] == {"metric": "p95", "blue": "100 ms", "green": "400 ms", "rule": f"green / blue ≤ 1.25{X}",
                        "verdict": "fail"}
    assert table[1]["green"] == "8.0 % (40/500)"
    assert found.sentence().startswith("analysis of the 10% step failed: 5xx rate")


def test_rules_left_out_are_not_judged() -> None:
    rules = Analysis(error_rate=None, latency_p95=None, latency_p99=LatencyRule(max_ratio=2),
                     latency_p50=LatencyRule(max_ratio=1.1), min_requests=1)
    found = judge(rules, window(side(5, errors=5, p50=60, p99=390), side(5, p50=50, p99=200)), "step")
    assert [r.metric for r in found.rows] == ["requests", "p50", "p99"]
    assert found.verdict == "fail"
    assert f"p50 60 ms on green vs 50 ms on blue: 1.20{X}, limit 1.1{X}" in found.reason
    assert f"p99 390 ms on green vs 200 ms on blue: 1.95{X}" not in found.reason


def test_error_rate_limit_zero_fails_on_any_increase() -> None:
    rules = Analysis(error_rate=ErrorRateRule(max_increase=0.0))
    assert judge(rules, window(side(1000, errors=1), side(1000)), "s").verdict == "fail"
    assert judge(rules, window(side(1000, errors=1), side(1000, errors=1)), "s").verdict == "pass"


@pytest.mark.parametrize(("n", "m", "smallest"), [(1, 1, 0.5), (3, 3, 0.05), (4, 4, 1 / 70), (0, 5, 1.0)])
def test_smallest_p_of_an_exact_test(n: int, m: int, smallest: float) -> None:
    assert smallest_p(n, m) == pytest.approx(smallest)


def test_mann_whitney_fails_only_a_significant_excess() -> None:
    slow = [300.0, 310, 305, 320, 298, 315]
    base = [100.0, 104, 98, 101, 99, 103]
    found = judge(MW, window(side(600, p95=310, samples=slow), side(600, p95=101, samples=base)), "the 10% step")
    assert found.verdict == "fail"
    assert "Mann-Whitney p=0.00" in found.reason and "over 6 vs 6 minutes" in found.reason
    assert "Mann-Whitney p < 0.05" in found.rows[2].rule
    # Over the limit on the window's value, but the minutes overlap: not significant, a pass.
    noisy_g = [100.0, 400, 90, 380, 95, 110]
    noisy_b = [105.0, 350, 100, 90, 390, 98]
    found = judge(MW, window(side(600, p95=200, samples=noisy_g), side(600, p95=150, samples=noisy_b)), "s")
    assert found.rows[2].verdict == "pass"


def test_mann_whitney_never_fails_what_thresholds_pass() -> None:
    g = [130.0, 131, 132, 133, 134, 135]
    b = [100.0, 101, 102, 103, 104, 105]
    found = judge(MW, window(side(600, p95=120, samples=g), side(600, p95=100, samples=b)), "s")
    assert found.verdict == "pass"  # significant, but 1.20 times is within 1.25


def test_mann_whitney_with_too_few_minutes_falls_back_to_the_threshold() -> None:
    found = judge(MW, window(side(600, p95=300, samples=[300, 301, 302]), side(600, p95=100, samples=[99, 100, 101])),
                  "s")
    p95 = found.rows[2]
    assert p95.verdict == "fail"
    assert "threshold only: 3 vs 3 minutes are too few for Mann-Whitney at 0.05" in p95.rule
    assert "Mann-Whitney p=" not in p95.reason


def test_fisher_exact_on_5xx() -> None:
    # +2 points on 100 requests each (2 vs 0): over the limit, not significant.
    found = judge(MW, window(side(100, errors=2), side(100)), "s")
    assert found.rows[1].verdict == "pass"
    # +3.1 points on 480 each (15 vs 0): significant.
    found = judge(MW, window(side(480, errors=15), side(480)), "s")
    assert found.rows[1].verdict == "fail"
    assert "Fisher exact p=" in found.reason and "5xx rate 3.1 % on green vs 0.0 % on blue" in found.reason


def test_dimensions_as_an_alb_publishes_them() -> None:
    assert metrics.target_group_dimension(GREEN) == "targetgroup/web-b/73e2d6bc24d8a067"
    assert metrics.load_balancer_dimension(LB) == "app/web/50dc6c495c0c9188"
    lb_arn = "arn:aws:elasticloadbalancing:us-east-1:123456789012:loadbalancer/app/web/50dc6c495c0c9188"
    assert metrics.load_balancer_dimension(lb_arn) == "app/web/50dc6c495c0c9188"
    with pytest.raises(ValueError, match="not an Application Load Balancer"):
        metrics.load_balancer_dimension(lb_arn.replace("/app/", "/net/"))


@pytest.mark.parametrize(("seconds", "scale", "period"), [
    (0, 1, 60), (59, 1, 120), (60, 1, 120), (61, 1, 180), (300, 1, 360), (5, 60, 360), (0.5, 60, 120),
])
def test_whole_period_is_whole_minutes_plus_one(seconds: float, scale: float, period: int) -> None:
    assert metrics.whole_period(T0, T0 + timedelta(seconds=seconds), scale) == period


def test_get_metric_data_request_is_valid_for_botocore() -> None:
    """Checked against botocore's model: Id pattern (^[a-z][a-zA-Z0-9_]*$), Period a multiple of 60
    ("For metrics with regular resolution, a period can be as short as one minute (60 seconds) and must be a
    multiple of 60"), percentile statistics as Stat ("p95")."""
    model = boto3.session.Session().client("cloudwatch", region_name="us-east-1").meta.service_model
    shape = model.operation_model("GetMetricData").input_shape
    pair = Pair(LB, GREEN, BLUE)
    qs = metrics.queries(pair, 360, ["p95", "p99"], samples=True)
    request: dict[str, Any] = {"MetricDataQueries": qs, "StartTime": T0, "EndTime": T0 + timedelta(minutes=5),
                               "ScanBy": "TimestampAscending"}
    report = ParamValidator().validate(request, shape)
    assert not report.has_errors(), report.generate_report()
    for q in qs:
        assert re.fullmatch(r"[a-z][a-zA-Z0-9_]*", q["Id"])
        assert q["MetricStat"]["Period"] % 60 == 0
    assert {q["MetricStat"]["Stat"] for q in qs} == {"Sum", "p95", "p99"}
    dims = qs[0]["MetricStat"]["Metric"]["Dimensions"]
    assert dims == [{"Name": "TargetGroup", "Value": "targetgroup/web-b/73e2d6bc24d8a067"},
                    {"Name": "LoadBalancer", "Value": "app/web/50dc6c495c0c9188"}]
    assert len(qs) == 2 * (2 + 2 * 2) <= 500  # GetMetricData takes at most 500 queries
