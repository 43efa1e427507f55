"""Loading language models and reading activations at a hook: the one door to TransformerLens.

Every other module talks to models through ``LoadedModel`` and the functions here, so that
TransformerLens's API (and its deprecations) is contained in one file. Two kinds of reference are
accepted: a TransformerLens name ("gpt2-small", "pythia-70m", fetched through the real
``HookedTransformer.from_pretrained`` path, hence the HF cache) and a local llama2.c checkpoint
("llama2c:<model.bin>?tokenizer=<tok.bin>").

Activations of llama2.c-family models are read through the lean forward of ``fast_llama`` (several
times less CPU than TransformerLens's, equal to float32 rounding at every hook); other models, and
any model loaded with ``transformer_lens_forward``, through ``HookedTransformer.run_with_hooks``.

TransformerLens (and the transformers, datasets and pandas it imports, 2.5 s of CPU) is imported
only when a HookedTransformer is built: a llama2.c checkpoint read by the lean forward never
imports it. The import runs with the cyclic collector paused: it makes hundreds of thousands of
lasting objects, and the full collections they set off cost a third of its CPU.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Any

import torch
from mistudio_common.dashboard_options import logit_lens_defined
from mistudio_common.errors import FailedPrecondition, InvalidArgument
from mistudio_common.gc_pause import collector_paused

from mistudio_compute import llama2c
from mistudio_compute.fast_llama import FastLlama, LlamaConfig, supports
from mistudio_compute.hooks import HookKind, HookPoint, hook_width, validate_hook
from mistudio_compute.input_files import Opener, open_trusted
from mistudio_compute.references import LLAMA2C_PREFIX, MODEL_FIELD, parse_llama2c_ref
from mistudio_compute.token_text import HfTokenizer, TokenizerAdapter

if TYPE_CHECKING:
    from transformer_lens import HookedTransformer, HookedTransformerConfig


@dataclass(frozen=True)
class LoadedModel:
    """A model (a HookedTransformer, or the lean forward alone) with what the rest of the
    service needs to know about it."""

    model: HookedTransformer | None
    """None: a llama2.c checkpoint that only the lean forward (``fast``) reads."""
    cfg: HookedTransformerConfig | LlamaConfig
    name: str
    """Short model name (TransformerLens name, or the llama2.c file stem)."""
    ref: str
    """The reference it was loaded from, reproducible with ``load_model``."""
    tokenizer: TokenizerAdapter | None
    d_vocab: int
    n_layers: int
    d_model: int
    bos_token_id: int | None
    eos_token_id: int | None
    pad_token_id: int | None
    device: torch.device
    fast: FastLlama | None
    """The lean forward over the same weights, for llama2.c-style models; None: TransformerLens
    reads the model (``load_model(..., transformer_lens_forward=True)`` gives its exact bits)."""

    @property
    def transformer(self) -> HookedTransformer:
        """The HookedTransformer, for what only TransformerLens runs."""
        if self.model is None:
            raise FailedPrecondition(
                f"model {self.name} is read by the lean forward alone",
                field=MODEL_FIELD,
                fix="load it with transformer_lens_forward=True "
                "(MISTUDIO_COMPUTE_TRANSFORMER_LENS_FORWARD)",
            )
        return self.model

    def hook_width(self, hook: str | HookPoint, head_index: int | None = None) -> int:
        return hook_width(self.cfg, hook, head_index)

    @property
    def concurrent_captures(self) -> bool:
        """Whether ``capture_hook`` may run on several threads at once: the lean forward keeps
        nothing between calls, where TransformerLens's hooks are attached to the model."""
        return self.fast is not None


def resolve_device(device: str = "auto") -> torch.device:
    """ "auto" (or "") picks CUDA when present; "cpu", "cuda", "cuda:N" and "mps" are checked."""
    text = (device or "auto").strip().lower()
    if text == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        resolved = torch.device(text)
    except RuntimeError as exc:
        raise InvalidArgument(
            f"unknown device {device!r}",
            field="device",
            fix='use "auto", "cpu", "cuda" or "cuda:N"',
        ) from exc
    if resolved.type == "cuda":
        count = torch.cuda.device_count() if torch.cuda.is_available() else 0
        if (resolved.index or 0) >= count:
            raise FailedPrecondition(
                f"device {device!r} requested but this machine has {count} CUDA device(s)",
                field="device",
                fix='use "auto" or "cpu"',
            )
    elif resolved.type == "mps" and not torch.backends.mps.is_available():
        raise FailedPrecondition("MPS is not available here", field="device", fix='use "cpu"')
    elif resolved.type not in ("cpu", "cuda", "mps"):
        raise InvalidArgument(
            f"unsupported device {device!r}", field="device", fix='use "auto", "cpu" or "cuda"'
        )
    return resolved


