"""SAEDashboard's ``batch-N.json`` (format A), what ``neuronpedia-runner`` writes.

Neuronpedia's converter and its ``/manual-dashboard`` page read this shape, so every feature key
SAEDashboard writes is present; panels miStudio does not compute (neuron alignment, correlated
neurons and features, decoder weight distribution, steering vector) are empty lists. Float lists
and bin bounds are rounded to 5 decimals as SAEDashboard does; ``frac_nonzero`` is not, so a
sparse feature (density < 5e-6) does not read as dead, and histogram bin centres keep as many
more decimals as they need to stay distinct (a log-scale histogram's smallest bins).
Schema: ``schemas/sd_batch.schema.json``.
"""

from __future__ import annotations

import itertools
import operator
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import orjson
from mistudio_common.dashboard import FeatureDashboard, Histogram, LogitEntry
from mistudio_common.errors import InvalidArgument

from mistudio_export.formats import bulk_json, jsonio
from mistudio_export.formats.bulk_json import ListOf, Rendered, each
from mistudio_export.formats.columns import (
    ExampleColumns,
    Floats,
    Ints,
    chunked,
    section_lists,
)
from mistudio_export.formats.neuronpedia_importer import bin_centres
from mistudio_export.formats.output import FormatOutput
from mistudio_export.records import NeuronpediaNaming, SaeInfo

DEFAULT_FEATURES_PER_BATCH = 128
DECIMALS = 5

FEATURE_KEYS = (
    "feature_index",
    "neuron_alignment_indices", "neuron_alignment_values", "neuron_alignment_l1",
    "correlated_neurons_indices", "correlated_neurons_l1", "correlated_neurons_pearson",
    "correlated_features_indices", "correlated_features_l1", "correlated_features_pearson",
    "neg_str", "neg_values", "pos_str", "pos_values", "frac_nonzero",
    "freq_hist_data_bar_values", "freq_hist_data_bar_heights",
    "logits_hist_data_bar_heights", "logits_hist_data_bar_values",
    "n_prompts_total", "n_tokens_in_prompt", "dataset", "decoder_weights_dist",
    "activations", "vector",
)  # fmt: skip
ACTIVATION_KEYS = (
    "bin_min", "bin_max", "bin_contains", "tokens", "values", "qualifying_token_index",
    "dfa_values", "dfa_maxValue", "dfa_targetIndex",
)  # fmt: skip
BATCH_KEYS = ("model_id", "layer", "sae_set", "sae_id_suffix", "features")


def python_round(values: Floats, decimals: int) -> Floats:
    """Python's ``round(v, decimals)`` of each value, to the bit: numpy's multiply, rint and
    divide where that provably agrees (the scaled value below 2**52, more than an ulp from a
    half), Python's on the rest (near-ties, where numpy's rounding of the scaled value
    may differ)."""
    scale = 10.0**decimals
    with np.errstate(over="ignore", invalid="ignore"):  # inf and NaN go to Python's round
        scaled = values * scale
        out = np.rint(scaled) / scale
        half = np.abs(scaled - np.floor(scaled) - 0.5)
        sure = (np.abs(scaled) < 2.0**52) & (half > 2 * np.spacing(np.abs(scaled)))
    unsure = np.flatnonzero(~sure)
    out[unsure] = [round(v, decimals) for v in values[unsure].tolist()]
    return out


def rounded_apart(values: Floats, lengths: Ints) -> Floats:
    """Per run of ``lengths`` values (a histogram's bin centres), its values rounded to
    ``DECIMALS``, or to the fewest more decimals that keep its distinct values distinct (as
    ``round`` does; up to 17), or else as they are."""
    run = np.repeat(np.arange(len(lengths)), lengths)
    distinct = _distinct(values, run, len(lengths))
    out = values.copy()
    pending = np.ones(len(lengths), bool)
    for decimals in range(DECIMALS, 18):
        rows = np.flatnonzero(pending[run])
        if not len(rows):
            break
        rounded = python_round(values[rows], decimals)
        apart = _distinct(rounded, run[rows], len(lengths)) == distinct
        done = apart[run[rows]]
        out[rows[done]] = rounded[done]
        pending &= ~apart
    return out


def _distinct(values: Floats, run: Ints, n_runs: int) -> Ints:
    """How many distinct values each run holds (NaNs each count, as in a set of floats)."""
    order = np.lexsort((values, run))
    v, r = values[order], run[order]
    new = np.ones(len(v), bool)
    new[1:] = (v[1:] != v[:-1]) | (r[1:] != r[:-1])
    return np.bincount(r[new], minlength=n_runs)


