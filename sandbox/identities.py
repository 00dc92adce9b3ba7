"""The sandbox's identities: an admin of its own, the pipeline's deploy user and each service's build role.

With IAM enforced (the default), the sandbox's own keys (``<state>/admin.env``) are the only all-powerful ones:
seeding, the controller and the tests' set-up use them and the pipeline never sees them. ``<state>/env`` holds
the keys of the IAM user ``ecs-pipeline-deploy``, which holds only the deploy policies ``ecs-pipeline iam``
generates for the services seeded for it; builds assume ``<service>-build`` (``build.role_arn``).
"""

from __future__ import annotations

DEPLOY_USER = "ecs-pipeline-deploy"


def build_role_name(service: str) -> str:
    """The build role a seeded service's ``build.role_arn`` names."""
    return f"{service}-build"
