"""Which AWS operations the sandbox answers, and the error for those it does not.

In server mode moto answers an operation it lacks with a bare HTTP 500, which
botocore retries as a server fault: a client with the retry budget real AWS
needs spins for seconds before it fails. The sandbox answers such a call at
once with HTTP 400 ``UnsupportedOperation`` instead, a client error no retry
policy repeats, naming the operation so the gap is obvious. moto's placeholders
count as lacking: methods whose only statement raises NotImplementedError (ECR's
InitiateLayerUpload and BatchCheckLayerAvailability are such, for one).
"""

from __future__ import annotations

import ast
import functools
import importlib
import inspect
import textwrap
from collections.abc import Collection
from typing import Any

from moto.core.utils import camelcase_to_underscores, method_names_from_class

CODE = "UnsupportedOperation"
ELBV2_VERSION = "2015-12-01"
# the services the sandbox makes behave (as faults.canonical names them) -> moto's response class
RESPONSES = {"ecs": "moto.ecs.responses:EC2ContainerServiceResponse", "ecr": "moto.ecr.responses:ECRResponse",
             "elbv2": "moto.elbv2.responses:ELBV2Response", "logs": "moto.logs.responses:LogsResponse",
             "cloudwatch": "moto.cloudwatch.responses:CloudWatchResponse",
             "codedeploy": "moto.codedeploy.responses:CodeDeployResponse",
             "iam": "moto.iam.responses:IamResponse"}  # SimulatePrincipalPolicy: sandbox/controller/iam_simulate.py
SIGNING_NAMES = {"elbv2": "elasticloadbalancing", "cloudwatch": "monitoring"}


@functools.cache
def _moto_operations(service: str) -> frozenset[str] | None:
    """moto's method names for a service's operations (what moto itself dispatches on)."""
    target = RESPONSES.get(service)
    if target is None:
        return None  # not one of the sandbox's services: leave the answer to moto
    module, _, name = target.partition(":")
    owner: Any = getattr(importlib.import_module(module), name)
    return frozenset(m for m in method_names_from_class(owner) if not _placeholder(getattr(owner, m)))


def _placeholder(method: Any) -> bool:
    """Whether METHOD only raises NotImplementedError (after a docstring, if any): moto's stub."""
    try:
        tree = ast.parse(textwrap.dedent(inspect.getsource(method)))
    except (OSError, TypeError, SyntaxError):
        return False
    func = tree.body[0] if tree.body else None
    if not isinstance(func, ast.FunctionDef | ast.AsyncFunctionDef):
        return False
    body = [n for n in func.body if not (isinstance(n, ast.Expr) and isinstance(n.value, ast.Constant))]
    return len(body) == 1 and isinstance(body[0], ast.Raise) and "NotImplementedError" in ast.unparse(body[0])


def is_supported(service: str, operation: str, body: bytes, extra: Collection[tuple[str, str]]) -> bool:
    """Whether moto or a sandbox handler implements SERVICE.OPERATION (unknown services: assume so)."""
    if (service, operation) in extra:
        return True
    if service == "elbv2" and ELBV2_VERSION.encode() not in body:
        return True  # classic ELB shares the signing name; moto routes it by Version
    known = _moto_operations(service)
    return known is None or camelcase_to_underscores(operation) in known


def unsupported_message(service: str, operation: str) -> str:
    """What a person reads: the IAM-style action name of the missing operation."""
    return f"the sandbox does not implement {SIGNING_NAMES.get(service, service)}:{operation}"
