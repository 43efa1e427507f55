"""SAE configuration: SAELens ``cfg.json`` (v6 nested or 5.x flat) read into one dataclass.

SAELens decides the layout by ``sae_lens_version`` (in ``metadata`` or at the top level): 6 or
later is the v6 layout (architecture fields at the top, model/hook fields in ``metadata``),
anything else the legacy 5.x flat layout. We follow the same switch, but read the model and hook
fields from wherever they are, so a slightly misplaced key does not silently lose the hook.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from mistudio_common.errors import InvalidArgument

from mistudio_compute.hooks import detect_hook_from_sae_config

NORMALIZATIONS = ("none", "expected_average_only_in", "constant_norm_rescale", "layer_norm")
DTYPES = ("float32", "float64", "float16", "bfloat16")
_VERSION_MAJOR = re.compile(r"^\s*v?(\d+)")
_LEGACY_RENAMES = {
    "hook_point": "hook_name",
    "hook_point_head_index": "hook_head_index",
    "activation_fn_str": "activation_fn",
}


@dataclass(frozen=True)
class SaeConfig:
    """What encoding, validation and export need to know about an SAE."""

    architecture: str
    d_in: int
    d_sae: int
    apply_b_dec_to_input: bool = True
    normalize_activations: str = "none"
    norm_scaling_factor: float | None = None
    """Multiplies the input before encoding under "expected_average_only_in"."""
    k: int | None = None
    """TopK only: active features per row."""
    rescale_acts_by_decoder_norm: bool = False
    reshape_activations: str = "none"
    dtype: str = "float32"
    hook_name: str | None = None
    hook_head_index: int | None = None
    model_name: str | None = None
    context_size: int | None = None
    prepend_bos: bool | None = None
    dataset_path: str | None = None
    neuronpedia_id: str | None = None
    sae_lens_version: str | None = None
    model_from_pretrained_kwargs: Mapping[str, Any] = field(default_factory=dict)
    raw: Mapping[str, Any] = field(default_factory=dict, compare=False, repr=False)
    """The config dict as given, for provenance."""


def is_v6_layout(cfg: Mapping[str, Any]) -> bool:
    """True when SAELens would read ``cfg`` with its v6 path (sae_lens_version >= 6)."""
    version = _version(cfg)
    if version is None:
        return False
    match = _VERSION_MAJOR.match(str(version))
    if match is None:
        raise InvalidArgument(
            f"sae_lens_version {version!r} is not a version number",
            field="sae_lens_version",
            fix='write a version such as "6.54.12" in metadata.sae_lens_version',
        )
    return int(match.group(1)) >= 6


def _version(cfg: Mapping[str, Any]) -> Any:
    if cfg.get("sae_lens_version") is not None:
        return cfg["sae_lens_version"]
    metadata = cfg.get("metadata")
    return metadata.get("sae_lens_version") if isinstance(metadata, Mapping) else None


def parse_sae_config(cfg: Mapping[str, Any]) -> SaeConfig:
    """Reads a SAELens cfg dict (either layout); bad values are InvalidArgument naming the key."""
    v6 = is_v6_layout(cfg)
    flat = dict(cfg) if v6 else {_LEGACY_RENAMES.get(k, k): v for k, v in cfg.items()}
    metadata: Mapping[str, Any] = (
        cfg["metadata"] if isinstance(cfg.get("metadata"), Mapping) else {}
    )

    def meta(key: str) -> Any:
        first, second = (metadata, flat) if v6 else (flat, metadata)
        return first.get(key) if first.get(key) is not None else second.get(key)

    architecture = _architecture(flat, v6)
    d_in, d_sae = _positive_int(flat, "d_in"), _positive_int(flat, "d_sae")
    hook_name = detect_hook_from_sae_config(cfg)
    reshape = flat.get("reshape_activations") or (
        "hook_z" if not v6 and "hook_z" in str(hook_name or "") else "none"
    )
    normalize = _normalization(flat.get("normalize_activations"))
    return SaeConfig(
        architecture=architecture,
        d_in=d_in,
        d_sae=d_sae,
        apply_b_dec_to_input=bool(flat.get("apply_b_dec_to_input", True)),
        normalize_activations=normalize,
        norm_scaling_factor=_norm_scaling_factor(flat, metadata, normalize),
        k=_k(flat, architecture, d_sae),
        rescale_acts_by_decoder_norm=bool(flat.get("rescale_acts_by_decoder_norm", False)),
        reshape_activations=_choice(reshape, ("none", "hook_z"), "reshape_activations"),
        dtype=_dtype(flat.get("dtype")),
        hook_name=hook_name,
        hook_head_index=_optional_int(meta("hook_head_index"), "hook_head_index"),
        model_name=meta("model_name"),
        context_size=_optional_int(meta("context_size"), "context_size"),
        prepend_bos=meta("prepend_bos"),
        dataset_path=meta("dataset_path"),
        neuronpedia_id=meta("neuronpedia_id"),
        sae_lens_version=_version(cfg),
        model_from_pretrained_kwargs=dict(meta("model_from_pretrained_kwargs") or {}),
        raw=dict(cfg),
    )


def _architecture(flat: Mapping[str, Any], v6: bool) -> str:
    if v6 and not flat.get("architecture"):
        raise InvalidArgument(
            "cfg.json of a SAELens 6 SAE names no architecture",
            field="architecture",
            fix='add "architecture" (e.g. "standard", "jumprelu", "topk", "gated")',
        )
    architecture = str(flat.get("architecture") or "standard")
    kwargs = flat.get("activation_fn_kwargs") or {}
    if not v6 and flat.get("activation_fn") == "topk" and kwargs.get("k") is not None:
        return "topk"  # SAELens 5 spelled TopK as an activation function
    return architecture


def _k(flat: Mapping[str, Any], architecture: str, d_sae: int) -> int | None:
    if architecture != "topk":
        return None
    k = flat.get("k")
    if k is None:
        k = (flat.get("activation_fn_kwargs") or {}).get("k")
    if k is None:
        raise InvalidArgument(
            "a topk SAE needs k (SAELens would silently use 100)",
            field="k",
            fix='add the top-level key "k" to the config',
        )
    value = _optional_int(k, "k")
    if value is None or not 0 < value <= d_sae:
        raise InvalidArgument(f"k = {k} is not in 1..d_sae ({d_sae})", field="k", fix="fix k")
    return value


def _normalization(value: Any) -> str:
    if value is None or value is False:
        return "none"
    if value is True:
        return "expected_average_only_in"  # SAELens 5 stored a bool
    return _choice(str(value), NORMALIZATIONS, "normalize_activations")


def _norm_scaling_factor(
    flat: Mapping[str, Any], metadata: Mapping[str, Any], normalize: str
) -> float | None:
    value = flat.get("norm_scaling_factor", metadata.get("norm_scaling_factor"))
    if value is None:
        if normalize == "expected_average_only_in":
            raise InvalidArgument(
                'normalize_activations is "expected_average_only_in" but no norm_scaling_factor '
                "is given, and SAELens does not store it in cfg.json",
                field="norm_scaling_factor",
                fix="pass norm_scaling_factor (from the release's pretrained_saes.yaml) in config",
            )
        return None
    try:
        factor = float(value)
    except (TypeError, ValueError):
        factor = math.nan
    if not math.isfinite(factor) or factor <= 0:
        raise InvalidArgument(
            f"norm_scaling_factor {value!r} must be a positive number",
            field="norm_scaling_factor",
            fix="pass the factor the SAE was trained with",
        )
    return factor


def _dtype(value: Any) -> str:
    if value is None:
        return "float32"
    return _choice(str(value).removeprefix("torch."), DTYPES, "dtype")


def _choice(value: str, allowed: tuple[str, ...], key: str) -> str:
    if value not in allowed:
        raise InvalidArgument(
            f"{key} {value!r} is not supported", field=key, fix=f"use one of {', '.join(allowed)}"
        )
    return value


def _positive_int(cfg: Mapping[str, Any], key: str) -> int:
    value = _optional_int(cfg.get(key), key)
    if value is None or value <= 0:
        raise InvalidArgument(
            f"{key} is missing or not a positive integer ({cfg.get(key)!r})",
            field=key,
            fix=f"give {key} in the SAE config",
        )
    return value


def _optional_int(value: Any, key: str) -> int | None:
    if value is None:
        return None
    if (
        isinstance(value, bool)
        or not isinstance(value, int | float)
        or not math.isfinite(value)
        or value != int(value)
    ):
        raise InvalidArgument(f"{key} = {value!r} is not an integer", field=key, fix=f"fix {key}")
    return int(value)
