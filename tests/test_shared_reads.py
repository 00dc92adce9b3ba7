"""Reads the releases of one process share (tasks/aws/shared_reads.py): fewer calls, never an older answer.

Against the sandbox's ECS and CloudWatch (real boto3 clients over HTTP): thirty threads waiting on
thirty services of one cluster make a handful of DescribeServices, each read is answered by a call
that started after it asked (an update just made is always seen), and an unknown cluster fails
every reader of the call. Offline, with a fetch of the test's own: a call AWS refuses for one name
of several is asked again name by name, so only that name's reader gets the refusal.
"""

from __future__ import annotations

import threading
import time
import uuid
from collections.abc import Callable, Iterator
from typing import Any

import botocore.session
import pytest
from botocore.exceptions import ClientError

from harness.services import aws
from tasks.aws import shared_reads
from tasks.aws.ecs import describe_service
from tasks.aws.shared_reads import SharedReads
from tasks.core.errors import ConfigError

COUNT = 30


@pytest.fixture
def spacing() -> Iterator[float]:
    """A spacing long enough that thirty threads started together surely meet in one gathering."""
    kept = list(shared_reads._SPACING)
    shared_reads._SPACING[:] = [0.3]
    try:
        yield 0.3
    finally:
        shared_reads._SPACING[:] = kept


