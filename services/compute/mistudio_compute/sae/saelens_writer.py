"""Writing an SAE as a SAELens 6 folder (the export packs the ``pretrained_saes.yaml`` entry).

The folder is what ``SAE.save_model()`` of sae-lens 6.54 writes: ``cfg.json`` with the
architecture's fields at the top level and the model/hook fields nested in ``metadata`` (with
``sae_lens_version``, without which SAELens drops the metadata), ``sae_weights.safetensors`` with
exactly the tensors the architecture loads, and optionally ``sparsity.safetensors``. Weights are
written after our load-time folding (threshold, scaling factors, norm scaling), so the folder
needs no converter. Output bytes depend only on the input.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from mistudio_common.errors import InvalidArgument
from safetensors.torch import save

from mistudio_compute.sae.architectures import Sae
from mistudio_compute.sae.loading import CONFIG_FILE, SPARSITY_FILE, WEIGHTS_FILE

SAELENS_FORMAT_VERSION = "6.54.12"
"""The sae-lens release this layout was verified against."""
SPARSITY_EPSILON = 1e-10


@dataclass(frozen=True, slots=True)
class SaeLensMetadata:
    """Model and dataset facts for ``cfg.json``; ``None`` falls back to the SAE's own config."""

    model_name: str | None = None
    hook_name: str | None = None
    neuronpedia_id: str | None = None
    context_size: int | None = None
    prepend_bos: bool | None = None
    dataset_path: str | None = None


def saelens_config(sae: Sae, meta: SaeLensMetadata | None = None) -> dict[str, Any]:
    """The ``cfg.json`` dict, keys in the order ``save_model`` writes them."""
    meta = meta or SaeLensMetadata()
    cfg = sae.cfg
    hook_name = meta.hook_name or cfg.hook_name
    out: dict[str, Any] = {
        "d_in": cfg.d_in,
        "d_sae": cfg.d_sae,
        "dtype": "float32",
        "device": "cpu",
        "apply_b_dec_to_input": cfg.apply_b_dec_to_input,
        "normalize_activations": cfg.normalize_activations,
        "reshape_activations": cfg.reshape_activations,
    }
    if cfg.architecture == "topk":
        out["k"] = cfg.k
        out["rescale_acts_by_decoder_norm"] = cfg.rescale_acts_by_decoder_norm
    out["metadata"] = {
        "sae_lens_version": SAELENS_FORMAT_VERSION,
        "sae_lens_training_version": _training_version(cfg.sae_lens_version),
        "model_name": meta.model_name or cfg.model_name,
        "hook_name": hook_name,
        "hook_head_index": cfg.hook_head_index,
        "model_class_name": "HookedTransformer",
        "context_size": _first(meta.context_size, cfg.context_size),
        "prepend_bos": _first(meta.prepend_bos, cfg.prepend_bos),
        "dataset_path": meta.dataset_path or cfg.dataset_path,
        "seqpos_slice": [None],
        "model_from_pretrained_kwargs": dict(cfg.model_from_pretrained_kwargs),
        "neuronpedia_id": meta.neuronpedia_id or cfg.neuronpedia_id,
    }
    out["architecture"] = cfg.architecture
    return out


def _first(*values: Any) -> Any:
    return next((v for v in values if v is not None), None)


def _training_version(version: str | None) -> str:
    return str(version) if version else SAELENS_FORMAT_VERSION


def saelens_files(
    sae: Sae,
    meta: SaeLensMetadata | None = None,
    feature_frequencies: Sequence[float] | np.ndarray[Any, Any] | None = None,
) -> dict[str, bytes]:
    """File name -> bytes of the SAELens folder (``sparsity.safetensors`` only with
    frequencies)."""
    cfg_text = json.dumps(saelens_config(sae, meta), indent=2, allow_nan=False) + "\n"
    files = {CONFIG_FILE: cfg_text.encode("utf-8"), WEIGHTS_FILE: weights_bytes(sae)}
    if feature_frequencies is not None and len(feature_frequencies) > 0:
        files[SPARSITY_FILE] = sparsity_bytes(feature_frequencies, sae.d_sae)
    return files


def weights_bytes(sae: Sae) -> bytes:
    tensors = {
        name: tensor.detach().to("cpu", torch.float32).contiguous()
        for name, tensor in sae.state_dict().items()
    }
    return bytes(save(tensors))


def sparsity_bytes(frequencies: Sequence[float] | np.ndarray[Any, Any], d_sae: int) -> bytes:
    """``{"sparsity": log10(freq + 1e-10)}`` as SAELens's trainer writes it."""
    freq = np.asarray(frequencies, dtype=np.float64)
    if freq.shape != (d_sae,) or not np.all(np.isfinite(freq)) or np.any((freq < 0) | (freq > 1)):
        raise InvalidArgument(
            f"feature_frequencies must be {d_sae} values in [0, 1], got shape {freq.shape}",
            field="feature_frequencies",
            fix="pass one firing frequency per feature, or none",
        )
    sparsity = torch.from_numpy(np.log10(freq + SPARSITY_EPSILON).astype(np.float32))
    return bytes(save({"sparsity": sparsity}))


def write_saelens_folder(
    sae: Sae,
    folder: str | Path,
    meta: SaeLensMetadata | None = None,
    feature_frequencies: Sequence[float] | np.ndarray[Any, Any] | None = None,
) -> Path:
    """Writes the folder (created if needed) and returns its path."""
    out = Path(folder)
    out.mkdir(parents=True, exist_ok=True)
    for name, data in saelens_files(sae, meta, feature_frequencies).items():
        (out / name).write_bytes(data)
    return out
