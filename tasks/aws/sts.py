"""STS: the build's own short-lived identity, never the pipeline's."""

from __future__ import annotations

import json
from typing import Any

from tasks.aws.clients import AwsClients

# AssumeRole's limits: a session lasts 900 s to the role's maximum (one hour unless raised).
MIN_SESSION_SECONDS, MAX_SESSION_SECONDS = 900, 3600


def assume_build_role(clients: AwsClients, role_arn: str, session: str, policy: dict[str, Any],
                      seconds: int) -> dict[str, str]:
    """AWS_* variables for a session of ROLE_ARN narrowed by POLICY (a session policy), lasting SECONDS."""
    answer = clients.get("sts").assume_role(
        RoleArn=role_arn, RoleSessionName=session[:64], Policy=json.dumps(policy, separators=(",", ":")),
        DurationSeconds=max(MIN_SESSION_SECONDS, min(MAX_SESSION_SECONDS, seconds)),
    )
    creds = answer["Credentials"]
    return {"AWS_ACCESS_KEY_ID": str(creds["AccessKeyId"]), "AWS_SECRET_ACCESS_KEY": str(creds["SecretAccessKey"]),
            "AWS_SESSION_TOKEN": str(creds["SessionToken"])}


def caller_account(clients: AwsClients) -> str:
    return str(clients.get("sts").get_caller_identity()["Account"])
