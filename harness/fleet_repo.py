"""A monorepo of the sample app for fleet releases: four good copies and one whose / answers 500."""

from __future__ import annotations

import json
import shutil
import uuid
from pathlib import Path
from typing import Any

import yaml

from harness.git import git
from harness.services import ROOT, SAMPLE_APP, aws, free_ports
from sandbox.seed_network import SECURITY_GROUP_ID, SUBNET_IDS


def monorepo(base: Path) -> Path:
    """The sample app plus Dockerfile.broken, which ships BROKEN=root (GET / answers 500)."""
    repo = base / "mono"
    shutil.copytree(SAMPLE_APP, repo, ignore=shutil.ignore_patterns("busybox"))
    (repo / "rootfs" / "bin").mkdir(parents=True, exist_ok=True)
    shutil.copy2("/bin/busybox", repo / "rootfs" / "bin" / "busybox")
    (repo / ".gitignore").unlink(missing_ok=True)
    dockerfile = (repo / "Dockerfile").read_text()
    broken = dockerfile.replace("COPY rootfs/ app.env /", "COPY rootfs/ /\nCOPY broken.env /app.env")
    (repo / "Dockerfile.broken").write_text(broken)
    git(repo, "init", "-q", "-b", "main")
    return repo


def commit(repo: Path, version: str) -> str:
    (repo / "app.env").write_text(f"VERSION={version}\nBROKEN=\n")
    (repo / "broken.env").write_text(f"VERSION={version}\nBROKEN=root\n")
    git(repo, "add", "-A")
    git(repo, "commit", "-q", "-m", f"release {version}")
    return git(repo, "rev-parse", "HEAD")


def base_yaml(base: Path, repo: Path) -> Path:
    """One task-sets service's YAML; its copies (sandbox/seed_fleet.py) keep its ``network``, the seeded
    subnets and security group, as a new EXTERNAL service has no primary task set to take them from."""
    name = "f" + uuid.uuid4().hex[:6]
    (base / "base" / name).mkdir(parents=True)
    taskdef = json.loads((ROOT / "deployments" / "sample-app" / "taskdef.json").read_text())
    (base / "base" / name / "taskdef.json").write_text(json.dumps(taskdef))
    prod, test = free_ports(2)
    data = {
        "name": name, "source": {"repo": str(repo), "branch": "main"}, "ecr": {"repository": name},
        "ecs": {"cluster": f"{name}-cluster", "service": name, "container": "web", "container_port": 8080,
                "desired_count": 1},
        "task_definition": f"{name}/taskdef.json",
        "network": {"subnets": list(SUBNET_IDS), "security_groups": [SECURITY_GROUP_ID]},
        "strategy": {"type": "task-sets", "traffic": {"type": "all-at-once"}},
        "load_balancer": {"production_listener": {"load_balancer": f"{name}-alb", "port": prod},
                          "test_listener": {"load_balancer": f"{name}-alb", "port": test},
                          "target_groups": [f"{name}-a", f"{name}-b"]},
        "verify": {"http": [{"path": p, "consecutive": 2, "attempts": 5, "interval_seconds": 0.1}
                            for p in ("/health", "/")], "alarms": [f"{name}-5xx"]},
        "bake_seconds": 0, "timeouts": {"green_healthy_seconds": 60},
    }  # fmt: skip
    path = base / "base" / f"{name}.yaml"
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return path


def remove_fleet(services: list[dict[str, Any]]) -> None:
    """Delete seeded copies' services and load balancers (the sandbox then removes their containers); best-effort."""
    for svc in services:
        cfg = yaml.safe_load(Path(svc["yaml"]).read_text())
        try:
            aws("ecs").delete_service(cluster=cfg["ecs"]["cluster"], service=cfg["ecs"]["service"], force=True)
            lbs = aws("elbv2").describe_load_balancers(Names=[cfg["load_balancer"]["production_listener"]
                                                              ["load_balancer"]])["LoadBalancers"]
            aws("elbv2").delete_load_balancer(LoadBalancerArn=lbs[0]["LoadBalancerArn"])
        except Exception:  # noqa: BLE001 - best-effort clean-up of the sandbox
            pass
