"""The rooms' doors: `make lint` fails on an import that goes up, sideways or round in a circle.

    flows  →  tasks.strategies | tasks.triggers  →  tasks.release  →  tasks.build
           →  tasks.aws  →  tasks.config  →  tasks.core

A module may import its own room and the rooms below it, never one above it
nor a room beside it (strategies and triggers do not know each other). Inside
``tasks.strategies`` a strategy never imports a sibling strategy: what two
share lives in the room's shared modules (``verification``, ``budgets``), which import no
strategy; only ``choose`` (the dispatch table) knows them all. ``tasks`` and
``flows`` never import ``sandbox`` (the pipeline meets the sandbox only through
AWS and Docker APIs), ``bench`` never imports ``tests``, and no two modules of
``tasks``/``flows`` import each other, directly or round a circle, even for
type checking. Every import counts, wherever it sits in a module.

Run: ``python tools/check_rooms.py`` (exit 1 and one line per broken door).
"""

from __future__ import annotations

import ast
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
RANK = {
    "tasks.core": 0,
    "tasks.config": 1,
    "tasks.aws": 2,
    "tasks.build": 3,
    "tasks.release": 4,
    "tasks.strategies": 5,
    "tasks.triggers": 5,
    "flows": 6,
}
STRATEGY_SHARED = {"tasks.strategies.verification", "tasks.strategies.budgets"}
STRATEGY_TABLE = "tasks.strategies.choose"


def module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def room_of(module: str) -> str | None:
    for room in sorted(RANK, key=len, reverse=True):
        if module == room or module.startswith(room + "."):
            return room
    return None


def imports_of(path: Path) -> list[tuple[int, str]]:
    """(line, imported module) for every import in the file; `from pkg import mod` names the module."""
    tree = ast.parse(path.read_text(), str(path))
    found: list[tuple[int, str]] = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found += [(node.lineno, alias.name) for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            # `from tasks.aws import ecs` imports the module tasks.aws.ecs; `from tasks.aws.ecs import x` its member
            submodules = [f"{node.module}.{a.name}" for a in node.names if is_module(f"{node.module}.{a.name}")]
            found += [(node.lineno, m) for m in submodules] or [(node.lineno, node.module)]
    return found


def is_module(dotted: str) -> bool:
    path = ROOT.joinpath(*dotted.split("."))
    return path.with_suffix(".py").is_file() or (path / "__init__.py").is_file()


def known_modules() -> set[str]:
    return {module_name(p) for d in ("tasks", "flows") for p in (ROOT / d).rglob("*.py")}


def door_problem(importer: str, imported: str) -> str | None:
    """Why IMPORTER may not import IMPORTED, or None."""
    if imported.split(".")[0] == "sandbox" and importer.split(".")[0] in ("tasks", "flows"):
        return "the pipeline never imports the sandbox (it meets it through AWS and Docker APIs only)"
    if importer.startswith("bench") and imported.split(".")[0] == "tests":
        return "a benchmark never imports a test module (shared set-up belongs in bench/ or sandbox/)"
    mine, theirs = room_of(importer), room_of(imported)
    if mine is None or theirs is None or (mine == theirs and mine != "tasks.strategies"):
        return None
    if mine == theirs:  # inside tasks.strategies
        return strategy_door(importer, imported)
    if RANK[theirs] > RANK[mine]:
        return f"{mine} sits below {theirs}: imports go down only"
    if RANK[theirs] == RANK[mine]:
        return f"{mine} and {theirs} are rooms side by side: neither imports the other"
    return None


def strategy_door(importer: str, imported: str) -> str | None:
    if importer == STRATEGY_TABLE or imported in STRATEGY_SHARED or imported == "tasks.strategies":
        if importer in STRATEGY_SHARED and imported not in STRATEGY_SHARED and imported != "tasks.strategies":
            return "shared verification imports no strategy"
        return None
    if imported == STRATEGY_TABLE:
        return "a strategy never imports the dispatch table (it imports them)"
    return "a strategy never imports a sibling strategy: move what they share into tasks/strategies/verification.py"


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Elementary circles found by depth-first search (each reported once, from its smallest module)."""
    found: list[list[str]] = []
    seen: set[tuple[str, ...]] = set()

    def visit(start: str, node: str, path: list[str]) -> None:
        for nxt in sorted(graph.get(node, ())):
            if nxt == start:
                key = tuple(sorted(path))
                if key not in seen:
                    seen.add(key)
                    found.append([*path, start])
            elif nxt > start and nxt not in path:
                visit(start, nxt, [*path, nxt])

    for start in sorted(graph):
        visit(start, start, [start])
    return found


def main() -> int:
    known = known_modules()
    problems: list[str] = []
    graph: dict[str, set[str]] = {}
    for top in ("tasks", "flows", "bench"):
        for path in sorted((ROOT / top).rglob("*.py")):
            importer = module_name(path)
            if top == "tasks" and room_of(importer) is None and path.name != "__init__.py":
                problems.append(f"{path.relative_to(ROOT)}: a module outside every room of tasks/")
            for line, imported in imports_of(path):
                why = door_problem(importer, imported)
                if why:
                    problems.append(f"{path.relative_to(ROOT)}:{line}: imports {imported}: {why}")
                if imported in known and imported != importer and not imported.endswith("__init__"):
                    graph.setdefault(importer, set()).add(imported)
    for circle in cycles({k: v for k, v in graph.items() if k in known}):
        problems.append("import circle: " + " → ".join(circle))
    for line in sorted(set(problems)):
        print(line)
    if problems:
        print(f"{len(set(problems))} broken door(s); see tools/check_rooms.py for the rules", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
