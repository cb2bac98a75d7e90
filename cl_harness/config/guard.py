"""Guards on every text the harness parses (YAML and JSON files, ``--set`` values, side files, run-folder files): size,
duplicate keys, alias expansion ("billion laughs") and nesting depth.

PyYAML lets the last of two equal keys win silently, expands aliases without a bound and recurses once per nesting
level; Python's json keeps the last of two equal keys and recurses too. ``parse_yaml`` composes the node tree, checks
it with a bounded walk, and only then builds the Python data, so a hostile or mistaken text costs at most
``MAX_YAML_NODES`` node visits; ``parse_json`` refuses a key given twice in one object and nesting deeper than
``MAX_DEPTH``.

Two keys of one mapping are the same key when the data holds them as one: ``0`` and ``0x0``, ``1`` and ``1.0``,
``true`` and ``1`` (not ``1`` and ``"1"``; the schema refuses those where its keys are text). A mapping takes one merge
key ``<<`` (several mappings merge as ``<<: [*a, *b]``). An integer is written with at most ``MAX_INT_DIGITS``
characters, far below what Python converts to and from text (4,300 digits).
"""

from __future__ import annotations

import json
import json.decoder
import json.scanner
from typing import Any, Callable

import yaml
from yaml.constructor import SafeConstructor

from cl_harness.errors import short_repr

MAX_YAML_BYTES = 2_000_000  # a config, stream or side file; data belongs in data files
MAX_YAML_NODES = 200_000  # nodes after alias expansion
MAX_DEPTH = 64  # nesting levels
MAX_INT_DIGITS = 100  # characters of an integer scalar (seeds have 10 digits; Python converts at most 4,300)
_INT_TAG = "tag:yaml.org,2002:int"
_STR_TAG = "tag:yaml.org,2002:str"
_MERGE_TAG = "tag:yaml.org,2002:merge"
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


def _check_int(node: yaml.Node, path: tuple) -> None:
    """Refuse an integer scalar written with more than MAX_INT_DIGITS characters, before PyYAML converts it."""
    if isinstance(node, yaml.ScalarNode) and node.tag == _INT_TAG and len(node.value) > MAX_INT_DIGITS:
        raise GuardError(
            f"the integer {node.value[:12]}... has {len(node.value)} digits; at most {MAX_INT_DIGITS} are allowed "
            "(quote it if it is a name)", node.start_mark.line + 1, path,
        )


def _key_identity(node: yaml.Node, constructor: SafeConstructor) -> Any:
    """What a mapping key is once built: equal for two spellings the data holds as one key (``0`` and ``0x0``)."""
    if not isinstance(node, yaml.ScalarNode):
        return (node.tag, _key_text(node))
    if node.tag == _STR_TAG:
        return node.value
    try:
        key = constructor.construct_object(node)
        hash(key)
    except Exception:  # noqa: BLE001 - a key that cannot be built: the loader reports it
        return (node.tag, node.value)
    return key


def _spelled(node: yaml.Node) -> str:
    """A key as the text wrote it: ``'1'`` for a quoted key, ``1`` for a plain one."""
    text = str(_key_text(node))
    quoted = isinstance(node, yaml.ScalarNode) and node.style in ("'", '"')
    return f"{text!r}" if quoted else text


def check_tree(root: yaml.Node, max_nodes: int = MAX_YAML_NODES) -> int:
    """The number of nodes once aliases are expanded; refuse duplicate keys, integers longer than MAX_INT_DIGITS, more
    than ``max_nodes`` nodes, or deeper than MAX_DEPTH."""
    visited = 0
    constructor = SafeConstructor()
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
        _check_int(node, path)
        if isinstance(node, yaml.MappingNode):
            seen: dict[Any, tuple[int, yaml.Node]] = {}
            merge_line: int | None = None
            for key_node, value_node in node.value:
                key = _key_text(key_node)
                line = key_node.start_mark.line + 1
                if key_node.tag == _MERGE_TAG:
                    if merge_line is not None:
                        raise GuardError(
                            f"duplicate key '<<' (lines {merge_line} and {line}); a mapping takes one merge key: "
                            "merge several mappings as <<: [*a, *b]", line, path,
                        )
                    merge_line = line
                    stack.append((value_node, path, depth + 1))
                    continue
                _check_int(key_node, path + (key,))
                identity = _key_identity(key_node, constructor)  # `0` and `0x0` are one key; `1` and `"1"` are two
                if identity in seen:
                    first_line, first = seen[identity]
                    spelled, before = _spelled(key_node), _spelled(first)
                    same = f"; {before} and {spelled} are the same key" if spelled != before else ""
                    raise GuardError(
                        f"duplicate key {str(key)[:60]!r} (lines {first_line} and {line}){same}; give each key once",
                        line, path + (key,),
                    )
                seen[identity] = (line, key_node)
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
