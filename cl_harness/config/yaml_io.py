"""YAML reading that remembers where every key came from, expands ``${VAR}`` and applies ``--set``."""

from __future__ import annotations

import re
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping

import yaml
from yaml.constructor import SafeConstructor

from cl_harness.config.guard import MAX_DEPTH, MAX_YAML_BYTES, MAX_YAML_NODES, GuardError, parse_yaml
from cl_harness.errors import ConfigError, clip, short_repr

KeyPath = tuple  # e.g. ("training", "lr") or ("tasks", 0, "name")

_VAR = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)\}")
_ANY_VAR = re.compile(r"\$\{[^}]*\}?")  # what is left of ``${...}`` once the supported form is expanded

#: What an empty file of each kind needs at least (the message for an empty or comment-only file).
NEEDS = {
    "experiment": "an experiment needs at least `name` and `stream`",
    "stream": "a stream needs at least `name`, `scenario` and `tasks`",
    "config": "an experiment needs at least `name` and `stream`; a stream `name`, `scenario` and `tasks`",
}
OVERRIDE_FORM = "--set KEY.PATH=VALUE"
MAX_FLAG_CHARS = 100


@dataclass
class Source:
    """Where a config came from: its file and the line of every key path in it."""

    file: str | None = None
    lines: dict[KeyPath, int] = field(default_factory=dict)
    overrides: dict[KeyPath, str] = field(default_factory=dict)  # key paths a --set flag gave (or replaced) -> the flag

    def override_of(self, path: KeyPath) -> str | None:
        """The ``--set`` flag that gave the value at ``path`` (or one of its ancestors), if one did."""
        path = tuple(path)
        for length in range(len(path), -1, -1):
            flag = self.overrides.get(path[:length])
            if flag is not None:
                return flag
        return None

    def line_of(self, path: KeyPath) -> int | None:
        """The line of ``path``, or of its nearest ancestor that has one."""
        path = tuple(path)
        while path:
            if path in self.lines:
                return self.lines[path]
            path = path[:-1]
        return self.lines.get(())

    @contextmanager
    def locating(self) -> Iterator[None]:
        """A ConfigError raised in the block at a key path but without a file gets this file and the line of that key.

        For checks that know the key they refuse (``backbone.name``) but not the file it was written in.
        """
        try:
            yield
        except ConfigError as error:
            if type(error) is not ConfigError or error.file is not None or not error.key:
                raise
            raise self.error(tuple(error.key.split(".")), error.message, error.hint) from None

    def error(self, path: KeyPath, message: str, hint: str | None = None, line: int | None = None) -> ConfigError:
        """A ConfigError at ``path``: its file and line, or the ``--set`` flag its value came from."""
        flag = self.override_of(path)
        if flag is not None:
            return ConfigError(message, file=self.file, key=format_path(path) or None, hint=hint, origin=flag)
        return ConfigError(
            message, file=self.file, line=line or self.line_of(path), key=format_path(path) or None, hint=hint
        )


def format_path(path: KeyPath) -> str:
    out = ""
    for part in path:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
    return out


def _key_value(node: yaml.Node) -> Any:
    """A mapping key as the loaded data holds it (``1: x`` has the key 1, not "1")."""
    if isinstance(node, yaml.ScalarNode) and node.tag != "tag:yaml.org,2002:str":
        try:
            key = SafeConstructor().construct_object(node, deep=True)
            hash(key)
            return key
        except Exception:  # noqa: BLE001 - the loader itself reports a key it cannot build
            return node.value
    return node.value


def _walk_lines(node: yaml.Node, path: KeyPath, lines: dict[KeyPath, int]) -> None:
    lines.setdefault(path, node.start_mark.line + 1)
    if isinstance(node, yaml.MappingNode):
        for key_node, value_node in node.value:
            key = _key_value(key_node)
            lines[path + (key,)] = key_node.start_mark.line + 1
            _walk_lines(value_node, path + (key,), lines)
    elif isinstance(node, yaml.SequenceNode):
        for index, item in enumerate(node.value):
            lines[path + (index,)] = item.start_mark.line + 1
            _walk_lines(item, path + (index,), lines)


