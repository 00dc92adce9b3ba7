"""Reads that the releases waiting in one process share: DescribeServices, DescribeTargetHealth, DescribeAlarms.

A fleet's releases run in threads of one process, each polling its own service, target groups and
alarms. Asked one by one, a hundred services waiting make a hundred DescribeServices per poll, and
AWS counts them per account and Region. Here a read joins the next call of its *group*:

* DescribeServices: one client (so one set of credentials) and one cluster, up to 10 services a call;
* DescribeAlarms: one client, up to 100 alarm names a call;
* DescribeTargetHealth: one client and one target group (the action takes one).

A group makes at most one call per spacing (one second against AWS, time-scaled in a rehearsal),
and that call carries every name asked for since the group's last call started. A read never gets
an answer older than itself: it waits for a call that starts after it asked, so it sees what a call
of its own would have seen. A lone read of a group that has not called within the spacing goes at
once. A call AWS refuses for one of several names (AccessDenied on another service's ARN) is
asked again name by name, so each read gets its own answer and its own error.

So a fleet's AWS call rate grows with its clusters and target groups, not with its services' polls.
"""

from __future__ import annotations

import copy
import os
import threading
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

from botocore.exceptions import ClientError

from tasks.aws.errors import error_code
from tasks.core.settings import is_loopback_url

Fetch = Callable[[Any, tuple[Any, ...], list[str]], dict[str, Any]]
SPACING_SECONDS = 1.0  # per group, against AWS; shortened by the time scale in a rehearsal
KEPT_GROUPS = 64  # past this many groups, idle ones are forgotten
_REFUSED = ("AccessDenied", "AccessDeniedException", "UnauthorizedOperation")


@dataclass
class _Batch:
    names: set[str] = field(default_factory=set)
    done: threading.Event = field(default_factory=threading.Event)
    found: dict[str, Any] = field(default_factory=dict)
    errors: dict[str, BaseException] = field(default_factory=dict)
    error: BaseException | None = None


@dataclass
class _Group:
    pending: _Batch | None = None
    last_start: float = float("-inf")


class SharedReads:
    """One kind of read, coalesced per group, CHUNK names a call; each read names its FETCH(client, scope,
    names) -> {name: answer} (the same for every read of a kind)."""

    def __init__(self, chunk: int) -> None:
        self.chunk = chunk
        self.calls = 0  # AWS calls made, for measurements
        self._groups: dict[tuple[int, tuple[Any, ...]], _Group] = {}
        self._lock = threading.Lock()

    def read(self, client: Any, scope: tuple[Any, ...], names: Sequence[str], fetch: Fetch) -> dict[str, Any]:
        """{name: answer} for NAMES (a name AWS does not know is left out), from a call started after now."""
        key = (id(client), scope)
        with self._lock:
            group = self._groups.setdefault(key, _Group())
            batch, leader = group.pending, False
            if batch is None:
                batch, leader = _Batch(), True
                group.pending = batch
            batch.names.update(names)
        if leader:
            self._lead(client, scope, group, batch, fetch)
        else:
            batch.done.wait()
        if batch.error is not None:
            raise _own(batch.error, leader)
        for name in names:
            if name in batch.errors:
                raise _own(batch.errors[name], leader)
        return {n: batch.found[n] for n in names if n in batch.found}

    def _lead(self, client: Any, scope: tuple[Any, ...], group: _Group, batch: _Batch, fetch: Fetch) -> None:
        """Wait out the group's spacing (others join meanwhile), then ask for every name gathered."""
        wait = group.last_start + spacing(client) - time.monotonic()
        if wait > 0:
            time.sleep(wait)
        with self._lock:
            group.pending = None  # a read from now on waits for the next call
            group.last_start = time.monotonic()
            names = sorted(batch.names)
            if len(self._groups) > KEPT_GROUPS:
                self._forget_idle(group.last_start)
        try:
            for start in range(0, len(names), self.chunk):
                self._ask(client, scope, names[start:start + self.chunk], batch, fetch)
        except BaseException as exc:  # noqa: BLE001 - every reader of the batch gets it, the leader too
            batch.error = exc
        finally:
            batch.done.set()

    def _forget_idle(self, now: float) -> None:
        """Drop the groups that asked nothing for longer than any spacing: a long-lived worker releases
        many services over its life, and a forgotten group is one that goes at once, as it would."""
        idle = [k for k, g in self._groups.items() if g.pending is None and now - g.last_start > SPACING_SECONDS]
        for key in idle:
            del self._groups[key]

    def _count(self, calls: int = 1) -> None:
        with self._lock:
            self.calls += calls

    def _ask(self, client: Any, scope: tuple[Any, ...], names: list[str], batch: _Batch, fetch: Fetch) -> None:
        try:
            self._count()
            batch.found.update(fetch(client, scope, names))
        except ClientError as exc:
            if len(names) == 1 or error_code(exc) not in _REFUSED:
                raise
            for name in names:  # whose name was refused: each read gets its own answer
                try:
                    self._count()
                    batch.found.update(fetch(client, scope, [name]))
                except ClientError as one:
                    batch.errors[name] = one


