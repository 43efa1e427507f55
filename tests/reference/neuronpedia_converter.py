"""What Neuronpedia's converter writes for one SAEDashboard batch, as plain rows.

Written from hijohnnylin/neuronpedia at ebb8426f,
``utils/neuronpedia-utils/neuronpedia_utils/convert-saedashboard-to-neuronpedia-export.py``
(``process_data``) and its ``db_models`` dataclasses ``Feature`` and ``Activation``: every key
those dataclasses serialise, filled as the converter fills them (BOS zeroing off). ``id`` and
``createdAt`` come from a counter and the clock there; the caller passes them in.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

DEFAULT_CREATOR_ID = "clkht01d40000jv08hvalcvly"
_COPIED = (
    "neuron_alignment_indices", "neuron_alignment_values", "neuron_alignment_l1",
    "correlated_neurons_indices", "correlated_neurons_pearson", "correlated_neurons_l1",
    "correlated_features_indices", "correlated_features_pearson", "correlated_features_l1",
    "neg_str", "neg_values", "pos_str", "pos_values", "frac_nonzero",
    "freq_hist_data_bar_heights", "freq_hist_data_bar_values",
    "logits_hist_data_bar_heights", "logits_hist_data_bar_values", "decoder_weights_dist",
)  # fmt: skip


def convert_batch(
    batch: dict[str, Any], source_set: str, hook: str, created_at: str
) -> Iterator[tuple[dict[str, Any], list[dict[str, Any]]]]:
    """(Neuron row, its Activation rows) per feature of ``batch``; ``hook`` is the hook point
    the converter asks for (e.g. ``hook_resid_post``)."""
    layer = batch["layer"]
    suffix = batch["sae_id_suffix"]
    source_id = f"{layer}-{source_set}" + (f"__{suffix}" if suffix else "")
    model_id = batch["model_id"]
    for feature in batch["features"]:
        neuron: dict[str, Any] = {
            "modelId": model_id,
            "layer": source_id,
            "index": feature["feature_index"],
            "creatorId": DEFAULT_CREATOR_ID,
            "createdAt": created_at,
            "maxActApprox": 0,
            "hasVector": "vector" in feature and len(feature["vector"]) > 0,
            "vector": feature.get("vector", []),
            "vectorLabel": None,
            "vectorDefaultSteerStrength": 10,
            "hookName": f"blocks.{layer}.{hook}" if "vector" in feature else None,
            "topkCosSimIndices": [],
            "topkCosSimValues": [],
            "sourceSetName": None,
            **{key: feature[key] for key in _COPIED},
        }
        activations = []
        for n, a in enumerate(feature["activations"]):
            top = max(a["values"])
            neuron["maxActApprox"] = max(neuron["maxActApprox"], top)
            activations.append(
                {
                    "id": f"converter-{feature['feature_index']}-{n}",
                    "tokens": a["tokens"],
                    "modelId": model_id,
                    "layer": source_id,
                    "index": feature["feature_index"],
                    "maxValue": top,
                    "maxValueTokenIndex": a["values"].index(top),
                    "minValue": min(a["values"]),
                    "values": a["values"],
                    "dfaValues": a.get("dfa_values", []),
                    "dfaTargetIndex": a.get("dfa_targetIndex"),
                    "dfaMaxValue": a.get("dfa_maxValue"),
                    "creatorId": DEFAULT_CREATOR_ID,
                    "createdAt": created_at,
                    "lossValues": a.get("loss_values", []),
                    "logitContributions": a.get("logit_contributions"),
                    "binContains": a["bin_contains"],
                    "binMax": a["bin_max"],
                    "binMin": a["bin_min"],
                    "qualifyingTokenIndex": a["qualifying_token_index"],
                    "dataIndex": None,
                    "dataSource": None,
                    "zIndices": None,
                    "zValues": None,
                }
            )
        if "vector" in feature:
            neuron["vectorDefaultSteerStrength"] = neuron["maxActApprox"]
        yield neuron, activations