def load_yaml(path: str | Path, what: str = "config") -> tuple[Any, Source]:
    """Parse ``path`` with the safe loader; syntax errors name the line and column."""
    path = Path(path)
    if path.is_dir():
        raise ConfigError(f"{path} is a directory; give a YAML {what} file")
    if not path.is_file():
        raise ConfigError(f"{what} file not found", file=path, hint=f"check the path (cwd is {Path.cwd()})")
    try:
        size = path.stat().st_size
        if size > MAX_YAML_BYTES:
            raise ConfigError(
                f"{what} file is {size} bytes; a YAML {what} file may hold at most {MAX_YAML_BYTES}",
                file=path, hint="is this the right file? data belongs in data files named by the stream",
            )
        raw = path.read_bytes()
    except OSError as exc:
        raise ConfigError(f"cannot read {what} file: {exc.strerror or type(exc).__name__}", file=path) from None
    text = decode_utf8(raw, path, what)
    try:
        data, node, _ = parse_yaml(text)
    except GuardError as exc:
        raise ConfigError(str(exc), file=path, line=exc.line, key=format_path(exc.key_path) or None) from None
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark
        line = mark.line + 1 if mark else None
        col = f", column {mark.column + 1}" if mark else ""
        raise ConfigError(
            f"YAML syntax error{col}: {str(exc.problem or exc)[:200]}", file=path, line=line
        ) from None
    except yaml.YAMLError as exc:
        raise ConfigError(f"YAML error: {str(exc)[:200]}", file=path) from None
    if data is None:  # no document, only comments, or a lone `null`
        line = node.start_mark.line + 1 if node is not None else None
        raise ConfigError(f"the file is empty; {NEEDS.get(what, NEEDS['config'])}", file=path, line=line)
    lines: dict[KeyPath, int] = {}
    _walk_lines(node, (), lines)
    return data, Source(str(path), lines)


def decode_utf8(raw: bytes, path: Path, what: str = "config") -> str:
    """``raw`` as UTF-8 text, or a ConfigError naming the line and byte offset of the first byte that is not UTF-8."""
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        line = raw[: exc.start].count(b"\n") + 1
        utf16 = raw[:2] in (b"\xff\xfe", b"\xfe\xff")
        found = "a UTF-16 file" if utf16 else f"byte 0x{raw[exc.start]:02x} at byte offset {exc.start}"
        raise ConfigError(
            f"the {what} file must be UTF-8 text; found {found}", file=path, line=line,
            hint=f"save the file as UTF-8 (e.g. iconv -f {'utf-16' if utf16 else 'latin1'} -t utf-8 FILE, or your editor's "
                 "'save with encoding')",
        ) from None


def expand_vars(data: Any, variables: Mapping[str, str], source: Source) -> Any:
    """Replace ``${VAR}`` in every string with ``variables[VAR]``; an unset variable or another ``${...}`` form is an error.

    What the variables add counts against the size a config file may have (MAX_YAML_BYTES), so that a long variable
    used in many places (or under a re-used alias) cannot grow the config without bound.
    """
    added = 0

    def expand(value: Any, path: KeyPath) -> Any:
        if isinstance(value, dict):
            return {k: expand(v, path + (k,)) for k, v in value.items()}
        if isinstance(value, list):
            return [expand(v, path + (i,)) for i, v in enumerate(value)]
        if not isinstance(value, str):
            return value

        def substitute(match: re.Match) -> str:
            nonlocal added
            name = match.group(1)
            if name not in variables:
                hint = "pass --data-root DIR" if name == "DATA_ROOT" else f"export {name}=..."
                raise source.error(path, f"variable ${{{name}}} is not set", hint=hint)
            text = str(variables[name])
            added += len(text)
            if added > MAX_YAML_BYTES:
                raise source.error(path, f"the variables expand the config past {MAX_YAML_BYTES} characters "
                                         f"(${{{name}}} holds {len(text)})", hint="a variable holds a path or a short value")
            return text

        check_var_syntax(value, source, path)
        return _VAR.sub(substitute, value)

    return expand(data, ())


