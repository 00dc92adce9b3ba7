"""The task-sets strategy: an EXTERNAL-controller service driven step by step.

Green is a task set on the idle target group; the test listener points at it
for verification; the production listener's weighted forward action moves
traffic; after the bake green becomes primary and blue's task set is deleted.
Blue is never touched before green has been verified and baked.
"""

from __future__ import annotations

import functools
import json
import math
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from typing import Any

from botocore.exceptions import ClientError
from prefect import get_run_logger
from prefect.runtime import flow_run

from tasks.aws import ecs as ecs_ops
from tasks.aws import traffic
from tasks.aws.clients import AwsClients
from tasks.aws.metrics import Pair
from tasks.aws.retry import is_transient, stage
from tasks.aws.traffic import Routing
from tasks.config.inputs import read_text
from tasks.config.models import ServiceConfig
from tasks.core.errors import ConfigError, VerifyFailed
from tasks.core.waits import poll
from tasks.release import analysis
from tasks.release.contract import LoadBalanced, Reconciled, Release, RollbackResult, Step
from tasks.strategies import budgets, verification
from tasks.strategies.verification import Green, verify_green

# The least a run waits after its last listener change before removing the tasks that change moved traffic
# from (ELB documents no bound for "a short time"); verify.propagation_seconds may ask for more, never less:
# a revision header lets checks skip that wait, but the old routes still reach the old tasks.
REMOVAL_GRACE_SECONDS = 30.0
DRAIN_WAIT = 120.0  # seconds a deleted task set may take to drain before the run moves on
ROLLBACK_WAIT = 120.0  # seconds a rollback keeps putting the listeners back before it reports the split


def _service(cfg: ServiceConfig, clients: AwsClients) -> dict[str, Any]:
    return ecs_ops.describe_service(clients.get("ecs"), cfg.ecs.cluster, cfg.ecs.service)


def plan_green(service: dict[str, Any], routing: Routing, task_definition: str) -> Green:
    """Which task sets and target groups play blue and green for this release."""
    blue = ecs_ops.primary_task_set(service)
    if blue and blue["taskDefinition"] == task_definition:
        tg = ecs_ops.task_set_target_group(blue) or routing.target_groups[0]
        return Green(blue["taskSetArn"], tg, task_definition, None, None, True, True)
    blue_tg = ecs_ops.task_set_target_group(blue) if blue else None
    green_tg = routing.target_groups[1] if blue_tg == routing.target_groups[0] else routing.target_groups[0]
    existing = ecs_ops.find_task_set(service, task_definition)
    return Green(
        existing["taskSetArn"] if existing else None,
        green_tg,
        task_definition,
        blue["taskSetArn"] if blue else None,
        blue_tg,
        reused=existing is not None,
    )


@stage("deploy green", "deploy green {cfg.name}@{sha:.7}")
def deploy_green(
    cfg: ServiceConfig, clients: AwsClients, routing: Routing, task_definition: str, sha: str
) -> Green:
    """Start green beside blue (or reuse the one a previous run started) and wait until it serves."""
    log = get_run_logger()
    ecs, elbv2 = clients.get("ecs"), clients.get("elbv2")
    service = _service(cfg, clients)
    green = plan_green(service, routing, task_definition)
    if green.already_primary:
        log.info("%s already runs %s as primary: nothing to start", cfg.name, task_definition)
        return green
    spec = ecs_ops.GreenSpec(
        cfg.ecs.cluster, cfg.ecs.service, task_definition, green.target_group,
        cfg.ecs.container, cfg.ecs.container_port, external_id=f"ecs-pipeline-{sha[:12]}",
        client_token=ecs_ops.client_token(str(flow_run.get_id() or sha), task_definition),
    )
    if green.task_set is None:
        created = ecs_ops.create_task_set(ecs, spec, placement(cfg, service))
        green = Green(created["taskSetArn"], green.target_group, task_definition,
                      green.blue_task_set, green.blue_target_group)
        log.info("green task set %s on target group %s", created["id"], _tg_name(routing, green.target_group))
    else:
        log.info("green task set %s already exists: reused", green.task_set)
    assert green.task_set is not None
    ecs_ops.wait_task_set_running(ecs, spec, green.task_set, cfg.timeouts.green_healthy_seconds, log.info)
    desired = math.ceil(service.get("desiredCount", cfg.ecs.desired_count) or 1)
    budget = budgets.green_healthy(cfg, clients, [green.target_group])  # start + the group's health checks
    poll(
        lambda: _healthy(elbv2, green.target_group, desired),
        timeout=budget.seconds,
        what=budget.waiting_for(f"{desired} healthy targets in {_tg_name(routing, green.target_group)}"),
        log=log.info,
    )
    traffic.set_weights(elbv2, routing.test_listener, {green.target_group: 100})
    log.info("test listener %s now forwards to green", routing.test_url)
    return green


