"""EXTERNAL services and task sets answer as ECS documents them, never more conveniently.

Each test quotes the document it follows: botocore's ECS model (the API reference's text; the
test checks the quote is still in the installed model) or the ECS developer guide's "External
deployment" page (quoted below).
One cluster and load balancer serve the module; each test makes its own service in it.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable, Iterator
from typing import Any

import botocore.session
import pytest
from botocore.exceptions import ClientError

from tests.sandbox.conftest import Stack, unique

MODEL = botocore.session.get_session().get_service_model("ecs")

# Amazon ECS Developer Guide, "External deployment"
# (https://docs.aws.amazon.com/AmazonECS/latest/developerguide/deployment-type-external.html,
# source: github.com/awsdocs/amazon-ecs-developer-guide doc_source/deployment-type-external.md).
GUIDE_NULL = ("If no primary task set is defined for a service, when describing the service, "
              "the task set fields are null.")
GUIDE_PRIMARY = "When you call the DescribeServices API action, it returns all fields specified for a primary task set."
GUIDE_EC2 = "If a launch type is not specified, EC2 is used by default."


def documented(operation: str, member: str | None, quote: str) -> None:
    """QUOTE is in botocore's documentation of OPERATION (or of its input MEMBER)."""
    op = MODEL.operation_model(operation)
    text = op.documentation if member is None else op.input_shape.members[member].documentation
    assert quote in " ".join(text.replace("<code>", "").replace("</code>", "").split()), (operation, member)


def refused(call: Callable[[], Any]) -> str:
    with pytest.raises(ClientError) as err:
        call()
    assert err.value.response["Error"]["Code"] == "InvalidParameterException", err.value.response
    return str(err.value.response["Error"]["Message"])


@pytest.fixture(scope="module")
def stack(emu_aws: Callable[[str], Any], emu_net: dict[str, Any]) -> Iterator[Stack]:
    made = Stack(emu_aws, emu_net, unique("strict"))
    yield made
    made.teardown()


@pytest.fixture(scope="module")
def awsvpc_td(stack: Stack, emu_images: dict[str, str]) -> str:
    return stack.task_definition(emu_images["blue"])


def external(stack: Stack, count: int = 1) -> str:
    name = f"web-{uuid.uuid4().hex[:6]}"
    stack.ecs.create_service(cluster=stack.name, serviceName=name, desiredCount=count,
                             deploymentController={"type": "EXTERNAL"})
    return name


def test_awsvpc_task_set_without_network_configuration_is_refused(stack: Stack, awsvpc_td: str) -> None:
    quote = ("This parameter is required for task definitions that use the awsvpc network mode to receive "
             "their own elastic network interface, and it isn't supported for other network modes.")
    documented("CreateService", "networkConfiguration", quote)  # CreateTaskSet's own text says no more
    service = external(stack)
    message = refused(lambda: stack.ecs.create_task_set(
        cluster=stack.name, service=service, taskDefinition=awsvpc_td, launchType="FARGATE",
        loadBalancers=stack.lb(stack.tgs[0])))
    assert message == "Network Configuration must be provided when networkMode 'awsvpc' is specified."
    assert stack.ecs.describe_task_sets(cluster=stack.name, service=service)["taskSets"] == []
    bridge = stack.ecs.register_task_definition(
        family=f"{stack.name}-bridge", networkMode="bridge", containerDefinitions=[
            {"name": "web", "image": "busybox", "memory": 64, "essential": True}])["taskDefinition"]
    message = refused(lambda: stack.ecs.create_task_set(
        cluster=stack.name, service=service, taskDefinition=bridge["taskDefinitionArn"], launchType="EC2",
        networkConfiguration=stack.network))
    assert message == "Network Configuration is not valid for the given networkMode of this task definition."


def test_network_configuration_names_subnets_and_groups_of_one_vpc(
        stack: Stack, awsvpc_td: str, emu_aws: Callable[[str], Any]) -> None:
    documented("CreateTaskSet", None, "Create a task set in the specified cluster and service.")
    assert "All specified subnets and security groups must be from the same VPC." in \
        MODEL.shape_for("NetworkConfiguration").members["awsvpcConfiguration"].documentation
    service = external(stack)
    vpc = stack.network["awsvpcConfiguration"]

    def create(subnets: list[str], groups: list[str]) -> str:
        return refused(lambda: stack.ecs.create_task_set(
            cluster=stack.name, service=service, taskDefinition=awsvpc_td, launchType="FARGATE",
            networkConfiguration={"awsvpcConfiguration": {"subnets": subnets, "securityGroups": groups}}))

    assert "The subnet ID 'subnet-0123456789abcdef0' does not exist" in create(["subnet-0123456789abcdef0"], [])
    assert "The security group 'sg-0123456789abcdef0' does not exist" in \
        create(vpc["subnets"], ["sg-0123456789abcdef0"])
    ec2 = emu_aws("ec2")
    other = ec2.create_vpc(CidrBlock="127.121.0.0/16")["Vpc"]["VpcId"]
    elsewhere = ec2.create_security_group(GroupName=unique("other"), Description="x", VpcId=other)["GroupId"]
    assert create(vpc["subnets"], [elsewhere]) == \
        "All specified subnets and security groups must be from the same VPC."