def check_var_syntax(text: str, source: Source, path: KeyPath) -> None:
    """Refuse ``${...}`` forms other than ``${NAME}`` (shell defaults ``${X:-d}``, ``${X}}``, an unclosed ``${X``)."""
    for match in _ANY_VAR.finditer(text):
        if not _VAR.fullmatch(match.group(0)):
            raise source.error(
                path,
                f"unsupported variable syntax {short_repr(match.group(0), 60)}; only ${{NAME}} is expanded "
                "(NAME: letters, digits and _), with no default or other shell forms",
                hint="set the variable (export NAME=...; --data-root DIR sets ${DATA_ROOT}) and write ${NAME}",
            )


def _override_error(item: str, message: str, hint: str | None = None, file: str | None = None) -> ConfigError:
    return ConfigError(message, file=file, origin=f"--set {clip(item, MAX_FLAG_CHARS)}",
                       hint=hint or "e.g. --set training.epochs=1")


def _override_key(item: str, file: str | None = None) -> tuple[str, list[Any]]:
    """The key path of a ``--set`` flag, checked: dot-separated names or list indexes, none of them empty."""
    if "=" not in item:
        raise _override_error(item, f"no '=' in the flag; the form is {OVERRIDE_FORM}", file=file)
    key = item.split("=", 1)[0].strip()
    if not key:
        raise _override_error(item, f"the key path before '=' is empty; the form is {OVERRIDE_FORM}", file=file)
    names = key.split(".")
    if len(names) > MAX_DEPTH:
        raise _override_error(item, f"the key path has {len(names)} parts; at most {MAX_DEPTH} are allowed", file=file)
    if any(not name.strip() or name != name.strip() for name in names):
        raise _override_error(item, f"{key!r} is not a key path (an empty or blank part between dots); the form is {OVERRIDE_FORM}",
                              file=file)
    return key, [int(p) if p.isdigit() else p for p in names]


def apply_overrides(data: dict, overrides: list[str], source: Source) -> dict:
    """Apply ``key.path=value`` overrides; values are parsed as YAML scalars or lists.

    ``source.overrides`` records the key paths each flag set (and the mappings it created or replaced), so that a
    message about one of those values names the flag, not the file's line.
    """
    budget = MAX_YAML_NODES  # for all the flags together, as for one file
    for item in overrides:
        key, parts = _override_key(item, source.file)
        flag = f"--set {clip(item, MAX_FLAG_CHARS)}"
        raw = item.split("=", 1)[1]
        try:
            value, _, nodes = parse_yaml(raw, max_nodes=budget) if raw else ("", None, 1)
            budget -= nodes
        except GuardError as exc:
            raise _override_error(item, f"the value is refused: {exc}", file=source.file,
                                  hint="--set values are held to the limits of a config file") from None
        except yaml.YAMLError as exc:
            problem = getattr(exc, "problem", None) or str(exc)
            raise _override_error(item, f"cannot parse the value {short_repr(raw, 60)} as YAML: {clip(problem, 120)}",
                                  hint="quote the value for the shell, e.g. --set 'seeds=[0, 1]'", file=source.file) from None
        node: Any = data
        for depth, part in enumerate(parts[:-1]):
            child = node[part] if isinstance(node, list) and isinstance(part, int) and part < len(node) else (
                node.get(part) if isinstance(node, dict) else None
            )
            if child is None and not isinstance(node, dict):
                raise _override_error(item, f"{format_path(tuple(parts[: depth + 1]))} is not a mapping", file=source.file)
            if not isinstance(child, (dict, list)):
                child = node[part] = {}
                source.overrides[tuple(parts[: depth + 1])] = flag  # a mapping this flag made
            node = child
        if isinstance(node, list):
            if not isinstance(parts[-1], int) or parts[-1] >= len(node):
                raise _override_error(item, f"{format_path(tuple(parts[:-1]))} is a list of {len(node)} items; "
                                      f"{parts[-1]!r} is not an index 0..{len(node) - 1}", file=source.file)
        node[parts[-1]] = value
        source.overrides[tuple(parts)] = flag
    return data
