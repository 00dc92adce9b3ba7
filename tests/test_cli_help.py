"""`ecs-pipeline --help` reads as a product's help: user words, examples, every option explained.

Offline: the parser is built and formatted, nothing runs.
"""

from __future__ import annotations

import argparse
import re
from collections.abc import Iterator

import pytest

from flows.cli import build_parser

# Words of the code, not of its users: reST literals, module paths, function names the help once showed.
INTERNALS = re.compile(r"``|\b(flows|tasks|sandbox|harness)\.[a-z_]+|load_sandbox_env|imports? prefect|__\w+__")


def parsers(
    parser: argparse.ArgumentParser, path: str = "ecs-pipeline"
) -> Iterator[tuple[str, argparse.ArgumentParser]]:
    """The parser and every subcommand's, nested ones too (webhook serve)."""
    yield path, parser
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, sub in action.choices.items():
                yield from parsers(sub, f"{path} {name}")


ALL = list(parsers(build_parser()))


def test_every_command_is_listed() -> None:
    names = {path for path, _ in ALL}
    assert {"ecs-pipeline deploy", "ecs-pipeline status", "ecs-pipeline rollback", "ecs-pipeline iam",
            "ecs-pipeline verify", "ecs-pipeline webhook serve", "ecs-pipeline approve"} <= names, names


@pytest.mark.parametrize(("path", "parser"), ALL, ids=[path for path, _ in ALL])
def test_help_has_no_internals_and_explains_every_argument(path: str, parser: argparse.ArgumentParser) -> None:
    text = parser.format_help()
    assert not INTERNALS.search(text), f"{path} --help shows {INTERNALS.search(text)}:\n{text}"
    for action in parser._actions:
        if isinstance(action, argparse._HelpAction):
            continue
        if isinstance(action, argparse._SubParsersAction):
            listed = {choice.dest for choice in action._choices_actions}
            assert listed == set(action.choices), f"{path}: a subcommand without a one-line help"
            assert all(choice.help for choice in action._choices_actions), path
            continue
        name = "/".join(action.option_strings) or action.dest
        assert action.help and action.help != argparse.SUPPRESS, f"{path}: {name} has no help"


@pytest.mark.parametrize(("path", "parser"), ALL[1:], ids=[path for path, _ in ALL[1:]])
def test_each_command_shows_examples_of_itself(path: str, parser: argparse.ArgumentParser) -> None:
    epilog = parser.epilog or ""
    assert epilog.startswith("examples:") and f"\n  {path}" in epilog, f"{path}: no examples of itself"
    assert parser.description, f"{path}: no description"
    assert f"\n  {path}" in parser.format_help(), "examples keep their lines (raw formatting)"


def test_top_level_help_says_what_the_tool_does() -> None:
    text = build_parser().format_help()
    assert text.splitlines()[2] == "Release a git commit to AWS ECS Fargate with blue/green, and back again."
    assert "deployments/" in text, "where service YAML lives"
    examples = [line for line in text.splitlines() if line.startswith("  ecs-pipeline ")]
    assert len(examples) >= 2, text
    assert "--help" in text.splitlines()[-1]


def test_help_prints_no_environment_lines(monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    """Asking for help is not a command: no aws/prefect/env lines before it."""
    from flows.cli import main

    monkeypatch.setenv("ECS_PIPELINE_NO_SANDBOX", "1")  # nothing of a sandbox is read into this process
    with pytest.raises(SystemExit) as done:
        main(["status", "--help"])
    out = capsys.readouterr()
    assert done.value.code == 0 and out.err == "", out.err
    assert out.out.startswith("usage: ecs-pipeline status")


PRINTS_JSON = {"ecs-pipeline render", "ecs-pipeline iam"}  # their output is a JSON (or CloudFormation) document
LEAVES = [(path, parser) for path, parser in ALL
          if not any(isinstance(a, argparse._SubParsersAction) for a in parser._actions)]


@pytest.mark.parametrize(("path", "parser"), LEAVES, ids=[path for path, _ in LEAVES])
def test_every_command_has_json_or_says_why_not(path: str, parser: argparse.ArgumentParser) -> None:
    """One-shot commands print JSON on request; long-running ones and separate programs say they do not."""
    has_json = any("--json" in action.option_strings for action in parser._actions)
    assert has_json or path in PRINTS_JSON or "no --json" in parser.format_help(), f"{path}: no --json, no reason"
    assert not (has_json and "no --json" in parser.format_help()), path


@pytest.mark.parametrize("path", ["ecs-pipeline migrate", "ecs-pipeline poll", "ecs-pipeline approve"])
def test_json_flag_is_explained_with_an_example(path: str) -> None:
    parser = dict(ALL)[path]
    flag = next(action for action in parser._actions if "--json" in action.option_strings)
    assert flag.help and "JSON" in flag.help, f"{path}: --json says what it prints"
    examples = (parser.epilog or "").splitlines()
    assert any(line.startswith(f"  {path} ") and "--json" in line for line in examples), parser.epilog
