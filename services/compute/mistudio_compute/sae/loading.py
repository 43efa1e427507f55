"""Reading SAEs: a SAELens folder, or a bare safetensors file plus an explicit config.

Checkpoints from older SAELens versions and other trainers are brought to the SAELens 6
inference form here, once, so the architectures stay simple:

* ``log_threshold`` becomes ``threshold = exp(log_threshold)`` (JumpReLU trainers store the log);
* a legacy per-feature ``scaling_factor`` is folded into ``W_dec`` (5.x decoded ``(f*s) @ W_dec``);
* ``expected_average_only_in`` is folded as SAELens's ``fold_activation_norm_scaling_factor``
  does (``W_enc*s``, ``W_dec/s``, ``b_dec/s``), which equals encoding ``x*s`` and decoding back
  to hook space; the config then says "none".
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch
from mistudio_common.errors import InvalidArgument
from safetensors import SafetensorError
from safetensors.torch import load_file

from mistudio_compute.input_files import InputKind, Opener, descriptor_path, open_trusted
from mistudio_compute.sae.architectures import Sae, architecture_class
from mistudio_compute.sae.config import SaeConfig, parse_sae_config
from mistudio_compute.sae.hub import local_path

CONFIG_FILE = "cfg.json"
WEIGHTS_FILE = "sae_weights.safetensors"
SPARSITY_FILE = "sparsity.safetensors"
PATH_FIELD = "sae.files.path"


def load_sae(
    path: str | Path,
    config: Mapping[str, Any] | None = None,
    *,
    device: str | torch.device = "cpu",
    dtype: torch.dtype = torch.float32,
    open_input: Opener = open_trusted,
) -> Sae:
    """Loads a SAELens folder (``cfg.json`` + ``sae_weights.safetensors``), a ``.safetensors``
    file, or a hub location (``hf://``, ``saelens://``; see ``sae.hub``). Keys in ``config``
    override those of a ``cfg.json`` found next to the weights; a bare file without a sibling
    ``cfg.json`` needs ``config``. Files are read through ``open_input`` (for a request's
    files: ``InputPolicy.open``)."""
    weights_path, cfg_path = _locate(local_path(path))
    cfg: dict[str, Any] = _read_json(cfg_path, open_input) if cfg_path is not None else {}
    cfg.update(config or {})
    if not cfg:
        raise InvalidArgument(
            f"{weights_path} has no {CONFIG_FILE} next to it and no config was given",
            field="sae.files.config",
            fix="pass the SAE config (architecture, d_in, d_sae, hook_name, …) with the file",
        )
    return build_sae(cfg, read_weights(weights_path, open_input), device=device, dtype=dtype)


def build_sae(
    config: Mapping[str, Any] | SaeConfig,
    weights: Mapping[str, torch.Tensor | np.ndarray[Any, Any]],
    *,
    device: str | torch.device = "cpu",
    dtype: torch.dtype = torch.float32,
) -> Sae:
    """Checks ``weights`` against ``config`` (names, shapes, finiteness) and builds the SAE."""
    cfg = config if isinstance(config, SaeConfig) else parse_sae_config(config)
    cls = architecture_class(cfg.architecture)
    tensors = {name: torch.as_tensor(value) for name, value in weights.items()}
    tensors = _convert_legacy_tensors(cfg, tensors)
    check_tensors(cls, cfg, tensors)
    tensors = {name: t.to(device=device, dtype=dtype) for name, t in tensors.items()}
    if cfg.normalize_activations == "expected_average_only_in":
        tensors, cfg = _fold_norm_scaling_factor(tensors, cfg)
    return cls(cfg, tensors)


def read_weights(path: Path, open_input: Opener = open_trusted) -> dict[str, torch.Tensor]:
    try:
        with open_input(path, InputKind.SAE_WEIGHTS) as handle:
            return load_file(descriptor_path(handle), device="cpu")
    except (SafetensorError, OSError) as exc:
        raise InvalidArgument(
            f"cannot read SAE weights {str(path)!r} ({type(exc).__name__})",
            field=PATH_FIELD,
            fix="pass a readable .safetensors file (SAELens: sae_weights.safetensors)",
        ) from exc


def _locate(path: Path) -> tuple[Path, Path | None]:
    """(weights file, cfg.json or None) for a folder or a weights file."""
    if path.is_dir():
        weights, cfg = path / WEIGHTS_FILE, path / CONFIG_FILE
    else:
        weights, cfg = path, path.parent / CONFIG_FILE
    if not weights.is_file():
        raise InvalidArgument(
            f"no SAE weights at {str(weights)!r}",
            field=PATH_FIELD,
            fix=f"pass a SAELens folder holding {WEIGHTS_FILE} or a .safetensors file",
        )
    return weights, cfg if cfg.is_file() else None


def _read_json(path: Path, open_input: Opener) -> dict[str, Any]:
    try:
        with open_input(path, InputKind.SAE_CONFIG) as handle:
            loaded = json.loads(handle.read().decode("utf-8"))
    except RecursionError as exc:
        raise InvalidArgument(
            f"{path} nests too deeply to be an SAE config",
            field="sae.files.config",
            fix="write cfg.json as one JSON object of settings (SAELens nests only its metadata)",
        ) from exc
    except (OSError, ValueError) as exc:
        raise InvalidArgument(
            f"cannot read {path} ({type(exc).__name__})",
            field="sae.files.config",
            fix="write valid UTF-8 JSON",
        ) from exc
    if not isinstance(loaded, dict):
        raise InvalidArgument(
            f"{path} is not a JSON object", field="sae.files.config", fix="write a JSON object"
        )
    return loaded


def _convert_legacy_tensors(cfg: SaeConfig, tensors: dict[str, torch.Tensor]) -> dict[str, Any]:
    tensors = dict(tensors)
    if cfg.architecture == "jumprelu" and "threshold" not in tensors and "log_threshold" in tensors:
        tensors["threshold"] = tensors.pop("log_threshold").double().exp()
    scaling = tensors.pop("scaling_factor", None)
    if scaling is not None and "W_dec" in tensors:
        if scaling.shape != (cfg.d_sae,):
            raise InvalidArgument(
                f"scaling_factor has shape {tuple(scaling.shape)}, expected ({cfg.d_sae},)",
                field="scaling_factor",
                fix="store one scaling factor per feature, or fold it into W_dec",
            )
        w_dec = tensors["W_dec"]
        tensors["W_dec"] = (w_dec.double() * scaling.double()[:, None]).to(w_dec.dtype)
    return tensors


def check_tensors(cls: type[Sae], cfg: SaeConfig, tensors: Mapping[str, torch.Tensor]) -> None:
    """Names, shapes and finiteness, each failure an InvalidArgument naming the tensor."""
    expected = cls.tensor_shapes(cfg)
    for name in expected:
        if name not in tensors:
            hint = " (a jumprelu SAE needs a per-feature threshold)" if name == "threshold" else ""
            raise InvalidArgument(
                f"{cfg.architecture} SAE weights lack tensor {name!r}{hint}",
                field=name,
                fix=f"store exactly {', '.join(expected)}",
            )
    for name in tensors:
        if name not in expected:
            raise InvalidArgument(
                f"unexpected tensor {name!r} for a {cfg.architecture} SAE",
                field=name,
                fix=f"store exactly {', '.join(expected)} (did the config name the wrong "
                "architecture?)",
            )
    for name, shape in expected.items():
        _check_shape(name, tuple(tensors[name].shape), shape)
        if not tensors[name].is_floating_point():
            raise InvalidArgument(
                f"{name} has dtype {tensors[name].dtype}", field=name, fix="store float tensors"
            )
        if not bool(torch.isfinite(tensors[name]).all()):
            bad = int((~torch.isfinite(tensors[name])).sum())
            raise InvalidArgument(
                f"{name} holds {bad} NaN or infinite value(s)",
                field=name,
                fix="retrain or repair the SAE; weights must be finite",
            )


def _check_shape(name: str, actual: tuple[int, ...], expected: tuple[int, ...]) -> None:
    if actual == expected:
        return
    transposed = len(actual) == 2 and actual == expected[::-1]
    raise InvalidArgument(
        f"{name} has shape {list(actual)}, expected {list(expected)}"
        + (" (it looks transposed)" if transposed else ""),
        field=name,
        fix=(
            f"transpose {name}: SAELens stores W_enc as [d_in, d_sae] and W_dec as [d_sae, d_in]"
            if transposed
            else "check d_in and d_sae in the config against the weights"
        ),
    )


def _fold_norm_scaling_factor(
    tensors: dict[str, torch.Tensor], cfg: SaeConfig
) -> tuple[dict[str, torch.Tensor], SaeConfig]:
    scale = cfg.norm_scaling_factor
    assert scale is not None  # guaranteed by parse_sae_config
    folded = dict(tensors)
    folded["W_enc"] = tensors["W_enc"] * scale
    folded["W_dec"] = tensors["W_dec"] / scale
    folded["b_dec"] = tensors["b_dec"] / scale
    return folded, dataclasses.replace(cfg, normalize_activations="none")


def read_sparsity(folder: str | Path) -> torch.Tensor | None:
    """``sparsity.safetensors`` (log10 feature frequencies [d_sae]) if the folder has one."""
    path = Path(folder) / SPARSITY_FILE
    return read_weights(path)["sparsity"] if path.is_file() else None
