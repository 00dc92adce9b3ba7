"""IAM: roles the pipeline names to AWS (never creates)."""

from __future__ import annotations

from typing import Any

from botocore.exceptions import ClientError

from tasks.aws.errors import error_code


def role_arn(iam: Any, role: str) -> str | None:
    """The ARN of ROLE (a name or an ARN), or None when IAM has no such role (GetRole: NoSuchEntity)."""
    name = role.rsplit("/", 1)[-1] if role.startswith("arn:") else role
    try:
        return str(iam.get_role(RoleName=name)["Role"]["Arn"])
    except ClientError as exc:
        if error_code(exc) == "NoSuchEntity":
            return None
        raise
