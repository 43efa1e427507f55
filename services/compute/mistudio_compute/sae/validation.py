"""Checking an SAE against the model and hook it will read.

Imports no model code: the model is read through the small ``ModelLike`` protocol that
``model_access.LoadedModel`` satisfies, so this stays importable without TransformerLens.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Protocol

import torch
from mistudio_common.errors import InvalidArgument

from mistudio_compute.hooks import HOOK_FIELD, HookPoint, validate_hook
from mistudio_compute.sae.architectures import Sae

_UNIT_NORM_TOLERANCE = 1e-3


class ModelLike(Protocol):
    @property
    def name(self) -> str: ...
    @property
    def n_layers(self) -> int: ...
    def hook_width(self, hook: str | HookPoint, head_index: int | None = None) -> int: ...


@dataclass(frozen=True, slots=True)
class SaeCheck:
    """The hook an SAE will read, that hook's width, and non-fatal notes."""

    hook_point: str
    hook_width: int
    warnings: list[str] = field(default_factory=list)


def check_against_model(sae: Sae, model: ModelLike, hook: str | None = None) -> SaeCheck:
    """Resolves the hook (``hook`` overrides the SAE's own) and checks d_in against its width."""
    hook_name = hook or sae.hook_name
    if not hook_name:
        raise InvalidArgument(
            "the SAE config names no hook point and none was given",
            field=HOOK_FIELD,
            fix='pass hook_point, e.g. "blocks.2.hook_resid_post"',
        )
    point = validate_hook(hook_name, model.n_layers)
    width = model.hook_width(point, sae.cfg.hook_head_index)
    if sae.d_in != width:
        raise InvalidArgument(
            f"SAE d_in is {sae.d_in} but {point.name} of {model.name} has width {width}",
            field="d_in",
            fix="use the hook and model the SAE was trained on",
        )
    return SaeCheck(point.name, width, sae_warnings(sae, model.name))


def sae_warnings(sae: Sae, model_name: str | None = None) -> list[str]:
    """Notes worth showing but not worth refusing the SAE for."""
    notes: list[str] = []
    if model_name and sae.model_name and sae.model_name != model_name:
        notes.append(f"the SAE was trained on {sae.model_name!r}, not {model_name!r}")
    norms = sae.W_dec.norm(dim=-1)  # [d_sae]
    if not bool(torch.allclose(norms, torch.ones_like(norms), atol=_UNIT_NORM_TOLERANCE)):
        low, high = float(norms.min()), float(norms.max())
        notes.append(f"decoder rows are not unit-norm (norms {low:.3g}..{high:.3g})")
    if int((norms == 0).sum()):
        notes.append(f"{int((norms == 0).sum())} decoder rows are zero")
    return notes