def placement(cfg: ServiceConfig, service: dict[str, Any]) -> dict[str, Any]:
    """Green's network and launch settings: the config's, else the primary task set's; a missing network fails.

    Checked as a release starts (reconcile, before anything is built or changed) and again right
    before CreateTaskSet: a new EXTERNAL service has no primary task set to take them from.
    """
    network = cfg.network.as_aws() if cfg.network is not None else None
    providers = [item.as_aws() for item in cfg.ecs.capacity_provider_strategy]
    placed = ecs_ops.task_set_placement(network, providers, ecs_ops.primary_task_set(service))
    if "networkConfiguration" not in placed and _network_mode(cfg) == "awsvpc":
        raise ConfigError(
            f"network: {cfg.name}'s task definition ({cfg.task_definition}) uses networkMode awsvpc, so ECS "
            f"needs subnets for every task set, and service {cfg.ecs.service} in cluster {cfg.ecs.cluster} has "
            "no primary task set to take them from (a new EXTERNAL service holds no network of its own). "
            "Add to the service YAML: network: {subnets: [subnet-...], security_groups: [sg-...], "
            "assign_public_ip: false} (the subnets and security group the tasks run in, in the VPC of the "
            "load balancer's target groups)",
            service=cfg.name,
        )
    return placed


def _network_mode(cfg: ServiceConfig) -> str | None:
    """The task definition template's networkMode (validated when the config was loaded)."""
    template = json.loads(read_text(cfg.path(cfg.task_definition), "task_definition", cfg.name))
    mode = template.get("networkMode") if isinstance(template, dict) else None
    return str(mode) if mode else None


def _healthy(elbv2: Any, target_group: str, desired: int) -> int | None:
    healthy, _ = verification.unhealthy_targets(elbv2, target_group)
    return healthy if healthy >= desired else None


def _tg_name(routing: Routing, arn: str) -> str:
    return dict(zip(routing.target_groups, routing.target_group_names, strict=True)).get(arn, arn)


def watch_step(
    cfg: ServiceConfig, clients: AwsClients, routing: Routing, green: Green, weight: int, seconds: float, what: str
) -> None:
    """A traffic step or the bake: nobody moved the weights, green still has healthy targets, no alarm fires."""
    elbv2 = clients.get("elbv2")

    def look() -> None:
        now = traffic.get_weights(elbv2, routing.production_listener).get(green.target_group, 0)
        if now != weight:
            raise VerifyFailed(
                f"production traffic on green changed from {weight}% to {now}% during {what} "
                "(an operator's rollback?)",
                service=cfg.name,
            )
        if cfg.verify.target_health:
            healthy, others = verification.unhealthy_targets(elbv2, green.target_group)
            if healthy == 0:
                raise VerifyFailed(
                    f"green has no healthy targets during {what}: {'; '.join(others) or 'none registered'}",
                    service=cfg.name,
                )

    verification.watch(cfg, clients, what, look, seconds=seconds)


