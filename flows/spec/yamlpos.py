"""YAML that remembers where everything was: each value and each mapping key by JSON path.

Validation messages name file, line and column, so the spec is composed into PyYAML's node
tree (which carries marks) and built into plain Python values here, recording positions on
the way:

    doc = load(text)
    doc.value["matrix"]["aspect_ratio"][2]           # "7:3"
    doc.position(("matrix", "aspect_ratio", 2))      # Position(line=5, column=31)
    format_path(("matrix", "aspect_ratio", 2))       # "matrix.aspect_ratio[2]"

Differences from `yaml.safe_load`, all for spec authors: `16:9` written without quotes stays
the string "16:9" (YAML 1.1 would read the base-60 integer 969), timestamps stay strings, and
duplicate keys are reported instead of silently keeping the last one.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import yaml

PathKey = str | int
JsonPath = tuple[PathKey, ...]

_Loader: type[Any] = getattr(yaml, "CSafeLoader", yaml.SafeLoader)
_INT_TAG = "tag:yaml.org,2002:int"
_FLOAT_TAG = "tag:yaml.org,2002:float"
_PLAIN_TYPES = (str, int, float, bool, type(None))


@dataclass(frozen=True, order=True)
class Position:
    """1-based line and column, as editors and compilers print them."""

    line: int
    column: int


START = Position(1, 1)


class YamlSyntaxError(Exception):
    """The text is not YAML; `position` is where the parser gave up."""

    def __init__(self, message: str, position: Position) -> None:
        super().__init__(message)
        self.message = message
        self.position = position


@dataclass(frozen=True)
class Duplicate:
    """A mapping key written twice: the later value wins, like PyYAML, but it is reported."""

    path: JsonPath
    position: Position
    first: Position


@dataclass
class LocatedDocument:
    value: Any
    values: dict[JsonPath, Position] = field(default_factory=dict)
    keys: dict[JsonPath, Position] = field(default_factory=dict)
    duplicates: list[Duplicate] = field(default_factory=list)

    def position(self, path: JsonPath, *, key: bool = False) -> Position:
        """Where `path` is written (its key when `key`), else its nearest written ancestor."""
        if key and path in self.keys:
            return self.keys[path]
        for prefix in _prefixes(path):
            if prefix in self.values:
                return self.values[prefix]
        return START


def _prefixes(path: JsonPath) -> Iterator[JsonPath]:
    for end in range(len(path), -1, -1):
        yield path[:end]


def format_path(path: JsonPath) -> str:
    """`matrix.include[0].style`; `$` for the whole document."""
    text = ""
    for part in path:
        if isinstance(part, int):
            text += f"[{part}]"
        elif part.replace("_", "a").replace("-", "a").isalnum():
            text += f".{part}" if text else part
        else:
            text += f"[{part!r}]"
    return text or "$"


def load(text: str) -> LocatedDocument:
    """Parse one YAML document; raises `YamlSyntaxError` at the first syntax error."""
    try:
        node = yaml.compose(text, Loader=_Loader)
    except yaml.MarkedYAMLError as exc:
        raise _syntax_error(exc) from None
    except yaml.YAMLError as exc:  # unmarked: e.g. a reader error on control characters
        raise YamlSyntaxError(f"not valid YAML: {exc}", START) from None
    doc = LocatedDocument(value=None)
    if node is None:
        return doc
    builder = _Builder(doc)
    try:
        doc.value = builder.build(node, ())
    except yaml.MarkedYAMLError as exc:  # bad merge keys (`<<`)
        raise _syntax_error(exc) from None
    return doc


def _position(mark: Any) -> Position:
    return Position(mark.line + 1, mark.column + 1)


def _syntax_error(exc: yaml.MarkedYAMLError) -> YamlSyntaxError:
    mark = exc.problem_mark or exc.context_mark
    message = f"YAML syntax error: {exc.problem or exc.context or 'invalid YAML'}"
    if exc.problem and exc.context and exc.context_mark is not None:
        message += f" ({exc.context} at line {exc.context_mark.line + 1})"
    return YamlSyntaxError(message, _position(mark) if mark is not None else START)


class _Builder:
    """Turns nodes into dicts, lists and scalars while recording positions."""

    def __init__(self, doc: LocatedDocument) -> None:
        self.doc = doc
        self.constructor = yaml.constructor.SafeConstructor()
        self.active: set[int] = set()  # nodes being built: catches recursive aliases

    def build(self, node: yaml.Node, path: JsonPath) -> Any:
        self.doc.values.setdefault(path, _position(node.start_mark))
        if isinstance(node, yaml.ScalarNode):
            return self.scalar(node)
        if id(node) in self.active:
            raise YamlSyntaxError("a YAML alias refers to itself", _position(node.start_mark))
        self.active.add(id(node))
        try:
            if isinstance(node, yaml.SequenceNode):
                return [self.build(item, (*path, i)) for i, item in enumerate(node.value)]
            if isinstance(node, yaml.MappingNode):
                return self.mapping(node, path)
            raise YamlSyntaxError(f"unsupported YAML node {node.tag}", _position(node.start_mark))
        finally:
            self.active.discard(id(node))

    def mapping(self, node: yaml.MappingNode, path: JsonPath) -> dict[str, Any]:
        self.constructor.flatten_mapping(node)  # resolves `<<` merge keys in place
        result: dict[str, Any] = {}
        for key_node, value_node in node.value:
            key = self.scalar(key_node) if isinstance(key_node, yaml.ScalarNode) else None
            where = _position(key_node.start_mark)
            if not isinstance(key, str):
                key = "" if key is None else str(key).lower() if isinstance(key, bool) else str(key)
            child = (*path, key)
            if key in result:
                first = self.doc.keys[child]
                self.doc.duplicates.append(Duplicate(child, where, first))
                del self.doc.values[child]
            self.doc.keys[child] = where
            result[key] = self.build(value_node, child)
        return result

    def scalar(self, node: yaml.ScalarNode) -> Any:
        if node.tag in (_INT_TAG, _FLOAT_TAG) and ":" in node.value:
            return node.value  # "16:9", not YAML 1.1's base-60 number
        value = self.constructor.construct_object(node)
        return value if isinstance(value, _PLAIN_TYPES) else node.value
