"""Target groups that tell the truth: real HTTP health checks and draining.

moto keys targets by Id only and reports every target healthy. Tasks here all
share ``Id=127.0.0.1`` and differ by port, so targets are keyed ``Id:Port`` and
their state (initial/healthy/unhealthy/draining) is driven by real checks.
"""

from __future__ import annotations

import http.client
import threading
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from moto.elbv2.exceptions import InvalidTargetError, TargetGroupNotFoundError
from moto.elbv2.models import ELBv2Backend, FakeHealthStatus, FakeTargetGroup

from .world import LOCK, elbv2, log, now, scaled

# A new target is not declared unhealthy sooner than this: scaled intervals would
# otherwise give an application well under a second to start listening on a busy host.
INITIAL_SETTLE = 2.0
DRAIN_GRACE = 30.0  # a draining target with requests in flight stays this long past its delay
REASONS = {
    "initial": ("Elb.RegistrationInProgress", "Target registration is in progress"),
    "draining": ("Target.DeregistrationInProgress", "Target deregistration is in progress"),
}


_INFLIGHT: dict[int, int] = {}
_INFLIGHT_LOCK = threading.Lock()


def begin_request(port: int) -> None:
    """A proxied request to this target port started (draining waits for it)."""
    with _INFLIGHT_LOCK:
        _INFLIGHT[port] = _INFLIGHT.get(port, 0) + 1


def end_request(port: int) -> None:
    with _INFLIGHT_LOCK:
        left = _INFLIGHT.get(port, 1) - 1
        if left > 0:
            _INFLIGHT[port] = left
        else:
            _INFLIGHT.pop(port, None)


def in_flight(port: int | None) -> int:
    with _INFLIGHT_LOCK:
        return _INFLIGHT.get(port or 0, 0)


def target_key(target_id: str, port: Any) -> str:
    return f"{target_id}:{port}"


def _register(self: FakeTargetGroup, targets: list[dict[str, Any]]) -> None:
    for target in targets:
        port = int(target.get("Port") or self.port)
        key = target_key(target["Id"], port)
        entry = self.targets.get(key)
        if entry and entry["State"] != "draining":
            continue
        reason, desc = REASONS["initial"]
        # The first check comes one interval after registration, so a new target needs
        # HealthCheckIntervalSeconds x HealthyThresholdCount (time-scaled) to become healthy.
        first = now() + scaled(float(self.health_check_interval_seconds or 30))
        self.targets[key] = {
            "Id": target["Id"], "Port": port, "State": "initial", "Reason": reason,
            "Description": desc, "ok": 0, "fail": 0, "next": first, "busy": False,
            "drain_until": None, "since": now(),
        }
        if not self.health_check_enabled:
            _set_state(self.targets[key], "healthy")


def _deregister(self: FakeTargetGroup, targets: list[dict[str, Any]]) -> None:
    delay = float(str(self.attributes.get("deregistration_delay.timeout_seconds", 300)))
    for target in targets:
        keys = [k for k, e in self.targets.items() if e["Id"] == target["Id"]
                and ("Port" not in target or int(target["Port"]) == int(e["Port"]))]
        if not keys:
            raise InvalidTargetError()
        for key in keys:
            entry = self.targets[key]
            if entry["State"] == "draining":
                continue
            _set_state(entry, "draining")
            entry["drain_until"] = now() + scaled(delay)


def _health_for(self: FakeTargetGroup, target: dict[str, Any], ec2: Any) -> FakeHealthStatus:
    port = target.get("Port", self.port)
    entry = self.targets.get(target_key(target["Id"], port))
    if entry is None:
        matches = [e for e in self.targets.values() if e["Id"] == target["Id"]]
        entry = matches[0] if matches and "Port" not in target else None
    if entry is None:
        return FakeHealthStatus(target["Id"], port, self.health_check_port, "unused",
                                "Target.NotRegistered",
                                "Target is not registered to the target group")
    return FakeHealthStatus(entry["Id"], entry["Port"], self.health_check_port or "traffic-port",
                            entry["State"], entry["Reason"], entry["Description"])


def _describe_target_health(self: ELBv2Backend, target_group_arn: str,
                            targets: list[dict[str, Any]]) -> list[FakeHealthStatus]:
    tg = self.target_groups.get(target_group_arn)
    if tg is None:
        raise TargetGroupNotFoundError()
    if not targets:
        targets = [{"Id": e["Id"], "Port": e["Port"]} for e in tg.targets.values()]
    return [tg.health_for(t, self.ec2_backend) for t in targets]


def _forwarded_groups(action: Any) -> set[str]:
    data = getattr(action, "data", {}) or {}
    if data.get("Type") != "forward":
        return set()
    found = {str(g["TargetGroupArn"]) for g in (data.get("ForwardConfig") or {}).get("TargetGroups", [])}
    return found | ({str(data["TargetGroupArn"])} if data.get("TargetGroupArn") else set())


def _load_balancer_arns(self: FakeTargetGroup) -> list[str]:
    """The load balancers whose listeners forward to this group now (moto keeps a log of creates)."""
    arns = []
    for lb in elbv2().load_balancers.values():
        for listener in lb.listeners.values():
            actions = list(listener.default_actions)
            actions += [a for rule in listener.rules.values() for a in rule.actions]
            if any(self.arn in _forwarded_groups(a) for a in actions):
                arns.append(lb.arn)
                break
    return arns


