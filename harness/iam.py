"""Tests under enforced IAM: an enforcing sandbox server, users holding generated policies, clients signed by them.

``enforcing_sandbox()`` runs ``python -m sandbox.server`` with SANDBOX_ENFORCE_IAM=1 on a free loopback port
(the session's engine and registry stay shared: a release's containers are started by this server's
controller). Its admin keys (``testing``) are all-powerful; everything else is judged.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import boto3
import httpx
import pytest
from botocore.config import Config
from botocore.exceptions import ClientError

from harness.services import HTTP, free_port
from tasks.config.models import ServiceConfig
from tasks.release.permissions import Scope, build_policy, deploy_policy

ROOT = Path(__file__).resolve().parents[1]
ACCOUNT, REGION = "123456789012", "us-east-1"
ADMIN_KEY = ("testing", "testing")
CONFIG = Config(retries={"mode": "standard", "total_max_attempts": 2}, connect_timeout=5, read_timeout=30)
Client = Callable[[str], Any]


def _answers(url: str) -> bool:
    try:
        return HTTP.get(url, timeout=2).status_code == 200
    except httpx.HTTPError:
        return False


@contextmanager
def enforcing_sandbox() -> Iterator[str]:
    """The endpoint of a sandbox server of its own that enforces IAM; stopped (and its log removed) at exit."""
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("AWS_")}
    env.update(SANDBOX_ENFORCE_IAM="1", SANDBOX_TIME_SCALE=os.environ.get("SANDBOX_TIME_SCALE", "60"))
    log = tempfile.NamedTemporaryFile(prefix="iam-enforced-", suffix=".log", delete=False)  # noqa: SIM115
    proc = subprocess.Popen([sys.executable, "-m", "sandbox.server", "--host", "127.0.0.1", "--port", str(port)],
                            cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 60
        while not _answers(f"{url}/_sandbox/health"):
            assert proc.poll() is None, Path(log.name).read_text()[-3000:]
            assert time.monotonic() < deadline, "the enforcing sandbox did not start"
            time.sleep(0.2)
        yield url
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()
        log.close()
        os.unlink(log.name)


def client_factory(url: str, key: str, secret: str, token: str | None = None) -> Client:
    """boto3 clients for URL signed with KEY/SECRET (and a session TOKEN)."""
    return lambda service: boto3.client(service, endpoint_url=url, region_name=REGION, aws_access_key_id=key,
                                        aws_secret_access_key=secret, aws_session_token=token, config=CONFIG)


def admin_client(url: str) -> Client:
    return client_factory(url, *ADMIN_KEY)


def seeding_env(endpoint: str) -> dict[str, str]:
    """The session sandbox's env (engine, registry) aimed at the enforcing ENDPOINT, signed as its admin:
    ``seed.seed_service(cfg, env=seeding_env(url))`` seeds there as the sandbox's own identity does."""
    from sandbox.manage import load_env

    return {**load_env(), "AWS_ENDPOINT_URL": endpoint, "AWS_ACCESS_KEY_ID": ADMIN_KEY[0],
            "AWS_SECRET_ACCESS_KEY": ADMIN_KEY[1]}


def rendered_task_definition(cfg: ServiceConfig) -> dict[str, Any]:
    """The service's task definition template, rendered as a release renders it (the image left open)."""
    from tasks.config.taskdef import load_template, render_task_definition

    template = load_template(cfg.path(cfg.task_definition))
    return render_task_definition(template, image="<IMAGE>", container=cfg.ecs.container, sha=None,
                                  service=cfg.name, source=str(cfg.task_definition), account=None, region=None)


def generated_deploy_policy(cfg: ServiceConfig, principal: str | None = None) -> dict[str, Any]:
    """What ``ecs-pipeline iam SERVICE --role deploy [--principal ARN]`` prints for CFG in the sandbox's account."""
    return deploy_policy(cfg, rendered_task_definition(cfg), None, Scope(ACCOUNT, REGION), principal).document


def generated_build_policy(cfg: ServiceConfig) -> dict[str, Any]:
    """What ``ecs-pipeline iam SERVICE --role build`` prints for CFG in the sandbox's account."""
    return build_policy(cfg, None, Scope(ACCOUNT, REGION)).document


def user_with_policy(admin: Client, user: str, document: dict[str, Any]) -> dict[str, str]:
    """A new IAM user holding DOCUMENT as its inline policy ``deploy``; returns its access key."""
    iam = admin("iam")
    iam.create_user(UserName=user)
    put_policy(admin, user, document)
    return dict(iam.create_access_key(UserName=user)["AccessKey"])


def put_policy(admin: Client, user: str, document: dict[str, Any]) -> None:
    """Replace USER's inline policy ``deploy`` with DOCUMENT."""
    admin("iam").put_user_policy(UserName=user, PolicyName="deploy", PolicyDocument=json.dumps(document))


def without(document: dict[str, Any], sid: str) -> dict[str, Any]:
    """DOCUMENT with its statement SID removed (which must exist)."""
    kept = [s for s in document["Statement"] if s["Sid"] != sid]
    assert len(kept) == len(document["Statement"]) - 1, f"no statement {sid}"
    return {**document, "Statement": kept}


def refused(call: Callable[[], Any]) -> ClientError:
    """The ClientError CALL raises (failing the test when it does not)."""
    with pytest.raises(ClientError) as caught:
        call()
    return caught.value


def requests_seen(endpoint: str, since: int, match: str) -> list[dict[str, Any]]:
    """The AWS calls the sandbox at ENDPOINT answered after SINCE whose text matches MATCH."""
    found = HTTP.get(f"{endpoint}/_sandbox/requests", params={"since": since, "match": match}, timeout=10).json()
    return list(found["requests"])
