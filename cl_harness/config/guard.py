"""Guards on every text the harness parses (YAML and JSON files, ``--set`` values, side files, run-folder files): size,
duplicate keys, alias expansion ("billion laughs") and nesting depth.

PyYAML lets the last of two equal keys win silently, expands aliases without a bound and recurses once per nesting
level; Python's json keeps the last of two equal keys and recurses too. ``parse_yaml`` composes the node tree, checks
it with a bounded walk, and only then builds the Python data, so a hostile or mistaken text costs at most
``MAX_YAML_NODES`` node visits; ``parse_json`` refuses a key given twice in one object and nesting deeper than
``MAX_DEPTH``.
"""

from __future__ import annotations

import json
import json.decoder
import json.scanner
from typing import Any, Callable

import yaml

from cl_harness.errors import short_repr

MAX_YAML_BYTES = 2_000_000  # a config, stream or side file; data belongs in data files
MAX_YAML_NODES = 200_000  # nodes after alias expansion
MAX_DEPTH = 64  # nesting levels
_TOO_DEEP = f"nested more than {MAX_DEPTH} levels deep"


class GuardError(Exception):
    """A text refused by a guard; ``line`` (1-based) and ``key_path`` where known."""

    def __init__(self, message: str, line: int | None = None, key_path: tuple = ()) -> None:
        super().__init__(message)
        self.line = line
        self.key_path = key_path


def check_size(text: str, max_chars: int | None) -> None:
    """Refuse a text longer than ``max_chars`` (None: no limit)."""
    if max_chars is not None and len(text) > max_chars:
        raise GuardError(f"the text has {len(text)} characters; at most {max_chars} are allowed here")


def _key_text(node: yaml.Node) -> Any:
    return node.value if isinstance(node, yaml.ScalarNode) else f"<{node.tag} at line {node.start_mark.line + 1}>"


def check_tree(root: yaml.Node, max_nodes: int = MAX_YAML_NODES) -> int:
    """The number of nodes once aliases are expanded; refuse duplicate keys, more than ``max_nodes`` nodes, or deeper than MAX_DEPTH."""
    visited = 0
    stack: list[tuple[yaml.Node, tuple, int]] = [(root, (), 0)]
    while stack:
        node, path, depth = stack.pop()
        visited += 1
        if visited > max_nodes:
            raise GuardError(
                f"the document expands to more than {max_nodes} values (aliases re-used too often?)",
                node.start_mark.line + 1, path,
            )
        if depth > MAX_DEPTH:
            raise GuardError(_TOO_DEEP, node.start_mark.line + 1, path)
        if isinstance(node, yaml.MappingNode):
            seen: dict[Any, int] = {}
            for key_node, value_node in node.value:
                key = _key_text(key_node)
                line = key_node.start_mark.line + 1
                if key_node.tag == "tag:yaml.org,2002:merge":
                    stack.append((value_node, path, depth + 1))
                    continue
                identity = (key_node.tag, key)  # `1` and `"1"` are different keys
                if identity in seen:
                    raise GuardError(
                        f"duplicate key {str(key)[:60]!r} (lines {seen[identity]} and {line}); give each key once", line, path + (key,)
                    )
                seen[identity] = line
                stack.append((value_node, path + (key,), depth + 1))
        elif isinstance(node, yaml.SequenceNode):
            for index, item in enumerate(node.value):
                stack.append((item, path + (index,), depth + 1))
    return visited


def parse_yaml(text: str, max_nodes: int = MAX_YAML_NODES, max_chars: int | None = MAX_YAML_BYTES) -> tuple[Any, yaml.Node | None, int]:
    """The data, the node tree and the expanded node count of one YAML document, after the guards; YAML errors propagate."""
    check_size(text, max_chars)
    loader = yaml.SafeLoader(text)
    try:
        node = loader.get_single_node()  # recursive in PyYAML: a deeper text than Python's stack ends here
        if node is None:
            return None, None, 0
        nodes = check_tree(node, max_nodes)
        data = loader.construct_document(node)
    except RecursionError:
        raise GuardError(_TOO_DEEP) from None
    finally:
        loader.dispose()
    return data, node, nodes


def _unique_keys(pairs: list[tuple[str, Any]]) -> dict:
    """An object's pairs as a dict; a key given twice is a GuardError."""
    result: dict = {}
    for key, value in pairs:
        if key in result:
            raise GuardError(f"duplicate key {short_repr(key, 60)} in one object; give each key once", key_path=(key,))
        result[key] = value
    return result


def check_depth(data: Any) -> None:
    """Refuse parsed data nested deeper than MAX_DEPTH (an iterative walk)."""
    stack = [(data, 0)]
    while stack:
        value, depth = stack.pop()
        if isinstance(value, (dict, list)):
            if depth >= MAX_DEPTH:
                raise GuardError(_TOO_DEEP)
            stack.extend((item, depth + 1) for item in (value.values() if isinstance(value, dict) else value))


def parse_json(text: str, max_chars: int | None = None, parse_constant: Callable[[str], Any] | None = None) -> Any:
    """One JSON document, after the guards; ``json.JSONDecodeError`` (and what ``parse_constant`` raises) propagate."""
    check_size(text, max_chars)
    try:
        data = json.loads(text, object_pairs_hook=_unique_keys, parse_constant=parse_constant)
    except RecursionError:
        raise GuardError(_TOO_DEEP) from None
    except GuardError as error:
        error.line = _duplicate_line(text) if "\n" in text.strip() else None
        raise
    check_depth(data)
    return data


def _duplicate_line(text: str) -> int | None:
    """The line where the object holding a duplicate key opens (parsed again, slowly, only to find it)."""
    decoder = json.JSONDecoder(object_pairs_hook=_unique_keys)

    def parse_object(string_and_end, *args):
        try:
            return json.decoder.JSONObject(string_and_end, *args)
        except GuardError as error:
            if error.line is None:
                string, end = string_and_end
                error.line = string.count("\n", 0, end) + 1
            raise

    decoder.parse_object = parse_object
    decoder.scan_once = json.scanner.py_make_scanner(decoder)
    try:
        decoder.decode(text)
    except GuardError as error:
        return error.line
    except (ValueError, RecursionError):
        return None
    return None