@stage("shift traffic", "shift traffic {cfg.name}")
def shift_traffic(
    cfg: ServiceConfig,
    clients: AwsClients,
    routing: Routing,
    green: Green,
    on_step: Callable[[int], None],
) -> int:
    """Move production to green by the traffic policy, checking between steps; resumes mid-way.

    With ``analysis`` each step below 100 % is then judged, green against blue (analysis.gate_step): a step
    with too few requests goes on (watched as before) until it has them or its wait runs out."""
    log = get_run_logger()
    elbv2 = clients.get("elbv2")
    steps = cfg.strategy.traffic.steps() if green.blue_target_group else [100]
    current = traffic.get_weights(elbv2, routing.production_listener).get(green.target_group, 0)
    interval = float(cfg.strategy.traffic.interval_seconds or 0)
    for weight in steps:
        if weight < current:
            continue
        weights = {green.target_group: weight}
        if green.blue_target_group and weight < 100:
            weights[green.blue_target_group] = 100 - weight
        traffic.set_weights(elbv2, routing.production_listener, weights)
        blue = green.blue_target_group
        log.info("production: %d%% green [%s]%s", weight, _tg_name(routing, green.target_group),
                 f", {100 - weight}% blue [{_tg_name(routing, blue)}]" if blue else "")
        on_step(weight)
        if weight < 100:
            started = datetime.now(UTC)
            what = f"the {weight}% step"
            watch_step(cfg, clients, routing, green, weight, interval, what)
            if cfg.analysis is not None and blue:
                pair = Pair(routing.production_listener, green.target_group, blue)
                analysis.gate_step(cfg, clients, pair, what, started,
                                   functools.partial(watch_step, cfg, clients, routing, green, weight, what=what))
    return 100


@stage("bake", "bake {cfg.name}")
def bake(cfg: ServiceConfig, clients: AwsClients, routing: Routing, green: Green) -> None:
    """Keep blue warm while green carries all traffic; any alarm still rolls back."""
    seconds = cfg.bake_seconds
    get_run_logger().info("baking for %ss (time-scaled: %.1fs)", seconds, clients.settings.scaled(seconds))
    watch_step(cfg, clients, routing, green, 100, cfg.bake_seconds, "the bake")


@stage("teardown blue", "teardown blue {cfg.name}")
def teardown_blue(cfg: ServiceConfig, clients: AwsClients, routing: Routing, green: Green) -> list[str]:
    """Make green primary and delete every other task set; done when only green is left."""
    log = get_run_logger()
    ecs = clients.get("ecs")
    service = _service(cfg, clients)
    primary = ecs_ops.primary_task_set(service)
    if green.task_set and (primary is None or primary["taskSetArn"] != green.task_set):
        ecs_ops.set_primary(ecs, cfg.ecs.cluster, cfg.ecs.service, green.task_set)
        log.info("green task set is primary")
    removed = []
    doomed = [ts for ts in service.get("taskSets", []) if ts["taskSetArn"] != green.task_set]
    if any(ts.get("status") != "DRAINING" for ts in doomed):
        listeners_settled(cfg, clients, routing)
    for ts in doomed:
        if ts.get("status") != "DRAINING":
            ecs_ops.delete_task_set(ecs, cfg.ecs.cluster, cfg.ecs.service, ts["taskSetArn"])
            if not ecs_ops.wait_task_set_gone(ecs, cfg.ecs.cluster, cfg.ecs.service, ts["taskSetArn"], DRAIN_WAIT):
                log.warning("task set %s is still draining", ts["id"])
            removed.append(ts["id"])
            log.info("deleted task set %s (%s)", ts["id"], ts["taskDefinition"])
    return removed


@stage("roll back", "roll back {cfg.name}")
def roll_back(cfg: ServiceConfig, clients: AwsClients, routing: Routing, green: Green | None) -> str:
    """Production 100 % on blue (checked, not assumed), then every task set but blue removed."""
    log = get_run_logger()
    if green is None or green.already_primary:
        return "nothing to roll back"
    if green.blue_target_group:
        back_on(clients, routing, green.blue_target_group)
        log.info("production back to 100%% blue [%s]", _tg_name(routing, green.blue_target_group))
    # Not only the green this run knows: a lost CreateTaskSet answer or a dead run's
    # green is a task set nobody heard of, and it would answer the next release's checks.
    removed = remove_task_sets(cfg, clients, keep=green.blue_task_set, routing=routing)
    if removed:
        log.info("removed task set(s) %s", ", ".join(removed))
    return "production on blue" if green.blue_target_group else "green removed (there was no blue)"