def _own(exc: BaseException, leader: bool) -> BaseException:
    """EXC for one reader to raise: the leader's own, a copy for every other reader's thread (one object
    raised in many threads has one traceback, rewritten by each raise)."""
    if leader:
        return exc
    try:
        return copy.copy(exc)
    except Exception:  # noqa: BLE001 - an exception that cannot be copied is raised as it is
        return exc


_SPACING: list[float] = []  # a spacing chosen for every group (a measurement's), else each client's own


def spacing(client: Any = None) -> float:
    """SPACING_SECONDS, divided by the time scale when CLIENT's endpoint is on this machine (a rehearsal;
    ECS_PIPELINE_TIME_SCALE, as the pipeline's other waits), as it is for every call against AWS."""
    if _SPACING:
        return _SPACING[0]
    endpoint = getattr(getattr(client, "meta", None), "endpoint_url", None)
    if not is_loopback_url(endpoint):
        return SPACING_SECONDS
    try:
        scale = float(os.environ.get("ECS_PIPELINE_TIME_SCALE") or 1.0)
    except ValueError:  # the settings refuse it, with their own words, before any release starts
        scale = 1.0
    return SPACING_SECONDS / scale if scale > 0 else SPACING_SECONDS


def _services(client: Any, scope: tuple[Any, ...], names: list[str]) -> dict[str, Any]:
    found = client.describe_services(cluster=scope[0], services=names)
    out: dict[str, list[dict[str, Any]]] = {}
    for svc in found.get("services", []):
        for name in {svc.get("serviceName"), svc.get("serviceArn")} & set(names):
            out.setdefault(str(name), []).append(svc)
    return out


def _alarms(client: Any, scope: tuple[Any, ...], names: list[str]) -> dict[str, Any]:
    found = client.describe_alarms(AlarmNames=names)
    return {a["AlarmName"]: a for a in found.get("MetricAlarms", [])}


def _target_health(client: Any, scope: tuple[Any, ...], names: list[str]) -> dict[str, Any]:
    (arn,) = names
    return {arn: client.describe_target_health(TargetGroupArn=arn)["TargetHealthDescriptions"]}


SERVICES = SharedReads(chunk=10)  # DescribeServices takes up to 10 services
ALARMS = SharedReads(chunk=100)  # DescribeAlarms takes up to 100 alarm names
TARGET_HEALTH = SharedReads(chunk=1)  # DescribeTargetHealth takes one target group


def services(ecs: Any, cluster: str, names: Iterable[str]) -> dict[str, list[dict[str, Any]]]:
    """{name: the services DescribeServices answers for it} for NAMES of CLUSTER."""
    return SERVICES.read(ecs, (cluster,), list(names), _services)


def alarms(cloudwatch: Any, names: Iterable[str]) -> dict[str, dict[str, Any]]:
    """{name: its MetricAlarm} for the NAMES CloudWatch knows."""
    return ALARMS.read(cloudwatch, (), list(names), _alarms)


def target_health(elbv2: Any, target_group: str) -> list[dict[str, Any]]:
    """DescribeTargetHealth's TargetHealthDescriptions for TARGET_GROUP."""
    return list(TARGET_HEALTH.read(elbv2, (target_group,), [target_group], _target_health)[target_group])
