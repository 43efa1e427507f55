"""The activation examples of a chunk of dashboards as columns: the formats' common input.

The writers take column batches (``ExampleColumns``: one row per example, the token lists
flattened with offsets, token strings coded in one vocabulary) and render their example JSON
from the arrays in bulk (``bulk_json``), so no per-example object is built and no per-example
document is walked. Rows come in write order: per feature its top examples (section 0), then
quantile group g's examples (section g + 1). A batch is checked when it is made (``check``:
every value finite in float32), before any writer sees it.
"""

from __future__ import annotations

import collections
import queue
import threading
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from itertools import islice
from typing import Any, Protocol, TypeVar

import numpy as np
import orjson
from mistudio.common.v1 import dashboard_pb2 as dpb
from mistudio_common.dashboard import FeatureDashboard

from mistudio_export.formats import bulk_json, jsonio
from mistudio_export.formats.bulk_json import Rendered, Slot, StringTable
from mistudio_export.formats.example_wire import TokenCodes, decode_examples

CHUNK_FEATURES = 64
"""Most dashboards read into one column batch: enough that numpy's per-call cost vanishes."""
TOKENS_PER_BATCH = 1 << 19
"""A batch ends once its examples hold this many tokens (or, read from their bytes, may hold:
``wire_tokens``), so its arrays and rendered bytes stay a few tens of MB whatever the dashboard
parameters (one feature at the largest in-bounds ones holds about 560k)."""
TOKEN_WIRE_BYTES = 2
"""The fewest bytes a token takes in a serialised example: its string's tag and length."""
TOP_SECTION = 0
TOP_GROUP_BIN = -1.0
"""bin_min and bin_contains of the 'top activations' section, as SAEDashboard writes them."""

T = TypeVar("T")


class _Source(Protocol):
    @property
    def dataset(self) -> str: ...
    @property
    def row(self) -> int: ...
    @property
    def offset(self) -> int: ...


class _Example(Protocol):
    @property
    def tokens(self) -> Sequence[str]: ...
    @property
    def token_ids(self) -> Sequence[int]: ...
    @property
    def values(self) -> Sequence[float]: ...
    @property
    def max_value(self) -> float: ...
    @property
    def max_token_index(self) -> int: ...
    @property
    def qualifying_token_index(self) -> int: ...
    @property
    def source(self) -> _Source: ...


class _Group(Protocol):
    @property
    def examples(self) -> Sequence[_Example]: ...


class DashboardExamples(Protocol):
    """Where examples are read from: a ``FeatureDashboard`` or its proto message alike."""

    @property
    def top_examples(self) -> Sequence[_Example]: ...
    @property
    def quantile_groups(self) -> Sequence[_Group]: ...


E = TypeVar("E", bound=DashboardExamples)


Ints = np.ndarray[Any, np.dtype[np.int64]]
Floats = np.ndarray[Any, np.dtype[np.float64]]