def test_launch_type_and_capacity_provider_strategy_exclude_each_other(stack: Stack, awsvpc_td: str) -> None:
    documented("CreateTaskSet", "launchType",
               "If a launchType is specified, the capacityProviderStrategy parameter must be omitted.")
    documented("CreateTaskSet", "capacityProviderStrategy",
               "A capacity provider must be associated with the cluster to be used in a capacity provider strategy.")
    service = external(stack)
    spot = [{"capacityProvider": "FARGATE_SPOT", "weight": 1, "base": 0}]

    def create(**kwargs: Any) -> dict[str, Any]:
        return dict(stack.ecs.create_task_set(cluster=stack.name, service=service, taskDefinition=awsvpc_td,
                                              networkConfiguration=stack.network, **kwargs)["taskSet"])

    assert "Remove one and try again" in refused(lambda: create(launchType="FARGATE", capacityProviderStrategy=spot))
    assert "not associated with the cluster" in refused(lambda: create(capacityProviderStrategy=spot))
    stack.ecs.put_cluster_capacity_providers(cluster=stack.name, capacityProviders=["FARGATE", "FARGATE_SPOT"],
                                             defaultCapacityProviderStrategy=[])
    made = create(capacityProviderStrategy=spot)
    assert made["capacityProviderStrategy"] == spot and not made.get("launchType")
    stack.ecs.delete_task_set(cluster=stack.name, service=service, taskSet=made["taskSetArn"], force=True)


def test_external_service_shows_task_set_fields_only_through_its_primary(
        emu: Any, stack: Stack, awsvpc_td: str) -> None:
    documented("CreateService", None, "When creating a service that uses the EXTERNAL deployment controller, "
               "you can specify only parameters that aren't controlled at the task set level.")
    documented("UpdateServicePrimaryTaskSet", None,
               "Any parameters that are updated on the primary task set in a service will transition to the service.")
    assert GUIDE_NULL and GUIDE_PRIMARY  # the guide's words, quoted above
    fields = ("taskDefinition", "launchType", "capacityProviderStrategy", "platformVersion",
              "networkConfiguration", "loadBalancers", "serviceRegistries")
    message = refused(lambda: stack.ecs.create_service(
        cluster=stack.name, serviceName=unique("refused"), desiredCount=1, launchType="FARGATE",
        networkConfiguration=stack.network, deploymentController={"type": "EXTERNAL"}))
    assert "launchType, networkConfiguration cannot be specified" in message
    service = external(stack)

    def described() -> dict[str, Any]:
        return dict(stack.ecs.describe_services(cluster=stack.name, services=[service])["services"][0])

    before = described()
    assert {f: before[f] for f in fields if before.get(f)} == {}  # null, or an empty list
    ts = stack.ecs.create_task_set(cluster=stack.name, service=service, taskDefinition=awsvpc_td,
                                   launchType="FARGATE", networkConfiguration=stack.network,
                                   loadBalancers=stack.lb(stack.tgs[1]))["taskSet"]
    before = described()
    assert {f: before[f] for f in fields if before.get(f)} == {}, "no primary task set yet"
    stack.ecs.update_service_primary_task_set(cluster=stack.name, service=service, primaryTaskSet=ts["taskSetArn"])
    now = described()
    assert now["networkConfiguration"]["awsvpcConfiguration"]["subnets"] == \
        stack.network["awsvpcConfiguration"]["subnets"]
    assert (now["launchType"], now["taskDefinition"]) == ("FARGATE", awsvpc_td)
    assert now["loadBalancers"] == stack.lb(stack.tgs[1])
    # The subnets are records: the task itself runs on loopback and its target is 127.0.0.1.
    task = emu.wait_for(lambda: [t for t in stack.ecs.describe_tasks(cluster=stack.name, tasks=stack.ecs.list_tasks(
        cluster=stack.name, startedBy=ts["id"])["taskArns"] or ["none"]).get("tasks", [])
        if t.get("lastStatus") == "RUNNING"], 30, "the task set's task running")[0]
    assert task["containers"][0]["networkBindings"][0]["bindIP"] == "127.0.0.1"


def test_task_set_without_launch_type_or_strategy_runs_on_ec2_and_finds_no_instance(
        emu: Any, stack: Stack, awsvpc_td: str) -> None:
    documented("CreateTaskSet", "capacityProviderStrategy",
               "If no capacityProviderStrategy or launchType is specified, the defaultCapacityProviderStrategy "
               "for the cluster is used.")
    assert GUIDE_EC2  # the guide, on a task set's launchType
    stack.ecs.put_cluster_capacity_providers(cluster=stack.name, capacityProviders=[],
                                             defaultCapacityProviderStrategy=[])
    service = external(stack)
    ts = stack.ecs.create_task_set(cluster=stack.name, service=service, taskDefinition=awsvpc_td,
                                   networkConfiguration=stack.network)["taskSet"]
    assert ts["launchType"] == "EC2"

    def event() -> bool:
        svc = stack.ecs.describe_services(cluster=stack.name, services=[service])["services"][0]
        return any("No Container Instances were found in your cluster" in e["message"] for e in svc["events"])

    emu.wait_for(event, 15, "the placement failure event")
    found = stack.ecs.describe_task_sets(cluster=stack.name, service=service)["taskSets"][0]
    assert found["runningCount"] == 0 and found["pendingCount"] == 0


def test_seeded_network_keeps_its_ids_across_sandboxes(emu_aws: Callable[[str], Any]) -> None:
    """Not an AWS rule: the sandbox's seed names its network by fixed IDs, so a YAML can name them too."""
    from sandbox.seed_network import SECURITY_GROUP_ID, SUBNET_IDS, VPC_ID, ensure_network

    class Seeding:
        ec2 = emu_aws("ec2")

    first, again = ensure_network(Seeding()), ensure_network(Seeding())  # type: ignore[arg-type]
    assert first == again == {"vpc_id": VPC_ID, "subnets": list(SUBNET_IDS), "security_group": SECURITY_GROUP_ID}
