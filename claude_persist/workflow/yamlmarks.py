"""YAML -> plain data plus the line and column of every value and key. Safe types only."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import yaml

Path_ = tuple[str | int, ...]


@dataclass
class Marked:
    """The data, and where each part of it stands in the file (1-based line and column)."""

    data: Any
    values: dict[Path_, tuple[int, int]] = field(default_factory=dict)
    keys: dict[Path_, tuple[int, int]] = field(default_factory=dict)
    problems: list[tuple[tuple[int, int], str]] = field(default_factory=list)

    def where(self, path: Path_) -> tuple[int, int]:
        """The position of the key at ``path`` if known, else its value, else its parent's."""
        while path:
            if path in self.keys:
                return self.keys[path]
            if path in self.values:
                return self.values[path]
            path = path[:-1]
        return self.values.get((), (1, 1))


def _pos(node: yaml.Node) -> tuple[int, int]:
    return node.start_mark.line + 1, node.start_mark.column + 1


def load(text: str) -> Marked:
    """Parse ``text``; YAML syntax errors raise ``yaml.YAMLError`` (with a mark)."""
    node = yaml.compose(text, Loader=yaml.SafeLoader)
    marked = Marked(data=None)
    if node is not None:
        marked.data = _convert(node, (), marked)
    return marked


SAFE_TAGS = {f"tag:yaml.org,2002:{t}" for t in
             ("map", "seq", "str", "int", "float", "bool", "null", "timestamp")}


def _convert(node: yaml.Node, path: Path_, marked: Marked) -> Any:
    marked.values[path] = _pos(node)
    if node.tag not in SAFE_TAGS:
        marked.problems.append((_pos(node), f"unsupported value: the tag {node.tag} is not "
                                            "allowed in a workflow"))
        return None
    if isinstance(node, yaml.MappingNode):
        result: dict[str, Any] = {}
        for key_node, value_node in node.value:
            key = _scalar(key_node, marked)
            if not isinstance(key, str):
                marked.problems.append((_pos(key_node), f"key {key!r} must be text"))
                key = str(key)
            if key in result:
                marked.problems.append((_pos(key_node), f"{key}: duplicate key"))
            key_path: Path_ = (*path, key)
            marked.keys[key_path] = _pos(key_node)
            result[key] = _convert(value_node, key_path, marked)
        return result
    if isinstance(node, yaml.SequenceNode):
        return [_convert(item, (*path, i), marked) for i, item in enumerate(node.value)]
    return _scalar(node, marked)


def _scalar(node: yaml.Node, marked: Marked) -> Any:
    if not isinstance(node, yaml.ScalarNode):
        marked.problems.append((_pos(node), "a key must be a plain value"))
        return "?"
    constructor = yaml.constructor.SafeConstructor()
    try:
        value = constructor.construct_object(node, deep=True)
    except yaml.constructor.ConstructorError as exc:
        marked.problems.append((_pos(node), f"unsupported value: {exc.problem}"))
        return None
    if isinstance(value, float) and not math.isfinite(value):
        # Not JSON, so beyond what the schema can judge: .nan passes every bound check.
        marked.problems.append((_pos(node), f"unsupported value: {node.value}; write a finite "
                                            "number"))
    return value