def together(count: int, read: Callable[[int], Any]) -> list[Any]:
    """READ(i) for i in range(COUNT), each in its own thread, started at one barrier; answers or errors."""
    out: list[Any] = [None] * count
    gate = threading.Barrier(count)

    def one(i: int) -> None:
        gate.wait()
        try:
            out[i] = read(i)
        except Exception as exc:  # noqa: BLE001 - the test looks at each reader's own error
            out[i] = exc

    threads = [threading.Thread(target=one, args=(i,)) for i in range(count)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    return out


@pytest.fixture(scope="module")
def cluster() -> Iterator[tuple[str, list[str]]]:
    ecs = aws("ecs")
    name = f"shared-{uuid.uuid4().hex[:8]}"
    ecs.create_cluster(clusterName=name)
    services = [f"s{i:02d}" for i in range(COUNT)]
    for svc in services:
        ecs.create_service(cluster=name, serviceName=svc, desiredCount=0, launchType="FARGATE")
    try:
        yield name, services
    finally:
        for svc in services:
            ecs.delete_service(cluster=name, service=svc, force=True)
        ecs.delete_cluster(cluster=name)


def test_thirty_waiting_services_of_one_cluster_share_a_few_describe_services(
    cluster: tuple[str, list[str]], spacing: float
) -> None:
    name, services = cluster
    ecs = aws("ecs")
    describe_service(ecs, name, services[0])  # the group has just called: the next call waits one spacing
    before = shared_reads.SERVICES.calls
    answers = together(COUNT, lambda i: describe_service(ecs, name, services[i]))
    calls = shared_reads.SERVICES.calls - before
    assert [a["serviceName"] for a in answers] == services, answers
    # DescribeServices takes 10 names: thirty readers gathered into one spacing make three calls.
    assert calls == 3, calls


def test_a_read_never_gets_an_answer_older_than_itself(cluster: tuple[str, list[str]], spacing: float) -> None:
    name, services = cluster
    ecs = aws("ecs")
    assert describe_service(ecs, name, services[1])["desiredCount"] == 0
    ecs.update_service(cluster=name, service=services[1], desiredCount=2)
    try:
        # Within the spacing of the last call: this read waits for a call of its own, made after the update.
        assert describe_service(ecs, name, services[1])["desiredCount"] == 2
    finally:
        ecs.update_service(cluster=name, service=services[1], desiredCount=0)


def test_an_unknown_cluster_fails_every_reader_of_the_call(spacing: float) -> None:
    ecs = aws("ecs")
    missing = f"nowhere-{uuid.uuid4().hex[:8]}"
    answers = together(5, lambda i: describe_service(ecs, missing, f"s{i}"))
    assert all(isinstance(a, ConfigError) and f"cluster {missing!r} does not exist" in str(a) for a in answers), answers


def test_many_services_alarms_are_read_in_one_describe_alarms(spacing: float) -> None:
    cw = aws("cloudwatch")
    tag = uuid.uuid4().hex[:8]
    names = [f"shared-{tag}-{i:03d}" for i in range(120)]
    for n in names:
        cw.put_metric_alarm(AlarmName=n, Namespace="AWS/ApplicationELB", MetricName="HTTPCode_Target_5XX_Count",
                            Statistic="Sum", Period=60, EvaluationPeriods=1, Threshold=1.0,
                            ComparisonOperator="GreaterThanOrEqualToThreshold")
    try:
        shared_reads.alarms(cw, names[:1])
        before = shared_reads.ALARMS.calls
        # Thirty releases, each watching its own four alarms.
        answers = together(COUNT, lambda i: shared_reads.alarms(cw, names[i * 4:(i + 1) * 4]))
        calls = shared_reads.ALARMS.calls - before
        assert [sorted(a) for a in answers] == [names[i * 4:(i + 1) * 4] for i in range(COUNT)]
        assert calls == 2, calls  # 120 names, 100 a call
    finally:
        cw.delete_alarms(AlarmNames=names)


def test_a_refusal_for_one_name_is_that_names_alone() -> None:
    asked: list[list[str]] = []

    def fetch(client: Any, scope: tuple[Any, ...], names: list[str]) -> dict[str, Any]:
        asked.append(list(names))
        if "theirs" in names:
            raise ClientError({"Error": {"Code": "AccessDeniedException", "Message": "not authorized: theirs"}},
                              "DescribeServices")
        return {n: n.upper() for n in names}

    reads = SharedReads(chunk=10)
    shared_reads._SPACING[:] = [0.3]
    try:
        client = object()
        reads.read(client, ("c",), ["first"], fetch)  # the group has just called: the next call gathers for a spacing
        answers = together(3, lambda i: reads.read(client, ("c",), [["mine", "theirs", "ours"][i]], fetch))
    finally:
        shared_reads._SPACING.clear()
    assert answers[0] == {"mine": "MINE"} and answers[2] == {"ours": "OURS"}, answers
    assert isinstance(answers[1], ClientError) and "theirs" in str(answers[1]), answers
    assert sorted(asked[1]) == ["mine", "ours", "theirs"], "one call for the three first"
    assert sorted(map(tuple, asked[2:])) == [("mine",), ("ours",), ("theirs",)], "then each alone"


def test_the_batches_are_the_sizes_aws_documents(cluster: tuple[str, list[str]]) -> None:
    """DescribeServices' ``services``: "You may specify up to 10 services to describe in a single operation"
    (botocore's ECS model, a sentence: the model sets no maximum, so the sandbox refuses an eleventh); and
    DescribeAlarms' ``AlarmNames``: ``max`` 100 in botocore's CloudWatch model."""
    session = botocore.session.get_session()
    services = session.get_service_model("ecs").operation_model("DescribeServices").input_shape.members["services"]
    assert "up to 10 services" in services.documentation and shared_reads.SERVICES.chunk == 10
    alarms = session.get_service_model("cloudwatch").operation_model("DescribeAlarms").input_shape.members["AlarmNames"]
    assert alarms.metadata["max"] == 100 == shared_reads.ALARMS.chunk
    name, names = cluster
    ecs = aws("ecs")
    assert len(ecs.describe_services(cluster=name, services=names[:10])["services"]) == 10
    with pytest.raises(ClientError) as refused:
        ecs.describe_services(cluster=name, services=names[:11])
    assert refused.value.response["Error"]["Code"] == "InvalidParameterException", refused.value.response


def test_each_reader_raises_its_own_copy_and_idle_groups_are_forgotten() -> None:
    def fetch(client: Any, scope: tuple[Any, ...], names: list[str]) -> dict[str, Any]:
        raise ClientError({"Error": {"Code": "ClusterNotFoundException", "Message": "gone"}}, "DescribeServices")

    reads = SharedReads(chunk=10)
    shared_reads._SPACING[:] = [0.3]
    try:
        client = object()
        with pytest.raises(ClientError):
            reads.read(client, ("c",), ["first"], fetch)  # the group has just called: the rest gather
        errors = together(3, lambda i: reads.read(client, ("c",), [f"s{i}"], fetch))
    finally:
        shared_reads._SPACING.clear()
    assert all(isinstance(e, ClientError) and "gone" in str(e) for e in errors), errors
    assert len({id(e) for e in errors}) == 3, "one exception object raised in three threads"
    # A long-lived worker's groups: past KEPT_GROUPS, those idle for longer than any spacing are dropped.
    quiet = SharedReads(chunk=10)
    for i in range(shared_reads.KEPT_GROUPS + 5):
        quiet.read(client, (f"cluster-{i}",), ["svc"], lambda c, s, n: {"svc": s[0]})
    assert len(quiet._groups) == shared_reads.KEPT_GROUPS + 5, "none idle for a second yet: all kept"
    stale = time.monotonic() - 2 * shared_reads.SPACING_SECONDS
    for group in quiet._groups.values():
        group.last_start = stale
    quiet.read(client, ("one-more",), ["svc"], lambda c, s, n: {"svc": s[0]})
    assert list(quiet._groups) == [(id(client), ("one-more",))], list(quiet._groups)
