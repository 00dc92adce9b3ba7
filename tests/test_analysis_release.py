"""Canary analysis in real releases: green judged against blue from the sandbox's ALB metrics.

One task-sets service with a 50 % canary step and analysis, released once as blue (a sample app made
50 ms slow on purpose, so response times sit well above the proxy's own jitter); each test then
releases one green against it while a client sends steady requests to production. The sandbox's
CloudWatch answers GetMetricData with percentiles from the requests the listener really proxied.
"""

from __future__ import annotations

import contextlib
import json
import time
from collections.abc import Iterator
from datetime import UTC, datetime
from typing import Any

import pytest
from prefect import flow
from prefect.client.orchestration import get_client
from prefect.client.schemas.filters import (
    ArtifactFilter,
    ArtifactFilterFlowRunId,
    ArtifactFilterKey,
    LogFilter,
    LogFilterFlowRunId,
)
from prefect.client.schemas.sorting import ArtifactSort

from flows.pipeline import deploy_service
from harness.faults import Load, event_payloads, serving_versions, wait_until
from harness.git import git
from harness.services import ServiceUnderTest, aws, edit_config, make_service, sync_deploy_policy
from tasks.aws.clients import AwsClients
from tasks.aws.metrics import Pair
from tasks.aws.traffic import resolve_routing
from tasks.core.errors import VerifyFailed
from tasks.core.settings import Settings
from tasks.release import analysis
from tasks.release.outcome import outcome_of

CLIENTS = 8
BASE_MS = 50  # blue's (and an equal green's) own delay
STEP = {"type": "canary", "percent": 50, "interval_seconds": 180}  # 3 s at the sandbox's time scale
RULES: dict[str, Any] = {
    "min_requests": 40,
    "error_rate": {"max_increase": 0.005},
    "latency_p95": {"max_ratio": 2.0},  # wide: an equal green must pass on a busy machine, where p95s wander
    "method": "thresholds",
    "inconclusive_wait_seconds": 120,
}


def commit(sut: ServiceUnderTest, version: str, slow_ms: int = BASE_MS, error_percent: int = 0) -> str:
    (sut.repo / "app.env").write_text(
        f"VERSION={version}\nBROKEN=\nSLOW_MS={slow_ms}\nERROR_PERCENT={error_percent}\n")
    git(sut.repo, "add", "-A")
    git(sut.repo, "commit", "-q", "-m", f"release {version}")
    sync_deploy_policy(sut)
    return git(sut.repo, "rev-parse", "HEAD")


def set_rules(sut: ServiceUnderTest, **changes: Any) -> None:
    edit_config(sut, lambda c: c.__setitem__("analysis", {**RULES, **changes}))


def size_alarm_for_outages(sut: ServiceUnderTest) -> None:
    """The seeded 5xx alarm (the load balancer's HTTPCode_Target_5XX_Count, Sum per minute) raised from 5 to
    25 a minute: an alarm sized for an outage, as teams set them. At this module's load (one minute is one
    second at time scale 60) 3 % errors on half the traffic stay far below it; 5 would fire by chance."""
    cloudwatch = aws("cloudwatch")
    alarm = cloudwatch.describe_alarms(AlarmNames=list(sut.cfg.verify.alarms))["MetricAlarms"][0]
    keys = ("AlarmName", "Namespace", "MetricName", "Dimensions", "Statistic", "Period", "EvaluationPeriods",
            "ComparisonOperator", "TreatMissingData")
    cloudwatch.put_metric_alarm(**{k: alarm[k] for k in keys if k in alarm}, Threshold=25.0)


@pytest.fixture(scope="module")
def blue(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServiceUnderTest]:
    sut = make_service(tmp_path_factory.mktemp("analysis"), traffic=STEP)
    set_rules(sut)
    size_alarm_for_outages(sut)
    commit(sut, "v1")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("ECS_PIPELINE_DEPLOYMENTS", str(sut.yaml_path.parent))
        assert outcome_of(deploy_service(sut.name, return_state=True)) == "Deployed"
        yield sut
    sut.cleanup()


def release(sut: ServiceUnderTest, load: bool = True) -> tuple[Any, list[str]]:
    """The release's final state, and what production requests failed meanwhile (CLIENTS steady clients)."""
    if not load:
        return deploy_service(sut.name, return_state=True), []
    clients = [Load(sut, pause=0.005) for _ in range(CLIENTS)]
    with contextlib.ExitStack() as stack:
        for load in clients:
            stack.enter_context(load)
        state = deploy_service(sut.name, return_state=True)
    return state, [f for load in clients for f in load.failed]


def analysis_rows(state: Any, service: str) -> list[dict[str, str]]:
    """The run's last analysis table (artifact ``<service>-analysis``)."""
    with get_client(sync_client=True) as client:
        found = client.read_artifacts(
            artifact_filter=ArtifactFilter(key=ArtifactFilterKey(any_=[f"{service}-analysis"]),
                                           flow_run_id=ArtifactFilterFlowRunId(any_=[state.state_details.flow_run_id])),
            sort=ArtifactSort.CREATED_DESC, limit=1)
    assert found, f"no {service}-analysis artifact on the run"
    data = found[0].data
    return list(json.loads(data) if isinstance(data, str) else data)


def row(rows: list[dict[str, str]], metric: str) -> dict[str, str]:
    return next(r for r in rows if r["metric"] == metric)