def install_patches() -> None:
    """Swap moto's target bookkeeping for the port-aware, health-checked one."""
    FakeTargetGroup.load_balancer_arns = property(  # type: ignore[assignment]
        _load_balancer_arns, lambda self, value: None
    )
    FakeTargetGroup.register = _register  # type: ignore[method-assign]
    FakeTargetGroup.deregister = _deregister  # type: ignore[method-assign]
    FakeTargetGroup.health_for = _health_for  # type: ignore[method-assign,assignment]
    ELBv2Backend.describe_target_health = _describe_target_health  # type: ignore[method-assign]


def _set_state(entry: dict[str, Any], state: str, reason: str | None = None,
               desc: str | None = None) -> None:
    if state in REASONS and reason is None:
        reason, desc = REASONS[state]
    if entry["State"] != state:
        entry["since"] = now()
    entry["State"], entry["Reason"], entry["Description"] = state, reason, desc
    entry["ok"] = entry["fail"] = 0


def healthy_targets(tg_arn: str) -> list[tuple[str, int]]:
    """(key, port) of the targets a load balancer may route to right now."""
    tg = elbv2().target_groups.get(tg_arn)
    if tg is None:
        return []
    return [(k, int(e["Port"])) for k, e in list(tg.targets.items()) if e["State"] == "healthy"]


def code_matches(code: int, matcher: dict[str, Any] | None) -> bool:
    spec = str((matcher or {}).get("HttpCode") or "200")
    for part in spec.split(","):
        part = part.strip()
        if "-" in part:
            lo, hi = part.split("-", 1)
            if int(lo) <= code <= int(hi):
                return True
        elif part and int(part) == code:
            return True
    return False


class HealthChecker:
    """Runs each target group's HTTP health check against its targets."""

    def __init__(self) -> None:
        self._pool = ThreadPoolExecutor(max_workers=8, thread_name_prefix="health")
        self._stop = threading.Event()

    def tick(self) -> None:
        t = now()
        with LOCK:
            groups = list(elbv2().target_groups.values())
            for tg in groups:
                for key, entry in list(tg.targets.items()):
                    if entry["State"] == "draining":
                        until = entry["drain_until"]
                        busy = in_flight(int(entry["Port"])) > 0 and t < (until or t) + DRAIN_GRACE
                        if until is not None and t >= until and not busy:
                            tg.targets.pop(key, None)
                            tg.deregistered_targets[key] = {"Id": entry["Id"], "Port": entry["Port"]}
                        continue
                    if not tg.health_check_enabled or entry["busy"] or t < entry["next"]:
                        continue
                    entry["busy"] = True
                    self._pool.submit(self._check, tg, key, entry)

    def _check(self, tg: FakeTargetGroup, key: str, entry: dict[str, Any]) -> None:
        ok, reason, desc = False, "Target.FailedHealthChecks", "Health checks failed"
        port = tg.health_check_port
        port_num = int(port) if port and str(port).isdigit() else int(entry["Port"])
        timeout = scaled(float(tg.health_check_timeout_seconds or 5), floor=2.0)  # busy hosts are slow
        try:
            conn = http.client.HTTPConnection("127.0.0.1", port_num, timeout=timeout)
            conn.request("GET", tg.health_check_path or "/", headers={"User-Agent": "ELB-HealthChecker/2.0"})
            resp = conn.getresponse()
            resp.read()
            conn.close()
            ok = code_matches(resp.status, getattr(tg, "matcher", None))
            if not ok:
                reason = "Target.ResponseCodeMismatch"
                desc = f"Health checks failed with these codes: [{resp.status}]"
        except TimeoutError:
            reason, desc = "Target.Timeout", "Request timed out"
        except (OSError, http.client.HTTPException):
            pass  # refused, reset or not HTTP at all: a failed check
        except Exception:  # noqa: BLE001 - never leave the target stuck as "busy"
            log.exception("health check of %s failed unexpectedly", key)
        with LOCK:
            self._apply(tg, key, entry, ok, reason, desc)

    @staticmethod
    def _apply(tg: FakeTargetGroup, key: str, entry: dict[str, Any], ok: bool,
               reason: str, desc: str) -> None:
        entry["busy"] = False
        entry["next"] = now() + scaled(float(tg.health_check_interval_seconds or 30))
        if tg.targets.get(key) is not entry or entry["State"] == "draining":
            return
        if ok:
            entry["ok"], entry["fail"] = entry["ok"] + 1, 0
            if entry["State"] != "healthy" and entry["ok"] >= int(tg.healthy_threshold_count):
                _set_state(entry, "healthy", None, None)
                log.info("target %s healthy in %s", key, tg.name)
        else:
            entry["fail"], entry["ok"] = entry["fail"] + 1, 0
            settling = entry["State"] == "initial" and now() - entry["since"] < INITIAL_SETTLE
            if (entry["State"] != "unhealthy" and not settling
                    and entry["fail"] >= int(tg.unhealthy_threshold_count)):
                _set_state(entry, "unhealthy", reason, desc)
                log.info("target %s unhealthy in %s: %s", key, tg.name, desc)
            elif entry["State"] == "unhealthy":
                entry["Reason"], entry["Description"] = reason, desc
