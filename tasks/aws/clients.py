"""The one place AWS and Docker clients are made.

Region, endpoint, timeouts and the retries of every AWS call are decided by
``tasks.aws.retry.botocore_config`` (the one retry policy is written down
there); clients are made here on first use and passed into the task functions,
never created at module level, so the sandbox and production differ only by an
endpoint URL and a Docker host.

A client costs a decoded service model (botocore's JSON, the ECS one alone is
megabytes), an SSL context and its shapes resolved on first use: a fleet run
releases twenty services in threads of one process, so clients are shared by
every release in the process that has the same AWS settings (botocore clients
are thread-safe; sessions are not, so they are only used under a lock).
"""

from __future__ import annotations

import logging
import threading
from typing import TYPE_CHECKING, Any

import botocore.session

from tasks.aws.errors import IAM_PREFIX
from tasks.aws.retry import botocore_config
from tasks.config.models import ServiceConfig
from tasks.core.errors import PipelineError
from tasks.core.settings import Settings

if TYPE_CHECKING:
    import boto3
    import docker

DOCKER_TIMEOUT_SECONDS = 300


def _note_iam_prefix(client: Any) -> Any:
    """Put the IAM prefix into every error answer, so an AccessDenied can name the permission."""
    endpoint_prefix = client.meta.service_model.endpoint_prefix
    prefix = IAM_PREFIX.get(endpoint_prefix, endpoint_prefix)

    def note(parsed: dict[str, Any], **_: Any) -> None:
        if isinstance(parsed, dict) and isinstance(parsed.get("Error"), dict):
            parsed["Error"]["IamPrefix"] = prefix

    return note


_Key = tuple[Any, ...]
_SESSIONS: dict[_Key, botocore.session.Session] = {}
_CLIENTS: dict[tuple[_Key, str], Any] = {}
_LOCK = threading.Lock()  # botocore sessions are not thread-safe; the clients they make are
_LOADER: list[Any] = []  # botocore's data loader, shared by every session of the process
_LOADER_LOCK = threading.Lock()


def _shared_loader(session: Any) -> None:
    """Give SESSION (botocore's) the process's one data loader: the service models it has decoded
    (megabytes of JSON each) serve every session, so a fleet of services, each with a role and so a
    session of its own, decodes each model once rather than once per service."""
    import botocore.loaders

    with _LOADER_LOCK:
        if not _LOADER:
            _LOADER.append(botocore.loaders.create_loader())
    session.register_component("data_loader", _LOADER[0])


def boto3_session(botocore_session: Any = None, **kwargs: Any) -> boto3.session.Session:
    """A boto3 session (KWARGS as boto3.session.Session takes them) whose models come from the
    process's shared loader (the sandbox's seeding; the pipeline's own clients need no boto3)."""
    import boto3

    session = botocore_session or botocore.session.Session(profile=kwargs.pop("profile_name", None))
    _shared_loader(session)
    made = boto3.session.Session(botocore_session=session, **kwargs)
    with _LOADER_LOCK:  # boto3 adds its own data path to the loader, once per session made
        paths = _LOADER[0].search_paths
        paths[:] = list(dict.fromkeys(paths))
    return made


def _botocore_session(region: str, profile: str | None = None) -> botocore.session.Session:
    """A botocore session in REGION (as PROFILE) with the process's shared loader.

    The pipeline's clients are botocore's: boto3 adds resources the pipeline does not use, and its
    import (s3transfer with it) was about 40 ms of every release's start.
    """
    session = botocore.session.Session(profile=profile)
    _shared_loader(session)
    session.set_config_variable("region", region)
    return session


def _aws_key(settings: Settings, role_arn: str | None = None) -> _Key:
    """The settings a client depends on: clients are shared by every AwsClients that agrees on them."""
    return (settings.region, settings.profile, settings.endpoint_url, settings.max_attempts,
            settings.connect_timeout, settings.read_timeout, role_arn)  # fmt: skip


