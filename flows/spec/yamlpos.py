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
duplicate keys are reported instead of silently keeping the last one (a key that overrides
one merged in with `<<` is not a duplicate).

Bounded for specs from anywhere: the parser's events are counted before anything is built
(at most `max_values` nodes, nested at most `max_depth` deep), and building counts every
value again, each use of an alias as a copy, so a 400-byte "billion laughs" alias bomb (or
the same with `<<` merge keys) stops at `max_values` instead of expanding to 10^9 values.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import yaml

from nbp.providers.options import format_path as format_option_path

PathKey = str | int
JsonPath = tuple[PathKey, ...]

_Loader: type[Any] = getattr(yaml, "CSafeLoader", yaml.SafeLoader)
_INT_TAG = "tag:yaml.org,2002:int"
_FLOAT_TAG = "tag:yaml.org,2002:float"
_STR_TAG = "tag:yaml.org,2002:str"
_MERGE_TAG = "tag:yaml.org,2002:merge"
_VALUE_TAG = "tag:yaml.org,2002:value"
MAX_VALUES = 100_000  # flows.spec.inputs.InputPolicy documents both defaults
MAX_DEPTH = 64
_PLAIN_TYPES = (str, int, float, bool, type(None))


@dataclass(frozen=True, order=True)
class Position:
    """1-based line and column, as editors and compilers print them."""

    line: int
    column: int


START = Position(1, 1)


class YamlSyntaxError(Exception):
    """The text is not YAML; `position` is where the parser gave up, `path` the JSON path
    reached when it is known."""

    def __init__(self, message: str, position: Position, path: JsonPath = ()) -> None:
        super().__init__(message)
        self.message = message
        self.position = position
        self.path = path


class YamlTooLarge(YamlSyntaxError):
    """The document has more values, or deeper nesting, than the limits allow."""


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
    return format_option_path(path) or "$"


def load(
    text: str, *, max_values: int = MAX_VALUES, max_depth: int = MAX_DEPTH
) -> LocatedDocument:
    """Parse one YAML document; raises `YamlSyntaxError` at the first syntax error and
    `YamlTooLarge` past `max_values` values (aliases counted as copies) or `max_depth`."""
    try:
        _count_events(text, max_values, max_depth)
        node = yaml.compose(text, Loader=_Loader)
    except yaml.MarkedYAMLError as exc:
        raise _syntax_error(exc) from None
    except yaml.YAMLError as exc:  # unmarked: e.g. a reader error on control characters
        raise YamlSyntaxError(f"not valid YAML: {exc}", START) from None
    doc = LocatedDocument(value=None)
    if node is None:
        return doc
    builder = _Builder(doc, max_values, max_depth)
    try:
        doc.value = builder.build(node, ())
    except yaml.MarkedYAMLError as exc:  # bad merge keys (`<<`)
        raise _syntax_error(exc) from None
    return doc


def _count_events(text: str, max_values: int, max_depth: int) -> None:
    """Refuse a document with too many nodes or too deep before it is composed: composing
    costs memory per node, and a 1 MB flow list has half a million of them."""
    loader = _Loader(text)
    nodes = depth = 0
    try:
        while loader.check_event():
            event = loader.get_event()
            if isinstance(event, yaml.NodeEvent) and not isinstance(event, yaml.AliasEvent):
                nodes += 1
                if nodes > max_values:
                    raise _too_many(max_values, _position(event.start_mark))
            if isinstance(event, yaml.CollectionStartEvent):
                depth += 1
                if depth > max_depth:
                    raise _too_deep(max_depth, _position(event.start_mark))
            elif isinstance(event, yaml.CollectionEndEvent):
                depth -= 1
    finally:
        loader.dispose()


def _too_many(limit: int, position: Position, path: JsonPath = ()) -> YamlTooLarge:
    return YamlTooLarge(
        f"the spec has more than {limit:,} YAML values (each use of an alias counts as a "
        "copy); nbp reads no more (InputPolicy.max_yaml_values)", position, path,
    )


def _too_deep(limit: int, position: Position, path: JsonPath = ()) -> YamlTooLarge:
    return YamlTooLarge(
        f"lists and mappings are nested more than {limit} deep; nbp reads no deeper "
        "(InputPolicy.max_yaml_depth)", position, path,
    )


def _position(mark: Any) -> Position:
    return Position(mark.line + 1, mark.column + 1)


