"""The sandbox's CloudWatch answers the ALB metrics a canary analysis reads, percentiles included.

A seeded service serves blue (the sample app) on its first target group; a second ECS service runs
green, the same image with ``SLOW_MS=300`` and ``ERROR_PERCENT=20``, on the second; the production
listener forwards half the requests to each. Real requests go through that listener, and the
answers of GetMetricStatistics and GetMetricData (real boto3, the sandbox's endpoint) are checked
against what the client saw: counts, 5xx, and response-time percentiles per target group.

AWS documents what is played here (botocore's model for CloudWatch, ALB's and CloudWatch's guides):

- ALB, "CloudWatch metrics for your Application Load Balancer": RequestCount and
  HTTPCode_Target_5XX_Count: "The most useful statistic is Sum. Minimum, Maximum, and Average all
  return 1."; TargetResponseTime: "The time elapsed, in seconds, after the request leaves the load
  balancer until the target starts to send the response headers"; "The most useful statistics are
  Average and pNN.NN (percentiles)"; dimensions "LoadBalancer" and "TargetGroup, LoadBalancer".
- GetMetricStatistics.Dimensions: "CloudWatch treats each unique combination of dimensions as a
  separate metric. If a specific combination of dimensions was not published, you can't retrieve
  statistics for it."
- GetMetricStatistics: "you must specify either Statistics or ExtendedStatistics, but not both";
  "Data points are not returned in chronological order."; "If you request more than 1,440 data
  points, CloudWatch returns an error."
- MetricStat.Period: "For metrics with regular resolution, a period can be as short as one minute
  (60 seconds) and must be a multiple of 60."
- StartTime: "Start time less than 15 days ago - Round down to the nearest whole minute."
- GetMetricData.ScanBy: "If you omit this parameter, the default of TimestampDescending is used."
- MetricDataResult.StatusCode: "PartialData means that an incomplete set of data points were
  returned. You can use the NextToken value that was returned and repeat your request".
- User Guide, "Statistics definitions": "p95 is the 95th percentile and means that 95 percent of the
  data within the period is lower than this value and 5 percent of the data is higher than this
  value"; "TM(2%:98%) calculates the average after removing the 2% lowest data points and the 2% of
  highest data points"; "PR(:300) returns the percentage of data points that have a value of 300 or
  less"; "tc90 returns the number of data points not including any data points that fall in the
  highest 10% of the values".

The sandbox is time-scaled: a Period of 60 AWS seconds is one scaled minute (one second at the
default scale of 60), timestamps stay wall-clock times.
"""

from __future__ import annotations

import concurrent.futures
import math
import time
from collections.abc import Iterator
from typing import Any

import pytest
from botocore.exceptions import ClientError

from harness.services import HTTP
from sandbox.controller.cloudwatch import Stat, parse_stat, statistic

SLOW_MS = 300
ERROR_PERCENT = 20
REQUESTS = 60
NS = "AWS/ApplicationELB"


# ---------------------------------------------------------------- the statistics themselves (no sandbox)

HUNDRED = [(i / 100, 1.0) for i in range(1, 101)]  # 0.01 .. 1.00, once each


@pytest.mark.parametrize(("name", "want"), [
    ("SampleCount", 100), ("Sum", 50.5), ("Average", 0.505), ("Minimum", 0.01), ("Maximum", 1.0),
    ("p50", 0.5), ("p95", 0.95), ("p99", 0.99), ("p100", 1.0), ("p0", 0.01), ("p99.5", 1.0),
    ("tm90", 0.455), ("TM(10%:90%)", 0.505), ("IQM", 0.505), ("tc90", 90), ("ts90", 40.95),
    ("wm90", 0.4995), ("PR(:0.3)", 30), ("PR(0.5:0.6)", 10), ("TM(0.1:0.5)", 0.305), ("TC(0.1:0.5)", 40),
    ("WM(:0.5)", (sum(range(1, 51)) / 100 + 50 * 0.5) / 100), ("TS(0.9:)", sum(range(91, 101)) / 100),
])
def test_statistics_of_known_samples(name: str, want: float) -> None:
    stat = parse_stat(name)
    assert stat is not None, name
    assert statistic(HUNDRED, stat) == pytest.approx(want), name


