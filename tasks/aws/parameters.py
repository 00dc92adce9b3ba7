"""Parameter Store and Secrets Manager: the values a buildspec's ``env`` names.

None when the parameter or secret does not exist, so the build can say which
``env`` entry names it; every other AWS answer propagates unchanged.
"""

from __future__ import annotations

from typing import Any

from botocore.exceptions import ClientError

from tasks.aws.errors import error_code

# What Parameter Store and Secrets Manager answer for a name, version or secret that is not there.
NOT_FOUND = ("ParameterNotFound", "ParameterVersionNotFound", "ResourceNotFoundException")


def parameter_value(ssm: Any, name: str) -> str | None:
    """The (decrypted) value of Parameter Store parameter NAME, or None when it does not exist."""
    try:
        found = ssm.get_parameter(Name=name, WithDecryption=True)
    except ClientError as exc:
        if error_code(exc) not in NOT_FOUND:
            raise
        return None
    return str(found["Parameter"]["Value"])


def secret_string(secretsmanager: Any, secret_id: str, stage: str = "", version: str = "") -> str | None:
    """The SecretString of SECRET_ID ("" for a binary secret), or None when it does not exist."""
    args: dict[str, str] = {"SecretId": secret_id}
    if stage:
        args["VersionStage"] = stage
    if version:
        args["VersionId"] = version
    try:
        found = secretsmanager.get_secret_value(**args)
    except ClientError as exc:
        if error_code(exc) not in NOT_FOUND:
            raise
        return None
    return str(found.get("SecretString", ""))
