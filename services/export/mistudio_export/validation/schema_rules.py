"""The PRD feature schema's value rules, read from the schema and applied to a column batch.

The column checks once copied the schema's bounds by hand, and copies drift. Here every bound,
enum and scalar type in ``prd_feature.schema.json`` becomes a ``Rule`` at import, applied to the
batch value its path names: example fields to the columns in bulk, the rest to each dashboard.
``unenforced_rules`` names any rule this module cannot apply (a keyword it does not know, an
example field with no column; a dashboard field it cannot read fails ``dashboard_values``), and
tests keep both empty, so a new schema rule cannot go unchecked. Shape (object and array types,
required fields) is the writers' to make, and the real-export tests pin it.
"""

from __future__ import annotations

import bisect
import enum
import operator
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
from mistudio_common.dashboard import FeatureDashboard

from mistudio_export.formats.columns import TOP_SECTION, ExampleColumns
from mistudio_export.formats.jsonio import pointer
from mistudio_export.formats.schemas import inlined_schema

SCHEMA = "prd_feature"
ITEM = "*"
"""In a rule's path: every item of an array."""
Path = tuple[str, ...]

BOUNDS: dict[str, Callable[[Any, Any], Any]] = {
    "minimum": operator.lt,
    "maximum": operator.gt,
    "exclusiveMinimum": operator.le,
    "exclusiveMaximum": operator.ge,
}
"""A value ``v`` breaks ``{keyword: limit}`` when ``op(v, limit)``; NaN breaks none (the
finiteness checks report it)."""
ANNOTATIONS = frozenset({"$schema", "$id", "$defs", "title", "description"})
STRUCTURAL_TYPES = frozenset({"object", "array"})
"""Shape (with ``required``): the writers make it from the batch's layout, not from values."""
EXAMPLE_PLACES: dict[Path, bool] = {
    ("activations", ITEM): True,
    ("quantile_groups", ITEM, "examples", ITEM): False,
}
"""Where the document holds examples, and whether those are the top section's."""


@dataclass(frozen=True, slots=True)
class Rule:
    """One keyword of the schema on one field: ``path`` as property names and ``ITEM``."""

    path: Path
    keyword: str
    limit: Any

    @property
    def code(self) -> str:
        return "WRONG_TYPE" if self.keyword == "type" else "SCHEMA_VIOLATION"

    def broken(self, values: np.ndarray) -> np.ndarray:
        """A mask of the values that break the rule."""
        if self.keyword in BOUNDS:
            if values.dtype.kind not in "iuf":
                values = values.astype(float)
            return np.asarray(BOUNDS[self.keyword](values, self.limit), bool)
        if self.keyword == "enum":
            return np.array([v not in self.limit for v in values.tolist()], bool)
        return _wrong_type(self.limit, values)

    def say(self, value: Any) -> str:
        """What the validator says of such a value (``schema_check._describe``)."""
        if self.keyword in BOUNDS:
            return f"{value} violates {self.keyword} {self.limit}"
        if self.keyword == "enum":
            return f"{value!r} is not one of {self.limit}"
        return f"expected {self.limit}, found {type(value).__name__}"


_RIGHT_KINDS = {"integer": "iu", "number": "iuf", "string": "U", "boolean": "b"}
"""Array kinds (``_array``) whose every value has the JSON type."""


def _wrong_type(kind: str, values: np.ndarray) -> np.ndarray:
    if values.dtype.kind in _RIGHT_KINDS.get(kind, ""):
        return np.zeros(len(values), bool)
    if values.dtype.kind == "f" and kind == "integer":
        return ~(values == np.floor(values))
    items = values.tolist()
    if set(map(type, items)) <= _ALWAYS_RIGHT.get(kind, set()):
        return np.zeros(len(items), bool)
    return np.array([not _is(kind, v) for v in items], bool)


_ALWAYS_RIGHT: dict[str, set[type]] = {
    "integer": {int},
    "number": {int, float},
    "string": {str},
    "boolean": {bool},
}
"""Python types whose every value has the JSON type (a float needs a look at its value)."""


def _is(kind: str, v: Any) -> bool:
    if isinstance(v, bool):
        return kind == "boolean"
    match kind:
        case "integer":
            return isinstance(v, int) or (isinstance(v, float) and v.is_integer())
        case "number":
            return isinstance(v, int | float)
        case "string":
            return isinstance(v, str)
    return False


