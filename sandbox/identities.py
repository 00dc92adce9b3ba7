"""The sandbox's identities: an admin of its own, the pipeline's deploy user and each service's build role.

With IAM enforced (the default), the sandbox's own keys (``<state>/admin.env``) are the only all-powerful ones:
seeding, the controller and the tests' set-up use them and the pipeline never sees them. ``<state>/env`` holds
the keys of the IAM user ``ecs-pipeline-deploy`` (the worker's identity), which may only assume the services'
deploy roles (``deploy_role_arn``: ``<service>-deploy``, each holding the policy ``ecs-pipeline iam`` generates
for its service), or holds a service's deploy policy itself when seeded as its deploy principal; builds assume
``<service>-build`` (``build.role_arn``).
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from typing import Any

import boto3
from botocore.config import Config
from botocore.exceptions import ClientError

from sandbox.layout import Layout, admin_key, read_env_file, write_private

DEPLOY_USER = "ecs-pipeline-deploy"
ENFORCE_ENV = "SANDBOX_ENFORCE_IAM"


def build_role_name(service: str) -> str:
    """The build role a seeded service's ``build.role_arn`` names."""
    return f"{service}-build"


def enforcing(env: Mapping[str, str] | None = None) -> str:
    """The server's SANDBOX_ENFORCE_IAM: on unless the caller's environment turns it off (``0``)."""
    value = (env if env is not None else os.environ).get(ENFORCE_ENV, "1").strip().lower()
    return "0" if value in ("0", "false", "no", "off") else "1"


ASSUME_POLICY = "assume-deploy-roles"


def ensure_assume_policy(iam: Any) -> None:
    """The worker's one permission: assuming the services' deploy roles (``deploy_role_arn``, named
    ``<service>-deploy`` by the seed's template), which hold each service's generated policy."""
    account = iam.get_user(UserName=DEPLOY_USER)["User"]["Arn"].split(":")[4]
    document = {"Version": "2012-10-17", "Statement": [{
        "Sid": "AssumeTheServicesDeployRoles", "Effect": "Allow", "Action": "sts:AssumeRole",
        "Resource": f"arn:aws:iam::{account}:role/*-deploy"}]}
    iam.put_user_policy(UserName=DEPLOY_USER, PolicyName=ASSUME_POLICY, PolicyDocument=json.dumps(document))


def ensure_deploy_user(lay: Layout) -> tuple[str, str]:
    """The deploy user's access key, made (with the user) when the AWS server does not know it.

    The server keeps its accounts in memory: after it restarts, the user and key are made again.
    """
    admin = admin_key(lay)
    iam = boto3.client("iam", endpoint_url=f"http://127.0.0.1:{lay.aws_port}", region_name="us-east-1",
                       aws_access_key_id=admin[0], aws_secret_access_key=admin[1],
                       config=Config(retries={"mode": "standard", "max_attempts": 5}))
    stored = read_env_file(lay.deploy_key_file)
    try:
        keys = iam.list_access_keys(UserName=DEPLOY_USER)["AccessKeyMetadata"]
    except ClientError as exc:
        if exc.response.get("Error", {}).get("Code") != "NoSuchEntity":
            raise
        iam.create_user(UserName=DEPLOY_USER, Tags=[{"Key": "purpose", "Value": "the pipeline's own identity"}])
        keys = []
    ensure_assume_policy(iam)
    if stored.get("AWS_ACCESS_KEY_ID") in {k["AccessKeyId"] for k in keys}:
        return stored["AWS_ACCESS_KEY_ID"], stored["AWS_SECRET_ACCESS_KEY"]
    for old in keys:  # a key whose secret is lost cannot be used: AWS allows two per user
        iam.delete_access_key(UserName=DEPLOY_USER, AccessKeyId=old["AccessKeyId"])
    made = iam.create_access_key(UserName=DEPLOY_USER)["AccessKey"]
    key = (str(made["AccessKeyId"]), str(made["SecretAccessKey"]))
    write_private(lay.deploy_key_file, f"AWS_ACCESS_KEY_ID={key[0]}\nAWS_SECRET_ACCESS_KEY={key[1]}\n")
    return key
