"""YAML reading that remembers where every key came from, expands ``${VAR}`` and applies ``--set``."""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping

import yaml

from cl_harness.config.yaml_guard import MAX_YAML_BYTES, MAX_YAML_DEPTH, YamlGuardError, compose_checked
from cl_harness.errors import ConfigError

KeyPath = tuple  # e.g. ("training", "lr") or ("tasks", 0, "name")

_VAR = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)\}")


@dataclass
class Source:
    """Where a config came from: its file and the line of every key path in it."""

    file: str | None = None
    lines: dict[KeyPath, int] = field(default_factory=dict)

    def line_of(self, path: KeyPath) -> int | None:
        """The line of ``path``, or of its nearest ancestor that has one."""
        path = tuple(path)
        while path:
            if path in self.lines:
                return self.lines[path]
            path = path[:-1]
        return self.lines.get(())

    def error(self, path: KeyPath, message: str, hint: str | None = None) -> ConfigError:
        return ConfigError(
            message, file=self.file, line=self.line_of(path), key=format_path(path) or None, hint=hint
        )


def format_path(path: KeyPath) -> str:
    out = ""
    for part in path:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
    return out


def _walk_lines(node: yaml.Node, path: KeyPath, lines: dict[KeyPath, int]) -> None:
    lines.setdefault(path, node.start_mark.line + 1)
    if isinstance(node, yaml.MappingNode):
        for key_node, value_node in node.value:
            key = key_node.value
            lines[path + (key,)] = key_node.start_mark.line + 1
            _walk_lines(value_node, path + (key,), lines)
    elif isinstance(node, yaml.SequenceNode):
        for index, item in enumerate(node.value):
            lines[path + (index,)] = item.start_mark.line + 1
            _walk_lines(item, path + (index,), lines)


def load_yaml(path: str | Path, what: str = "config") -> tuple[Any, Source]:
    """Parse ``path`` with the safe loader; syntax errors name the line and column."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"{what} file not found", file=path, hint=f"check the path (cwd is {Path.cwd()})")
    try:
        size = path.stat().st_size
        if size > MAX_YAML_BYTES:
            raise ConfigError(
                f"{what} file is {size} bytes; a YAML {what} file may hold at most {MAX_YAML_BYTES}",
                file=path, hint="is this the right file? data belongs in data files named by the stream",
            )
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"cannot read {what} file: {type(exc).__name__}", file=path) from None
    try:
        data, node = compose_checked(text)
    except YamlGuardError as exc:
        raise ConfigError(str(exc), file=path, line=exc.line, key=format_path(exc.key_path) or None) from None
    except RecursionError:
        raise ConfigError(f"YAML nested too deeply (more than {MAX_YAML_DEPTH} levels)", file=path) from None
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark
        line = mark.line + 1 if mark else None
        col = f", column {mark.column + 1}" if mark else ""
        raise ConfigError(
            f"YAML syntax error{col}: {str(exc.problem or exc)[:200]}", file=path, line=line
        ) from None
    except yaml.YAMLError as exc:
        raise ConfigError(f"YAML error: {str(exc)[:200]}", file=path) from None
    lines: dict[KeyPath, int] = {}
    if node is not None:
        _walk_lines(node, (), lines)
    return data, Source(str(path), lines)


def expand_vars(data: Any, variables: Mapping[str, str], source: Source, path: KeyPath = ()) -> Any:
    """Replace ``${VAR}`` in every string with ``variables[VAR]``; an unset variable is an error."""
    if isinstance(data, dict):
        return {k: expand_vars(v, variables, source, path + (k,)) for k, v in data.items()}
    if isinstance(data, list):
        return [expand_vars(v, variables, source, path + (i,)) for i, v in enumerate(data)]
    if isinstance(data, str):

        def substitute(match: re.Match) -> str:
            name = match.group(1)
            if name not in variables:
                hint = "pass --data-root DIR" if name == "DATA_ROOT" else f"export {name}=..."
                raise source.error(path, f"variable ${{{name}}} is not set", hint=hint)
            return str(variables[name])

        return _VAR.sub(substitute, data)
    return data


def apply_overrides(data: dict, overrides: list[str], source: Source) -> dict:
    """Apply ``key.path=value`` overrides; values are parsed as YAML scalars or lists."""
    for item in overrides:
        if "=" not in item:
            raise ConfigError(f"--set expects key.path=value, got {item!r}", hint="e.g. --set training.epochs=1")
        key, raw = item.split("=", 1)
        try:
            value = yaml.safe_load(raw) if raw else ""
        except yaml.YAMLError as exc:
            raise ConfigError(f"--set {key}: cannot parse value {raw!r}: {exc}") from None
        parts: list[Any] = [int(p) if p.isdigit() else p for p in key.strip().split(".")]
        node: Any = data
        for depth, part in enumerate(parts[:-1]):
            child = node[part] if isinstance(node, list) and isinstance(part, int) and part < len(node) else (
                node.get(part) if isinstance(node, dict) else None
            )
            if child is None:
                if not isinstance(node, dict):
                    raise ConfigError(f"--set {key}: {format_path(tuple(parts[: depth + 1]))} is not a mapping")
                child = node[part] = {}
            elif not isinstance(child, (dict, list)):
                child = node[part] = {}
            node = child
        if isinstance(node, list):
            if not isinstance(parts[-1], int) or parts[-1] >= len(node):
                raise ConfigError(f"--set {key}: index {parts[-1]} is out of range")
        node[parts[-1]] = value
        source.lines.setdefault(tuple(parts), None)  # overridden keys have no file line
    return data