def test_statistics_use_counts_and_refuse_what_cloudwatch_refuses() -> None:
    # RequestCount as an ALB publishes it: the value 1 counted once per request
    assert [statistic([(1.0, 37.0)], Stat(s)) for s in ("Sum", "SampleCount", "Average", "Minimum")] == [
        37, 37, 1, 1]
    assert statistic([(0.1, 90.0), (2.0, 10.0)], Stat("p", 90.0, 90.0)) == 0.1
    assert statistic([(0.1, 90.0), (2.0, 10.0)], Stat("p", 91.0, 91.0)) == 2.0
    # "Percentile statistics are not available for metrics when any of the metric values are negative"
    assert statistic([(-1.0, 1.0), (2.0, 1.0)], Stat("p", 50.0, 50.0)) is None
    for bad in ("p101", "p", "P95", "tm", "TM(:)", "TM(90%:10%)", "PR(1%:5%)", "TM(10%:0.5)", "Median"):
        assert parse_stat(bad) is None, bad


# ---------------------------------------------------------------- through the sandbox

def _get(url: str) -> tuple[int, str, float]:
    started = time.monotonic()
    answer = HTTP.get(url, timeout=10)
    return answer.status_code, answer.text, time.monotonic() - started


@pytest.fixture(scope="module")
def traffic(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    """Blue and a slow, failing green behind one listener, REQUESTS sent through it; the answers seen."""
    from harness.services import aws, make_service

    sut = make_service(tmp_path_factory.mktemp("metrics"), strategy="rolling")
    seeded = sut.seeded
    ecs, elbv2 = aws("ecs"), aws("elbv2")
    blue_td = ecs.describe_task_definition(taskDefinition=seeded["task_definition_arn"])["taskDefinition"]
    web = dict(blue_td["containerDefinitions"][0])
    web["environment"] = [{"name": "GREETING", "value": "green"}, {"name": "SLOW_MS", "value": str(SLOW_MS)},
                          {"name": "ERROR_PERCENT", "value": str(ERROR_PERCENT)}]
    web.pop("logConfiguration", None)
    keep = ("family", "networkMode", "requiresCompatibilities", "cpu", "memory", "executionRoleArn")
    green_td = ecs.register_task_definition(**{k: blue_td[k] for k in keep if k in blue_td},
                                            containerDefinitions=[web])["taskDefinition"]["taskDefinitionArn"]
    blue_tg, green_tg = seeded["target_group_arns"]
    ecs.create_service(  # starts beside blue's first task, which the seed has just asked for
        cluster=seeded["cluster"], serviceName=f"{sut.name}-green", taskDefinition=green_td, desiredCount=1,
        launchType="FARGATE", networkConfiguration={"awsvpcConfiguration": {
            "subnets": seeded["subnets"], "securityGroups": [seeded["security_group"]]}},
        loadBalancers=[{"targetGroupArn": green_tg, "containerName": "web", "containerPort": 8080}])
    elbv2.modify_listener(ListenerArn=seeded["listener_arns"]["production"], DefaultActions=[
        {"Type": "forward", "ForwardConfig": {"TargetGroups": [
            {"TargetGroupArn": blue_tg, "Weight": 50}, {"TargetGroupArn": green_tg, "Weight": 50}]}}])
    deadline = time.monotonic() + 60
    for tg in (blue_tg, green_tg):
        while [t["TargetHealth"]["State"] for t in
               elbv2.describe_target_health(TargetGroupArn=tg)["TargetHealthDescriptions"]] != ["healthy"]:
            assert time.monotonic() < deadline, "blue or green never became healthy"
            time.sleep(0.1)
    while "green" not in _get(sut.prod_url + "/")[1]:  # the listener change serves once it has propagated
        assert time.monotonic() < deadline, "the weighted forward never served green"
    minute = 60 / float(HTTP.get(f"{aws('cloudwatch').meta.endpoint_url}/_sandbox/state").json()["timeScale"])
    time.sleep(minute - time.time() % minute + 0.01)  # the probes above stay in minutes before the window
    start = time.time()
    with concurrent.futures.ThreadPoolExecutor(12) as pool:
        answers = list(pool.map(lambda _: _get(sut.prod_url + "/"), range(REQUESTS)))
    end = time.time()
    try:
        yield {"sut": sut, "start": start, "end": end, "answers": answers, "blue_tg": blue_tg, "green_tg": green_tg,
               "lb": seeded["load_balancer_arn"], "cw": aws("cloudwatch"), "minute": minute}
    finally:
        ecs.delete_service(cluster=seeded["cluster"], service=f"{sut.name}-green", force=True)

def _dims(traffic: dict[str, Any], tg: str | None) -> list[dict[str, str]]:
    lb = traffic["lb"][traffic["lb"].index("app/"):]
    dims = [{"Name": "LoadBalancer", "Value": lb}]
    return [*dims, {"Name": "TargetGroup", "Value": tg[tg.index("targetgroup/"):]}] if tg else dims


def _window(traffic: dict[str, Any]) -> dict[str, Any]:
    """The whole load in one data point: StartTime rounds down to a scaled minute, Period covers the rest."""
    minute = traffic["minute"]
    first = math.floor(traffic["start"] / minute) * minute
    end = traffic["end"] + 0.01
    period = 60 * math.ceil((end - first) / minute)
    deadline = time.monotonic() + 10
    while time.time() < (math.floor(end / minute) + 1) * minute + 0.3:  # the last minute has closed
        time.sleep(0.05)
        assert time.monotonic() < deadline
    return {"StartTime": traffic["start"], "EndTime": end, "Period": period}


def _seen(traffic: dict[str, Any], color: str) -> list[tuple[int, float]]:
    """(status, seconds) of the answers COLOR gave: green's say so, or are its 500s (blue never fails)."""
    return [(status, seconds) for status, text, seconds in traffic["answers"]
            if ("green" in text or status == 500) == (color == "green")]


def test_counts_and_5xx_per_target_group_are_the_requests_sent(traffic: dict[str, Any]) -> None:
    cw, window = traffic["cw"], _window(traffic)
    green, blue = _seen(traffic, "green"), _seen(traffic, "blue")
    assert len(green) + len(blue) == REQUESTS and green and blue, traffic["answers"]
    failed = sum(1 for status, _ in green if status == 500)
    assert all(status in (200, 500) for status, _ in green)

    def stats(metric: str, tg: str | None, statistics: list[str]) -> list[dict[str, Any]]:
        return list(cw.get_metric_statistics(Namespace=NS, MetricName=metric, Dimensions=_dims(traffic, tg),
                                             Statistics=statistics, **window)["Datapoints"])

    (point,) = stats("RequestCount", traffic["green_tg"], ["Sum", "SampleCount", "Average", "Maximum"])
    assert (point["Sum"], point["SampleCount"], point["Average"], point["Maximum"]) == (len(green), len(green), 1, 1)
    assert point["Unit"] == "Count"
    (point,) = stats("RequestCount", traffic["blue_tg"], ["Sum"])
    assert point["Sum"] == len(blue)
    (point,) = stats("RequestCount", None, ["Sum"])  # the load balancer's own series: both groups
    assert point["Sum"] == REQUESTS
    five = stats("HTTPCode_Target_5XX_Count", traffic["green_tg"], ["Sum"])
    assert [p["Sum"] for p in five] == ([failed] if failed else [])
    assert stats("HTTPCode_Target_5XX_Count", traffic["blue_tg"], ["Sum"]) == []  # nothing published: no point
    (ok,) = stats("HTTPCode_Target_2XX_Count", traffic["green_tg"], ["Sum"])
    assert ok["Sum"] == len(green) - failed
    # "If a specific combination of dimensions was not published, you can't retrieve statistics for it."
    tg_only = [{"Name": "TargetGroup", "Value": traffic["green_tg"][traffic["green_tg"].index("targetgroup/"):]}]
    assert cw.get_metric_statistics(Namespace=NS, MetricName="RequestCount", Dimensions=tg_only,
                                     Statistics=["Sum"], **window)["Datapoints"] == []


def test_percentiles_of_a_slow_green_and_a_fast_blue(traffic: dict[str, Any]) -> None:
    cw, window = traffic["cw"], _window(traffic)
    green, blue = _seen(traffic, "green"), _seen(traffic, "blue")
    answer = cw.get_metric_statistics(Namespace=NS, MetricName="TargetResponseTime",
                                      Dimensions=_dims(traffic, traffic["green_tg"]),
                                      ExtendedStatistics=["p50", "p95", "p99"], **window)
    assert answer["Label"] == "TargetResponseTime"
    (point,) = answer["Datapoints"]
    p = point["ExtendedStatistics"]
    assert point["Unit"] == "Seconds" and set(p) == {"p50", "p95", "p99"}
    # every green answer waited SLOW_MS in the app; the client saw the target's time plus the proxy's
    assert SLOW_MS / 1000 <= p["p50"] <= p["p95"] <= p["p99"] <= max(s for _, s in green)
    assert p["p50"] <= sorted(s for _, s in green)[len(green) // 2] + 0.01
    queries = [{"Id": f"{color}_{stat.lower()}", "MetricStat": {
        "Metric": {"Namespace": NS, "MetricName": "TargetResponseTime", "Dimensions": _dims(traffic, tg)},
        "Period": window["Period"], "Stat": stat}}
        for color, tg in (("green", traffic["green_tg"]), ("blue", traffic["blue_tg"]))
        for stat in ("p50", "p95", "p99", "SampleCount", "Average")]
    data = cw.get_metric_data(MetricDataQueries=queries, StartTime=window["StartTime"], EndTime=window["EndTime"])
    got = {r["Id"]: r for r in data["MetricDataResults"]}
    assert all(r["StatusCode"] == "Complete" and len(r["Values"]) == 1 for r in got.values()), got
    value = {k: r["Values"][0] for k, r in got.items()}
    # the same samples answer both operations
    assert [value["green_p50"], value["green_p95"], value["green_p99"]] == [p["p50"], p["p95"], p["p99"]]
    assert value["green_samplecount"] == len(green) and value["blue_samplecount"] == len(blue)
    # blue's answers take the app's own time only (a busy machine may stretch a few: its median stays fast)
    assert value["blue_p50"] < SLOW_MS / 1000 <= value["green_p50"]
    assert value["blue_p50"] <= value["blue_p95"] <= value["blue_p99"] <= max(s for _, s in blue)
    assert value["green_average"] >= SLOW_MS / 1000 > value["blue_average"]
    assert got["green_p95"]["Label"] == "TargetResponseTime"
    # every member of the model's MetricDataResult is answered (botocore drops a key it does not know)
    model = cw.meta.service_model
    assert {k for r in data["MetricDataResults"] for k in r} == set(model.shape_for("MetricDataResult").members)
    assert set(point) == {"Timestamp", "Unit", "ExtendedStatistics"}, "what was asked, in the model's words"


def test_per_minute_points_newest_first_and_pages(traffic: dict[str, Any]) -> None:
    cw, window = traffic["cw"], _window(traffic)
    query = {"Id": "requests", "MetricStat": {"Metric": {"Namespace": NS, "MetricName": "RequestCount",
                                                         "Dimensions": _dims(traffic, None)},
                                              "Period": 60, "Stat": "Sum"}}
    span = {"StartTime": window["StartTime"], "EndTime": window["EndTime"]}
    (newest_first,) = cw.get_metric_data(MetricDataQueries=[query], **span)["MetricDataResults"]
    stamps = newest_first["Timestamps"]
    assert stamps == sorted(stamps, reverse=True) and sum(newest_first["Values"]) == REQUESTS
    (oldest_first,) = cw.get_metric_data(MetricDataQueries=[query], ScanBy="TimestampAscending",
                                         **span)["MetricDataResults"]
    assert oldest_first["Timestamps"] == stamps[::-1] and oldest_first["Values"] == newest_first["Values"][::-1]
    if len(stamps) > 1:  # one point a page: PartialData and a NextToken until the last
        pages, token = [], None
        while True:
            answer = cw.get_metric_data(MetricDataQueries=[query], MaxDatapoints=1, **span,
                                        **({"NextToken": token} if token else {}))
            (result,) = answer["MetricDataResults"]
            pages.append(result)
            token = answer.get("NextToken")
            assert (result["StatusCode"] == "PartialData") == bool(token)
            if not token:
                break
        assert [t for page in pages for t in page["Timestamps"]] == stamps
    points = cw.get_metric_statistics(Namespace=NS, MetricName="RequestCount", Dimensions=_dims(traffic, None),
                                      Statistics=["Sum"], StartTime=span["StartTime"], EndTime=span["EndTime"],
                                      Period=60)["Datapoints"]
    assert sorted(p["Timestamp"].timestamp() for p in points) == pytest.approx(sorted(
        s.timestamp() for s in stamps)) and sum(p["Sum"] for p in points) == REQUESTS


@pytest.mark.parametrize(("call", "code"), [
    ({"op": "stats", "Period": 30, "Statistics": ["Sum"]}, "InvalidParameterValue"),
    ({"op": "stats", "Period": 60, "Statistics": ["Sum"], "ExtendedStatistics": ["p95"]},
     "InvalidParameterCombination"),
    ({"op": "stats", "Period": 60}, "InvalidParameterCombination"),
    ({"op": "stats", "Period": 60, "ExtendedStatistics": ["p101"]}, "InvalidParameterValue"),
    ({"op": "stats", "Period": 60, "Statistics": ["p95"]}, "InvalidParameterValue"),
    ({"op": "stats", "Period": 60, "Statistics": ["Sum"], "hours": 25}, "InvalidParameterCombination"),
    ({"op": "data", "Period": 90, "Stat": "p95"}, "ValidationError"),
    ({"op": "data", "Period": 60, "Stat": "p95.123"}, "ValidationError"),
    ({"op": "data", "Period": 60, "Stat": "Sum", "NextToken": "bm90IG91cnM="}, "InvalidNextToken"),
])
def test_requests_aws_refuses_are_refused(traffic: dict[str, Any], call: dict[str, Any], code: str) -> None:
    cw, end = traffic["cw"], time.time()
    start = end - 3600 * float(call.get("hours", 1)) / 60  # scaled: one (or 25) AWS hours back
    metric = {"Namespace": NS, "MetricName": "TargetResponseTime", "Dimensions": _dims(traffic, traffic["blue_tg"])}
    with pytest.raises(ClientError) as err:
        if call["op"] == "stats":
            cw.get_metric_statistics(**metric, StartTime=start, EndTime=end, Period=call["Period"],
                                     **{k: call[k] for k in ("Statistics", "ExtendedStatistics") if k in call})
        else:
            cw.get_metric_data(MetricDataQueries=[{"Id": "m", "MetricStat": {
                "Metric": metric, "Period": call["Period"], "Stat": call["Stat"]}}], StartTime=start, EndTime=end,
                **({"NextToken": call["NextToken"]} if "NextToken" in call else {}))
    assert err.value.response["Error"]["Code"] == code
    assert err.value.response["ResponseMetadata"]["HTTPStatusCode"] == 400


def test_percentile_alarms_and_too_few_samples(traffic: dict[str, Any]) -> None:
    """CloudWatch's guide, "Percentile-based alarms and low data samples": for percentiles of 0.5 and up the
    setting applies "when there are fewer than 10/(1-percentile) data points" (1000 for p99); with
    EvaluateLowSampleCountPercentile "ignore", "the alarm state does not change"."""
    cw, name = traffic["cw"], traffic["sut"].name
    alarms = {f"{name}-p99-{how}": how for how in ("evaluate", "ignore")}
    try:
        for alarm, how in alarms.items():  # an hour-long period: the load stays in the window
            cw.put_metric_alarm(AlarmName=alarm, Namespace=NS, MetricName="TargetResponseTime",
                                Dimensions=_dims(traffic, traffic["green_tg"]), ExtendedStatistic="p99",
                                Period=3600, EvaluationPeriods=1, Threshold=SLOW_MS / 1000 - 0.05,
                                ComparisonOperator="GreaterThanThreshold", EvaluateLowSampleCountPercentile=how)
        deadline = time.monotonic() + 5

        def states() -> dict[str, str]:
            found = cw.describe_alarms(AlarmNames=list(alarms))["MetricAlarms"]
            return {a["AlarmName"]: a["StateValue"] for a in found}

        while states()[f"{name}-p99-evaluate"] != "ALARM":
            assert time.monotonic() < deadline, states()
            time.sleep(0.1)
        reason = cw.describe_alarms(AlarmNames=[f"{name}-p99-evaluate"])["MetricAlarms"][0]["StateReason"]
        assert "Threshold Crossed" in reason
        time.sleep(0.5)  # a few evaluations more: the ignoring alarm has seen the same green p99
        assert states()[f"{name}-p99-ignore"] == "OK"
    finally:
        cw.delete_alarms(AlarmNames=list(alarms))


def test_the_pipelines_read_of_a_step_window_sees_the_same_requests(traffic: dict[str, Any]) -> None:
    """tasks/aws/metrics.py reads a window as the canary analysis does: one GetMetricData call, periods in AWS
    seconds, wall-clock times. Against the sandbox it finds what the client sent."""
    from datetime import UTC, datetime

    from tasks.aws.metrics import Pair, read_window

    window = _window(traffic)  # waits for the last minute to close, as a reader after the step must
    green, blue = _seen(traffic, "green"), _seen(traffic, "blue")
    read = read_window(traffic["cw"], Pair(traffic["lb"], traffic["green_tg"], traffic["blue_tg"]),
                       datetime.fromtimestamp(traffic["start"], UTC), datetime.fromtimestamp(window["EndTime"], UTC),
                       time_scale=60 / traffic["minute"], samples=True)
    assert (read.green.requests, read.blue.requests) == (len(green), len(blue))
    assert (read.green.errors, read.blue.errors) == (sum(1 for status, _ in green if status == 500), 0)
    latency = read.green.latency_ms
    assert SLOW_MS <= (latency["p50"] or 0) <= (latency["p95"] or 0) <= (latency["p99"] or 0)
    assert (read.blue.latency_ms["p50"] or SLOW_MS) < SLOW_MS
    assert read.green.samples_ms["p95"] and min(read.green.samples_ms["p95"]) >= SLOW_MS  # one a minute