def rules_of(node: dict[str, Any], path: Path) -> Iterator[Rule]:
    """The value rules of a schema node (references inlined) and of everything below it."""
    for keyword, limit in node.items():
        if keyword == "properties":
            for name, child in limit.items():
                yield from rules_of(child, (*path, name))
        elif keyword == "items":
            yield from rules_of(limit, (*path, ITEM))
        elif not _shape_or_note(keyword, limit):
            yield Rule(path, keyword, tuple(limit) if isinstance(limit, list) else limit)


def _shape_or_note(keyword: str, limit: Any) -> bool:
    structural = keyword == "type" and isinstance(limit, str) and limit in STRUCTURAL_TYPES
    return keyword in ANNOTATIONS or keyword == "required" or structural


RULES: tuple[Rule, ...] = tuple(rules_of(inlined_schema(SCHEMA), ()))
"""Every value rule of the PRD feature schema."""


def example_field(path: Path) -> tuple[bool, Path] | None:
    """(top section?, the field's path within an example) when ``path`` is inside examples."""
    for place, top in EXAMPLE_PLACES.items():
        if path[: len(place)] == place:
            return top, path[len(place) :]
    return None


@dataclass(frozen=True, slots=True)
class _Column:
    """An example field as a column: one value per row, or a list per row flattened; a coded
    field's values are codes into ``table`` (whose strings are checked once each)."""

    values: Callable[[ExampleColumns], np.ndarray]
    starts: Callable[[ExampleColumns], np.ndarray] | None = None
    table: Callable[[ExampleColumns], np.ndarray] | None = None


COLUMNS: dict[Path, _Column] = {
    ("tokens", ITEM): _Column(
        lambda c: c.token_codes,
        lambda c: c.token_start,
        lambda c: np.array(c.tokens.strings(), object),
    ),
    ("token_ids", ITEM): _Column(lambda c: c.token_ids, lambda c: c.id_start),
    ("values", ITEM): _Column(lambda c: c.values, lambda c: c.value_start),
    ("max_value",): _Column(lambda c: c.max_value),
    ("max_token_index",): _Column(lambda c: c.max_token_index),
    ("source", "dataset"): _Column(
        lambda c: c.dataset_code, table=lambda c: np.array(c.datasets, object)
    ),
    ("source", "row"): _Column(lambda c: c.source_row),
    ("source", "offset"): _Column(lambda c: c.source_offset),
}
"""Where each example field of the document sits in a column batch."""
ATTRIBUTES = {
    "activations": "top_examples",
    "histogram": "activation_histogram",
    "top_positive": "top_positive_logits",
    "top_negative": "top_negative_logits",
}
"""Document names that differ from the ``FeatureDashboard`` attribute holding the value."""
GROUPS = frozenset({"logits"})
"""Document objects that group fields of their parent (``logits``: the two logit lists)."""


def unenforced_rules(rules: Iterable[Rule] = RULES) -> list[Rule]:
    """The schema's rules this module cannot apply: a keyword it does not know, an example
    field with no column. (A dashboard field it cannot read fails ``dashboard_values``.)"""
    return [rule for rule in rules if not _applies(rule)]


def _applies(rule: Rule) -> bool:
    if rule.keyword not in {*BOUNDS, "enum", "type"}:
        return False
    if rule.keyword == "type" and rule.limit not in ("integer", "number", "string", "boolean"):
        return False
    example = example_field(rule.path)
    return example is None or example[1] in COLUMNS


def dashboard_values(d: FeatureDashboard, path: Path) -> Iterator[tuple[list[str | int], Any]]:
    """(document path, value) of every value ``path`` names in ``d``'s PRD document."""
    yield from _walk(d, path, [])


def _walk(node: Any, path: Path, where: list[str | int]) -> Iterator[tuple[list[str | int], Any]]:
    if not path:
        yield where, node.value if isinstance(node, enum.Enum) else node
        return
    name, rest = path[0], path[1:]
    if name == ITEM:
        items = sorted(node.items()) if isinstance(node, dict) else node
        for i, item in enumerate(items):
            yield from _walk(item, rest, [*where, i])
    elif name in GROUPS:
        yield from _walk(node, rest, [*where, name])
    elif isinstance(node, tuple):  # a quantile (level, value), as the PRD writer lists them
        yield from _walk(node[_QUANTILE_PARTS[name]], rest, [*where, name])
    else:
        yield from _walk(getattr(node, ATTRIBUTES.get(name, name)), rest, [*where, name])


