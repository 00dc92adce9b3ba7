"""Which failures are worth retrying: one rule for every task.

Transient faults (throttling, 5xx, connection resets, Docker daemon timeouts)
may succeed on a later attempt; everything else (validation, access denied, a
Dockerfile error, a failed health check) fails at once so a person can fix it.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, ParamSpec, TypeVar

import docker.errors
import requests
import urllib3.exceptions
from botocore.exceptions import (
    ClientError,
    ConnectionClosedError,
    ConnectTimeoutError,
    EndpointConnectionError,
    ReadTimeoutError,
)
from prefect import Task, task
from prefect.cache_policies import NO_CACHE
from prefect.tasks import exponential_backoff

from tasks.core.errors import PipelineError, TransientError, is_transient_aws, translate

if TYPE_CHECKING:
    from prefect.client.schemas.objects import State, TaskRun

P = ParamSpec("P")
R = TypeVar("R")

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

RETRIES = 3
BACKOFF_FACTOR = 2.0
JITTER_FACTOR = 0.5


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


def is_transient(exc: BaseException) -> bool:
    """Whether retrying the step that raised EXC may succeed.

    Wrapping exceptions (e.g. the Docker SDK's DockerException raised from a
    connection error) are judged by their cause.
    """
    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        verdict = _is_transient_one(current)
        if verdict is not None:
            return verdict
        current = current.__cause__ or current.__context__
    return False


def retry_condition(task: Task[..., Any], task_run: TaskRun, state: State[Any]) -> bool:
    """Prefect's ``retry_condition_fn``: retry a failed task run only for transient faults."""
    exc: Any = state.data
    if not isinstance(exc, BaseException):
        # _sync: the async task engine calls this from inside its event loop.
        exc = state.result(raise_on_failure=False, _sync=True)  # type: ignore[call-overload]
    return isinstance(exc, BaseException) and is_transient(exc)


def retry_kwargs(retries: int = RETRIES, backoff_factor: float = BACKOFF_FACTOR) -> dict[str, Any]:
    """Keyword arguments for ``@task(**retry_kwargs())``: backoff with jitter, transient only."""
    return {
        "retries": retries,
        "retry_delay_seconds": exponential_backoff(backoff_factor=backoff_factor)(retries),
        "retry_jitter_factor": JITTER_FACTOR,
        "retry_condition_fn": retry_condition,
    }


def stage(name: str, run_name: str) -> Callable[[Callable[P, R]], Task[P, R]]:
    """A pipeline stage: a Prefect task with the one retry policy, and AWS errors typed at its edge.

    Every stage goes through here, so a denied permission, a missing resource and
    a throttle read the same way (and retry the same way) whichever stage hit them.
    """

    def wrap(fn: Callable[P, R]) -> Task[P, R]:
        @functools.wraps(fn)
        def translated(*args: P.args, **kwargs: P.kwargs) -> R:
            try:
                return fn(*args, **kwargs)
            except ClientError as exc:
                typed = translate(exc, service=getattr(args[0], "name", None) if args else None)
                if typed is exc:
                    raise
                raise typed from exc

        made: Task[P, R] = task(name=name, task_run_name=run_name, cache_policy=NO_CACHE, **retry_kwargs())(
            translated
        )
        return made

    return wrap
