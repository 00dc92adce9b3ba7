"""JUnit XML test reports (CodeBuild's JUNITXML report format) read into rows a person can scan.

Pure: files in, data out. Failing tests come first, with their message, so the
table artifact answers "what broke" without opening the XML. A testcase's time
is its ``time`` attribute; a file without one says "time not reported" rather
than a time nobody measured.
"""

from __future__ import annotations

import math
import textwrap
import xml.etree.ElementTree as ET
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

MESSAGE_CHARS = 500
# A table cell shows one line, cut at the page's edge: longer messages go on in rows of their own.
MESSAGE_WIDTH = 80
NAMED_FAILURES = 3  # failing tests named in a one-line lead; the rest are counted
NO_TIME = "time not reported"
_ORDER = {"failed": 0, "error": 0, "skipped": 1, "passed": 2}


@dataclass(frozen=True)
class Case:
    suite: str
    name: str
    status: str  # passed | failed | error | skipped
    seconds: float | None = None  # None: the file gives no time for it
    message: str = ""

    @property
    def title(self) -> str:
        return f"{self.suite}.{self.name}" if self.suite else self.name

    @property
    def failing(self) -> bool:
        return self.status in ("failed", "error")


@dataclass
class Report:
    group: str
    cases: list[Case] = field(default_factory=list)
    unreadable: list[str] = field(default_factory=list)

    @property
    def counts(self) -> Counter[str]:
        return Counter(c.status for c in self.cases)

    def failing(self) -> list[Case]:
        return [c for c in self.cases if c.failing]

    def headline(self) -> str:
        n = self.counts
        text = f"{n['passed']} passed, {n['failed'] + n['error']} failed, {n['skipped']} skipped"
        return text + (f" ({len(self.unreadable)} unreadable file(s))" if self.unreadable else "")

    def lead(self) -> str:
        """One line, the failing tests first: ``1 of 5 tests failed: app.root (GET / answered 500)``."""
        failing = self.failing()
        if not failing:
            return self.headline()
        named = [f"{c.title} ({c.message})" if c.message else c.title for c in failing[:NAMED_FAILURES]]
        more = len(failing) - len(named)
        tail = f" and {more} more" if more else ""
        return f"{len(failing)} of {len(self.cases)} tests failed: {'; '.join(named)}{tail}"

    def rows(self) -> list[dict[str, str]]:
        """Failing tests first; a long message continues in rows with only a message."""
        ordered = sorted(self.cases, key=lambda c: _ORDER.get(c.status, 3))
        out: list[dict[str, str]] = []
        for c in ordered:
            first, *rest = textwrap.wrap(c.message, MESSAGE_WIDTH, break_on_hyphens=False) or [""]
            out.append({"status": c.status, "test": c.title, "time": time_text(c.seconds), "message": first})
            out += [{"status": "", "test": "", "time": "", "message": line} for line in rest]
        return out


def time_text(seconds: float | None) -> str:
    return NO_TIME if seconds is None else f"{seconds:.3f} s"


def read_seconds(value: str | None) -> float | None:
    """A testcase's ``time`` attribute (``1,234.5`` as some tools write it); None when absent or not a time."""
    try:
        seconds = float((value or "").replace(",", ""))
    except ValueError:
        return None
    return seconds if math.isfinite(seconds) and seconds >= 0 else None


def _case(element: ET.Element, suite: str) -> Case:
    status, message = "passed", ""
    for kind in ("failure", "error", "skipped"):
        found = element.find(kind)
        if found is not None:
            status = "failed" if kind == "failure" else kind
            text = found.get("message") or (found.text or "").strip()
            message = " ".join(text.split())[:MESSAGE_CHARS]
            break
    return Case(element.get("classname") or suite, element.get("name") or "(unnamed)", status,
                read_seconds(element.get("time")), message)


def read_cases(path: Path) -> list[Case]:
    """Every testcase of one JUnit XML file (<testsuites> or a single <testsuite>)."""
    root = ET.parse(path).getroot()
    suites = [root] if root.tag == "testsuite" else list(root.iter("testsuite"))
    if root.tag not in ("testsuite", "testsuites"):
        raise ValueError(f"root element is <{root.tag}>, not <testsuites> or <testsuite>")
    return [_case(case, suite.get("name") or "") for suite in suites for case in suite.findall("testcase")]


def read_report(group: str, paths: list[Path]) -> Report:
    report = Report(group)
    for path in paths:
        try:
            report.cases.extend(read_cases(path))
        except (ET.ParseError, ValueError, OSError):
            report.unreadable.append(path.name)
    return report
