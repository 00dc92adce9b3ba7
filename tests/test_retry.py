"""The one retry policy, on real exception objects: botocore retries AWS calls, a stage repeats for the rest."""

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

from tasks.aws.errors import translate
from tasks.aws.retry import is_transient, retry_condition, retry_kwargs, stage, worth_repeating
from tasks.core.errors import (
    AwsUnavailable,
    BuildError,
    ConfigError,
    DeployError,
    PushError,
    RolledBack,
    TransientError,
    VerifyFailed,
)


def client_error(code: str, status: int = 400, op: str = "DescribeServices", retried: int = 0) -> ClientError:
    return ClientError(
        {
            "Error": {"Code": code, "Message": f"{code} happened"},
            "ResponseMetadata": {"HTTPStatusCode": status, "RetryAttempts": retried},
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
        (Failed(data=client_error("ThrottlingException")), False),
        (Failed(data=AwsUnavailable("DescribeServices: ThrottlingException")), False),
        (Failed(data=docker_api_error(503)), True),
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


# Faults botocore's standard mode has retried (or judged permanent) before a stage sees them.
AWS_FAULTS = [(n, e) for n, e in TRANSIENT if isinstance(e, (ClientError, EndpointConnectionError,
                                                              ConnectionClosedError, ReadTimeoutError,
                                                              ConnectTimeoutError))]


@pytest.mark.parametrize(("name", "exc"), AWS_FAULTS, ids=[n for n, _ in AWS_FAULTS])
def test_an_aws_fault_is_transient_but_never_repeats_a_stage(name: str, exc: BaseException) -> None:
    """botocore already sent the call up to AWS_MAX_ATTEMPTS times: a stage repeat would multiply them."""
    assert is_transient(exc) is True
    assert worth_repeating(exc) is False
    typed = translate(exc)
    assert worth_repeating(chained(typed, exc) if typed is not exc else exc) is False


@pytest.mark.parametrize(("name", "exc"), [(n, e) for n, e in TRANSIENT if (n, e) not in AWS_FAULTS],
                         ids=[n for n, e in TRANSIENT if (n, e) not in AWS_FAULTS])
def test_a_fault_botocore_never_saw_repeats_the_stage(name: str, exc: BaseException) -> None:
    assert worth_repeating(exc) is True


@pytest.mark.parametrize(("name", "exc"), PERMANENT, ids=[n for n, _ in PERMANENT])
def test_a_permanent_fault_never_repeats_a_stage(name: str, exc: BaseException) -> None:
    assert worth_repeating(exc) is False


def test_a_throttle_that_outlasted_botocore_says_how_often_it_was_sent() -> None:
    typed = translate(client_error("ThrottlingException", retried=9), service="shop")
    assert isinstance(typed, AwsUnavailable) and isinstance(typed, TransientError)
    assert str(typed) == ("DescribeServices: ThrottlingException (transient; still failing after 10 attempts) "
                          "[service=shop]")


FAST = {**retry_kwargs(), "retry_delay_seconds": 0, "retry_jitter_factor": None}


def test_prefect_repeats_a_stage_for_docker_faults_only() -> None:
    """A real flow run: a Docker 5xx repeats the stage, a throttle (botocore's to retry) and a
    permanent error fail it at once."""
    calls = {"docker": 0, "throttled": 0, "broken": 0}

    @task(**FAST)
    def docker_stage() -> str:
        calls["docker"] += 1
        if calls["docker"] < 3:
            raise docker_api_error(500)
        return "done"

    @task(**FAST)
    def throttled_stage() -> None:
        calls["throttled"] += 1
        raise client_error("ThrottlingException", retried=9)

    @task(**FAST)
    def broken_stage() -> None:
        calls["broken"] += 1
        raise BuildError("dockerfile parse error line 2: unknown instruction: FOO")

    @flow
    def release() -> tuple[str, bool, bool]:
        return (docker_stage(), throttled_stage(return_state=True).is_failed(),
                broken_stage(return_state=True).is_failed())

    assert release() == ("done", True, True)
    assert calls == {"docker": 3, "throttled": 1, "broken": 1}


def test_a_stage_runs_once_for_a_throttle_and_fails_typed() -> None:
    """Through ``stage`` itself (its own retries and delays): the ClientError becomes AwsUnavailable."""
    calls = []

    @stage("throttled", "throttled {name}")
    def throttled(name: str) -> None:
        calls.append(name)
        raise client_error("ThrottlingException", retried=9)

    @flow
    def release() -> object:
        return throttled("shop", return_state=True).result(raise_on_failure=False)

    err = release()
    assert isinstance(err, AwsUnavailable), err
    assert "still failing after 10 attempts" in str(err)
    assert calls == ["shop"]