@dataclass(frozen=True, slots=True)
class ExampleColumns:
    """Every example of ``dashboards``; per-row arrays are [n_rows], token arrays [n_tokens]."""

    dashboards: Sequence[FeatureDashboard]
    """What the formats write besides the examples; the example lists in them are not read
    (a staged batch leaves them empty)."""
    tokens: StringTable
    """The vocabulary ``token_codes`` index, shared by the batches of one read."""
    position: Ints
    """The example's dashboard, as its place in ``dashboards``."""
    section: Ints
    """0: top examples; g + 1: quantile group g."""
    rank: Ints
    """Place of the example in its section."""
    token_start: Ints
    """[n_rows + 1]: row r's tokens are token_codes[token_start[r] : token_start[r + 1]]."""
    token_codes: Ints
    id_start: Ints
    token_ids: Ints
    value_start: Ints
    values: Floats
    max_value: Floats
    max_token_index: Ints
    qualifying_token_index: Ints
    datasets: list[str]
    """Distinct source dataset names of the chunk."""
    dataset_code: Ints
    """Into ``datasets``."""
    source_row: Ints
    source_offset: Ints
    token_items: Rendered
    """The token strings of ``token_codes``, one item per token: rendered once per batch for
    every format."""
    value_items: Rendered
    """``values`` as the formats write them (float32 shortest form), one item per value."""

    @property
    def n_rows(self) -> int:
        return len(self.position)

    @property
    def n_values(self) -> Ints:
        return np.diff(self.value_start)

    @property
    def feature_index(self) -> Ints:
        indices = np.fromiter((d.feature_index for d in self.dashboards), np.int64)
        return indices[self.position]

    def token_list(self, kept: Ints | None = None) -> Slot:
        """Per row (or kept row), its tokens among ``token_items``."""
        return _lists(self.token_items, self.token_start, kept)

    def id_list(self, rendered: Rendered, kept: Ints | None = None) -> Slot:
        return _lists(rendered, self.id_start, kept)

    def value_list(self, rendered: Rendered, kept: Ints | None = None) -> Slot:
        return _lists(rendered, self.value_start, kept)

    def top_section_max(self, kept: Ints, peaks: Floats) -> list[float]:
        """Per dashboard, the largest of ``peaks`` (one per kept row) over its top examples;
        0.0 when it has none."""
        rows = self.section[kept] == TOP_SECTION
        return self.feature_max(kept[rows], peaks[rows])

    def section_bins(self, kept: Ints, peaks: Floats, decimals: int | None = None) -> Floats:
        """[n_kept, 3]: per kept row its section's (bin_min, bin_max, bin_contains), each
        rounded by ``round`` when ``decimals`` is given; the top section's are -1, the largest
        of its ``peaks``, -1 (as SAEDashboard and Neuronpedia write them)."""
        top_max = self.top_section_max(kept, peaks)
        table = self.section_table()
        for position, d in enumerate(self.dashboards):
            bins = [TOP_GROUP_BIN, top_max[position], TOP_GROUP_BIN]
            for g in d.quantile_groups:
                bins += (g.bin_min, g.bin_max, g.bin_contains)
            if decimals is not None:
                bins = [round(x, decimals) for x in bins]
            table[position, : len(bins) // 3] = np.reshape(bins, (-1, 3))
        return table[self.position[kept], self.section[kept]]

    def section_table(self) -> Floats:
        """[n_dashboards, n_sections, 3] zeros: three numbers per section, to fill per
        dashboard (a few dozen each) and read per row by one index."""
        n_sections = 1 + max((len(d.quantile_groups) for d in self.dashboards), default=0)
        return np.zeros((len(self.dashboards), n_sections, 3))

    def feature_max(self, kept: Ints, peaks: Floats) -> list[float]:
        """Per dashboard, the largest of ``peaks`` (one per kept row); 0.0 when none."""
        best = np.full(len(self.dashboards), -np.inf)
        np.maximum.at(best, self.position[kept], peaks)
        return [0.0 if m == -np.inf else m for m in best.tolist()]

    def check(self) -> None:
        """Raises NonFiniteValue for the first value no format may write (NaN, Inf or beyond
        float32), pointing at it in the feature's PRD document."""
        for name, column, starts in (
            ("values", self.values, self.value_start),
            ("max_value", self.max_value, None),
        ):
            bad = np.flatnonzero(~(np.abs(column) < jsonio.F32_OVERFLOW))
            if len(bad):
                row = (
                    int(bad[0])
                    if starts is None
                    else int(np.searchsorted(starts, bad[0], "right")) - 1
                )
                at = [name] if starts is None else [name, int(bad[0] - starts[row])]
                raise jsonio.not_finite(
                    f"feature {self.dashboards[self.position[row]].feature_index}",
                    [*self.pointer(row), *at],
                    float(column[bad[0]]),
                )

    def pointer(self, row: int) -> list[str | int]:
        """Where row ``row`` sits in its feature's PRD document."""
        rank, section = int(self.rank[row]), int(self.section[row])
        if section == TOP_SECTION:
            return ["activations", rank]
        return ["quantile_groups", section - 1, "examples", rank]

    def section_bounds(self, kept: Ints) -> tuple[Ints, Ints]:
        """For the rows ``kept`` (ascending): [n_dashboards, n_sections] first and stop index
        into ``kept`` of each dashboard's section."""
        n_sections = 1 + max((len(d.quantile_groups) for d in self.dashboards), default=0)
        keys = self.position[kept] * n_sections + self.section[kept]
        wanted = np.arange(len(self.dashboards) * n_sections)
        first = np.searchsorted(keys, wanted, "left").reshape(-1, n_sections)
        stop = np.searchsorted(keys, wanted, "right").reshape(-1, n_sections)
        return first, stop

    def value_peaks(self, kept: Ints) -> tuple[Floats, Ints, Floats]:
        """Per kept row (each must have values): its largest value, that value's first
        position in the row, and its smallest value."""
        first = self.value_start[kept]
        lengths = self.value_start[kept + 1] - first
        starts = np.cumsum(lengths) - lengths  # of each kept row among the gathered values
        values = self.values[np.repeat(first - starts, lengths) + np.arange(int(lengths.sum()))]
        if not len(values):
            return np.zeros(0), np.zeros(0, np.int64), np.zeros(0)
        top = np.maximum.reduceat(values, starts)
        low = np.minimum.reduceat(values, starts)
        at = np.arange(len(values)) - np.repeat(starts, lengths)
        first_top = np.minimum.reduceat(
            np.where(values == np.repeat(top, lengths), at, len(values)), starts
        )
        return top, first_top, low


def _lists(rendered: Rendered, starts: Ints, kept: Ints | None) -> Slot:
    rows = np.arange(len(starts) - 1) if kept is None else kept
    return bulk_json.items(rendered, starts[rows], starts[rows + 1])


def chunked(items: Iterable[T], size: int) -> Iterator[list[T]]:
    it = iter(items)
    while chunk := list(islice(it, size)):
        yield chunk


def _starts(lengths: Ints) -> Ints:
    return np.concatenate(([0], np.cumsum(lengths))).astype(np.int64)


def column_batches(dashboards: Iterable[FeatureDashboard]) -> Iterator[ExampleColumns]:
    """``dashboards`` as column batches, in order."""
    tokens = StringTable()
    for chunk in batch_sized(dashboards, held_tokens):
        yield example_columns(chunk, tokens)


def held_tokens(d: DashboardExamples) -> int:
    """The tokens of ``d``'s examples."""
    top = sum(len(e.tokens) for e in d.top_examples)
    return top + sum(len(e.tokens) for g in d.quantile_groups for e in g.examples)


def wire_tokens(wire: bytes) -> int:
    """The most tokens the examples of the dashboard serialised as ``wire`` can hold."""
    return len(wire) // TOKEN_WIRE_BYTES


def batch_sized(items: Iterable[T], tokens: Callable[[T], int]) -> Iterator[list[T]]:
    """Consecutive runs of ``items`` (dashboards) of at most ``CHUNK_FEATURES``, ending once
    their ``tokens`` reach ``TOKENS_PER_BATCH``."""
    batch: list[T] = []
    n_tokens = 0
    for item in items:
        batch.append(item)
        n_tokens += tokens(item)
        if len(batch) == CHUNK_FEATURES or n_tokens >= TOKENS_PER_BATCH:
            yield batch
            batch, n_tokens = [], 0
    if batch:
        yield batch


def example_columns(
    dashboards: Sequence[FeatureDashboard],
    tokens: StringTable,
    examples: Sequence[DashboardExamples] | None = None,
) -> ExampleColumns:
    """The examples of ``examples`` (default: of ``dashboards``, one for one) as checked
    columns; token strings are coded in ``tokens``."""
    sources: Sequence[DashboardExamples] = dashboards if examples is None else examples
    rows = _Rows()
    ids: list[int] = []
    values: list[float] = []
    for p, s, n, e in _each_example(sources):
        token_ids, example_values = e.token_ids, e.values
        ids += token_ids
        values += example_values
        rows.add(p, s, n, e, len(token_ids), len(example_values))
    return rows.columns(dashboards, tokens, np.array(ids, np.int64), np.array(values, np.float64))


def wire_columns(
    dashboards: Sequence[FeatureDashboard],
    codes: TokenCodes,
    splits: Sequence[dpb.FeatureDashboardSplit],
) -> ExampleColumns | None:
    """``example_columns`` of the dashboards ``splits`` read, every example decoded from its
    bytes at once (``example_wire``): no Python object per example or token. None when an
    example is laid out otherwise than protobuf serialises it (or its bytes are malformed): the
    message classes read those."""
    examples: list[bytes] = []
    sections: list[tuple[int, int, int]] = []  # (dashboard's place, section, its examples)
    for place, split in enumerate(splits):
        lists = [split.top_examples, *(g.examples for g in split.quantile_groups)]
        for section, listed in enumerate(lists):
            examples += listed
            sections.append((place, section, len(listed)))
    fields = decode_examples(examples)
    if fields is None:
        return None
    p, s, n = np.array(sections, np.int64).reshape(-1, 3).T
    token_ids, id_count = fields.token_ids()
    values, value_count = fields.values()
    paired = np.array_equal(id_count, fields.token_count)  # else no token has a known id
    try:
        token_codes = codes.codes(
            fields.data,
            fields.token_at,
            fields.token_len,
            token_ids if paired else np.full(len(fields.token_at), -1),
        )
        names, dataset_code = fields.datasets()
    except UnicodeDecodeError:
        return None  # the message classes refuse it, saying where
    rank = np.arange(len(fields.token_count)) - np.repeat(np.cumsum(n) - n, n)
    rows = np.stack([
        np.repeat(p, n), np.repeat(s, n), rank, fields.token_count, id_count, value_count,
        fields.max_token_index, fields.qualifying_token_index, fields.source_row,
        fields.source_offset,
    ])  # fmt: skip  # as _Rows.place lays them out
    return _assembled(dashboards, codes.table, rows, token_codes, token_ids, values,
                      fields.max_value.astype(np.float64), names, dataset_code)  # fmt: skip


def _each_example(sources: Sequence[E]) -> Iterator[tuple[int, int, int, Any]]:
    """(dashboard's place, section, place in section, example) of every example, in order."""
    for p, d in enumerate(sources):
        sections = [d.top_examples, *(g.examples for g in d.quantile_groups)]
        for s, in_section in enumerate(sections):
            for n, e in enumerate(in_section):
                yield p, s, n, e


class _Rows:
    """Per example its scalar fields and token strings, gathered for ``columns``."""

    def __init__(self) -> None:
        self.places: list[tuple[int, ...]] = []  # per example: the integer fields, in order
        self.token_text: list[str] = []
        self.max_value: list[float] = []
        self.datasets: list[str] = []

    def add(self, p: int, s: int, n: int, e: Any, n_ids: int, n_values: int) -> None:
        text, source = e.tokens, e.source
        self.token_text += text
        self.max_value.append(e.max_value)
        self.datasets.append(source.dataset)
        self.places.append(
            (p, s, n, len(text), n_ids, n_values, e.max_token_index, e.qualifying_token_index,
             source.row, source.offset)
        )  # fmt: skip

    def place(self) -> Ints:
        """[10, n_rows]: position, section, rank, then token, id and value counts, the two
        indices and the source's row and offset."""
        return np.array(self.places, np.int64).reshape(-1, 10).T

    def columns(
        self,
        dashboards: Sequence[FeatureDashboard],
        tokens: StringTable,
        ids: Ints,
        values: Floats,
    ) -> ExampleColumns:
        place = self.place()
        names = StringTable()
        dataset_code = np.array(names.codes(self.datasets), np.int64)
        token_codes = np.array(tokens.codes(self.token_text), np.int64)
        max_value = np.array(self.max_value, np.float64)
        return _assembled(dashboards, tokens, place, token_codes, ids, values, max_value, names,
                          dataset_code)  # fmt: skip


def _assembled(
    dashboards: Sequence[FeatureDashboard],
    tokens: StringTable,
    place: Ints,
    token_codes: Ints,
    ids: Ints,
    values: Floats,
    max_value: Floats,
    names: StringTable,
    dataset_code: Ints,
) -> ExampleColumns:
    """The checked batch: ``place`` is ``_Rows.place``'s [10, n_rows]."""
    with np.errstate(over="ignore"):  # a value beyond float32 fails ``check`` below
        value_items = bulk_json.numbers(bulk_json.float32_column(values))
    columns = ExampleColumns(
        dashboards=dashboards,
        tokens=tokens,
        position=place[0],
        section=place[1],
        rank=place[2],
        token_start=_starts(place[3]),
        token_codes=token_codes,
        id_start=_starts(place[4]),
        token_ids=ids,
        value_start=_starts(place[5]),
        values=values,
        max_value=max_value,
        max_token_index=place[6],
        qualifying_token_index=place[7],
        datasets=names.strings(),
        dataset_code=dataset_code,
        source_row=place[8],
        source_offset=place[9],
        token_items=tokens.render(token_codes),
        value_items=value_items,
    )
    columns.check()
    return columns


@dataclass(frozen=True, slots=True)
class SectionLists:
    """One dashboard's rendered example rows, by section (0: top; g + 1: quantile group g)."""

    rendered: Rendered
    first: Ints
    """[n_sections]: first row of each section in ``rendered``."""
    stop: Ints

    def section(self, section: int) -> orjson.Fragment:
        return self.rendered.list_fragment(int(self.first[section]), int(self.stop[section]))

    def every(self) -> orjson.Fragment:
        """Every section's rows, in order, as one list."""
        return self.rendered.list_fragment(int(self.first[0]), int(self.stop[-1]))


def section_lists(columns: ExampleColumns, rendered: Rendered, kept: Ints) -> list[SectionLists]:
    """Per dashboard, where its sections' rows lie in ``rendered`` (one row per ``kept`` row)."""
    first, stop = columns.section_bounds(kept)
    return [SectionLists(rendered, f, s) for f, s in zip(first, stop, strict=True)]


def fan_out(
    batches: Iterable[ExampleColumns],
    writers: Sequence[Callable[[Iterator[ExampleColumns]], object]],
) -> None:
    """Every writer consumes every batch of one read, the writers taking turns: the first in
    this thread, each other in a thread of its own (``_Turn``) that runs while this one waits
    for it to ask for the next batch, so batches are not all held at once and one writer runs
    at a time. Running at once, they contended for the interpreter lock: a third more CPU time
    (2 of 6.5 CPU-s for the 4,096-feature bench's writing), where the export's writer processes
    already keep every core busy. Re-raises the first writer's error once all have stopped."""
    turns = [_Turn(write) for write in writers[1:]]

    def feed() -> Iterator[ExampleColumns]:
        for batch in batches:
            for turn in turns:
                turn.take(batch)
            yield batch

    try:
        writers[0](feed())
    finally:
        for turn in turns:
            turn.end()
    errors = [turn.error for turn in turns if turn.error is not None]
    if errors:
        raise errors[0]


class _Turn:
    """A writer on a thread of its own that runs only from ``take`` until it asks for the next
    batch (or, after ``end``, until it returns)."""

    def __init__(self, write: Callable[[Iterator[ExampleColumns]], object]) -> None:
        self.error: BaseException | None = None
        self._inbox = queue.SimpleQueue[ExampleColumns | None]()
        self._asked = threading.Semaphore(0)
        self._thread = threading.Thread(target=self._run, args=(write,), daemon=True)
        self._thread.start()

    def take(self, batch: ExampleColumns) -> None:
        """Hands over ``batch``; returns once the writer is done with it."""
        self._inbox.put(batch)
        self._asked.acquire()

    def end(self) -> None:
        """No more batches: returns once the writer has finished."""
        self._inbox.put(None)
        self._thread.join()

    def _batches(self) -> Iterator[ExampleColumns]:
        while (batch := self._inbox.get()) is not None:
            yield batch
            self._asked.release()  # the writer asked for the next batch

    def _run(self, write: Callable[[Iterator[ExampleColumns]], object]) -> None:
        received = self._batches()
        try:
            write(received)
        except BaseException as error:  # re-raised by fan_out once every writer has stopped
            self.error = error
        collections.deque(received, maxlen=0)  # keep taking batches so the feed never waits