def activation_rows(columns: ExampleColumns) -> tuple[Rendered, Ints]:
    """The examples that have values, as SAEDashboard activations rendered in bulk; and which
    rows of ``columns`` they are."""
    kept = np.flatnonzero(columns.n_values > 0)
    top, _, _ = columns.value_peaks(kept)
    bins = columns.section_bins(kept, top, DECIMALS)
    rounded = np.round(columns.values, DECIMALS)
    return bulk_json.rows(
        {
            "bin_min": each(bulk_json.numbers(bulk_json.float32_column(bins[:, 0]))),
            "bin_max": each(bulk_json.numbers(bulk_json.float32_column(bins[:, 1]))),
            "bin_contains": each(bulk_json.numbers(bulk_json.float32_column(bins[:, 2]))),
            "tokens": ListOf(columns.token_list(kept)),
            "values": ListOf(
                columns.value_list(bulk_json.numbers(bulk_json.float32_column(rounded)), kept)
            ),
            "qualifying_token_index": each(bulk_json.numbers(columns.qualifying_token_index[kept])),
            "dfa_values": [],
            "dfa_maxValue": 0,
            "dfa_targetIndex": -1,
        },
        len(kept),
    ), kept


Written = np.ndarray[Any, Any]
"""Floats as the entries hold them: float32 once checked, else float64."""


@dataclass(frozen=True, slots=True)
class HeadLists:
    """Per dashboard of a batch, its entry's lists besides the activations: float lists
    rounded for the whole batch at once. ``checked``: every value passed the bulk check, the
    floats are float32 (orjson writes the entries as they are); else they are float64 for
    ``jsonio.dumps`` to convert, naming a value that cannot be written."""

    neg: list[list[LogitEntry]]
    pos: list[list[LogitEntry]]
    neg_values: list[Written]
    pos_values: list[Written]
    frac_nonzero: list[Any]
    freq_values: list[Written | None]
    """None where the histogram's edges and counts do not pair up (written as [])."""
    logits_values: list[Written | None]
    checked: bool


def head_lists(dashboards: Sequence[FeatureDashboard], info: SaeInfo) -> HeadLists:
    """The batch's lists, their values checked in bulk (``HeadLists.checked``)."""
    neg = [sorted(d.top_negative_logits, key=_RANK) for d in dashboards]
    pos = [sorted(d.top_positive_logits, key=_RANK) for d in dashboards]
    neg_values = np.round(_floats(neg, "value"), DECIMALS)
    pos_values = np.round(_floats(pos, "value"), DECIMALS)
    act = [d.activation_histogram for d in dashboards]
    logit = [d.logit_histogram for d in dashboards]
    (freq, freq_values), (logits, logits_values) = _centres(act), _centres(logit)
    frac = [d.statistics.activation_frequency for d in dashboards]
    frac_values = np.array(frac, np.float64)
    texts = [info.prompts_dataset, *map(_TOKEN, itertools.chain(*neg, *pos))]
    counts = itertools.chain.from_iterable(h.counts for h in (*act, *logit))
    checked = (
        all(map(_writable, (neg_values, pos_values, freq_values, logits_values, frac_values)))
        and set(map(type, frac)) <= {float}
        and set(map(type, counts)) <= {int}
        and set(map(type, texts)) <= {str}
        and _unicode(texts)
    )
    return HeadLists(
        neg=neg,
        pos=pos,
        neg_values=_split(neg_values, [len(es) for es in neg], checked),
        pos_values=_split(pos_values, [len(es) for es in pos], checked),
        frac_nonzero=list(bulk_json.float32_column(frac_values)) if checked else frac,
        freq_values=_placed(freq, _split(freq_values, _n_centres(act, freq), checked)),
        logits_values=_placed(logits, _split(logits_values, _n_centres(logit, logits), checked)),
        checked=checked,
    )


_RANK = operator.attrgetter("rank")
_TOKEN = operator.attrgetter("token")


def _floats(groups: list[list[Any]], name: str) -> Floats:
    return np.array(list(map(operator.attrgetter(name), itertools.chain(*groups))), np.float64)


def _writable(values: Floats) -> bool:
    return bool((np.abs(values) < jsonio.F32_OVERFLOW).all())


def _unicode(texts: list[str]) -> bool:
    """Every string can be written (no lone surrogates)."""
    try:
        "".join(texts).encode()
    except UnicodeEncodeError:
        return False
    return True


def _split(values: Floats, lengths: list[int], checked: bool) -> list[Written]:
    """``values`` cut into runs of ``lengths``: float32 (as written) where ``checked``."""
    ready: Written = bulk_json.float32_column(values) if checked else values
    bounds = itertools.pairwise([0, *itertools.accumulate(lengths)])
    return [ready[first:stop] for first, stop in bounds]