def load_model(
    model_ref: str,
    device: str = "auto",
    open_input: Opener = open_trusted,
    *,
    transformer_lens_forward: bool = False,
) -> LoadedModel:
    """Loads a TransformerLens hub model or a local llama2.c checkpoint (module docstring); a
    request's llama2.c files are read through ``open_input`` (``InputPolicy.open``).

    ``transformer_lens_forward`` reads every model through TransformerLens, never the lean
    forward; without it a llama2.c checkpoint gets the lean forward alone (no HookedTransformer).
    """
    ref = model_ref.strip()
    if not ref:
        raise InvalidArgument(
            "no model given",
            field=MODEL_FIELD,
            fix="name a TransformerLens model or llama2c:<path>",
        )
    torch_device = resolve_device(device)
    if ref.startswith(LLAMA2C_PREFIX):
        return _load_llama2c(ref, torch_device, open_input, transformer_lens_forward)
    loaded = _load_from_hub(ref, torch_device)
    return replace(loaded, fast=None) if transformer_lens_forward else loaded


def _import_transformer_lens() -> None:
    with collector_paused():
        import transformer_lens  # noqa: F401  # the first import, here, costs seconds of CPU


def _load_from_hub(name: str, device: torch.device) -> LoadedModel:
    _import_transformer_lens()
    from transformer_lens import HookedTransformer
    from transformer_lens.loading_from_pretrained import get_official_model_name

    try:
        get_official_model_name(name)
    except ValueError as exc:
        raise InvalidArgument(
            f"{name!r} is not a TransformerLens model name",
            field=MODEL_FIELD,
            fix='use a TransformerLens name such as "gpt2-small" or "pythia-70m", '
            'or a local model as "llama2c:<model.bin>?tokenizer=<tok.bin>"',
        ) from exc
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", DeprecationWarning)
            model = HookedTransformer.from_pretrained(name, device=str(device))
    except OSError as exc:  # huggingface_hub/transformers report offline and missing files so
        raise FailedPrecondition(
            f"model {name!r} cannot be loaded: its files are not in the Hugging Face cache "
            f"and the hub cannot be reached ({type(exc).__name__})",
            violations=[(name, "download the model into the HF cache (HF_HOME) beforehand")],
            field=MODEL_FIELD,
            fix=f"pre-download {name!r} into the Hugging Face cache on a machine with network "
            "access, or use a local reference such as llama2c:<model.bin>?tokenizer=<tok.bin>",
        ) from exc
    return wrap_model(model, name=name, ref=name)


def _load_llama2c(
    ref: str, device: torch.device, open_input: Opener, transformer_lens_forward: bool
) -> LoadedModel:
    model_path, tokenizer_path = parse_llama2c_ref(ref)
    ckpt = llama2c.read_llama2c_checkpoint(model_path, open_input)
    tokenizer = llama2c.read_llama2c_tokenizer(tokenizer_path, ckpt.config.vocab_size, open_input)
    name = model_path.stem
    weights = llama2c.transformer_lens_state_dict(ckpt)
    if transformer_lens_forward:
        _import_transformer_lens()
        from transformer_lens import HookedTransformerConfig

        cfg = HookedTransformerConfig(
            **llama2c.hooked_transformer_config(ckpt.config, name), device=str(device)
        )
        model = build_model(cfg)
        load_weights(model, weights)
        return replace(wrap_model(model, tokenizer, name=name, ref=ref), fast=None)
    config = llama2c.llama_config(ckpt.config, name)
    fast = FastLlama(config, {key: w.to(device) for key, w in weights.items()})
    return _loaded(None, config, fast, tokenizer, name=name, ref=ref, device=fast.W_E.device)


def build_model(cfg: HookedTransformerConfig) -> HookedTransformer:
    """A randomly initialised HookedTransformer (TransformerLens's deprecation notice muted)."""
    _import_transformer_lens()
    from transformer_lens import HookedTransformer

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        model = HookedTransformer(cfg)
    return model.eval()


