"""EXTERNAL services and their task sets, held to what ECS documents.

- CreateService with the EXTERNAL controller takes only what is not set per task set: the task
  definition, launch type, capacity provider strategy, platform version, network configuration,
  load balancers and service registries are refused (CreateService's documentation: "you can
  specify only parameters that aren't controlled at the task set level").
- DescribeServices shows those fields only once a primary task set exists, and then the primary's
  (the External deployment guide: "If no primary task set is defined for a service, when
  describing the service, the task set fields are null").
- CreateTaskSet: an awsvpc task definition needs networkConfiguration, other network modes refuse
  one; its subnets and security groups must exist and share one VPC; launchType and
  capacityProviderStrategy exclude each other, and a strategy names only providers associated with
  the cluster; with neither, the cluster's default strategy applies, else launch type EC2, whose
  tasks find no container instance here.

The subnets and security groups are moto records only: tasks still run on 127.0.0.1.
"""

from __future__ import annotations

from typing import Any

from moto.ec2.models import ec2_backends
from moto.ecs.exceptions import InvalidParameterException

from .world import ACCOUNT, REGION

# What a task set carries and an EXTERNAL service shows only through its primary task set.
TASK_SET_FIELDS = ("task_definition", "launch_type", "capacity_provider_strategy", "platform_version",
                   "network_configuration", "load_balancers", "service_registries")
CREATE_SERVICE_PARAMS = ("taskDefinition", "launchType", "capacityProviderStrategy", "platformVersion",
                          "networkConfiguration", "loadBalancers", "serviceRegistries")


def check_external_service(params: dict[str, Any]) -> None:
    """CreateService of an EXTERNAL service: refuse the parameters its task sets own."""
    given = [p for p in CREATE_SERVICE_PARAMS if params.get(p) not in (None, [], {})]
    if given:
        raise InvalidParameterException(
            f"{', '.join(given)} cannot be specified for a service that uses the EXTERNAL deployment "
            "controller: they are controlled at the task set level. Specify them with CreateTaskSet.")


def clear_task_set_fields(service: Any) -> None:
    """A new EXTERNAL service shows no task-set field until it has a primary task set."""
    for name in TASK_SET_FIELDS:
        setattr(service, name, None)


def show_primary(service: Any, task_set: Any) -> None:
    """DescribeServices returns every field of the primary task set (UpdateServicePrimaryTaskSet)."""
    service.task_definition = task_set.task_definition
    service.launch_type = None if task_set.capacity_provider_strategy else task_set.launch_type
    service.capacity_provider_strategy = task_set.capacity_provider_strategy or None
    service.platform_version = task_set.platform_version if task_set.launch_type == "FARGATE" else None
    service.network_configuration = task_set.network_configuration or None
    service.load_balancers = list(task_set.load_balancers or [])
    service.service_registries = list(task_set.service_registries or []) or None


def check_task_set(backend: Any, cluster_name: str, params: dict[str, Any]) -> dict[str, Any]:
    """CreateTaskSet's parameters checked as ECS checks them; returns the launch settings to use."""
    launch_type, strategy = params.get("launchType"), params.get("capacityProviderStrategy")
    if launch_type and strategy:
        raise InvalidParameterException(
            "Specifying both a launch type and capacity provider strategy is not supported. "
            "Remove one and try again.")
    cluster = backend._get_cluster(cluster_name)
    if strategy:
        associated = set(cluster.capacity_providers or [])
        unknown = [i.get("capacityProvider") for i in strategy if i.get("capacityProvider") not in associated]
        if unknown:
            raise InvalidParameterException(
                "The specified capacity provider strategy cannot contain a capacity provider that is not "
                "associated with the cluster. Associate the capacity provider with the cluster or specify "
                "a valid capacity provider and try again.")
    elif not launch_type and cluster.default_capacity_provider_strategy:
        strategy = cluster.default_capacity_provider_strategy
    td = backend.describe_task_definition(params.get("taskDefinition"))
    fargate = launch_type == "FARGATE" or any(
        str(i.get("capacityProvider", "")).startswith("FARGATE") for i in strategy or [])
    if fargate and "FARGATE" not in (td.requires_compatibilities or []):
        raise InvalidParameterException("Task definition does not support launch_type FARGATE.")
    network = params.get("networkConfiguration")
    if td.network_mode == "awsvpc" and not network:
        raise InvalidParameterException(
            "Network Configuration must be provided when networkMode 'awsvpc' is specified.")
    if network and td.network_mode != "awsvpc":
        raise InvalidParameterException(
            "Network Configuration is not valid for the given networkMode of this task definition.")
    if network:
        check_network(network)
    return {"launch_type": None if strategy else (launch_type or "EC2"), "capacity_provider_strategy": strategy}


def check_network(network: dict[str, Any]) -> None:
    """Subnets and security groups exist and lie in one VPC, as ECS looks them up in EC2."""
    vpc = network.get("awsvpcConfiguration") or {}
    subnets, groups = list(vpc.get("subnets") or []), list(vpc.get("securityGroups") or [])
    if not subnets:
        raise InvalidParameterException("subnets can not be empty.")
    ec2 = ec2_backends[ACCOUNT][REGION]
    known = {s.id: s.vpc_id for zone in ec2.subnets.values() for s in zone.values()}
    for subnet in subnets:
        if subnet not in known:
            raise InvalidParameterException(
                f"Error retrieving subnet information for [{subnet}]: The subnet ID '{subnet}' does not "
                "exist (ErrorCode: InvalidSubnetID.NotFound)")
    sgs = {g.id: g.vpc_id for by_vpc in ec2.groups.values() for g in by_vpc.values()}
    for group in groups:
        if group not in sgs:
            raise InvalidParameterException(
                f"Error retrieving security group information for [{group}]: The security group "
                f"'{group}' does not exist (ErrorCode: InvalidGroup.NotFound)")
    vpcs = {known[s] for s in subnets} | {sgs[g] for g in groups}
    if len(vpcs) > 1:
        raise InvalidParameterException("All specified subnets and security groups must be from the same VPC.")


def unplaceable(backend: Any, service: Any, task_set: Any) -> bool:
    """A task set on launch type EC2 in a cluster without container instances: ECS cannot place a task."""
    if task_set.launch_type != "EC2" or task_set.capacity_provider_strategy:
        return False
    return not backend.container_instances.get(service.cluster_name)
