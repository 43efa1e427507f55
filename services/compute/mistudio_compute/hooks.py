"""TransformerLens hook names: the vocabulary every SAE, request and dashboard shares.

We keep TransformerLens's own names (``blocks.{L}.hook_resid_post``, ``blocks.{L}.attn.hook_z``)
instead of inventing new ones, and this module is the one place that builds, parses and
checks them. It does not import transformer_lens: a model config is read by duck typing.
"""

from __future__ import annotations

import enum
import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Protocol

from mistudio_common.errors import InvalidArgument

HOOK_FIELD = "hook_point"


class HookKind(enum.Enum):
    """The hook points an SAE can read; values are the miStudio/proto spellings."""

    RESID_PRE = "resid_pre"
    RESID_MID = "resid_mid"
    RESID_POST = "resid_post"
    MLP_OUT = "mlp_out"
    MLP_POST = "mlp_post"
    ATTN_OUT = "attn_out"
    ATTN_Z = "attn_z"
    ATTN_Q = "attn_q"
    ATTN_K = "attn_k"
    ATTN_V = "attn_v"

    @property
    def is_attention(self) -> bool:
        return self in _ATTENTION_KINDS


_ATTENTION_KINDS = frozenset({HookKind.ATTN_Z, HookKind.ATTN_Q, HookKind.ATTN_K, HookKind.ATTN_V})

# Suffix after "blocks.{L}." for each kind.
_SUFFIX: dict[HookKind, str] = {
    HookKind.RESID_PRE: "hook_resid_pre",
    HookKind.RESID_MID: "hook_resid_mid",
    HookKind.RESID_POST: "hook_resid_post",
    HookKind.MLP_OUT: "hook_mlp_out",
    HookKind.MLP_POST: "mlp.hook_post",
    HookKind.ATTN_OUT: "hook_attn_out",
    HookKind.ATTN_Z: "attn.hook_z",
    HookKind.ATTN_Q: "attn.hook_q",
    HookKind.ATTN_K: "attn.hook_k",
    HookKind.ATTN_V: "attn.hook_v",
}
_KIND_BY_SUFFIX = {suffix: kind for kind, suffix in _SUFFIX.items()}
_HOOK_RE = re.compile(r"^blocks\.(\d+)\.(.+)$")
_SUPPORTED = ", ".join(f"blocks.{{L}}.{s}" for s in _SUFFIX.values())


@dataclass(frozen=True, slots=True)
class HookPoint:
    """A parsed hook name: which layer and which kind of activation."""

    layer: int
    kind: HookKind

    @property
    def name(self) -> str:
        return f"blocks.{self.layer}.{_SUFFIX[self.kind]}"

    def __str__(self) -> str:
        return self.name


class ModelDims(Protocol):
    """The parts of a ``HookedTransformerConfig`` (or ``fast_llama.LlamaConfig``) this module
    reads."""

    @property
    def n_layers(self) -> int: ...
    @property
    def d_model(self) -> int: ...
    @property
    def d_mlp(self) -> int | None: ...
    @property
    def n_heads(self) -> int: ...
    @property
    def d_head(self) -> int: ...
    @property
    def n_key_value_heads(self) -> int | None: ...


def parse_kind(kind: HookKind | str) -> HookKind:
    """A ``HookKind`` from itself or a spelling: "resid_post", "attn.hook_z" and "hook_z" work."""
    if isinstance(kind, HookKind):
        return kind
    text = kind.strip().lower()
    for candidate in HookKind:
        suffix = _SUFFIX[candidate]
        if text in (
            candidate.value,
            suffix,
            suffix.removeprefix("attn."),
            f"hook_{candidate.value}",
        ):
            return candidate
    raise InvalidArgument(
        f"unknown hook kind {kind!r}",
        field=HOOK_FIELD,
        fix=f"use one of {', '.join(k.value for k in HookKind)}",
    )


def hook_name(layer: int, kind: HookKind | str, n_layers: int | None = None) -> str:
    """The TransformerLens name for ``kind`` at ``layer``, checked against ``n_layers`` if given."""
    point = HookPoint(layer, parse_kind(kind))
    if n_layers is not None:
        _check_layer(point, n_layers)
    elif layer < 0:
        _check_layer(point, None)
    return point.name


