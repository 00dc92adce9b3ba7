"""JUnit XML test reports (CodeBuild's JUNITXML report format) read into rows a person can scan.

Pure: files in, data out. Failing tests come first, with their message, so the
table artifact answers "what broke" without opening the XML.
"""

from __future__ import annotations

import xml.etree.ElementTree as ET
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

MESSAGE_CHARS = 500


@dataclass(frozen=True)
class Case:
    suite: str
    name: str
    status: str  # passed | failed | error | skipped
    seconds: float = 0.0
    message: str = ""


@dataclass
class Report:
    group: str
    cases: list[Case] = field(default_factory=list)
    unreadable: list[str] = field(default_factory=list)

    @property
    def counts(self) -> Counter[str]:
        return Counter(c.status for c in self.cases)

    def headline(self) -> str:
        n = self.counts
        text = f"{n['passed']} passed, {n['failed'] + n['error']} failed, {n['skipped']} skipped"
        return text + (f" ({len(self.unreadable)} unreadable file(s))" if self.unreadable else "")

    def rows(self) -> list[dict[str, str]]:
        order = {"failed": 0, "error": 0, "skipped": 1, "passed": 2}
        ordered = sorted(self.cases, key=lambda c: order.get(c.status, 3))
        return [
            {"test": f"{c.suite}.{c.name}" if c.suite else c.name, "status": c.status,
             "seconds": f"{c.seconds:.3f}", "message": c.message}
            for c in ordered
        ]


def _seconds(value: str | None) -> float:
    try:
        return float(value or 0)
    except ValueError:
        return 0.0


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
                _seconds(element.get("time")), message)


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
