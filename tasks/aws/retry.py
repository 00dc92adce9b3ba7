"""The one retry policy: botocore retries an AWS call; a stage repeats only for what botocore never saw.

Per AWS call (``botocore_config``, every client of ``tasks.aws.clients``): botocore's
standard mode is the only retry of an AWS call. Throttling codes, HTTP 500/502/503/504,
RequestTimeout and dropped or timed-out connections are sent again; every other answer
(validation, access denied, not found) fails at once. Worst case: ``AWS_MAX_ATTEMPTS``
sends, 10 by default (the first included; 20 at most), with botocore's full-jitter
backoff between them: after a throttle rand(0, 1) x min(2^i, 20) s, at most
1 + 2 + 4 + 8 + 16 + 20 + 20 + 20 + 20 = 111 s over the nine retries; after a 5xx or
a dropped connection rand(0, 1) x 0.05 x 2^i s, at most 25.6 s; each send bounded by
the connect (5 s) and read (30 s) timeouts. botocore's retry quota (per client, and a
client is shared by every release of the process: 500 tokens, 5 per throttle retry,
14 per other retry, given back by successes) stops retrying early when AWS keeps
failing call after call: that is an outage, not weather.

Per stage (``stage``): a Prefect task retry, only for transient faults botocore never
saw: Docker daemon 5xx and timeouts, dropped connections to git, the registry or the
Docker daemon, and our TransientError (a git fetch timed out, a push interrupted).
Worst case: RETRIES = 3 repeats (4 runs) 2, 4 and 8 s apart (jitter ±50 %); repeating
a whole stage is safe because every stage checks the real state before it acts.
An AWS fault that reaches a stage (AwsUnavailable, or a botocore connection error) has
had its attempts already: the stage fails at once, and the release with it (rolling
back what it moved). A stage repeat would multiply them (10 sends x 4 runs = 40) and
hold the release minutes longer for an answer AWS already gave ten times.

Per release: one AWS call is sent at most 10 times for its own faults. It is sent again
only when the stage around it repeats for a fault of another kind (Docker, git, the
registry): at most 10 x 4 = 40 sends, and only after three such faults in that stage.
The task-sets rollback alone goes on past botocore's attempts: it keeps putting the
listeners back on blue for up to ROLLBACK_WAIT (120 s) before it reports the split,
because giving up early leaves production split.

Permanent faults (validation, access denied, a Dockerfile error, a failed health check)
fail at once, so a person can fix them.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, ParamSpec, TypeVar

import docker.errors
import requests
import urllib3.exceptions
from botocore.config import Config
from botocore.exceptions import (
    ClientError,
    ConnectionClosedError,
    ConnectTimeoutError,
    EndpointConnectionError,
    HTTPClientError,
    ReadTimeoutError,
)
from botocore.exceptions import ConnectionError as BotocoreConnectionError
from prefect import Task, task
from prefect.cache_policies import NO_CACHE
from prefect.tasks import exponential_backoff

from tasks.aws.errors import is_transient_aws, translate
from tasks.core.errors import AwsUnavailable, PipelineError, TransientError
from tasks.core.settings import Settings

if TYPE_CHECKING:
    from prefect.client.schemas.objects import State, TaskRun

P = ParamSpec("P")
R = TypeVar("R")

USER_AGENT = "ecs-pipeline/0.1"
# Connections kept per client: every release of a fleet run (flows/fleet.MAX_THREADS) may call at once.
MAX_POOL_CONNECTIONS = 32

_TRANSIENT_CLASSES: tuple[type[BaseException], ...] = (
    EndpointConnectionError,
    ConnectionClosedError,
    ReadTimeoutError,
    ConnectTimeoutError,
    requests.ConnectionError,
    requests.Timeout,
    urllib3.exceptions.ProtocolError,
    urllib3.exceptions.TimeoutError,
    urllib3.exceptions.NewConnectionError,
    ConnectionError,
    TimeoutError,
)
# What botocore's standard mode has judged, and retried when it could, before a stage sees it.
_RETRIED_BY_BOTOCORE: tuple[type[BaseException], ...] = (
    AwsUnavailable,
    ClientError,
    BotocoreConnectionError,
    HTTPClientError,
)

RETRIES = 3
BACKOFF_FACTOR = 2.0
JITTER_FACTOR = 0.5


def botocore_config(settings: Settings) -> Config:
    """Every AWS client's configuration: the per-call retries above, timeouts, region."""
    return Config(
        region_name=settings.region,
        # total_max_attempts counts the first call too (botocore's max_attempts does not)
        retries={"mode": "standard", "total_max_attempts": settings.max_attempts},
        connect_timeout=settings.connect_timeout,
        read_timeout=settings.read_timeout,
        # lets a fault injector (or a CloudTrail query) tell the pipeline's calls from anyone else's
        user_agent_extra=USER_AGENT,
        max_pool_connections=MAX_POOL_CONNECTIONS,
        # Settings.endpoint_url (AWS_ENDPOINT_URL) alone chooses the endpoint, the one every command
        # prints: an AWS_ENDPOINT_URL_<SERVICE> or a profile's endpoint_url would send calls elsewhere.
        ignore_configured_endpoint_urls=True,
    )


