"""What a strategy's release ended in: the data behind the flow's final state."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any


@dataclass(frozen=True)
class Outcome:
    task_definition: str
    rolled_back: bool = False
    reason: str | None = None
    traffic: str = ""

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)
