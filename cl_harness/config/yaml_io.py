"""YAML reading that remembers where every key came from, expands ``${VAR}`` and applies ``--set``."""

from __future__ import annotations

import datetime

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
MAX_INDEX_DIGITS = 9  # a key path part of more digits is a name, never a list index


@dataclass
class Source:
    """Where a config came from: its file and the line of every key path in it."""

    file: str | None = None
    lines: dict[KeyPath, int] = field(default_factory=dict)
    overrides: dict[KeyPath, str] = field(default_factory=dict)  # key paths a --set flag gave (or replaced) -> the flag
    #: How the text wrote a number that YAML 1.1 reads as other than its plain decimal form (``010`` -> 8, ``10:30`` ->
    #: 630, ``1_000``), or a word it reads as a boolean (``yes`` -> True): value key path -> text, and (in
    #: ``number_keys``) mapping key path -> text. A text field refuses them (``name: 010`` would silently become "8",
    #: a label ``no`` "False"), see ``number_text``.
    numbers: dict[KeyPath, str] = field(default_factory=dict)
    number_keys: dict[KeyPath, str] = field(default_factory=dict)

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

    def number_text(self, path: KeyPath, value: Any, key: bool = False) -> str | None:
        """How the text wrote ``value`` (the value at ``path``, or the mapping key ``path[-1]``) where YAML read it as a
        number not written in its plain decimal form, or as a boolean or date (``yes``, ``2024-01-31``); None else."""
        if not isinstance(value, (int, float, datetime.date)):
            return None
        text = (self.number_keys if key else self.numbers).get(tuple(path))
        return text if text is not None and (text != str(value) or isinstance(value, datetime.date)) else None

    def forget_below(self, path: KeyPath) -> None:
        """Drop what is recorded about the values at ``path`` and below (a ``--set`` flag replaced them)."""
        path = tuple(path)
        for table in (self.numbers, self.number_keys):
            for known in [p for p in table if p[: len(path)] == path]:
                del table[known]

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


_NUMBER_TAGS = ("tag:yaml.org,2002:int", "tag:yaml.org,2002:float")
_WORD_TAGS = ("tag:yaml.org,2002:bool", "tag:yaml.org,2002:timestamp")  # an unquoted yes, no, on or off; a date


def _number_form(node: yaml.Node, constructor: SafeConstructor) -> str | None:
    """The text of a scalar YAML read as a number not written in its plain decimal form (``010``, ``10:30``, ``1_0``),
    or as a boolean or a date (``yes``, ``off``, ``2024-01-31``): what ``str()`` of the value would not give back."""
    if not isinstance(node, yaml.ScalarNode) or node.tag not in _NUMBER_TAGS + _WORD_TAGS or not node.value:
        return None
    try:
        value = constructor.construct_object(node)
    except Exception:  # noqa: BLE001 - the loader itself reports a number it cannot build
        return None
    return node.value if str(value) != node.value or isinstance(value, datetime.date) else None  # a date is never text


def _walk(node: yaml.Node, path: KeyPath, source: Source, lines: bool = True,
          constructor: SafeConstructor | None = None) -> None:
    """Record the line of every key path under ``node`` (when ``lines``) and the numbers YAML 1.1 read from a form
    other than their plain decimal one. Run on a composed and constructed tree, whose merges (``<<``) are flattened:
    a mapping's merged pairs come first and its own keys after them, so the last record of a path is its value's."""
    constructor = constructor or SafeConstructor()
    stack: list[tuple[yaml.Node, KeyPath]] = [(node, path)]
    while stack:  # depth first, in document order, so that a later (winning) value's records overwrite an earlier one's
        node, path = stack.pop()
        if lines:
            source.lines.setdefault(path, node.start_mark.line + 1)
        text = _number_form(node, constructor)
        if text is None:
            source.numbers.pop(path, None)
        else:
            source.numbers[path] = text
        children: list[tuple[yaml.Node, KeyPath]] = []
        if isinstance(node, yaml.MappingNode):
            for key_node, value_node in node.value:
                key = _key_value(key_node)
                if lines:
                    source.lines[path + (key,)] = key_node.start_mark.line + 1
                key_text = _number_form(key_node, constructor)
                if key_text is None:
                    source.number_keys.pop(path + (key,), None)
                else:
                    source.number_keys[path + (key,)] = key_text
                children.append((value_node, path + (key,)))
        elif isinstance(node, yaml.SequenceNode):
            for index, item in enumerate(node.value):
                if lines:
                    source.lines[path + (index,)] = item.start_mark.line + 1
                children.append((item, path + (index,)))
        stack.extend(reversed(children))


