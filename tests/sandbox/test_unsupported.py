"""An operation the sandbox does not implement fails at once, not after a client's retry budget.

moto answers such calls with HTTP 500, which botocore retries; a client sized
for real AWS (standard mode, 10 attempts) would spin. The sandbox answers 400
UnsupportedOperation in the service's own protocol instead.
"""

from __future__ import annotations

import json
import os
import uuid
from collections.abc import Callable
from typing import Any

import boto3
import pytest
from botocore.config import Config
from botocore.exceptions import ClientError

PATIENT = Config(retries={"mode": "standard", "total_max_attempts": 10}, connect_timeout=5, read_timeout=30)


def patient_client(emu: Any, service: str) -> Any:
    return boto3.client(service, endpoint_url=emu.endpoint, region_name="us-east-1",
                        aws_access_key_id=os.environ.get("AWS_ACCESS_KEY_ID", "testing"),
                        aws_secret_access_key=os.environ.get("AWS_SECRET_ACCESS_KEY", "testing"), config=PATIENT)


def requests_since(emu: Any, seq: int, match: str) -> list[dict[str, Any]]:
    status, body = emu.http_get(f"{emu.endpoint}/_sandbox/requests?since={seq}&match={match}")
    assert status == 200
    return list(json.loads(body)["requests"])


def last_seq(emu: Any) -> int:
    return int(json.loads(emu.http_get(f"{emu.endpoint}/_sandbox/requests?since=0&match=-")[1])["last"])


ECS_CALLS: list[tuple[str, str, Callable[[Any, str], Any]]] = [
    ("GetTaskProtection", "get_task_protection", lambda c, n: c.get_task_protection(cluster=n)),
    ("ListServicesByNamespace", "list_services_by_namespace",
     lambda c, n: c.list_services_by_namespace(namespace=n)),
    ("UpdateClusterSettings", "update_cluster_settings",
     lambda c, n: c.update_cluster_settings(cluster=n, settings=[{"name": "containerInsights", "value": "enabled"}])),
]


@pytest.mark.parametrize(("operation", "method", "call"), ECS_CALLS, ids=[c[0] for c in ECS_CALLS])
def test_unimplemented_ecs_operation_fails_once_with_a_client_error(
        emu: Any, operation: str, method: str, call: Callable[[Any, str], Any]) -> None:
    marker = f"uns-{uuid.uuid4().hex[:8]}"
    seq = last_seq(emu)
    with pytest.raises(ClientError) as err:
        call(patient_client(emu, "ecs"), marker)
    error = err.value.response["Error"]
    assert error["Code"] == "UnsupportedOperation"
    assert error["Message"] == f"the sandbox does not implement ecs:{operation}"
    assert err.value.response["ResponseMetadata"]["HTTPStatusCode"] == 400
    assert err.value.response["ResponseMetadata"]["RetryAttempts"] == 0
    calls = requests_since(emu, seq, marker)
    assert [(c["service"], c["operation"], c["status"]) for c in calls] == [("ecs", operation, 400)]


def test_unimplemented_query_operation_answers_in_xml(emu: Any) -> None:
    """ELBv2 speaks the query protocol: the same error, parsed from its XML shape."""
    marker = f"uns-{uuid.uuid4().hex[:8]}"
    seq = last_seq(emu)
    with pytest.raises(ClientError) as err:
        patient_client(emu, "elbv2").describe_trust_stores(Names=[marker])
    assert err.value.response["Error"]["Code"] == "UnsupportedOperation"
    assert err.value.response["Error"]["Message"] == (
        "the sandbox does not implement elasticloadbalancing:DescribeTrustStores")
    assert [c["status"] for c in requests_since(emu, seq, marker)] == [400]


def test_implemented_operations_still_reach_moto(emu: Any) -> None:
    ecs = patient_client(emu, "ecs")
    name = f"uns-{uuid.uuid4().hex[:8]}"
    ecs.create_cluster(clusterName=name)
    try:
        assert ecs.list_services(cluster=name)["serviceArns"] == []
    finally:
        ecs.delete_cluster(cluster=name)


@pytest.mark.parametrize("operation", ["InitiateLayerUpload", "BatchCheckLayerAvailability"])
def test_a_moto_placeholder_is_unsupported_too(emu: Any, operation: str) -> None:
    """moto names these ECR methods but only raises NotImplementedError in them (a bare 500 in server mode)."""
    name = f"uns-{uuid.uuid4().hex[:8]}"
    ecr = patient_client(emu, "ecr")
    ecr.create_repository(repositoryName=name)
    try:
        calls = {"InitiateLayerUpload": lambda: ecr.initiate_layer_upload(repositoryName=name),
                 "BatchCheckLayerAvailability": lambda: ecr.batch_check_layer_availability(
                     repositoryName=name, layerDigests=["sha256:" + "0" * 64])}
        with pytest.raises(ClientError) as err:
            calls[operation]()
        assert err.value.response["Error"]["Code"] == "UnsupportedOperation"
        assert err.value.response["Error"]["Message"] == f"the sandbox does not implement ecr:{operation}"
        assert err.value.response["ResponseMetadata"]["RetryAttempts"] == 0
    finally:
        ecr.delete_repository(repositoryName=name, force=True)
