"""What every strategy shares: the outcome it reports and the routing it starts from."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

from tasks import traffic
from tasks.aws import AwsClients
from tasks.models import ServiceConfig


@dataclass(frozen=True)
class Outcome:
    task_definition: str
    rolled_back: bool = False
    reason: str | None = None
    traffic: str = ""

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


class LoadBalanced:
    """A strategy for a service behind listeners: resolves them once per run."""

    def __init__(self, cfg: ServiceConfig, clients: AwsClients) -> None:
        assert cfg.load_balancer is not None, "the config validator requires it for this strategy"
        self.cfg, self.clients = cfg, clients
        self.routing = traffic.resolve_routing(clients.get("elbv2"), cfg.load_balancer)
