"""Fault injection and the request log, read through real boto3 clients.

Each test scopes its weather to its own User-Agent marker (as a test scopes
weather to the pipeline's ``ecs-pipeline/0.1``), so no other caller of the
sandbox is touched.
"""

from __future__ import annotations

import json
import os
import urllib.error
import urllib.request
import uuid
from collections.abc import Callable, Iterator
from typing import Any

import boto3
import pytest
from botocore.awsrequest import AWSResponse
from botocore.config import Config
from botocore.exceptions import ClientError, ConnectionClosedError
from botocore.retries import standard

SERVICES: dict[str, Callable[[Any, str], Any]] = {
    "ecs": lambda c, m: c.describe_clusters(clusters=[m]),
    "elbv2": lambda c, m: c.describe_tags(ResourceArns=[m]),
    "cloudwatch": lambda c, m: c.describe_alarms(AlarmNames=[m]),
    "logs": lambda c, m: c.describe_log_groups(logGroupNamePrefix=m),
    "ecr": lambda c, m: c.list_images(repositoryName=m),
    "codedeploy": lambda c, m: c.batch_get_applications(applicationNames=[m]),
}
EXPECTED = {  # weather kind -> (JSON protocol code, query protocol code, HTTP status)
    "throttling": ("ThrottlingException", "Throttling", 400),
    "500": ("InternalFailure", "InternalError", 500),
    "503": ("ServiceUnavailable", "ServiceUnavailable", 503),
}


def marker() -> str:
    return f"wx-{uuid.uuid4().hex[:8]}"


def client(emu: Any, service: str, agent: str = "", attempts: int = 1) -> Any:
    config = Config(retries={"mode": "standard", "total_max_attempts": attempts}, user_agent_extra=agent,
                    connect_timeout=5, read_timeout=30)
    return boto3.client(service, endpoint_url=emu.endpoint, region_name="us-east-1",
                        aws_access_key_id=os.environ.get("AWS_ACCESS_KEY_ID", "testing"),
                        aws_secret_access_key=os.environ.get("AWS_SECRET_ACCESS_KEY", "testing"), config=config)


def control(emu: Any, method: str, path: str, spec: dict[str, Any] | None = None) -> dict[str, Any]:
    data = json.dumps(spec).encode() if spec is not None else None
    req = urllib.request.Request(f"{emu.endpoint}{path}", data=data, method=method)
    with urllib.request.urlopen(req, timeout=10) as resp:
        return dict(json.loads(resp.read()))


def weather(emu: Any, **spec: Any) -> dict[str, Any]:
    return dict(control(emu, "POST", "/_sandbox/faults", spec)["fault"])


def listed(emu: Any, name: str) -> dict[str, Any] | None:
    return next((f for f in control(emu, "GET", "/_sandbox/faults")["faults"] if f.get("name") == name), None)


def requests(emu: Any, since: int, match: str = "") -> dict[str, Any]:
    return control(emu, "GET", f"/_sandbox/requests?since={since}&match={match}")


@pytest.fixture
def agent(emu: Any) -> Iterator[str]:
    """A User-Agent marker and a weather name for one test; its weather is removed afterwards."""
    mark = marker()
    yield mark
    control(emu, "DELETE", f"/_sandbox/faults?name={mark}")


def retry_context(err: ClientError, service_client: Any) -> Any:
    """The context botocore's standard retry mode judges this answer by."""
    return standard.RetryContext(
        attempt_number=1, operation_model=service_client.meta.service_model.operation_model(err.operation_name),
        parsed_response=err.response, caught_exception=None,
        http_response=AWSResponse("", err.response["ResponseMetadata"]["HTTPStatusCode"], {}, None))


@pytest.mark.parametrize("kind", sorted(EXPECTED))
@pytest.mark.parametrize("service", sorted(SERVICES))
def test_weather_errors_parse_to_codes_botocore_retries(emu: Any, agent: str, service: str, kind: str) -> None:
    weather(emu, rate=1.0, codes=[kind], service=service, agent=agent, name=agent)
    aws = client(emu, service, agent)
    with pytest.raises(ClientError) as err:
        SERVICES[service](aws, agent)
    json_code, query_code, status = EXPECTED[kind]
    assert err.value.response["Error"]["Code"] == (query_code if service == "elbv2" else json_code)
    assert err.value.response["ResponseMetadata"]["HTTPStatusCode"] == status
    context = retry_context(err.value, aws)
    assert standard.StandardRetryConditions().is_retryable(context)
    throttled = standard.ThrottlingErrorDetector(standard.RetryEventAdapter()).is_throttling_error_from_context(
        context)
    assert throttled == (kind == "throttling")


def test_reset_closes_the_connection_and_botocore_retries_it(emu: Any, agent: str) -> None:
    weather(emu, rate=1.0, codes=["reset"], service="ecs", agent=agent, name=agent)
    seq = requests(emu, 0)["last"]
    with pytest.raises(ConnectionClosedError):
        SERVICES["ecs"](client(emu, "ecs", agent), agent)
    assert [(r["operation"], r["status"]) for r in requests(emu, seq, agent)["requests"]] == [
        ("DescribeClusters", 0)]
    control(emu, "DELETE", f"/_sandbox/faults?name={agent}")
    weather(emu, rate=1.0, codes=["reset"], service="ecs", agent=agent, name=agent, match="never-sent")
    SERVICES["ecs"](client(emu, "ecs", agent), agent)  # the connection pool recovers