def test_slow_green_rolls_back_on_latency_with_no_errors(blue: ServiceUnderTest) -> None:
    commit(blue, "v2", slow_ms=300)
    state, failed = release(blue)
    message = state.message or ""
    assert outcome_of(state) == "Rolled back", message
    assert "analysis failed during the 50% step: p95 " in message, message
    assert "ms on green vs " in message and "limit 2\u00d7" in message, message
    assert failed == [], failed[:5]  # slow, never an error: no alarm could see it
    rows = analysis_rows(state, blue.name)
    assert row(rows, "p95")["verdict"] == "fail" and row(rows, "5xx rate")["verdict"] == "pass", rows
    assert row(rows, "5xx rate")["green"].startswith("0.0 % (0/"), rows
    assert float(row(rows, "p95")["green"].split()[0]) >= 300, rows
    assert serving_versions(blue) == {"v1"}
    payload = event_payloads(blue.name, "analysis-failed")[-1]
    assert payload["step"] == "the 50% step" and payload["verdict"] == "fail"


def test_green_with_3_percent_errors_rolls_back_on_error_rate_while_no_alarm_fires(blue: ServiceUnderTest) -> None:
    """3 % of green's answers are 500s, drawn at random. The step's own time brings fewer than 400 requests a
    side: inconclusive, so it waits for more traffic, then decides; at 400 a side a fail at +0.5 points (3
    errors or more) misses about 1 in 200 000 releases."""
    started = datetime.now(UTC)
    set_rules(blue, min_requests=400, inconclusive_wait_seconds=3600)
    commit(blue, "v3", error_percent=3)
    try:
        state, _ = release(blue)
    finally:
        set_rules(blue)
    message = state.message or ""
    assert outcome_of(state) == "Rolled back", message
    assert "analysis failed during the 50% step: 5xx rate " in message, message
    assert "limit +0.5" in message and "alarm" not in message, message
    wait_until(lambda: any(line.startswith("analysis inconclusive at the end of the 50% step (too few requests: ")
                           and line.endswith("waiting up to 3600 s for more traffic") for line in run_log(state)),
               30, "the run's log line saying the step waits for more traffic", interval=0.5)
    alarm = blue.cfg.verify.alarms[0]
    history = aws("cloudwatch").describe_alarm_history(AlarmName=alarm, StartDate=started)["AlarmHistoryItems"]
    assert not [h for h in history if "to ALARM" in h.get("HistorySummary", "")], history
    assert aws("cloudwatch").describe_alarms(AlarmNames=[alarm])["MetricAlarms"][0]["StateValue"] == "OK"
    rows = analysis_rows(state, blue.name)
    assert row(rows, "5xx rate")["verdict"] == "fail" and int(row(rows, "requests")["green"]) >= 400, rows
    assert serving_versions(blue) == {"v1"}


def test_green_equal_to_blue_passes(blue: ServiceUnderTest) -> None:
    commit(blue, "v4")
    state, failed = release(blue)
    assert outcome_of(state) == "Deployed", state.message
    assert failed == [], failed[:5]
    rows = analysis_rows(state, blue.name)
    assert [r["verdict"] for r in rows if r["metric"] != "verdict"] == ["pass", "pass", "pass"], rows
    assert int(row(rows, "requests")["green"]) >= RULES["min_requests"]
    assert serving_versions(blue) == {"v4"}
    assert event_payloads(blue.name, "analysis-passed")[-1]["verdict"] == "pass"


def test_too_little_traffic_is_inconclusive_and_the_step_waits_then_decides(blue: ServiceUnderTest) -> None:
    """A step window without traffic on the live service's two target groups, judged by the step gate the
    task-sets strategy runs (the same metrics and judgement, without a release's cost): it waits
    inconclusive_wait_seconds (time-scaled) for more, a minute at a time, then decides by on_inconclusive."""
    cfg = blue.cfg
    clients = AwsClients(Settings()).for_service(cfg)  # as the release would: its deploy role
    routing = resolve_routing(clients.get("elbv2"), cfg.load_balancer)
    pair = Pair(routing.production_listener, routing.target_groups[1], routing.target_groups[0])
    watched: list[float] = []

    def watch_more(seconds: float) -> None:
        watched.append(seconds)
        time.sleep(clients.settings.scaled(seconds))

    started = datetime.now(UTC)
    passing = cfg.model_copy(update={"analysis": cfg.analysis.model_copy(update={"on_inconclusive": "pass"})})

    @flow(name="analysis gate", persist_result=False)
    def gate() -> tuple[str, Any]:  # a run of its own: the judgement's artifact and logs need one
        with pytest.raises(VerifyFailed) as failed:
            analysis.gate_step(cfg, clients, pair, "the 50% step", started, watch_more)
        return str(failed.value), analysis.gate_step(passing, clients, pair, "the 50% step", started, watch_more)

    failed, judged = gate()
    assert failed.startswith("analysis inconclusive during the 50% step (after waiting 120 s for more traffic; "
                             "on_inconclusive: fail): too few requests: "), failed
    assert "(at least 40 on each)" in failed, failed
    assert judged.verdict == "inconclusive" and watched == [60, 60, 60, 60], watched
    found = wait_until(lambda: (lambda got: got if len(got) >= 2 else None)(
        event_payloads(blue.name, "analysis-inconclusive")), 30, "both inconclusive judgements' events")
    notes = {p["note"] for p in found}
    assert notes == {f"after waiting 120 s for more traffic; on_inconclusive: {then}" for then in ("fail", "pass")}


def run_log(state: Any) -> list[str]:
    with get_client(sync_client=True) as client:
        logs = client.read_logs(log_filter=LogFilter(flow_run_id=LogFilterFlowRunId(
            any_=[state.state_details.flow_run_id])), limit=200)
    return [log.message for log in logs]