def shared_client(settings: Settings, service: str, role_arn: str | None = None) -> Any:
    """The process's client for SERVICE under SETTINGS (as ROLE_ARN when given), made on first use
    (one session per key)."""
    key = _aws_key(settings, role_arn)
    with _LOCK:
        client = _CLIENTS.get((key, service))
        if client is None:
            session = _SESSIONS.get(key)
            if session is None:
                session = _SESSIONS[key] = _session(settings, role_arn)
            client = session.create_client(service, region_name=settings.region, endpoint_url=settings.endpoint_url,
                                           config=botocore_config(settings))
            client.meta.events.register("after-call", _note_iam_prefix(client))
            _CLIENTS[(key, service)] = client
        return client


def _session(settings: Settings, role_arn: str | None) -> botocore.session.Session:
    """The worker's own session, or one whose credentials are ROLE_ARN's, assumed with the worker's.

    The role's credentials are asked for on first use and again before they expire (botocore's
    assume-role fetcher, as a profile with ``role_arn`` does), through STS at the configured endpoint.
    """
    base = _botocore_session(settings.region, settings.profile)
    if not role_arn:
        return base
    from botocore.credentials import AssumeRoleCredentialFetcher, DeferredRefreshableCredentials

    def sts_client(service: str, **_credentials: Any) -> Any:
        # The worker's own client: the credentials the fetcher names are the worker's (SOURCE below).
        return shared_client(settings, service)

    # A failed refresh is raised to the call that needed it, which explains it (tasks/aws/errors.py); botocore
    # would also log it with a traceback.
    logging.getLogger("botocore.credentials").setLevel(logging.ERROR)
    source = base.get_credentials()
    if source is None:
        raise PipelineError(f"no AWS credentials to assume {role_arn} with: set AWS_PROFILE or AWS_ACCESS_KEY_ID, "
                            "or run where an instance or task role is available")
    fetcher = AssumeRoleCredentialFetcher(sts_client, source, role_arn,
                                          extra_args={"RoleSessionName": "ecs-pipeline"})
    assumed = _botocore_session(settings.region)
    assumed._credentials = DeferredRefreshableCredentials(  # where botocore looks for a session's credentials
        refresh_using=fetcher.fetch_credentials, method="assume-role")
    return assumed


class AwsClients:
    """The AWS clients of one run: one per service name, shared with the process's other runs.

    ROLE_ARN: calls are made as this role (a service's ``deploy_role_arn``), assumed with the worker's
    own credentials; None: as the worker itself.
    """

    def __init__(self, settings: Settings, role_arn: str | None = None) -> None:
        self.settings = settings
        self.role_arn = role_arn
        self._caller: dict[str, str] | None = None

    def for_service(self, cfg: ServiceConfig) -> AwsClients:
        """The clients CFG's releases use: as its ``deploy_role_arn`` when it names one."""
        if cfg.deploy_role_arn == self.role_arn:
            return self
        return AwsClients(self.settings, cfg.deploy_role_arn)

    def get(self, service: str) -> Any:
        return shared_client(self.settings, service, self.role_arn)

    def account_id(self) -> str:
        """The caller's AWS account (STS GetCallerIdentity, no IAM permission needed), asked once per run.

        Task definition templates name it as ``<AWS_ACCOUNT_ID>``.
        """
        return self.caller()["Account"]

    def caller(self) -> dict[str, str]:
        """Who the run's calls are made as: ``Account`` and ``Arn`` (one GetCallerIdentity per run)."""
        if self._caller is None:
            found = self.get("sts").get_caller_identity()
            self._caller = {"Account": str(found["Account"]), "Arn": str(found["Arn"])}
        return self._caller

    def __reduce__(self) -> tuple[Any, ...]:
        # Clients hold sockets and locks; rebuild them from the settings elsewhere.
        return (AwsClients, (self.settings, self.role_arn))

    def __repr__(self) -> str:
        return (
            f"AwsClients(region={self.settings.region!r}, endpoint={self.settings.endpoint_url!r}, "
            f"role={self.role_arn!r})"
        )


def docker_client() -> docker.DockerClient:
    """A Docker client from DOCKER_HOST (and DOCKER_TLS_* when set); the SDK is imported on first use."""
    import docker

    return docker.from_env(timeout=DOCKER_TIMEOUT_SECONDS)