def parse_hook_name(name: str) -> HookPoint:
    """Parses ``blocks.{L}.<hook>``; anything else is an InvalidArgument naming ``hook_point``."""
    match = _HOOK_RE.match(name.strip())
    kind = _KIND_BY_SUFFIX.get(match.group(2)) if match else None
    if match is None or kind is None:
        raise InvalidArgument(
            f"unsupported hook point {name!r}",
            field=HOOK_FIELD,
            fix=f"use a TransformerLens hook name of the form {_SUPPORTED}",
        )
    return HookPoint(int(match.group(1)), kind)


def validate_hook(hook: str | HookPoint, n_layers: int) -> HookPoint:
    """Parses ``hook`` and checks that its layer exists in a model with ``n_layers`` blocks."""
    point = parse_hook_name(hook) if isinstance(hook, str) else hook
    _check_layer(point, n_layers)
    return point


def _check_layer(point: HookPoint, n_layers: int | None) -> None:
    if point.layer < 0 or (n_layers is not None and point.layer >= n_layers):
        valid = f"0..{n_layers - 1}" if n_layers is not None else "a non-negative layer"
        raise InvalidArgument(
            f"hook point {point.name!r} is out of range: layer {point.layer} does not exist"
            + (f" in a model with {n_layers} layers" if n_layers is not None else ""),
            field=HOOK_FIELD,
            fix=f"use a layer in {valid}",
        )


def hook_width(cfg: ModelDims, hook: str | HookPoint, head_index: int | None = None) -> int:
    """Width of the flattened activation at ``hook``: what an SAE's ``d_in`` must equal.

    Attention hooks are ``[batch, pos, heads, d_head]`` and are read flattened (or one head when
    ``head_index`` is given); with grouped-query attention, hook_k/hook_v have only the KV heads.
    The MLP's hidden activation (``mlp.hook_post``) is ``d_mlp`` wide.
    """
    point = validate_hook(hook, cfg.n_layers)
    if point.kind is HookKind.MLP_POST:
        return int(cfg.d_mlp or 4 * cfg.d_model)
    if not point.kind.is_attention:
        return int(cfg.d_model)
    n_heads = attention_heads(cfg, point.kind)
    if head_index is None:
        return n_heads * int(cfg.d_head)
    if not 0 <= head_index < n_heads:
        raise InvalidArgument(
            f"head index {head_index} is out of range for {point.name} with {n_heads} heads",
            field="hook_head_index",
            fix=f"use a head index in 0..{n_heads - 1}",
        )
    return int(cfg.d_head)


def attention_heads(cfg: ModelDims, kind: HookKind) -> int:
    """Number of heads the activation of an attention hook has (KV heads for k/v under GQA)."""
    kv_heads = getattr(cfg, "n_key_value_heads", None)
    if kind in (HookKind.ATTN_K, HookKind.ATTN_V) and kv_heads:
        return int(kv_heads)
    return int(cfg.n_heads)


# SAELens 5.x and other trainers name the hook in several ways; a bare layer means the residual
# stream after that block, which is what SAELens 5 defaulted to.
_SPARSIFY_RE = re.compile(r"^layers\.(\d+)(?:\.(mlp|self_attn))?$")


def detect_hook_from_sae_config(cfg: Mapping[str, Any]) -> str | None:
    """The hook an SAE config names, or None when it names none.

    Looks at ``metadata.hook_name`` (SAELens 6), ``hook_name`` / ``hook_point`` (SAELens 5),
    ``hookpoint`` (EleutherAI sparsify, ``layers.N``) and finally a bare ``hook_layer``/``layer``.
    """
    metadata = cfg.get("metadata")
    candidates = [metadata.get("hook_name") if isinstance(metadata, Mapping) else None]
    candidates += [cfg.get("hook_name"), cfg.get("hook_point")]
    for candidate in candidates:
        if isinstance(candidate, str) and candidate:
            return candidate
    hookpoint = cfg.get("hookpoint")
    if isinstance(hookpoint, str):
        match = _SPARSIFY_RE.match(hookpoint)
        if match:
            kind = {"mlp": HookKind.MLP_OUT, None: HookKind.RESID_POST}.get(match.group(2))
            if kind is not None:
                return HookPoint(int(match.group(1)), kind).name
    for key in ("hook_layer", "layer"):
        layer = cfg.get(key)
        if isinstance(layer, int) and not isinstance(layer, bool) and layer >= 0:
            return HookPoint(layer, HookKind.RESID_POST).name
    return None
