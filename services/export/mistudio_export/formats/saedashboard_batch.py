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
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import orjson
from mistudio_common.dashboard import FeatureDashboard
from mistudio_common.errors import InvalidArgument

from mistudio_export.formats import bulk_json, jsonio
from mistudio_export.formats.bulk_json import ListOf, Rendered, each
from mistudio_export.formats.columns import (
    ExampleColumns,
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


def _r(xs: Iterable[float]) -> list[float]:
    return np.round(np.fromiter(xs, np.float64), DECIMALS).tolist()  # type: ignore[no-any-return]


def _r_apart(xs: list[float]) -> list[float]:
    """Rounded like ``_r`` with the fewest extra decimals that keep distinct values distinct."""
    distinct = len(set(xs))
    for decimals in range(DECIMALS, 18):
        out = list(map(round, xs, itertools.repeat(decimals)))
        if len(set(out)) == distinct:
            return out
    return list(xs)


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


def feature_entry(
    d: FeatureDashboard, info: SaeInfo, activations: orjson.Fragment
) -> dict[str, Any]:
    """One element of a batch's ``features`` list; ``activations`` are its rendered rows."""
    pos = sorted(d.top_positive_logits, key=lambda e: e.rank)
    neg = sorted(d.top_negative_logits, key=lambda e: e.rank)
    act, logit = d.activation_histogram, d.logit_histogram
    entry: dict[str, Any] = {key: [] for key in FEATURE_KEYS}
    entry.update(
        feature_index=d.feature_index,
        neg_str=[e.token for e in neg],
        neg_values=_r(e.value for e in neg),
        pos_str=[e.token for e in pos],
        pos_values=_r(e.value for e in pos),
        frac_nonzero=d.statistics.activation_frequency,
        n_prompts_total=info.n_prompts,
        n_tokens_in_prompt=info.n_tokens_in_prompt,
        dataset=info.prompts_dataset,
        activations=activations,
    )
    if len(act.bin_edges) == len(act.counts) + 1:
        entry["freq_hist_data_bar_values"] = _r_apart(bin_centres(list(act.bin_edges)))
        entry["freq_hist_data_bar_heights"] = list(act.counts)
    if len(logit.bin_edges) == len(logit.counts) + 1:
        entry["logits_hist_data_bar_values"] = _r_apart(bin_centres(list(logit.bin_edges)))
        entry["logits_hist_data_bar_heights"] = list(logit.counts)
    return entry


def batch_document(naming: NeuronpediaNaming, features: list[dict[str, Any]]) -> dict[str, Any]:
    return {
        "model_id": naming.model_id,
        "layer": naming.layer,
        "sae_set": naming.source_set,
        "sae_id_suffix": naming.source_suffix or None,
        "features": features,
    }


FLOAT_LISTS = (
    "neg_values", "pos_values", "freq_hist_data_bar_values", "logits_hist_data_bar_values",
)  # fmt: skip
"""``feature_entry``'s lists of floats, rendered a batch at a time."""


def _entries(info: SaeInfo, batches: Iterable[ExampleColumns]) -> Iterator[dict[str, Any]]:
    for columns in batches:
        rendered, kept = activation_rows(columns)
        lists = section_lists(columns, rendered, kept)
        entries = [
            feature_entry(d, info, rows.every())
            for d, rows in zip(columns.dashboards, lists, strict=True)
        ]
        bulk_json.float_lists(entries, FLOAT_LISTS)
        yield from entries


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