Found = tuple[str, int, str, str]
"""A broken rule: (problem code, feature index, pointer in its PRD document, message)."""


def rule_findings(c: ExampleColumns) -> Iterator[Found]:
    """Every rule broken in the batch: one finding per broken example and field, one per
    broken dashboard value."""
    for path, rules in _BY_PATH.items():
        example = example_field(path)
        if example is not None:
            for rule in rules:
                yield from _column_findings(rule, c, *example)
        else:
            yield from _dashboard_findings(rules, c.dashboards, path)


def _dashboard_findings(
    rules: list[Rule], dashboards: Sequence[FeatureDashboard], path: Path
) -> Iterator[Found]:
    """The values read fast, in one array; only a dashboard with a broken value is walked for
    the places."""
    read, values, ends = _READERS[path], [], []
    for d in dashboards:
        values.extend(read(d))
        ends.append(len(values))
    array = _array(values)
    for rule in rules:
        for k in np.flatnonzero(rule.broken(array)).tolist():
            position = bisect.bisect_right(ends, k)
            d = dashboards[position]
            where, value = list(dashboard_values(d, path))[k - ([0, *ends][position])]
            yield rule.code, int(d.feature_index), pointer(where), rule.say(value)


def _reader(path: Path) -> Callable[[Any], list[Any]]:
    """Every value ``path`` names under a node, as ``dashboard_values`` without the places."""
    if not path:
        return lambda node: [node.value if isinstance(node, enum.Enum) else node]
    name, rest = path[0], path[1:]
    if name == ITEM and not rest:
        return list
    if name == ITEM and len(rest) == 1 and rest[0] != ITEM:  # a field of each item, in bulk
        field = ATTRIBUTES.get(rest[0], rest[0])
        get, pick = operator.attrgetter(field), _QUANTILE_PARTS.get(field, 0)
        return lambda node: (
            [pair[pick] for pair in sorted(node.items())]
            if isinstance(node, dict)
            else list(map(get, node))
        )
    below = _reader(rest)
    if name == ITEM:
        return lambda node: [v for item in node for v in below(item)]
    if name in GROUPS:
        return below
    get = operator.attrgetter(ATTRIBUTES.get(name, name))
    return lambda node: below(get(node))


_QUANTILE_PARTS = {"level": 0, "value": 1}
"""A quantile's place in the (level, value) pairs the PRD writer lists ``quantiles`` as."""


_BY_PATH: dict[Path, list[Rule]] = {}
for _rule in RULES:
    _BY_PATH.setdefault(_rule.path, []).append(_rule)
_READERS = {path: _reader(path) for path in _BY_PATH if example_field(path) is None}


def _array(values: list[Any]) -> np.ndarray:
    """Values of one JSON type as an array of a matching kind (ints and floats: float), any
    other mix as objects."""
    types = set(map(type, values))
    for kinds, dtype in _DTYPES:
        if types <= kinds:
            return np.array(values, dtype)
    return np.array(values, object)


_DTYPES: tuple[tuple[set[type], Any], ...] = (
    ({int}, np.int64),
    ({int, float}, np.float64),
    ({str}, str),
    ({bool}, bool),
)


def _column_findings(rule: Rule, c: ExampleColumns, top: bool, field: Path) -> Iterator[Found]:
    column = COLUMNS[field]
    values = column.values(c)
    if column.table is None:
        bad = np.flatnonzero(rule.broken(values))
        shown = values[bad]
    else:
        table = column.table(c)
        bad = np.flatnonzero(np.isin(values, np.flatnonzero(rule.broken(table))))
        shown = table[values[bad]]
    if not len(bad):
        return
    starts = None if column.starts is None else column.starts(c)
    rows = bad if starts is None else np.searchsorted(starts, bad, "right") - 1
    keep = np.flatnonzero((c.section[rows] == TOP_SECTION) == top)
    first = keep[np.unique(rows[keep], return_index=True)[1]]
    for k in first.tolist():
        row, item = int(rows[k]), int(bad[k])
        at = [item - int(starts[row]) if name == ITEM else name for name in field]  # type: ignore[index]
        feature = int(c.dashboards[int(c.position[row])].feature_index)
        where = pointer([*c.pointer(row), *at])
        yield rule.code, feature, where, rule.say(shown[k])
