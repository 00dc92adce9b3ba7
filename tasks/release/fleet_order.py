"""The order a fleet releases in: ``depends_on`` between services, as layers.

Pure functions (no Prefect, no AWS). A service starts only after every service
it depends on that the fleet also releases has ended Deployed; independent
services of one layer run side by side, at most ``max_parallel`` at once.
Unknown names and cycles are refused here, before any AWS call.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from tasks.config.models import ServiceConfig
from tasks.core.errors import ConfigError


def check_dependencies(everyone: Sequence[ServiceConfig]) -> None:
    """Every ``depends_on`` name is a service in deployments/, and no chain of them comes back round."""
    known = {c.name for c in everyone}
    for cfg in everyone:
        unknown = [d for d in cfg.depends_on if d not in known]
        if unknown:
            raise ConfigError(
                f"{cfg.name}: depends_on names {', '.join(unknown)}, which is not a service in deployments/; "
                f"fix the name or remove it (services are: {', '.join(sorted(known)[:10])})"
            )
    cycle = find_cycle({c.name: list(c.depends_on) for c in everyone})
    if cycle:
        raise ConfigError(
            f"depends_on goes round in a circle: {' → '.join(cycle)}; a fleet cannot release any of them "
            "first: remove one of these dependencies"
        )


def find_cycle(graph: Mapping[str, Sequence[str]]) -> list[str] | None:
    """One cycle of GRAPH (service → what it depends on) as [a, b, …, a], or None."""
    state: dict[str, int] = {}  # 1: on the current path, 2: done
    path: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        path.append(node)
        for dep in graph.get(node, ()):
            if state.get(dep) == 1:
                return [*path[path.index(dep):], dep]
            if dep not in state:
                found = visit(dep)
                if found:
                    return found
        path.pop()
        state[node] = 2
        return None

    for start in sorted(graph):
        if start not in state:
            found = visit(start)
            if found:
                return found
    return None


def dependency_layers(selected: Sequence[ServiceConfig]) -> list[list[str]]:
    """SELECTED in layers: each service after every selected service it depends on; names sorted in a layer.

    Dependencies outside the selection do not order anything (they are not being released).
    """
    names = {c.name for c in selected}
    needs = {c.name: {d for d in c.depends_on if d in names} for c in selected}
    cycle = find_cycle({n: sorted(d) for n, d in needs.items()})
    if cycle:
        raise ConfigError(f"depends_on goes round in a circle: {' → '.join(cycle)}; remove one of these dependencies")
    layers: list[list[str]] = []
    placed: set[str] = set()
    while len(placed) < len(needs):
        layer = sorted(n for n, d in needs.items() if n not in placed and d <= placed)
        layers.append(layer)
        placed.update(layer)
    return layers


def waves_in_order(selected: Sequence[ServiceConfig], ready: Sequence[str], max_parallel: int) -> list[list[str]]:
    """The READY services in waves: dependency layers, each cut into waves of at most MAX_PARALLEL."""
    if max_parallel < 1:
        raise ConfigError(f"max_parallel is {max_parallel}; set it to 1 or more")
    waiting = set(ready)
    waves: list[list[str]] = []
    for layer in dependency_layers(selected):
        names = [n for n in layer if n in waiting]
        waves += [names[i : i + max_parallel] for i in range(0, len(names), max_parallel)]
    return waves


def blocked_by(selected: Sequence[ServiceConfig], name: str, not_deployed: set[str]) -> list[str]:
    """The services NAME depends on, directly or through others, that the fleet released and did not deploy."""
    by_name = {c.name: c for c in selected}
    seen: set[str] = set()
    stack = list(by_name[name].depends_on) if name in by_name else []
    while stack:
        dep = stack.pop()
        if dep in seen or dep not in by_name:
            continue
        seen.add(dep)
        stack.extend(by_name[dep].depends_on)
    return sorted(seen & not_deployed)


def why_held(
    selected: Sequence[ServiceConfig], name: str, ended: Mapping[str, str], *, stop_on_first_failure: bool,
    atomic: bool,
) -> str | None:
    """Why NAME is not started, given how the services released so far ENDED (name → fleet outcome); None: start it.

    A dependency that did not end ``ok`` (failed, rolled back, held, gave way) holds its dependents, whatever
    ``stop_on_first_failure`` says; an atomic fleet starts nothing more once one service failed.
    """
    failed = [n for n, outcome in ended.items() if outcome == "failed"]
    if atomic and failed:
        return f"held: the fleet goes back ({', '.join(failed)} failed)"
    if stop_on_first_failure and failed:
        return f"held: {', '.join(failed)} failed first"
    blockers = blocked_by(selected, name, {n for n, outcome in ended.items() if outcome != "ok"})
    if blockers:
        return f"held: depends on {', '.join(blockers)}, which did not deploy"
    return None
