"""Reading the files a service config names, with errors that never quote them.

A config may point ``task_definition`` or ``strategy.appspec`` at any file by
mistake, a credentials file included; so paths are confined to the folder
holding the service YAML, and a parse error gives the line and column and
what was expected, never the offending text. A key is named only when it
looks like a field name (``shown_key``): a credentials file may hold a
secret in a key's place. A key written twice in one mapping is refused (YAML
and JSON parsers silently keep the last one). Only errors are imported here.
"""

from __future__ import annotations

import json
import os
import re
import stat
from pathlib import Path, PurePath
from typing import Any

import yaml

from tasks.core.errors import ConfigError

# A quoted token in a parser message is file text (an alias, a tag, a scalar) unless
# it is one character or a token name such as '<scalar>': those say what was expected.
_QUOTED = re.compile(r"'([^']*)'")
_FIELD_LIKE = re.compile(r"^[A-Za-z_][A-Za-z0-9_.-]{0,31}$")
HIDDEN_KEY = "<key not shown: it looks like a secret>"
REPOSITORY = "the repository's root folder"
YAML_FOLDER = "the folder holding the service YAML"


def shown_key(key: object) -> str:
    """KEY as a message may name it: a field name, or HIDDEN_KEY when it could be a secret.

    Field names are short words; access keys and tokens are long runs of
    capitals and digits or carry characters no field name has.
    """
    text = str(key)
    long = len(text) >= 16
    if _FIELD_LIKE.match(text) and not (long and (any(c.isdigit() for c in text) or text.upper() == text)):
        return text
    return HIDDEN_KEY


def shown_path(path: str) -> str:
    """A dotted field path (``a.b[0].c``) with every key that could be a secret hidden."""
    parts = []
    for part in path.split("."):
        key, _, index = part.partition("[")
        parts.append(shown_key(key) + (f"[{index}" if index else "") if key else part)
    return ".".join(parts)


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


class _StrictLoader(yaml.SafeLoader):  # type: ignore[misc]  # PyYAML ships no types here
    """safe_load that refuses a key written twice in one mapping (PyYAML keeps the last one, silently)."""

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict[Any, Any]:
        seen: set[Any] = set()
        for key_node, _ in node.value:
            if key_node.tag == "tag:yaml.org,2002:merge":  # `<<: *base` overrides on purpose
                continue
            key = self.construct_object(key_node, deep=True)
            try:
                twice = key in seen
                seen.add(key)
            except TypeError:  # an unhashable key: the base class says so
                continue
            if twice:
                raise yaml.constructor.ConstructorError(
                    None, None,
                    f"the key {shown_key(key)} is written twice in one mapping (YAML would keep only the "
                    "last one); remove one of them",
                    key_node.start_mark,
                )
        mapping: dict[Any, Any] = super().construct_mapping(node, deep)
        return mapping


class DuplicateKey(ValueError):
    """A JSON object names one key twice."""


