"""Reading the files a service config names, with errors that never quote them.

A config may point ``task_definition`` or ``strategy.appspec`` at any file by
mistake, a credentials file included; so paths are confined to the folder
holding the service YAML, and a parse error gives the line and column and
what was expected, never the offending text. Only errors are imported here.
"""

from __future__ import annotations

import json
import os
import re
from pathlib import Path, PurePath
from typing import Any

import yaml

from tasks.errors import ConfigError

# A quoted token in a parser message is file text (an alias, a tag, a scalar) unless
# it is one character or a token name such as '<scalar>': those say what was expected.
_QUOTED = re.compile(r"'([^']*)'")


def _redact(problem: str) -> str:
    def keep(m: re.Match[str]) -> str:
        inner = m.group(1)
        return m.group(0) if len(inner) <= 2 or re.fullmatch(r"<[a-z ]+>", inner) else "'…'"

    return _QUOTED.sub(keep, problem)


def yaml_error(exc: yaml.YAMLError) -> str:
    """Where and what went wrong, without the snippet PyYAML prints."""
    problem_mark = getattr(exc, "problem_mark", None)
    context_mark = getattr(exc, "context_mark", None)
    mark = problem_mark or context_mark
    problem = str(getattr(exc, "problem", None) or "cannot be parsed")
    where = f" at line {mark.line + 1} column {mark.column + 1}" if mark is not None else ""
    context = getattr(exc, "context", None)
    started = ""
    if context and context_mark is not None and problem_mark is not None and context_mark.line != problem_mark.line:
        started = f" ({_redact(str(context))}, from line {context_mark.line + 1} column {context_mark.column + 1})"
    hint = "; indent with spaces, not tabs" if "'\\t'" in problem else ""
    return f"{where}: {_redact(problem)}{started}{hint}"


def json_error(exc: json.JSONDecodeError) -> str:
    return f" at line {exc.lineno} column {exc.colno}: {exc.msg}"


def parse_yaml(text: str, source: str, what: str) -> Any:
    """YAML text to data; ``what`` names the file's role in the error."""
    try:
        return yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise ConfigError(f"{source}: {what} is not valid YAML{yaml_error(exc)}") from None


def parse_yaml_or_json(text: str, source: str, what: str) -> Any:
    """JSON first when the text looks like JSON (tabs are fine there), else YAML.

    JSON is YAML only without tab indentation; AWS's own JSON templates use
    tabs. When both fail, the JSON error is the one that helps.
    """
    if text.lstrip("\ufeff \t\r\n").startswith(("{", "[")):
        try:
            return json.loads(text.lstrip("\ufeff"))
        except json.JSONDecodeError as exc:
            json_problem = json_error(exc)
        try:
            return yaml.safe_load(text)
        except yaml.YAMLError:
            raise ConfigError(f"{source}: {what} is not valid JSON{json_problem}") from None
    return parse_yaml(text, source, what)


def check_relative(value: str, field: str) -> str:
    """A path in the config must stay inside the folder holding the service YAML."""
    if PurePath(value).is_absolute() or value.startswith("~"):
        raise ValueError(
            f"absolute paths are refused for {field}: put the file in the folder holding "
            "the service YAML (or below it) and give its path relative to that folder"
        )
    if os.path.normpath(value).split(os.sep)[0] == "..":
        raise ValueError(
            f"'..' leads {field} outside the folder holding the service YAML, which is refused: "
            "put the file in that folder (or below it) and give its path relative to it"
        )
    return value


def confined(base_dir: Path, relative: str, field: str, source: str) -> Path:
    """``relative`` resolved against ``base_dir``; a symlink out of it is refused too."""
    check_relative(relative, field)
    base = base_dir.resolve()
    path = (base / relative).resolve()
    if not path.is_relative_to(base):
        raise ConfigError(
            f"{source}: {field} resolves (through a symlink) outside {base}, which is refused; "
            "copy the file into that folder"
        )
    return path


def read_text(path: Path, field: str, source: str) -> str:
    """The file's text; errors name the config field that points at it."""
    try:
        return path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ConfigError(
            f"{source}: {field}: {path} does not exist; fix the path "
            "(relative to the folder holding the service YAML)"
        ) from None
    except UnicodeDecodeError:
        raise ConfigError(f"{source}: {field}: {path} is not UTF-8 text; point it at a template") from None
    except OSError as exc:
        raise ConfigError(f"{source}: {field}: cannot read {path} ({exc.strerror})") from None