def _centres(hs: Sequence[Histogram]) -> tuple[list[bool], Floats]:
    """Which histograms' edges and counts pair up, and their bin centres rounded apart
    (``rounded_apart``), one run after another."""
    paired = [len(h.bin_edges) == len(h.counts) + 1 for h in hs]
    edges = [h.bin_edges for h, ok in zip(hs, paired, strict=True) if ok]
    lengths = np.array(list(map(len, edges)), np.int64)
    centres = np.array(bin_centres(list(itertools.chain.from_iterable(edges))), np.float64)
    seams = np.cumsum(lengths)[:-1] - 1  # centres between one histogram's edges and the next's
    return paired, rounded_apart(np.delete(centres, seams), lengths - 1)


def _n_centres(hs: Sequence[Histogram], paired: list[bool]) -> list[int]:
    return [len(h.counts) for h, ok in zip(hs, paired, strict=True) if ok]


def _placed(paired: list[bool], runs: list[Written]) -> list[Written | None]:
    placed = iter(runs)
    return [next(placed) if ok else None for ok in paired]


def feature_entry(
    d: FeatureDashboard,
    info: SaeInfo,
    activations: orjson.Fragment,
    heads: HeadLists,
    position: int,
) -> dict[str, Any]:
    """One element of a batch's ``features`` list; ``activations`` are its rendered rows,
    ``heads`` its batch's lists, the feature at ``position``."""
    neg, pos = heads.neg[position], heads.pos[position]
    entry: dict[str, Any] = {key: [] for key in FEATURE_KEYS}
    entry.update(
        feature_index=d.feature_index,
        neg_str=[e.token for e in neg],
        neg_values=heads.neg_values[position],
        pos_str=[e.token for e in pos],
        pos_values=heads.pos_values[position],
        frac_nonzero=heads.frac_nonzero[position],
        n_prompts_total=info.n_prompts,
        n_tokens_in_prompt=info.n_tokens_in_prompt,
        dataset=info.prompts_dataset,
        activations=activations,
    )
    freq, logits = heads.freq_values[position], heads.logits_values[position]
    if freq is not None:
        entry["freq_hist_data_bar_values"] = freq
        entry["freq_hist_data_bar_heights"] = list(d.activation_histogram.counts)
    if logits is not None:
        entry["logits_hist_data_bar_values"] = logits
        entry["logits_hist_data_bar_heights"] = list(d.logit_histogram.counts)
    return entry


def batch_document(naming: NeuronpediaNaming, features: list[dict[str, Any]]) -> dict[str, Any]:
    return {
        "model_id": naming.model_id,
        "layer": naming.layer,
        "sae_set": naming.source_set,
        "sae_id_suffix": naming.source_suffix or None,
        "features": features,
    }


def _entries(info: SaeInfo, batches: Iterable[ExampleColumns]) -> Iterator[Any]:
    """Each feature's entry: its bytes where its batch's values passed the bulk check, else
    the dict, which ``jsonio.dumps`` converts and names a value that cannot be written in."""
    for columns in batches:
        rendered, kept = activation_rows(columns)
        lists = section_lists(columns, rendered, kept)
        heads = head_lists(columns.dashboards, info)
        for position, (d, rows) in enumerate(zip(columns.dashboards, lists, strict=True)):
            entry = feature_entry(d, info, rows.every(), heads, position)
            yield orjson.Fragment(jsonio.dumps_plain(entry)) if heads.checked else entry


def write_saedashboard_batches(
    out_dir: Path,
    info: SaeInfo,
    naming: NeuronpediaNaming,
    batches: Iterable[ExampleColumns],
    *,
    features_per_batch: int = DEFAULT_FEATURES_PER_BATCH,
    progress: Callable[[int], None] | None = None,
    first_batch: int = 0,
) -> FormatOutput:
    """Write ``out_dir/batch-N.json``, N = ``first_batch``, ``first_batch`` + 1, …, in the
    order the dashboards arrive (``features_per_batch`` each, whatever the column batches'
    size); the features of an export may be split among writers at batch boundaries."""
    info.validate()
    naming.validate()
    if features_per_batch < 1:
        raise InvalidArgument(
            f"features_per_batch={features_per_batch}", field="features_per_batch", fix="use >= 1"
        )
    n = 0
    chunks = chunked(_entries(info, batches), features_per_batch)
    for batch, entries in enumerate(chunks, start=first_batch):
        doc = batch_document(naming, list(entries))
        path = out_dir / f"batch-{batch}.json"
        jsonio.write_document(path, jsonio.dumps(doc, where=f"batch-{batch}.json"))
        n += len(entries)
        if progress is not None:
            progress(n)
    return FormatOutput(root=out_dir, n_features=n)