def load_weights(model: HookedTransformer, state_dict: dict[str, torch.Tensor]) -> None:
    """Loads every parameter; only buffers (masks, rotary tables) may be absent from it."""
    missing, unexpected = model.load_state_dict(state_dict, strict=False)
    buffers = {name for name, _ in model.named_buffers()}
    absent = [name for name in missing if name not in buffers]
    if absent or unexpected:
        raise InvalidArgument(
            f"weights do not fit the model: missing {absent[:5]}, unexpected {unexpected[:5]}",
            field=MODEL_FIELD,
            fix="check that the checkpoint matches its configuration",
        )


def wrap_model(
    model: HookedTransformer,
    tokenizer: TokenizerAdapter | Any | None = None,
    *,
    name: str | None = None,
    ref: str | None = None,
) -> LoadedModel:
    """Wraps an already built model; ``tokenizer`` may be an adapter or a Hugging Face tokenizer
    (default: the model's own, if it has one)."""
    cfg = model.cfg
    fast = FastLlama.of(model) if supports(cfg) else None
    device = next(model.parameters()).device
    tokenizer = tokenizer if tokenizer is not None else model.tokenizer
    return _loaded(model, cfg, fast, tokenizer, name=name, ref=ref, device=device)


def _loaded(
    model: HookedTransformer | None,
    cfg: HookedTransformerConfig | LlamaConfig,
    fast: FastLlama | None,
    tokenizer: TokenizerAdapter | Any | None,
    *,
    name: str | None,
    ref: str | None,
    device: torch.device,
) -> LoadedModel:
    adapter = _as_adapter(tokenizer)
    model_name = name or cfg.model_name
    return LoadedModel(
        model=model,
        cfg=cfg,
        name=model_name,
        ref=ref or model_name,
        tokenizer=adapter,
        d_vocab=int(cfg.d_vocab),
        n_layers=int(cfg.n_layers),
        d_model=int(cfg.d_model),
        bos_token_id=adapter.bos_id if adapter else None,
        eos_token_id=adapter.eos_id if adapter else None,
        pad_token_id=adapter.pad_id if adapter else None,
        device=device,
        fast=fast,
    )


def _as_adapter(tokenizer: Any) -> TokenizerAdapter | None:
    if tokenizer is None:
        return None
    if hasattr(tokenizer, "piece_style"):
        return tokenizer  # type: ignore[no-any-return]
    return HfTokenizer(tokenizer)


def capture_hook(
    loaded: LoadedModel,
    tokens: torch.Tensor,
    hook_name: str | HookPoint,
    head_index: int | None = None,
) -> torch.Tensor:
    """Runs ``tokens`` [batch, pos] up to the hook's block and returns its activation.

    The result is [batch, pos, width]: attention hooks ([batch, pos, heads, d_head]) are flattened
    over heads, or reduced to one head when ``head_index`` is given. Later blocks are not computed.
    The lean forward serves the model when it has one (module docstring), else TransformerLens,
    whose hooks are attached for the call only, so one model must not serve two captures at once
    from different threads.
    """
    point = validate_hook(hook_name, loaded.n_layers)
    width = loaded.hook_width(point, head_index)
    _check_tokens(loaded, tokens)
    tokens = tokens.to(loaded.device)
    if loaded.fast is not None:
        act = loaded.fast.capture(tokens, point)
    else:
        act = _run_with_hooks(loaded.transformer, tokens, point)
    if point.kind.is_attention:
        act = act[:, :, head_index] if head_index is not None else act.flatten(2)
    assert act.shape[-1] == width, (act.shape, width)
    return act  # [batch, pos, width]


def _run_with_hooks(
    model: HookedTransformer, tokens: torch.Tensor, point: HookPoint
) -> torch.Tensor:
    """TransformerLens's activation at ``point``, stopping after its block."""
    captured: list[torch.Tensor] = []

    def save(activation: torch.Tensor, hook: Any) -> None:
        captured.append(activation)

    with torch.inference_mode():
        model.run_with_hooks(tokens, fwd_hooks=[(point.name, save)], stop_at_layer=point.layer + 1)
    return captured[0]