def not_a_file(path: Path, what: str) -> str | None:
    """Why ``path`` cannot be read as a YAML ``what`` file (missing, a directory, a device, pipe or socket), or None."""
    if path.is_file():
        return None
    if path.is_dir():
        return f"{path} is a directory; give a YAML {what} file"
    if path.exists():
        return f"{path} is not a regular file (a device, pipe or socket); give a YAML {what} file"
    return f"{what} file not found: {path}"


def load_yaml(path: str | Path, what: str = "config") -> tuple[Any, Source]:
    """Parse ``path`` with the safe loader; syntax errors name the line and column."""
    path = Path(path)
    problem = not_a_file(path, what)
    if problem is not None:
        if path.exists():
            raise ConfigError(problem)
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
    source = Source(str(path))
    _walk(node, (), source)
    return data, source


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
    return key, [int(p) if p.isascii() and p.isdigit() and len(p) <= MAX_INDEX_DIGITS else p for p in names]


def _not_an_index(parts: list[Any], length: int) -> str:
    return (f"{format_path(tuple(parts[:-1]))} is a list of {length} items; {short_repr(parts[-1], 30)} is not an index"
            + (f" 0..{length - 1}" if length else ""))


def apply_overrides(data: dict, overrides: list[str], source: Source,
                    shorthands: Mapping[KeyPath, str] | None = None) -> dict:
    """Apply ``key.path=value`` overrides; values are parsed as YAML scalars or lists.

    ``source.overrides`` records the key paths each flag set (and the mappings it created or replaced), so that a
    message about one of those values names the flag, not the file's line. A flag that sets a key below nothing puts a
    mapping there; one below a plain value is refused, except that a string at a path of ``shorthands`` stands for
    ``{shorthands[path]: string}`` (``backbone: NAME`` is ``backbone: {name: NAME}``, so ``--set backbone.pooling=cls``
    keeps the name instead of silently loading the default model).
    """
    shorthands = shorthands or {}
    budget = MAX_YAML_NODES  # for all the flags together, as for one file
    for item in overrides:
        key, parts = _override_key(item, source.file)
        flag = f"--set {clip(item, MAX_FLAG_CHARS)}"
        raw = item.split("=", 1)[1]
        try:
            value, tree, nodes = parse_yaml(raw, max_nodes=budget) if raw else ("", None, 1)
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
            here = tuple(parts[: depth + 1])
            if isinstance(node, list):
                if not isinstance(part, int) or part >= len(node):
                    raise _override_error(item, _not_an_index(list(here), len(node)), file=source.file)
                child = node[part]
            else:
                child = node.get(part)
            if isinstance(child, str) and here in shorthands:
                child = node[part] = {shorthands[here]: child}  # the string's own line (or flag) still names it
            elif child is not None and not isinstance(child, (dict, list)):
                dotted = ".".join(str(p) for p in here)
                raise _override_error(item, f"{format_path(here)} is {short_repr(child, 40)}, a plain value: no key can be set below it",
                                      hint=f"set it whole, e.g. --set '{dotted}=...' (docs/reference gives its form)", file=source.file)
            elif child is None:
                # A mapping this flag made in place of nothing: the schema names the flag where a plain value was
                # expected (`--set name.sub=1` with no name: "name: expected a string").
                child = node[part] = {}
                source.overrides[here] = flag
            node = child
        if isinstance(node, list):
            if not isinstance(parts[-1], int) or parts[-1] >= len(node):
                raise _override_error(item, _not_an_index(parts, len(node)), file=source.file)
        node[parts[-1]] = value
        source.overrides[tuple(parts)] = flag
        source.forget_below(tuple(parts))
        if tree is not None:
            _walk(tree, tuple(parts), source, lines=False)
    return data
