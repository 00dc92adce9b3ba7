"""Seed N copies of one service, as a team with a monorepo of N services would have them.

Each copy ``<name>-NN`` gets its own YAML (in one deployments folder), its own
ECR repository, ECS service, load balancer with its own production and test
listener ports, target groups and alarm, and builds from the same repository
and branch as the original: one push to it concerns all N. Ports are chosen
once and kept in the copy's YAML, so seeding again (after a sandbox restart)
gives the same addresses.
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import yaml

from sandbox.layout import free_ports
from sandbox.seed import seed_service
from tasks.config.models import ServiceConfig, load_service

MAX_COPIES = 99


def copy_name(base: str, index: int) -> str:
    return f"{base}-{index:02d}"


def _kept_ports(path: Path) -> tuple[int, int] | None:
    """The listener ports an earlier seed wrote to PATH, if any."""
    try:
        lb = (yaml.safe_load(path.read_text()) or {})["load_balancer"]
        return int(lb["production_listener"]["port"]), int(lb["test_listener"]["port"])
    except (OSError, KeyError, TypeError, ValueError, yaml.YAMLError):
        return None


def copy_config(raw: dict[str, Any], base: ServiceConfig, name: str, ports: tuple[int, int]) -> dict[str, Any]:
    """RAW (the original YAML's data) renamed to NAME, with its own AWS names and ports."""
    data: dict[str, Any] = json.loads(json.dumps(raw))  # a deep copy of plain YAML data
    data["name"] = name
    data.setdefault("source", {})["repo"] = base.repo_location
    data["ecr"] = {"repository": name.lower()}
    data["ecs"] = {**data["ecs"], "service": name}
    data["task_definition"] = f"{name}/{Path(base.task_definition).name}"
    strategy = data.setdefault("strategy", {})
    if base.strategy.appspec:
        strategy["appspec"] = f"{name}/{Path(base.strategy.appspec).name}"
    strategy.pop("codedeploy_application", None)  # the defaults name the copy's service
    strategy.pop("codedeploy_group", None)
    if base.load_balancer is not None:
        data["load_balancer"] = {
            "production_listener": {"load_balancer": f"{name}-alb", "port": ports[0]},
            "test_listener": {"load_balancer": f"{name}-alb", "port": ports[1]},
            "target_groups": [f"{name}-a", f"{name}-b"],
        }
    if base.verify.alarms:
        data.setdefault("verify", {})["alarms"] = [f"{name}-5xx"]
    return data


def _copy_templates(base: ServiceConfig, name: str, out: Path) -> None:
    folder = out / name
    folder.mkdir(parents=True, exist_ok=True)
    taskdef = json.loads(base.path(base.task_definition).read_text())
    taskdef["family"] = name
    (folder / Path(base.task_definition).name).write_text(json.dumps(taskdef, indent=2) + "\n")
    if base.strategy.appspec:
        shutil.copy2(base.path(base.strategy.appspec), folder / Path(base.strategy.appspec).name)


def _new_ports(count: int, taken: set[int]) -> list[int]:
    """COUNT free loopback ports, none of TAKEN, from ONE free_ports call: a port let go is handed out
    again by the next call, and every listener of the sandbox binds 127.0.0.1, so two copies given one
    port share one proxy (the second copy's listener never binds, its URL answers for the first copy)."""
    if count == 0:
        return []
    return [port for port in free_ports(count + len(taken)) if port not in taken][:count]


def write_copies(base_yaml: Path, copies: int, out: Path) -> list[Path]:
    """The copies' YAMLs and templates in OUT (validated); no AWS call. No two listeners share a port."""
    if not 1 <= copies <= MAX_COPIES:
        raise ValueError(f"--copies {copies}: choose 1 to {MAX_COPIES}")
    base = load_service(base_yaml)
    raw = yaml.safe_load(base_yaml.read_text())
    out.mkdir(parents=True, exist_ok=True)
    names = [copy_name(base.name, i) for i in range(1, copies + 1)]
    kept = {name: _kept_ports(out / f"{name}.yaml") for name in names}
    taken = {port for pair in kept.values() if pair for port in pair}
    if base.load_balancer is not None:  # the original's listeners, seeded or not
        taken |= {ref.port for ref in (base.load_balancer.production_listener, base.load_balancer.test_listener)
                  if ref.port is not None}
    fresh = iter(_new_ports(2 * sum(pair is None for pair in kept.values()), taken))
    paths: list[Path] = []
    for i, name in enumerate(names, start=1):
        path = out / f"{name}.yaml"
        ports = kept[name] or (next(fresh), next(fresh))
        _copy_templates(base, name, out)
        text = f"# copy {i} of {base_yaml.name}, written by `sandbox seed --copies`\n"
        path.write_text(text + yaml.safe_dump(copy_config(raw, base, name, ports), sort_keys=False))
        load_service(path)  # a copy that does not validate fails here, naming its file
        paths.append(path)
    return paths


def seed_fleet(
    base_yaml: Path, copies: int, out: Path, env: Mapping[str, str] | None = None
) -> list[dict[str, Any]]:
    """Write and seed COPIES copies of BASE_YAML's service; returns each copy's name and URLs."""
    made: list[dict[str, Any]] = []
    for path in write_copies(base_yaml, copies, out):
        cfg = load_service(path)
        seeded = seed_service(cfg, env=env)
        lb = cfg.load_balancer
        entry: dict[str, Any] = {"name": cfg.name, "yaml": str(path), "service_arn": seeded["service_arn"]}
        if lb is not None:
            entry["production"] = f"http://127.0.0.1:{lb.production_listener.port}"
            entry["test"] = f"http://127.0.0.1:{lb.test_listener.port}"
        made.append(entry)
    return made
