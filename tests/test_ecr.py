"""ECR helpers against the sandbox's AWS endpoint over HTTP.

Uses the test session's sandbox (AWS_ENDPOINT_URL, signed with its admin key) when it answers;
otherwise starts a moto server on a free loopback port for this module.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from botocore.exceptions import ClientError

from harness.services import HTTP
from sandbox.layout import free_ports
from tasks.aws.clients import AwsClients
from tasks.aws.ecr import ensure_repository, find_image_digest, registry_auth
from tasks.core.settings import DEFAULT_MAX_ATTEMPTS, Settings


def _answers(url: str) -> bool:
    try:
        return HTTP.get(url, timeout=2).status_code == 200
    except httpx.HTTPError:
        return False


@pytest.fixture(scope="module")
def endpoint() -> Iterator[str]:
    session = os.environ.get("AWS_ENDPOINT_URL", "")
    if session and _answers(f"{session}/_sandbox/health"):
        yield session
        return
    (port,) = free_ports(1)
    moto = Path(sys.executable).with_name("moto_server")
    proc = subprocess.Popen(
        [str(moto), "-H", "127.0.0.1", "-p", str(port)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 30
        while not _answers(f"{url}/moto-api/"):
            assert proc.poll() is None, "moto server exited"
            assert time.monotonic() < deadline, "moto server did not start"
            time.sleep(0.1)
        yield url
    finally:
        proc.terminate()
        proc.wait(timeout=10)


@pytest.fixture(scope="module")
def ecr(endpoint: str) -> Iterator[Any]:
    saved = dict(os.environ)
    os.environ.setdefault("AWS_ACCESS_KEY_ID", "testing")
    os.environ.setdefault("AWS_SECRET_ACCESS_KEY", "testing")
    try:
        settings = Settings(region="us-east-1", endpoint_url=endpoint)
        yield AwsClients(settings).get("ecr")
    finally:
        os.environ.clear()
        os.environ.update(saved)


def test_ensure_repository_creates_once(ecr: Any) -> None:
    name = f"team/app-{uuid.uuid4().hex[:8]}"
    uri = ensure_repository(ecr, name)
    assert uri.endswith(f"/{name}")
    assert ensure_repository(ecr, name) == uri
    repo = ecr.describe_repositories(repositoryNames=[name])["repositories"][0]
    assert repo["imageScanningConfiguration"] == {"scanOnPush": True}
    assert repo["imageTagMutability"] == "MUTABLE"


def test_find_image_digest_is_none_for_a_missing_tag(ecr: Any) -> None:
    name = f"app-{uuid.uuid4().hex[:8]}"
    ensure_repository(ecr, name)
    assert find_image_digest(ecr, name, "0" * 40) is None


def test_find_image_digest_propagates_other_errors(ecr: Any) -> None:
    with pytest.raises(ClientError) as err:
        find_image_digest(ecr, f"missing-{uuid.uuid4().hex[:8]}", "latest")
    assert err.value.response["Error"]["Code"] == "RepositoryNotFoundException"


def test_registry_auth_hides_the_password(ecr: Any) -> None:
    auth = registry_auth(ecr)
    endpoint = ecr.get_authorization_token()["authorizationData"][0]["proxyEndpoint"]
    assert auth.registry == endpoint.split("://", 1)[1].rstrip("/")
    assert auth.username == "AWS"
    password = auth.password.get_secret_value()
    assert len(password) >= 8
    for text in (repr(auth), str(auth), f"{auth}", repr(auth.model_dump()), auth.model_dump_json()):
        assert password not in text
    assert auth.auth_config() == {
        "username": "AWS",
        "password": password,
        "serveraddress": auth.registry,
    }


AWS_VARS = ("AWS_REGION", "AWS_DEFAULT_REGION", "AWS_ENDPOINT_URL", "AWS_MAX_ATTEMPTS", "AWS_PROFILE",
            "ECS_PIPELINE_TIME_SCALE")


@pytest.mark.parametrize(
    ("env", "expect"),
    [
        ({}, ("us-east-1", None, DEFAULT_MAX_ATTEMPTS, None)),
        (
            {"AWS_DEFAULT_REGION": "eu-west-1", "AWS_ENDPOINT_URL": "http://127.0.0.1:4566"},
            ("eu-west-1", "http://127.0.0.1:4566", DEFAULT_MAX_ATTEMPTS, None),
        ),
        (
            {"AWS_REGION": "us-west-2", "AWS_DEFAULT_REGION": "eu-west-1", "AWS_MAX_ATTEMPTS": "5"},
            ("us-west-2", None, 5, None),
        ),
        ({"AWS_PROFILE": "deploy", "AWS_ENDPOINT_URL": ""}, ("us-east-1", None, DEFAULT_MAX_ATTEMPTS, "deploy")),
    ],
)
def test_settings_from_env(
    env: dict[str, str], expect: tuple[object, ...], monkeypatch: pytest.MonkeyPatch
) -> None:
    for var in AWS_VARS:
        monkeypatch.delenv(var, raising=False)
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    got = Settings()
    assert (got.region, got.endpoint_url, got.max_attempts, got.profile) == expect


@pytest.mark.parametrize(
    ("endpoint", "scale", "effective"),
    [
        ("http://127.0.0.1:4566", "60", 60.0),
        ("http://localhost:4566", "60", 60.0),
        ("http://[::1]:4566", "60", 60.0),
        ("", "60", 1.0),
        ("https://ecs.us-east-1.amazonaws.com", "60", 1.0),
        ("http://127.0.0.1:4566", "", 1.0),
    ],
)
def test_time_scale_only_on_a_loopback_endpoint(
    endpoint: str, scale: str, effective: float, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A rehearsal's time scale must never shorten a real account's bake."""
    for var in AWS_VARS:
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("AWS_ENDPOINT_URL", endpoint)
    if scale:
        monkeypatch.setenv("ECS_PIPELINE_TIME_SCALE", scale)
    assert Settings().effective_time_scale == effective


def test_clients_are_cached_and_configured(endpoint: str) -> None:
    settings = Settings(endpoint_url=endpoint, max_attempts=2, connect_timeout=3, read_timeout=7)
    clients = AwsClients(settings)
    ecr = clients.get("ecr")
    assert clients.get("ecr") is ecr
    assert clients.get("ecs") is not ecr
    config = ecr.meta.config
    assert config.retries == {"mode": "standard", "total_max_attempts": 2}
    assert (config.connect_timeout, config.read_timeout) == (3, 7)
    assert ecr.meta.endpoint_url == endpoint
    assert ecr.meta.region_name == "us-east-1"
