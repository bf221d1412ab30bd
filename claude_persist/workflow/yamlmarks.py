"""YAML -> plain data plus the line and column of every value and key. Safe types only, and
bounded: a workflow file is read only if it is a regular file of at most ``MAX_DOCUMENT_BYTES``,
nested at most ``MAX_DEPTH`` deep, whose aliases expand to at most ``MAX_ALIAS_VALUES`` values.

A few hundred bytes of nested aliases (a "billion laughs") expand to billions of values, an
alias inside its own anchor expands forever, and thousands of nested brackets exhaust Python's
recursion; each is refused with its line and column instead."""

from __future__ import annotations

import math
import os
import stat
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, cast

import yaml

from ..fsio import file_kind

Path_ = tuple[str | int, ...]

#: The largest workflow file read; far above any hand-written workflow.
MAX_DOCUMENT_BYTES = 1 << 20
#: The deepest nesting of mappings and lists; a workflow needs five levels.
MAX_DEPTH = 64
#: How many values aliases may expand to in all; enough to share a few settings blocks.
MAX_ALIAS_VALUES = 10_000


class LimitError(ValueError):
    """A document refused for its size, depth or aliases; ``line`` and ``column`` are 1-based."""

    def __init__(self, line: int, column: int, message: str) -> None:
        super().__init__(message)
        self.line = line
        self.column = column


class FileRefused(ValueError):
    """A file that is not a regular file, or too large to read."""


def read_regular_file(path: Path, limit: int) -> str:
    """The UTF-8 text of ``path`` if it is a regular file of at most ``limit`` bytes.

    Opened without blocking (a FIFO with no writer would block a plain open forever) and
    checked on the open descriptor, so a FIFO, a device such as /dev/zero or a folder is refused
    before anything is read. Raises ``OSError``, ``UnicodeDecodeError`` or :class:`FileRefused`.
    """
    fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise FileRefused(f"it is {file_kind(st.st_mode)}, not a regular file")
        if st.st_size > limit:
            raise FileRefused(f"it has {st.st_size} bytes, more than the {limit} allowed")
        chunks: list[bytes] = []
        size = 0
        while size <= limit:
            chunk = os.read(fd, min(1 << 16, limit + 1 - size))
            if not chunk:
                break
            chunks.append(chunk)
            size += len(chunk)
    finally:
        os.close(fd)
    if size > limit:  # it grew while we read it
        raise FileRefused(f"it has more than the {limit} bytes allowed")
    return b"".join(chunks).decode("utf-8")


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


def _pos(node: yaml.Node | yaml.Mark) -> tuple[int, int]:
    mark = node.start_mark if isinstance(node, yaml.Node) else node
    return mark.line + 1, mark.column + 1


class _Bounded(yaml.composer.Composer):
    """PyYAML's composer recurses once per level of nesting: stop it at ``MAX_DEPTH``."""

    depth = 0

    def compose_node(self, parent: yaml.Node | None, index: Any) -> yaml.Node | None:
        self.depth += 1
        try:
            if self.depth > MAX_DEPTH:
                event = cast(Any, self).peek_event()  # a parser's, beside this in a loader
                raise LimitError(*_pos(event.start_mark),
                                 f"nested more than {MAX_DEPTH} levels deep; a workflow needs "
                                 "only a few")
            return super().compose_node(parent, index)
        finally:
            self.depth -= 1


class _BoundedLoader(_Bounded, yaml.SafeLoader):
    """PyYAML's safe loader, pure Python, bounded."""


def _c_events_loader() -> Callable[[str], Any] | None:
    """libyaml's scanner and parser under PyYAML's composer (the composer's recursion stays
    bounded, and tags resolve as PyYAML resolves them); None without libyaml."""
    try:
        from yaml._yaml import CParser
    except ImportError:
        return None

    class CEvents(_Bounded, CParser, yaml.constructor.SafeConstructor, yaml.resolver.Resolver):
        def __init__(self, text: str) -> None:
            CParser.__init__(self, text)
            yaml.composer.Composer.__init__(self)
            yaml.constructor.SafeConstructor.__init__(self)
            yaml.resolver.Resolver.__init__(self)

        def compose_scalar_node(self, anchor: Any) -> yaml.ScalarNode:
            event: Any = self.peek_event()
            if event.tag == "!":  # PyYAML's parser resolves it as an untagged plain value
                event.implicit = (True, False)
            node: yaml.ScalarNode = super().compose_scalar_node(anchor)
            return node

    return CEvents