def _check_tokens(loaded: LoadedModel, tokens: torch.Tensor) -> None:
    if tokens.ndim != 2 or tokens.dtype not in (torch.int64, torch.int32):
        raise InvalidArgument(
            f"tokens must be an integer [batch, pos] tensor, got {tuple(tokens.shape)} "
            f"{tokens.dtype}",
            field="tokens",
            fix="pass token ids as a LongTensor of shape [batch, pos]",
        )
    if tokens.shape[1] > loaded.cfg.n_ctx:
        raise InvalidArgument(
            f"rows of {tokens.shape[1]} tokens exceed the model's context of {loaded.cfg.n_ctx}",
            field="tokens.context_size",
            fix=f"use a context_size of at most {loaded.cfg.n_ctx}",
        )
    if tokens.numel() and (int(tokens.min()) < 0 or int(tokens.max()) >= loaded.d_vocab):
        raise InvalidArgument(
            f"token ids must lie in 0..{loaded.d_vocab - 1}",
            field="tokens",
            fix="tokenize with this model's tokenizer",
        )


def unembed_directions(
    loaded: LoadedModel,
    hook_name: str | HookPoint,
    decoder_rows: torch.Tensor,
    head_index: int | None = None,
) -> torch.Tensor:
    """Maps SAE decoder rows [n, width] into the residual stream [n, d_model] for a logit lens.

    Residual and output hooks (resid_pre/mid/post, mlp_out, attn_out) already live there; hook_z
    rows go through that layer's W_O and mlp.hook_post rows through its W_out, as the block
    itself writes them. Queries, keys and values never reach the residual stream, so they have
    no logit lens (the plan leaves it out before the pass: ``logit_lens_defined``).
    """
    point = validate_hook(hook_name, loaded.n_layers)
    width = loaded.hook_width(point, head_index)
    if decoder_rows.ndim != 2 or decoder_rows.shape[1] != width:
        raise InvalidArgument(
            f"decoder rows have shape {tuple(decoder_rows.shape)}, expected [n, {width}] "
            f"for {point.name}",
            field="W_dec",
            fix="pass an SAE whose d_in equals the hook width",
        )
    if not logit_lens_defined(point.name):
        raise InvalidArgument(
            f"the logit lens is undefined for {point.name}: queries, keys and values are not "
            "written to the residual stream",
            field="hook_point",
            fix="leave the logit lens out (DASHBOARD_COMPONENT_LOGIT_LENS, --no-logit-lens)",
        )
    if point.kind is HookKind.MLP_POST:
        W_out = _w_out(loaded, point.layer)  # [d_mlp, d_model]
        return decoder_rows.to(W_out.device, W_out.dtype) @ W_out
    W_O = _w_o(loaded, point.layer)  # [n_heads, d_head, d_model]
    rows = decoder_rows.to(W_O.device, W_O.dtype)  # on the model, ready for W_U
    if point.kind is not HookKind.ATTN_Z:
        return rows
    if head_index is not None:
        return rows @ W_O[head_index]  # [n, d_model]
    n_heads, d_head, _ = W_O.shape
    return torch.einsum("nhd,hdm->nm", rows.reshape(-1, n_heads, d_head), W_O)


def unembedding_matrix(loaded: LoadedModel) -> torch.Tensor:
    """W_U [d_model, d_vocab]."""
    if loaded.model is None:
        assert loaded.fast is not None  # a model without a HookedTransformer has the lean one
        return loaded.fast.W_U
    return loaded.model.W_U


def _w_out(loaded: LoadedModel, layer: int) -> torch.Tensor:
    """The layer's MLP output matrix [d_mlp, d_model], from whichever forward holds it."""
    if loaded.model is None:
        assert loaded.fast is not None
        return loaded.fast.blocks[layer].w_out
    return loaded.model.blocks[layer].mlp.W_out  # type: ignore[no-any-return]


def _w_o(loaded: LoadedModel, layer: int) -> torch.Tensor:
    """The layer's attention output matrix [n_heads, d_head, d_model] (the same values as
    TransformerLens's W_O: the lean forward holds it flattened over heads)."""
    if loaded.model is None:
        fast = loaded.fast
        assert fast is not None
        return fast.blocks[layer].w_o.unflatten(0, (fast.n_heads, fast.d_head))
    return loaded.model.blocks[layer].attn.W_O  # type: ignore[no-any-return]