def _is_transient_one(exc: BaseException) -> bool | None:
    """True/False when this exception decides it, None to look at its cause."""
    if isinstance(exc, TransientError):
        return True
    if isinstance(exc, PipelineError):
        return False  # raised on purpose after classification: trust it
    if isinstance(exc, ClientError):
        return is_transient_aws(exc)
    if isinstance(exc, docker.errors.APIError):
        status_code = exc.status_code
        return status_code is not None and status_code >= 500
    if isinstance(exc, _TRANSIENT_CLASSES):
        return True
    return None


def _judge(exc: BaseException, one: Callable[[BaseException], bool | None]) -> bool:
    """ONE's verdict on EXC, or on its cause when EXC does not decide (a wrapper's cause)."""
    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        verdict = one(current)
        if verdict is not None:
            return verdict
        current = current.__cause__ or current.__context__
    return False


def is_transient(exc: BaseException) -> bool:
    """Whether the fault behind EXC may pass: retrying the step that raised it may succeed.

    Wrapping exceptions (e.g. the Docker SDK's DockerException raised from a
    connection error) are judged by their cause.
    """
    return _judge(exc, _is_transient_one)


def _worth_repeating_one(exc: BaseException) -> bool | None:
    if isinstance(exc, _RETRIED_BY_BOTOCORE):
        return False  # its attempts already ran, with backoff; a repeat would multiply them
    return _is_transient_one(exc)


def worth_repeating(exc: BaseException) -> bool:
    """Whether a stage that raised EXC should run again: transient, and never seen by botocore.

    A TransientError from a Docker daemon or git is repeated; an AwsUnavailable, a
    ClientError or a botocore connection error is not.
    """
    return _judge(exc, _worth_repeating_one)


def retry_condition(task: Task[..., Any], task_run: TaskRun, state: State[Any]) -> bool:
    """Prefect's ``retry_condition_fn``: repeat a failed stage only for faults botocore never saw."""
    exc: Any = state.data
    if not isinstance(exc, BaseException):
        # _sync: the async task engine calls this from inside its event loop.
        exc = state.result(raise_on_failure=False, _sync=True)  # type: ignore[call-overload]
    return isinstance(exc, BaseException) and worth_repeating(exc)


def retry_kwargs(retries: int = RETRIES, backoff_factor: float = BACKOFF_FACTOR) -> dict[str, Any]:
    """Keyword arguments for ``@task(**retry_kwargs())``: backoff with jitter, see ``worth_repeating``."""
    return {
        "retries": retries,
        "retry_delay_seconds": exponential_backoff(backoff_factor=backoff_factor)(retries),
        "retry_jitter_factor": JITTER_FACTOR,
        "retry_condition_fn": retry_condition,
    }


def typed_errors(fn: Callable[P, R]) -> Callable[P, R]:
    """FN with AWS's errors typed at its edge (denied, missing, throttled), as a stage's are."""

    @functools.wraps(fn)
    def translated(*args: P.args, **kwargs: P.kwargs) -> R:
        try:
            return fn(*args, **kwargs)
        except ClientError as exc:
            typed = translate(exc, service=getattr(args[0], "name", None) if args else None)
            if typed is exc:
                raise
            raise typed from exc

    return translated


def stage(name: str, run_name: str) -> Callable[[Callable[P, R]], Task[P, R]]:
    """A pipeline stage: a Prefect task with the stage half of the retry policy, AWS errors typed at its edge.

    Every stage goes through here, so a denied permission, a missing resource and
    a throttle read the same way (and retry the same way) whichever stage hit them.
    """

    def wrap(fn: Callable[P, R]) -> Task[P, R]:
        made: Task[P, R] = task(name=name, task_run_name=run_name, cache_policy=NO_CACHE, **retry_kwargs())(
            typed_errors(fn)
        )
        return made

    return wrap