_CBoundedLoader = _c_events_loader()


def _compose_in_c(text: str) -> yaml.Node | None:
    """The document's node tree, composed (by PyYAML's own composer, bounded) from libyaml's
    events when PyYAML has libyaml: several times faster than its pure Python scanner and
    parser, and the same tree wherever those read one. None when libyaml is missing or refuses
    the document: the pure Python parser then says what is wrong, in the words and places it
    always has. (libyaml takes a few things PyYAML's own scanner wrongly refuses, such as a tab
    after a value.)"""
    if _CBoundedLoader is None or "\ufeff" in text[1:]:
        return None  # libyaml skips a byte order mark at the start of any line, PyYAML only at 0
    try:
        loader = _CBoundedLoader(text)
    except UnicodeError:  # a lone surrogate: libyaml reads UTF-8
        return None
    try:
        node: yaml.Node | None = loader.get_single_node()
    except yaml.YAMLError:
        return None
    finally:
        loader.dispose()
    return node


def load(text: str) -> Marked:
    """Parse ``text``; YAML syntax errors raise ``yaml.YAMLError`` (with a mark), a document
    beyond the limits :class:`LimitError`."""
    size = len(text.encode("utf-8", errors="surrogatepass"))
    if size > MAX_DOCUMENT_BYTES:
        raise LimitError(1, 1, f"the file has {size} bytes, more than the "
                               f"{MAX_DOCUMENT_BYTES} a workflow may have")
    node = _compose_in_c(text)
    if node is None:
        loader = _BoundedLoader(text)
        try:
            node = loader.get_single_node()
        finally:
            loader.dispose()
    marked = Marked(data=None)
    if node is not None:
        marked.data = _Converter(marked).convert(node, ())
    return marked


SAFE_TAGS = {f"tag:yaml.org,2002:{t}" for t in
             ("map", "seq", "str", "int", "float", "bool", "null", "timestamp")}


class _Converter:
    """Nodes -> plain data. A node met a second time is an alias: what it expands to is
    counted against ``MAX_ALIAS_VALUES``, and a node met inside itself is a recursive alias."""

    def __init__(self, marked: Marked) -> None:
        self.marked = marked
        self.seen: set[int] = set()
        self.open: set[int] = set()  # nodes being converted: their ancestors in the document
        self.aliased = 0  # depth of alias expansions we are inside
        self.expanded = 0
        self.alias_at: Path_ = ()  # where the outermost alias being expanded stands

    def convert(self, node: yaml.Node, path: Path_) -> Any:
        if id(node) in self.open:
            raise LimitError(*_pos(node), "an alias refers to a value that contains it, so it "
                                          "would never end; remove the alias from its anchor")
        if len(path) > MAX_DEPTH:
            raise LimitError(*_pos(node), f"aliases nest values more than {MAX_DEPTH} levels "
                                          "deep")
        again = id(node) in self.seen
        self.seen.add(id(node))
        if again and not self.aliased:
            self.alias_at = path
        self.aliased += again
        if self.aliased:
            self.expanded += 1
            if self.expanded > MAX_ALIAS_VALUES:
                raise LimitError(*self._key_position(self.alias_at),
                                 f"aliases expand to more than {MAX_ALIAS_VALUES} values; "
                                 "write the values out, or use fewer aliases")
        self.open.add(id(node))
        try:
            return self._convert(node, path)
        finally:
            self.open.discard(id(node))
            self.aliased -= again

    def _key_position(self, path: Path_) -> tuple[int, int]:
        """Where the key holding ``path`` stands (an alias has no position of its own; its
        anchor's value is elsewhere)."""
        while path and path not in self.marked.keys:
            path = path[:-1]
        return self.marked.keys.get(path, (1, 1))

    def _convert(self, node: yaml.Node, path: Path_) -> Any:
        marked = self.marked
        marked.values[path] = _pos(node)
        if node.tag not in SAFE_TAGS:
            marked.problems.append((_pos(node), f"unsupported value: the tag {node.tag} is "
                                                "not allowed in a workflow"))
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
                result[key] = self.convert(value_node, key_path)
            return result
        if isinstance(node, yaml.SequenceNode):
            return [self.convert(item, (*path, i)) for i, item in enumerate(node.value)]
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