def _no_duplicates(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in pairs:
        if key in out:
            raise DuplicateKey(key)
        out[key] = value
    return out


def load_json(text: str, source: str, what: str) -> Any:
    """JSON text to data: JSONDecodeError as is, a key twice or a nesting too deep as a ConfigError."""
    try:
        return json.loads(text.lstrip("\ufeff"), object_pairs_hook=_no_duplicates)
    except DuplicateKey as exc:
        raise ConfigError(
            f"{source}: {what} has the key {shown_key(exc.args[0])} twice in one JSON object (JSON "
            "parsers keep only the last one); remove one of them"
        ) from None
    except RecursionError:
        raise ConfigError(f"{source}: {what} is nested too deeply to be read") from None


MAX_EXPANDED_VALUES = 100_000


def _expanded_size(data: Any, seen: dict[int, int]) -> int:
    """How many values DATA holds once every YAML alias is written out (memoised: linear in the text)."""
    if not isinstance(data, dict | list):
        return 1
    known = seen.get(id(data))
    if known is not None:  # -1: a value that holds itself (`&a [*a]`) never ends once written out
        return known if known >= 0 else MAX_EXPANDED_VALUES + 1
    seen[id(data)] = -1
    children = list(data.values()) if isinstance(data, dict) else data
    size = 1 + sum(_expanded_size(c, seen) for c in children)
    seen[id(data)] = size
    return size


def _load_yaml(text: str, source: str, what: str) -> Any:
    """Strict safe_load; refused when aliases expand it past MAX_EXPANDED_VALUES (a "billion laughs").

    PyYAML shares an aliased value instead of copying it, so loading is cheap, but the
    first json.dumps (an AppSpecContent, an artifact) writes every copy out and never ends.
    """
    data = yaml.load(text, Loader=_StrictLoader)  # a SafeLoader
    if _expanded_size(data, {}) > MAX_EXPANDED_VALUES:
        raise ConfigError(
            f"{source}: {what} expands to more than {MAX_EXPANDED_VALUES} values through YAML aliases "
            "(*name); write the repeated parts out instead"
        )
    return data


def parse_yaml(text: str, source: str, what: str) -> Any:
    """YAML text to data; ``what`` names the file's role in the error."""
    try:
        return _load_yaml(text, source, what)
    except yaml.YAMLError as exc:
        raise ConfigError(f"{source}: {what} is not valid YAML{yaml_error(exc)}") from None
    except RecursionError:
        raise ConfigError(f"{source}: {what} is nested too deeply to be read") from None


def parse_yaml_or_json(text: str, source: str, what: str) -> Any:
    """JSON first when the text looks like JSON (tabs are fine there), else YAML.

    JSON is YAML only without tab indentation; AWS's own JSON templates use
    tabs. When both fail, the JSON error is the one that helps.
    """
    if text.lstrip("\ufeff \t\r\n").startswith(("{", "[")):
        try:
            return load_json(text, source, what)
        except json.JSONDecodeError as exc:
            json_problem = json_error(exc)
        try:
            return _load_yaml(text, source, what)
        except (yaml.YAMLError, RecursionError):
            raise ConfigError(f"{source}: {what} is not valid JSON{json_problem}") from None
    return parse_yaml(text, source, what)


def check_relative(value: str, field: str, folder: str = YAML_FOLDER) -> str:
    """A path in the config must stay inside FOLDER (the service YAML's, or the repository)."""
    if PurePath(value).is_absolute() or value.startswith("~"):
        raise ValueError(
            f"absolute paths are refused for {field}: put the file in {folder} "
            "(or below it) and give its path relative to that folder"
        )
    if os.path.normpath(value).split(os.sep)[0] == "..":
        raise ValueError(
            f"'..' leads {field} outside {folder}, which is refused: "
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


MAX_FILE_BYTES = 1024 * 1024


def regular_text(path: Path) -> str:
    """A regular file's UTF-8 text: a FIFO or a device would block or never end, a huge file fill memory.

    ValueError (with the reason, never the content) for anything else; OSError and UnicodeDecodeError as is.
    """
    info = path.stat()
    if not stat.S_ISREG(info.st_mode):
        raise ValueError("is not a regular file")
    if info.st_size > MAX_FILE_BYTES:
        raise ValueError(f"is larger than {MAX_FILE_BYTES // 1024} KiB, far more than a config or template")
    return path.read_text(encoding="utf-8")


def read_text(path: Path, field: str, source: str) -> str:
    """The file's text; errors name the config field that points at it."""
    try:
        return regular_text(path)
    except ValueError as exc:
        if isinstance(exc, UnicodeDecodeError):
            raise ConfigError(f"{source}: {field}: {path} is not UTF-8 text; point it at a template") from None
        raise ConfigError(f"{source}: {field}: {path} {exc}; point it at a template") from None
    except FileNotFoundError:
        raise ConfigError(
            f"{source}: {field}: {path} does not exist; fix the path "
            "(relative to the folder holding the service YAML)"
        ) from None
    except UnicodeDecodeError:
        raise ConfigError(f"{source}: {field}: {path} is not UTF-8 text; point it at a template") from None
    except OSError as exc:
        raise ConfigError(f"{source}: {field}: cannot read {path} ({exc.strerror})") from None
