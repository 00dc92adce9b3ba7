"""The build's own AWS identity: CodeBuild's project role, not the pipeline's.

Without ``build.role_arn`` a build gets no AWS credentials at all. With it, each
build assumes the role for as long as it may run, narrowed by a session policy
to what a build of this service needs: ECR login, push and pull on the
service's own repository, and the Parameter Store parameters and Secrets
Manager secrets its buildspec names. The pipeline's (deploy) identity never
enters a build's environment.
"""

from __future__ import annotations

from typing import Any

from tasks.aws.clients import AwsClients
from tasks.aws.sts import assume_build_role
from tasks.config.buildspec import BuildSpec
from tasks.config.models import ServiceConfig

ECR_PUSH = ("ecr:BatchCheckLayerAvailability", "ecr:InitiateLayerUpload", "ecr:UploadLayerPart",
            "ecr:CompleteLayerUpload", "ecr:PutImage", "ecr:BatchGetImage", "ecr:GetDownloadUrlForLayer",
            "ecr:DescribeImages")
# What keeps a build from reading the worker's own AWS identity by default (a host build can still read
# the worker's files: only a build container closes that).
NO_WORKER_IDENTITY = {"AWS_SHARED_CREDENTIALS_FILE": "/dev/null", "AWS_CONFIG_FILE": "/dev/null",
                      "AWS_EC2_METADATA_DISABLED": "true"}


def partition_of(role_arn: str) -> str:
    return role_arn.split(":", 2)[1]


def session_policy(cfg: ServiceConfig, spec: BuildSpec, account: str, region: str, partition: str) -> dict[str, Any]:
    """The session policy for one build of CFG running SPEC (pure: a table-tested function)."""
    arn = f"arn:{partition}"
    statements: list[dict[str, Any]] = [
        {"Sid": "EcrLogin", "Effect": "Allow", "Action": ["ecr:GetAuthorizationToken"], "Resource": "*"},
        {"Sid": "PushOwnRepository", "Effect": "Allow", "Action": list(ECR_PUSH),
         "Resource": f"{arn}:ecr:{region}:{account}:repository/{cfg.ecr.repository}"},
    ]
    params = sorted(spec.env.parameter_store.values())
    if params:
        statements.append({"Sid": "NamedParameters", "Effect": "Allow", "Action": ["ssm:GetParameter",
                           "ssm:GetParameters"], "Resource": [
            f"{arn}:ssm:{region}:{account}:parameter/{name.lstrip('/')}" for name in params]})
    secrets = sorted({secret_id(ref) for ref in spec.env.secrets_manager.values()})
    if secrets:
        statements.append({"Sid": "NamedSecrets", "Effect": "Allow", "Action": ["secretsmanager:GetSecretValue"],
                           "Resource": [s if s.startswith("arn:") else
                                        f"{arn}:secretsmanager:{region}:{account}:secret:{s}-??????"
                                        for s in secrets]})
    return {"Version": "2012-10-17", "Statement": statements}


def secret_id(ref: str) -> str:
    """The secret of ``secret-id:json-key:version-stage:version-id`` (an ARN id has colons of its own)."""
    parts = ref.split(":")
    return ":".join(parts[:7]) if ref.startswith("arn:") else parts[0]


def build_credentials(cfg: ServiceConfig, clients: AwsClients, spec: BuildSpec, account: str,
                      build_id: str) -> dict[str, str]:
    """The build's AWS_* variables: the assumed build role's, or none (the variables that stop defaults)."""
    if not cfg.build.role_arn:
        return dict(NO_WORKER_IDENTITY)
    policy = session_policy(cfg, spec, account, clients.settings.region, partition_of(cfg.build.role_arn))
    creds = assume_build_role(clients, cfg.build.role_arn, f"build-{cfg.name}-{build_id}", policy,
                              cfg.build.timeout_seconds + 60)
    return {**NO_WORKER_IDENTITY, **creds}
