"""Guards on YAML input: file size, duplicate keys, alias expansion ("billion laughs") and nesting depth.

PyYAML lets the last of two equal keys win silently, expands aliases without a bound and
recurses once per nesting level. ``compose_checked`` composes the node tree, checks it with a
bounded walk, and only then builds the Python data, so a hostile or mistaken file costs at most
``MAX_YAML_NODES`` node visits.
"""

from __future__ import annotations

from typing import Any

import yaml

MAX_YAML_BYTES = 2_000_000  # a config or stream file; data belongs in data files
MAX_YAML_NODES = 200_000  # nodes after alias expansion
MAX_YAML_DEPTH = 64  # nesting levels


class YamlGuardError(Exception):
    """A YAML document refused by a guard; ``line`` (1-based) and ``key_path`` where known."""

    def __init__(self, message: str, line: int | None = None, key_path: tuple = ()) -> None:
        super().__init__(message)
        self.line = line
        self.key_path = key_path


def _key_text(node: yaml.Node) -> Any:
    return node.value if isinstance(node, yaml.ScalarNode) else f"<{node.tag} at line {node.start_mark.line + 1}>"


def check_tree(root: yaml.Node) -> None:
    """Refuse duplicate keys, more than MAX_YAML_NODES nodes once aliases are expanded, or deeper than MAX_YAML_DEPTH."""
    visited = 0
    stack: list[tuple[yaml.Node, tuple, int]] = [(root, (), 0)]
    while stack:
        node, path, depth = stack.pop()
        visited += 1
        if visited > MAX_YAML_NODES:
            raise YamlGuardError(
                f"the document expands to more than {MAX_YAML_NODES} values (aliases re-used too often?)",
                node.start_mark.line + 1, path,
            )
        if depth > MAX_YAML_DEPTH:
            raise YamlGuardError(f"nested more than {MAX_YAML_DEPTH} levels deep", node.start_mark.line + 1, path)
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
                    raise YamlGuardError(
                        f"duplicate key {str(key)[:60]!r} (lines {seen[identity]} and {line}); give each key once", line, path + (key,)
                    )
                seen[identity] = line
                stack.append((value_node, path + (key,), depth + 1))
        elif isinstance(node, yaml.SequenceNode):
            for index, item in enumerate(node.value):
                stack.append((item, path + (index,), depth + 1))


def compose_checked(text: str) -> tuple[Any, yaml.Node | None]:
    """The data and the node tree of one YAML document, after the guards; YAML errors propagate."""
    loader = yaml.SafeLoader(text)
    try:
        node = loader.get_single_node()
        if node is None:
            return None, None
        check_tree(node)
        data = loader.construct_document(node)
    finally:
        loader.dispose()
    return data, node
