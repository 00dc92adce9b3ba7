"""The one retry rule, on real exception objects."""

from __future__ import annotations

import docker.errors
import pytest
import requests
import urllib3.exceptions
from botocore.exceptions import (
    ClientError,
    ConnectionClosedError,
    ConnectTimeoutError,
    EndpointConnectionError,
    NoCredentialsError,
    ParamValidationError,
    ReadTimeoutError,
)
from prefect import flow, task
from prefect.client.schemas.objects import TaskRun
from prefect.states import Completed, Failed

from tasks.aws.retry import is_transient, retry_condition, retry_kwargs
from tasks.core.errors import (
    BuildError,
    ConfigError,
    DeployError,
    PushError,
    RolledBack,
    TransientError,
    VerifyFailed,
)


def client_error(code: str, status: int = 400, op: str = "DescribeServices") -> ClientError:
    return ClientError(
        {
            "Error": {"Code": code, "Message": f"{code} happened"},
            "ResponseMetadata": {"HTTPStatusCode": status},
        },
        op,
    )


def docker_api_error(status: int) -> docker.errors.APIError:
    response = requests.Response()
    response.status_code = status
    return docker.errors.APIError(f"{status} from the daemon", response=response)


def chained(outer: BaseException, cause: BaseException) -> BaseException:
    outer.__cause__ = cause
    return outer


TRANSIENT: list[tuple[str, BaseException]] = [
    (code, client_error(code))
    for code in (
        "Throttling",
        "ThrottlingException",
        "RequestLimitExceeded",
        "TooManyRequestsException",
        "ServiceUnavailable",
        "ServiceUnavailableException",
        "InternalFailure",
        "InternalError",
        "RequestTimeout",
        "RequestTimeoutException",
        "ServerException",
    )
] + [
    ("5xx with an unknown code", client_error("SomethingNew", 503)),
    ("500 with no code", client_error("", 500)),
    ("endpoint unreachable", EndpointConnectionError(endpoint_url="http://127.0.0.1:1")),
    ("connection closed", ConnectionClosedError(endpoint_url="http://127.0.0.1:1")),
    ("read timeout", ReadTimeoutError(endpoint_url="http://127.0.0.1:1")),
    ("connect timeout", ConnectTimeoutError(endpoint_url="http://127.0.0.1:1")),
    ("requests connection error", requests.ConnectionError("reset by peer")),
    ("requests read timeout", requests.ReadTimeout("daemon slow")),
    ("urllib3 protocol error", urllib3.exceptions.ProtocolError("Connection aborted.")),
    ("socket reset", ConnectionResetError(104, "Connection reset by peer")),
    ("docker 500", docker_api_error(500)),
    ("docker 503", docker_api_error(503)),
    ("our transient", TransientError("git fetch timed out")),
    (
        "docker client wrapping a connection error",
        chained(
            docker.errors.DockerException("Error while fetching server API version"),
            requests.ConnectionError("refused"),
        ),
    ),
]

PERMANENT: list[tuple[str, BaseException]] = [
    (code, client_error(code, status))
    for code, status in (
        ("AccessDeniedException", 400),
        ("AccessDenied", 403),
        ("ValidationException", 400),
        ("InvalidParameterException", 400),
        ("ClientException", 400),
        ("ServiceNotFoundException", 400),
        ("RepositoryNotFoundException", 400),
        ("UnrecognizedClientException", 403),
    )
] + [
    ("docker 400", docker_api_error(400)),
    ("docker 404", docker_api_error(404)),
    ("docker without response", docker.errors.APIError("no response")),
    ("build error", BuildError("dockerfile parse error")),
    ("push refused", PushError("denied")),
    ("config error", ConfigError("bad yaml")),
    ("deploy error", DeployError("service not found")),
    ("verify failed", VerifyFailed("/health returned 500")),
    ("rolled back", RolledBack("rolled back")),
    ("param validation", ParamValidationError(report="missing cluster")),
    ("no credentials", NoCredentialsError()),
    ("value error", ValueError("x")),
    ("key error", KeyError("x")),
    (
        "our permanent error caused by a reset stays permanent",
        chained(BuildError("git ls-remote failed"), ConnectionResetError()),
    ),
]


@pytest.mark.parametrize(("name", "exc"), TRANSIENT, ids=[n for n, _ in TRANSIENT])
def test_transient(name: str, exc: BaseException) -> None:
    assert is_transient(exc) is True


@pytest.mark.parametrize(("name", "exc"), PERMANENT, ids=[n for n, _ in PERMANENT])
def test_permanent(name: str, exc: BaseException) -> None:
    assert is_transient(exc) is False


@task
def some_stage() -> None:
    return None


RUN = TaskRun(task_key="some_stage", dynamic_key="0")


@pytest.mark.parametrize(
    ("state", "expect"),
    [
        (Failed(data=client_error("ThrottlingException")), True),
        (Failed(data=TransientError("daemon timed out")), True),
        (Failed(data=VerifyFailed("/health returned 500 on 3 of 3 checks")), False),
        (Failed(data=client_error("AccessDeniedException")), False),
        (Completed(data=1), False),
    ],
)
def test_retry_condition_reads_the_failed_state(state: object, expect: bool) -> None:
    assert retry_condition(some_stage, RUN, state) is expect


def test_retry_kwargs_are_accepted_by_prefect() -> None:
    kwargs = retry_kwargs()
    assert kwargs["retries"] == 3
    assert kwargs["retry_delay_seconds"] == [2.0, 4.0, 8.0]
    assert kwargs["retry_jitter_factor"] == 0.5
    stage = task(some_stage.fn, **kwargs)
    assert stage.retries == 3
    assert stage.retry_condition_fn is retry_condition


FAST = {**retry_kwargs(), "retry_delay_seconds": 0, "retry_jitter_factor": None}


def test_prefect_retries_transient_faults_only() -> None:
    """A real flow run: transient faults are retried, a permanent one fails at once."""
    calls = {"flaky": 0, "broken": 0}

    @task(**FAST)
    def flaky_stage() -> str:
        calls["flaky"] += 1
        if calls["flaky"] < 3:
            raise client_error("ThrottlingException")
        return "done"

    @task(**FAST)
    def broken_stage() -> None:
        calls["broken"] += 1
        raise BuildError("dockerfile parse error line 2: unknown instruction: FOO")

    @flow
    def release() -> tuple[str, bool]:
        return flaky_stage(), broken_stage(return_state=True).is_failed()

    assert release() == ("done", True)
    assert calls == {"flaky": 3, "broken": 1}
