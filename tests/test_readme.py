"""README stays short and its links hold; docs/commands.md is the parser's own words, every flag in it.

Pure: reads files and builds the CLI's parser; no sandbox call.
"""

from __future__ import annotations

import argparse
import re
from collections.abc import Iterator
from pathlib import Path

from flows.cli import build_parser
from tools import cli_reference

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"
COMMANDS = ROOT / "docs" / "commands.md"
LINK = re.compile(r"\]\(([^)\s]+)\)")


def subcommands(parser: argparse.ArgumentParser, prefix: str = "") -> Iterator[tuple[str, argparse.ArgumentParser]]:
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, sub in action.choices.items():
                yield f"{prefix}{name}", sub
                yield from subcommands(sub, f"{prefix}{name} ")


def local_links(path: Path) -> list[str]:
    """Links of a markdown file within this checkout, as written (``file``, ``file#anchor``, ``#anchor``)."""
    return [link for link in LINK.findall(path.read_text()) if not re.match(r"[a-z]+:", link)]


def anchors(path: Path) -> set[str]:
    """The anchors GitHub makes of a markdown file's headings (outside code blocks)."""
    found, fenced = set(), False
    for line in path.read_text().splitlines():
        fenced ^= line.startswith("```")
        if not fenced and re.match(r"#+ ", line):
            text = re.sub(r"[^\w\- ]", "", line.lstrip("#").strip().lower())
            found.add(text.replace(" ", "-"))
    return found


def broken_links(page: Path) -> list[str]:
    broken = []
    for link in local_links(page):
        name, _, anchor = link.partition("#")
        target = (page.parent / name) if name else page
        if not target.exists():
            broken.append(f"{page.relative_to(ROOT)} → {link}")
        elif anchor and target.suffix == ".md" and anchor not in anchors(target):
            broken.append(f"{page.relative_to(ROOT)} → {link} (no such heading)")
    return broken


def test_the_readme_is_short_enough_to_read() -> None:
    lines = README.read_text().splitlines()
    assert len(lines) <= 350, f"README.md has {len(lines)} lines; move detail to docs/"


def test_every_flag_of_every_subcommand_is_in_the_command_reference() -> None:
    reference = COMMANDS.read_text()
    commands = list(subcommands(build_parser()))
    assert {"deploy", "status", "rollback", "webhook serve", "iam"} <= {name for name, _ in commands}
    missing = []
    for name, sub in commands:
        if f"`ecs-pipeline {name}`" not in reference:
            missing.append(name)
        for action in sub._actions:
            missing += [f"{name} {flag}" for flag in action.option_strings
                        if flag not in ("-h", "--help") and f"`{flag}`" not in reference]
    assert not missing, f"not in docs/commands.md: {missing}; run python tools/cli_reference.py"


def test_the_command_reference_is_what_the_parser_says() -> None:
    assert COMMANDS.read_text() == cli_reference.render(), (
        "docs/commands.md differs from the parser: run python tools/cli_reference.py"
    )


def test_the_readme_links_the_command_reference_and_every_link_holds() -> None:
    readme_links = {link.partition("#")[0] for link in local_links(README)}
    assert "docs/commands.md" in readme_links
    docs = sorted((ROOT / "docs").glob("*.md"))
    assert {p.name for p in docs} >= {"commands.md", "permissions.md", "failure-model.md", "architecture.md"}
    broken = [*broken_links(README), *(b for page in docs for b in broken_links(page))]
    assert not broken, f"links to nothing: {broken}"
    unlinked = [p.name for p in docs if f"docs/{p.name}" not in readme_links]
    assert not unlinked, f"docs README does not lead to: {unlinked}"
