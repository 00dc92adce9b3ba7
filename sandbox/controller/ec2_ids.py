"""Network records that keep their IDs: a service YAML written once keeps naming them.

moto gives every VPC, subnet and security group a random ID and keeps its state in memory, so a
restarted sandbox would give the seeded network new IDs and a YAML's ``network.subnets`` would go
stale. A CreateVpc, CreateSubnet or CreateSecurityGroup that carries the tag ``sandbox:id`` gets
that ID instead (the sandbox's seed uses it; moto's own ``_custom_id_`` tag does not reach EC2).
The records are records only: nothing is ever sent to their addresses.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import Any

from moto.ec2.models import security_groups, subnets, vpcs
from moto.ec2.models.security_groups import SecurityGroupBackend
from moto.ec2.models.subnets import SubnetBackend
from moto.ec2.models.vpcs import VPCBackend

ID_TAG = "sandbox:id"
_wanted = threading.local()


def tagged_id(tags: Any) -> str | None:
    """The ``sandbox:id`` value in any of moto's tag shapes (Key/Value lists, dicts, nested by resource)."""
    if isinstance(tags, dict):
        if isinstance(tags.get(ID_TAG), str):
            return str(tags[ID_TAG])
        if tags.get("Key") == ID_TAG:
            return str(tags.get("Value"))
        return next((found for v in tags.values() if (found := tagged_id(v))), None)
    if isinstance(tags, list):
        return next((found for v in tags if (found := tagged_id(v))), None)
    return None


def _generator(kind: str, original: Callable[[], str]) -> Callable[[], str]:
    def generate() -> str:
        want = getattr(_wanted, "want", None)
        if want is not None and want[0] == kind:
            _wanted.want = None
            return str(want[1])
        return original()

    return generate


def _creating(kind: str, create: Callable[..., Any]) -> Callable[..., Any]:
    def wrapped(self: Any, *args: Any, **kwargs: Any) -> Any:
        wanted = tagged_id(kwargs.get("tags"))
        _wanted.want = (kind, wanted) if wanted else None
        try:
            return create(self, *args, **kwargs)
        finally:
            _wanted.want = None

    return wrapped


def install_patches() -> None:
    for module, name, kind in ((vpcs, "random_vpc_id", "vpc"), (subnets, "random_subnet_id", "subnet"),
                               (security_groups, "random_security_group_id", "sg")):
        setattr(module, name, _generator(kind, getattr(module, name)))
    VPCBackend.create_vpc = _creating("vpc", VPCBackend.create_vpc)  # type: ignore[method-assign]
    SubnetBackend.create_subnet = _creating("subnet", SubnetBackend.create_subnet)  # type: ignore[method-assign]
    SecurityGroupBackend.create_security_group = _creating(  # type: ignore[method-assign]
        "sg", SecurityGroupBackend.create_security_group)
