"""The figures `make bench` compares run to run, filled by the benchmarks that measure them.

The last line of a run names each one (``n/a`` when no benchmark of the run measured it), in the
shape ``cost: cpu/release X.XX s, fleet20 realistic Y.YY<times>, rolling vs ecs-deploy Z.ZZ<times>``
(``cost_line``), so runs compare line to line.
"""

from __future__ import annotations

from typing import Any

FIGURES: dict[str, float] = {}
TIMES = "\u00d7"


def record(name: str, value: float) -> None:
    """NAME: one of cpu/release (CPU-s of a task-sets release, its process + the Prefect server),
    fleet20 realistic (wall of 20 services over one, at the realistic time scale), rolling vs ecs-deploy
    (wall of our CLI rolling release over fabfuel ecs-deploy's, image already in the registry)."""
    FIGURES[name] = value


def _cell(name: str, unit: str) -> str:
    value = FIGURES.get(name)
    return "n/a" if value is None else f"{value:.2f}{unit}"


def cost_line() -> str:
    return (f"cost: cpu/release {_cell('cpu/release', ' s')}, fleet20 realistic {_cell('fleet20 realistic', TIMES)}, "
            f"rolling vs ecs-deploy {_cell('rolling vs ecs-deploy', TIMES)}")


def table(title: str, header: tuple[str, ...], rows: list[tuple[Any, ...]]) -> None:
    """A plain aligned table on stdout: TITLE, the header, one line per row (floats to two places)."""
    cells = [[f"{c:.2f}" if isinstance(c, float) else str(c) for c in row] for row in rows]
    widths = [max(len(h), *(len(r[i]) for r in cells)) for i, h in enumerate(header)]
    print(f"\n{title}")
    print("  ".join(h.ljust(w) for h, w in zip(header, widths, strict=True)))
    for row in cells:
        print("  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)), flush=True)