def _syntax_error(exc: yaml.MarkedYAMLError) -> YamlSyntaxError:
    mark = exc.problem_mark or exc.context_mark
    message = f"YAML syntax error: {exc.problem or exc.context or 'invalid YAML'}"
    if exc.problem and exc.context and exc.context_mark is not None:
        message += f" ({exc.context} at line {exc.context_mark.line + 1})"
    return YamlSyntaxError(message, _position(mark) if mark is not None else START)


class _Builder:
    """Turns nodes into dicts, lists and scalars while recording positions, counting every
    value it builds (an alias is built again at each use)."""

    def __init__(self, doc: LocatedDocument, max_values: int, max_depth: int) -> None:
        self.doc = doc
        self.constructor = yaml.constructor.SafeConstructor()
        self.active: set[int] = set()  # nodes being built: catches recursive aliases
        self.max_values, self.max_depth = max_values, max_depth
        self.count = 0

    def build(self, node: yaml.Node, path: JsonPath) -> Any:
        self.spend(1, node, path)
        if len(path) > self.max_depth:
            raise _too_deep(self.max_depth, _position(node.start_mark), path)
        if path not in self.doc.values:
            self.doc.values[path] = _position(node.start_mark)
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

    def spend(self, values: int, node: yaml.Node, path: JsonPath) -> None:
        self.count += values
        if self.count > self.max_values:
            # an alias's node is where its anchor is: the top-level key says more
            where = self.doc.values.get(path[:1]) or _position(node.start_mark)
            raise _too_many(self.max_values, where, path)

    def mapping(self, node: yaml.MappingNode, path: JsonPath) -> dict[str, Any]:
        # key -> (key node, value node); a later own key wins and is reported, an own key
        # overrides a merged one silently, the first of several merged sources wins
        chosen: dict[str, tuple[yaml.Node, yaml.Node]] = {}
        merged: set[str] = set()
        for key_node, value_node, from_merge in self.pairs(node, path):
            key = self.key(key_node)
            where = _position(key_node.start_mark)
            if key in chosen:
                if from_merge:
                    continue
                if key not in merged:
                    first = _position(chosen[key][0].start_mark)
                    self.doc.duplicates.append(Duplicate((*path, key), where, first))
                merged.discard(key)
            elif from_merge:
                merged.add(key)
            chosen[key] = (key_node, value_node)
        result: dict[str, Any] = {}
        for key, (key_node, value_node) in chosen.items():
            child = (*path, key)
            self.doc.keys[child] = _position(key_node.start_mark)
            result[key] = self.build(value_node, child)
        return result

    def pairs(
        self, node: yaml.MappingNode, path: JsonPath
    ) -> list[tuple[yaml.Node, yaml.Node, bool]]:
        """The mapping's pairs, those of `<<` merge sources first (PyYAML's order)."""
        merged: list[tuple[yaml.Node, yaml.Node, bool]] = []
        own: list[tuple[yaml.Node, yaml.Node, bool]] = []
        for key_node, value_node in node.value:
            if key_node.tag != _MERGE_TAG:
                own.append((key_node, value_node, False))
                continue
            sources = value_node.value if isinstance(value_node, yaml.SequenceNode) else [
                value_node]
            for source in sources:
                if not isinstance(source, yaml.MappingNode):
                    raise YamlSyntaxError(
                        "YAML syntax error: expected a mapping or list of mappings for "
                        f"merging (<<), but found {source.id}", _position(source.start_mark),
                    )
                if id(source) in self.active:
                    raise YamlSyntaxError("a YAML alias refers to itself",
                                          _position(source.start_mark))
                self.active.add(id(source))
                try:
                    found = self.pairs(source, path)
                finally:
                    self.active.discard(id(source))
                self.spend(len(found), source, path)  # merges copy pairs, like aliases
                merged += [(k, v, True) for k, v, _ in found]
        return merged + own

    def key(self, node: yaml.Node) -> str:
        key = self.scalar(node) if isinstance(node, yaml.ScalarNode) else None
        if isinstance(key, str):
            return key
        return "" if key is None else str(key).lower() if isinstance(key, bool) else str(key)

    def scalar(self, node: yaml.ScalarNode) -> Any:
        if node.tag in (_STR_TAG, _VALUE_TAG):
            return node.value  # the common case, without the constructor's bookkeeping
        if node.tag in (_INT_TAG, _FLOAT_TAG) and ":" in node.value:
            return node.value  # "16:9", not YAML 1.1's base-60 number
        value = self.constructor.construct_object(node)
        return value if isinstance(value, _PLAIN_TYPES) else node.value