def back_on(clients: AwsClients, routing: Routing, target_group: str) -> None:
    """Both listeners 100 % on ``target_group``, retried (transient faults too) until AWS shows it so."""
    elbv2 = clients.get("elbv2")

    def there() -> bool | None:
        try:
            traffic.set_weights(elbv2, routing.test_listener, {target_group: 100})
            traffic.set_weights(elbv2, routing.production_listener, {target_group: 100})
            live = traffic.get_weights(elbv2, routing.production_listener)
        except ClientError as exc:
            if is_transient(exc):
                return None  # botocore's attempts ran out; the rollback keeps trying until its budget
            raise
        return True if {a: w for a, w in live.items() if w} == {target_group: 100} else None

    poll(there, timeout=ROLLBACK_WAIT, what="production listener back on blue", cap=clients.settings.poll_cap())


def listeners_settled(cfg: ServiceConfig, clients: AwsClients, routing: Routing) -> None:
    """Wait out the listener change this run made last: until it reached every load balancer node, the
    target groups it moved traffic away from still get requests, so their tasks must still answer."""
    seconds = clients.settings.scaled(max(REMOVAL_GRACE_SECONDS, cfg.verify.propagation_seconds))
    waited = traffic.wait_propagated((routing.production_listener, routing.test_listener), seconds)
    if waited:
        get_run_logger().info("waited %.1fs for the listener change to reach every node before removing tasks",
                              waited)


def remove_task_sets(cfg: ServiceConfig, clients: AwsClients, keep: str | None,
                     routing: Routing | None = None) -> list[str]:
    """Delete every task set but ``keep`` (the verified primary) and wait until they drained."""
    ecs = clients.get("ecs")
    doomed = [ts for ts in _service(cfg, clients).get("taskSets", [])
              if ts["taskSetArn"] != keep and ts.get("status") != "DRAINING"]
    if doomed and routing is not None:
        listeners_settled(cfg, clients, routing)
    for ts in doomed:
        ecs_ops.delete_task_set(ecs, cfg.ecs.cluster, cfg.ecs.service, ts["taskSetArn"])
    for ts in doomed:
        if not ecs_ops.wait_task_set_gone(ecs, cfg.ecs.cluster, cfg.ecs.service, ts["taskSetArn"], DRAIN_WAIT):
            get_run_logger().warning("task set %s is still draining", ts["id"])
    return [ts["id"] for ts in doomed]