def test_standard_client_gets_through_thirty_percent_weather(emu: Any, agent: str) -> None:
    weather(emu, rate=0.3, seed=7, codes=["throttling", "500", "503", "reset", "slow"], slow_seconds=0.05,
            agent=agent, name=agent)
    seq = requests(emu, 0)["last"]
    aws = client(emu, "ecs", agent, attempts=10)
    for _ in range(50):
        assert aws.describe_clusters(clusters=[agent])["failures"][0]["reason"] == "MISSING"
    state = listed(emu, agent)
    assert state is not None and state["calls"] >= 50 and state["hits"] > 0
    statuses = [r["status"] for r in requests(emu, seq, agent)["requests"]]
    assert statuses.count(200) == 50
    assert len(statuses) == 50 + sum(1 for s in statuses if s != 200)
    assert {s for s in statuses if s != 200} <= {0, 400, 500, 503}


def test_same_seed_hits_the_same_calls(emu: Any, agent: str) -> None:
    def pattern() -> list[bool]:
        weather(emu, rate=0.5, seed=11, codes=["500"], agent=agent, name=agent)
        aws = client(emu, "ecs", agent)
        hits = []
        for _ in range(12):
            try:
                aws.describe_clusters(clusters=[agent])
                hits.append(False)
            except ClientError:
                hits.append(True)
        control(emu, "DELETE", f"/_sandbox/faults?name={agent}")
        return hits

    first = pattern()
    assert any(first) and not all(first)
    assert pattern() == first


def test_after_lets_the_call_take_effect_then_loses_the_answer(emu: Any, agent: str) -> None:
    weather(emu, rate=1.0, codes=["500"], service="ecs", operation="CreateCluster", after=True,
            agent=agent, name=agent)
    aws = client(emu, "ecs", agent)
    with pytest.raises(ClientError) as err:
        aws.create_cluster(clusterName=agent)
    assert err.value.response["ResponseMetadata"]["HTTPStatusCode"] == 500
    try:
        clusters = aws.describe_clusters(clusters=[agent])["clusters"]
        assert [(c["clusterName"], c["status"]) for c in clusters] == [(agent, "ACTIVE")]
    finally:
        aws.delete_cluster(cluster=agent)


def test_agent_scoping_leaves_other_clients_untouched(emu: Any, agent: str) -> None:
    weather(emu, rate=1.0, codes=["503"], agent=agent, name=agent)
    SERVICES["ecs"](client(emu, "ecs"), agent)
    SERVICES["ecs"](client(emu, "ecs", "ecs-pipeline/0.1"), agent)
    with pytest.raises(ClientError):
        SERVICES["ecs"](client(emu, "ecs", agent), agent)


def test_weather_is_listed_with_hits_and_deleted_by_name(emu: Any, agent: str) -> None:
    made = weather(emu, rate=1.0, codes=["throttling"], service="ecs", agent=agent, name=agent)
    assert made["name"] == agent and made["hits"] == 0
    aws = client(emu, "ecs", agent)
    for _ in range(3):
        with pytest.raises(ClientError):
            SERVICES["ecs"](aws, agent)
    state = listed(emu, agent)
    assert state is not None and (state["calls"], state["hits"]) == (3, 3)
    assert control(emu, "DELETE", f"/_sandbox/faults?name={agent}")["cleared"] == 1
    assert listed(emu, agent) is None
    SERVICES["ecs"](aws, agent)


def test_bad_weather_is_refused(emu: Any) -> None:
    for spec in ({"rate": 2}, {"rate": 0.1, "codes": ["hail"]}, {"rate": 0.1, "weights": {"500": -1}}):
        req = urllib.request.Request(f"{emu.endpoint}/_sandbox/faults", data=json.dumps(spec).encode(),
                                     method="POST")
        with pytest.raises(urllib.error.HTTPError) as err:
            urllib.request.urlopen(req, timeout=10)
        assert err.value.code == 400


def test_named_fault_after_the_call_and_its_log_entry(emu: Any) -> None:
    name = marker()
    control(emu, "POST", "/_sandbox/faults", {"service": "ecs", "operation": "CreateCluster", "code":
                                               "ServiceUnavailable", "status": 503, "match": name,
                                               "after": True, "name": name})
    seq = requests(emu, 0)["last"]
    aws = client(emu, "ecs")
    with pytest.raises(ClientError):
        aws.create_cluster(clusterName=name)
    aws.delete_cluster(cluster=name)  # it exists: only the answer was lost
    log = requests(emu, seq, name)["requests"]
    assert [(r["operation"], r["status"], r["mutating"]) for r in log] == [
        ("CreateCluster", 503, True), ("DeleteCluster", 200, True)]


def test_request_log_orders_filters_and_pages(emu: Any) -> None:
    name = marker()
    start = requests(emu, 0)["last"]
    aws = client(emu, "ecs")
    aws.describe_clusters(clusters=[name])
    aws.create_cluster(clusterName=name)
    aws.delete_cluster(cluster=name)
    mine = requests(emu, start, name)
    assert [(r["service"], r["operation"], r["status"], r["mutating"]) for r in mine["requests"]] == [
        ("ecs", "DescribeClusters", 200, False), ("ecs", "CreateCluster", 200, True),
        ("ecs", "DeleteCluster", 200, True)]
    seqs = [r["seq"] for r in mine["requests"]]
    assert seqs == sorted(seqs) and seqs[0] > start and mine["last"] >= seqs[-1]
    assert "body" not in mine["requests"][0]
    later = requests(emu, seqs[1], name)["requests"]
    assert [r["operation"] for r in later] == ["DeleteCluster"]
    assert requests(emu, mine["last"], name)["requests"] == []