class TaskSetSteps(LoadBalanced):
    """Blue/green on an EXTERNAL-controller service, driven here one visible task per step."""

    def __init__(self, release: Release) -> None:
        super().__init__(release)
        self.green: Green | None = None

    def before_production(self) -> Iterator[Step]:
        yield "deploy green", self._deploy_green
        yield "verify", self._verify

    def _deploy_green(self) -> None:
        r = self.release
        self.green = deploy_green(r.cfg, r.clients, self.routing, r.task_definition, r.sha)

    def _verify(self) -> None:
        assert self.green is not None
        self.release.note(*verify_green(self.cfg, self.clients, self.routing, self.green))

    def pauses_for_approval(self) -> bool:
        return self.green is not None and not self.green.already_primary

    def to_production(self) -> Iterator[Step]:
        green = self.green
        assert green is not None
        yield "shift traffic", lambda: self._shift(green)
        yield "bake", lambda: bake(self.cfg, self.clients, self.routing, green)

    def _shift(self, green: Green) -> None:
        name = self.group_name(green.target_group)
        shift_traffic(self.cfg, self.clients, self.routing, green,
                      lambda w: self.release.on_step(w, target_group=name))

    def after_bake(self) -> Iterator[Step]:
        yield "teardown blue", self._teardown

    def _teardown(self) -> None:
        assert self.green is not None
        removed = teardown_blue(self.cfg, self.clients, self.routing, self.green)
        self.release.note(f"removed task sets: {', '.join(removed) or 'none'}")

    def roll_back(self, reason: str) -> RollbackResult:
        # Green as far as this run knows it, else as AWS shows it (a lost CreateTaskSet answer).
        green = self.green or plan_green(_service(self.cfg, self.clients), self.routing, self.release.task_definition)
        where = roll_back(self.cfg, self.clients, self.routing, green)
        return RollbackResult(self.on_group(where) if where.startswith("production on") else where, reason)

    def reconcile(self) -> Reconciled | None:
        """Task sets and weights a dead run left: forward if production was already all on green, else back.

        First of all a release's steps: a network green could not get fails here, before anything changes.
        """
        service = _service(self.cfg, self.clients)
        placement(self.cfg, service)
        primary = ecs_ops.primary_task_set(service)
        others = [ts for ts in service.get("taskSets", []) if ts.get("status") == "ACTIVE"]
        if primary is None or not others:
            return None
        elbv2, routing = self.clients.get("elbv2"), self.routing
        weights = traffic.get_weights(elbv2, routing.production_listener)
        blue_tg = ecs_ops.task_set_target_group(primary) or routing.target_groups[0]
        full = [ts for ts in others if weights.get(ecs_ops.task_set_target_group(ts) or "", 0) == 100]
        keep = full[0] if full else primary
        keep_tg = ecs_ops.task_set_target_group(keep) or blue_tg
        green = Green(keep["taskSetArn"], keep_tg, keep["taskDefinition"], None, None)
        torn_down = keep is primary and all(_revision(ts) < _revision(primary) for ts in others)
        if weights.get(keep_tg, 0) == 100 and torn_down:
            what = "an earlier run died in its teardown (green already primary): finished its release"
        elif weights.get(keep_tg, 0) == 100 and keep is primary:
            what = "removed task set(s) an earlier run left; production stays on the primary"
        elif full:
            what = "production was 100% on green, verified before the shift: finished its release"
        else:
            share = sum(w for arn, w in weights.items() if arn != blue_tg)
            what = f"production was {share}% on green, never fully shifted: rolled back to blue"
        back_on(self.clients, routing, keep_tg)
        teardown_blue(self.cfg, self.clients, routing, green)
        td = keep["taskDefinition"]
        names = ", ".join(ts["id"] for ts in [primary, *others] if ts is not keep)
        get_run_logger().warning("reconciled %s: %s (removed %s)", self.cfg.name, what, names)
        forward = keep is not primary or torn_down
        return Reconciled("forward" if forward else "back", td, f"{what}; {td.rsplit('/', 1)[-1]} serves")

    def adopt_in_flight(self) -> str | None:
        """A task set beside the primary, or production off it: roll_back puts every listener on blue."""
        service = _service(self.cfg, self.clients)
        primary = ecs_ops.primary_task_set(service)
        others = [ts for ts in service.get("taskSets", []) if ts is not primary and ts.get("status") != "DRAINING"]
        weights = traffic.get_weights(self.clients.get("elbv2"), self.routing.production_listener)
        blue_tg = ecs_ops.task_set_target_group(primary) if primary else None
        on_blue = {a: w for a, w in weights.items() if w} == {blue_tg: 100}
        if not others and (primary is None or on_blue):
            return None
        green = others[-1] if others else None
        self.release.task_definition = green["taskDefinition"] if green else ""
        self.green = plan_green(service, self.routing, self.release.task_definition)
        split = " / ".join(f"{w}% {_tg_name(self.routing, a)}" for a, w in weights.items() if w)
        sets = ", ".join(f"{ts['id']} ({ts['taskDefinition'].rsplit('/', 1)[-1]})" for ts in others) or "none"
        return f"task set(s) {sets} ran beside the primary, production {split or 'on no target group'}"


def _revision(task_set: dict[str, Any]) -> int:
    """The task definition revision a task set runs (every task set of a service is one family)."""
    return int(str(task_set.get("taskDefinition", ":0")).rsplit(":", 1)[-1])
