"""llama2.c checkpoints (e.g. stories260K) and their tokenizer, read without the hub.

The checkpoint is the legacy (version 0) export: seven little-endian int32 (dim, hidden_dim,
n_layers, n_heads, n_kv_heads, vocab_size, seq_len; a negative vocab_size means the unembedding is
stored separately), then fp32 weights in llama2.c's order. This module turns it into a config
and a state dict under TransformerLens's names, which the lean forward (``fast_llama``) reads as
they are; ``model_access`` builds a HookedTransformer from them only when one is asked for (it is
the only module that imports transformer_lens). The tokenizer export is rebuilt as a real
SentencePiece model so that encoding is the library's, not ours.
"""

from __future__ import annotations

import re
import struct
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import sentencepiece as spm
import torch
from mistudio_common.errors import InvalidArgument
from sentencepiece import sentencepiece_model_pb2

from mistudio_compute.fast_llama import LlamaConfig
from mistudio_compute.input_files import InputKind, Opener, open_trusted
from mistudio_compute.references import MODEL_FIELD
from mistudio_compute.token_text import PieceStyle

HEADER = struct.Struct("<7i")
"""dim, hidden_dim, n_layers, n_heads, n_kv_heads, vocab_size (negative: separate classifier),
seq_len."""
_VERSIONED_MAGIC = 0x616B3432  # "ak42": llama2.c exports of version >= 1
_BYTE_PIECE = re.compile(r"^<0x[0-9A-Fa-f]{2}>$")
_Array = np.ndarray[Any, np.dtype[np.float32]]
sp_pb: Any = sentencepiece_model_pb2  # generated at runtime, so typed loosely


@dataclass(frozen=True, slots=True)
class Llama2cConfig:
    dim: int
    hidden_dim: int
    n_layers: int
    n_heads: int
    n_kv_heads: int
    vocab_size: int
    seq_len: int
    shared_classifier: bool

    @property
    def head_size(self) -> int:
        return self.dim // self.n_heads


@dataclass(frozen=True, slots=True)
class Llama2cCheckpoint:
    config: Llama2cConfig
    weights: dict[str, _Array]
    """llama2.c names and layouts, stacked over layers: ``wq`` is [n_layers, dim, dim] (out, in)."""


def read_llama2c_config(path: str | Path, open_input: Opener = open_trusted) -> Llama2cConfig:
    """The header of a legacy llama2.c ``.bin`` alone (28 bytes, not the weights)."""
    try:
        with open_input(Path(path), InputKind.MODEL_FILE) as f:
            head = f.read(HEADER.size)
    except OSError as exc:
        raise _bad_checkpoint(path, f"cannot read it: {exc.strerror or exc}") from exc
    return _parse_header(head, path)


def read_llama2c_checkpoint(
    path: str | Path, open_input: Opener = open_trusted
) -> Llama2cCheckpoint:
    """Reads a legacy llama2.c ``.bin``; a wrong size or a newer export is an InvalidArgument.
    A request's file is read through ``open_input`` (``InputPolicy.open``): the checked file."""
    data = _read_file(Path(path), "model checkpoint", open_input)
    cfg = _parse_header(data, path)
    shapes = _weight_shapes(cfg)
    expected = sum(int(np.prod(s)) for s in shapes.values())
    floats = np.frombuffer(data, dtype="<f4", offset=HEADER.size)
    if floats.size != expected:
        raise _bad_checkpoint(path, f"expected {expected} fp32 weights, found {floats.size}")
    weights: dict[str, _Array] = {}
    offset = 0
    for name, shape in shapes.items():
        count = int(np.prod(shape))
        weights[name] = floats[offset : offset + count].reshape(shape).astype(np.float32)
        offset += count
    return Llama2cCheckpoint(cfg, weights)


def _parse_header(data: bytes, path: str | Path) -> Llama2cConfig:
    if len(data) < HEADER.size:
        raise _bad_checkpoint(path, "the file is shorter than the 28-byte header")
    if struct.unpack_from("<I", data)[0] == _VERSIONED_MAGIC:
        raise InvalidArgument(
            f"{path} is a versioned llama2.c export; only the legacy (version 0) format is read",
            field=MODEL_FIELD,
            fix="re-export the model with llama2.c's export.py --version 0",
        )
    dim, hidden, n_layers, n_heads, n_kv, vocab, seq_len = HEADER.unpack_from(data)
    if min(dim, hidden, n_layers, n_heads, n_kv, seq_len) <= 0 or dim % n_heads:
        # the numbers are the file's first bytes: naming them would leak a file's content
        raise _bad_checkpoint(path, "its header does not describe a transformer")
    return Llama2cConfig(dim, hidden, n_layers, n_heads, n_kv, abs(vocab), seq_len, vocab > 0)


def _weight_shapes(cfg: Llama2cConfig) -> dict[str, tuple[int, ...]]:
    """llama2.c's legacy_export order; freq_cis tables are stored but recomputed by TL."""
    L, d, h, kv_dim = cfg.n_layers, cfg.dim, cfg.hidden_dim, cfg.n_kv_heads * cfg.head_size
    shapes: dict[str, tuple[int, ...]] = {
        "token_embedding": (cfg.vocab_size, d),
        "rms_att": (L, d),
        "wq": (L, d, d),
        "wk": (L, kv_dim, d),
        "wv": (L, kv_dim, d),
        "wo": (L, d, d),
        "rms_ffn": (L, d),
        "w1": (L, h, d),
        "w2": (L, d, h),
        "w3": (L, h, d),
        "rms_final": (d,),
        "freq_cis_real": (cfg.seq_len, cfg.head_size // 2),
        "freq_cis_imag": (cfg.seq_len, cfg.head_size // 2),
    }
    if not cfg.shared_classifier:
        shapes["wcls"] = (cfg.vocab_size, d)
    return shapes


def llama_config(cfg: Llama2cConfig, name: str) -> LlamaConfig:
    """The model's dimensions as the lean forward and the hook widths read them."""
    return LlamaConfig(
        model_name=name,
        n_layers=cfg.n_layers,
        d_model=cfg.dim,
        d_head=cfg.head_size,
        n_heads=cfg.n_heads,
        n_key_value_heads=cfg.n_kv_heads if cfg.n_kv_heads != cfg.n_heads else None,
        d_mlp=cfg.hidden_dim,
        d_vocab=cfg.vocab_size,
        n_ctx=cfg.seq_len,
        rotary_dim=cfg.head_size,
    )


def hooked_transformer_config(cfg: Llama2cConfig, name: str) -> dict[str, Any]:
    """``HookedTransformerConfig`` arguments for a llama2.c model: ``llama_config``'s fields and
    the switches of the llama2.c family (``fast_llama`` checks the same ones).

    llama2.c rotates adjacent pairs of each head's dimensions, hence ``rotary_adjacent_pairs``.
    """
    return asdict(llama_config(cfg, name)) | {
        "act_fn": "silu",
        "gated_mlp": True,
        "normalization_type": "RMS",
        "final_rms": True,
        "positional_embedding_type": "rotary",
        "rotary_adjacent_pairs": True,
    }


def transformer_lens_state_dict(ckpt: Llama2cCheckpoint) -> dict[str, torch.Tensor]:
    """The checkpoint under TransformerLens parameter names (biases are zeros: llama has none)."""
    cfg, w = ckpt.config, ckpt.weights
    H, KV, dh, d = cfg.n_heads, cfg.n_kv_heads, cfg.head_size, cfg.dim
    gqa = KV != H
    sd: dict[str, _Array] = {"embed.W_E": w["token_embedding"], "ln_final.w": w["rms_final"]}
    unembed = w["token_embedding"] if cfg.shared_classifier else w["wcls"]
    sd["unembed.W_U"] = unembed.T  # [d_model, d_vocab]
    sd["unembed.b_U"] = np.zeros(cfg.vocab_size, np.float32)
    for layer in range(cfg.n_layers):
        p = f"blocks.{layer}."
        k_name, v_name = ("attn._W_K", "attn._W_V") if gqa else ("attn.W_K", "attn.W_V")
        kb_name, vb_name = ("attn._b_K", "attn._b_V") if gqa else ("attn.b_K", "attn.b_V")
        sd |= {
            p + "ln1.w": w["rms_att"][layer],
            p + "ln2.w": w["rms_ffn"][layer],
            # wq is [H*dh, d] (out, in): per head [dh, d], transposed to TL's [d, dh].
            p + "attn.W_Q": w["wq"][layer].reshape(H, dh, d).transpose(0, 2, 1),
            p + k_name: w["wk"][layer].reshape(KV, dh, d).transpose(0, 2, 1),
            p + v_name: w["wv"][layer].reshape(KV, dh, d).transpose(0, 2, 1),
            p + "attn.W_O": w["wo"][layer].T.reshape(H, dh, d),
            p + "attn.b_Q": np.zeros((H, dh), np.float32),
            p + kb_name: np.zeros((KV, dh), np.float32),
            p + vb_name: np.zeros((KV, dh), np.float32),
            p + "attn.b_O": np.zeros(d, np.float32),
            p + "mlp.W_gate": w["w1"][layer].T,
            p + "mlp.W_in": w["w3"][layer].T,
            p + "mlp.W_out": w["w2"][layer].T,
            p + "mlp.b_in": np.zeros(cfg.hidden_dim, np.float32),
            p + "mlp.b_out": np.zeros(d, np.float32),
        }
    return {name: torch.from_numpy(np.ascontiguousarray(a)) for name, a in sd.items()}


class SentencePieceTokenizer:
    """``TokenizerAdapter`` over a ``SentencePieceProcessor``."""

    def __init__(self, processor: spm.SentencePieceProcessor) -> None:
        self._sp = processor

    @classmethod
    def from_model_proto(cls, model_proto: bytes) -> SentencePieceTokenizer:
        return cls(spm.SentencePieceProcessor(model_proto=model_proto))

    @property
    def vocab_size(self) -> int:
        return int(self._sp.get_piece_size())

    @property
    def bos_id(self) -> int | None:
        return _optional_id(self._sp.bos_id())

    @property
    def eos_id(self) -> int | None:
        return _optional_id(self._sp.eos_id())

    @property
    def pad_id(self) -> int | None:
        return _optional_id(self._sp.pad_id())

    @property
    def piece_style(self) -> PieceStyle:
        return PieceStyle.SENTENCEPIECE

    @property
    def processor(self) -> spm.SentencePieceProcessor:
        return self._sp

    def encode(self, text: str) -> list[int]:
        return [int(i) for i in self._sp.encode(text, out_type=int)]

    def decode(self, ids: Sequence[int]) -> str:
        return str(self._sp.decode([int(i) for i in ids]))

    def piece(self, token_id: int) -> str:
        return str(self._sp.id_to_piece(int(token_id)))

    def is_special(self, token_id: int) -> bool:
        t = int(token_id)
        return bool(self._sp.is_control(t) or self._sp.is_unknown(t))


def _optional_id(value: int) -> int | None:
    return None if value < 0 else int(value)


PieceSpec = tuple[str, float, int]
"""(piece, score, ``ModelProto.SentencePiece.Type``)."""


def sentencepiece_bpe_model(pieces: Sequence[PieceSpec], *, byte_fallback: bool = True) -> bytes:
    """A serialized SentencePiece BPE model with llama's settings.

    Identity normaliser, dummy prefix, whitespace kept as is, ids 0/1/2 = unk/bos/eos; merges
    follow the piece scores, as in llama2.c's encoder.
    """
    model = sp_pb.ModelProto()
    for text, score, kind in pieces:
        piece = model.pieces.add()
        piece.piece, piece.score, piece.type = text, score, kind
    trainer = model.trainer_spec
    trainer.model_type = sp_pb.TrainerSpec.BPE
    trainer.vocab_size = len(pieces)
    trainer.byte_fallback = byte_fallback
    trainer.unk_id, trainer.bos_id, trainer.eos_id, trainer.pad_id = 0, 1, 2, -1
    trainer.allow_whitespace_only_pieces = True
    trainer.split_digits = True
    normalizer = model.normalizer_spec
    normalizer.name = "identity"
    normalizer.add_dummy_prefix = True
    normalizer.remove_extra_whitespaces = False
    normalizer.escape_whitespaces = True
    return bytes(model.SerializeToString())


def read_llama2c_tokenizer(
    path: str | Path, vocab_size: int | None = None, open_input: Opener = open_trusted
) -> SentencePieceTokenizer:
    """Rebuilds llama2.c's ``tokenizer.bin`` export (e.g. tok512.bin) as a SentencePiece model."""
    data = _read_file(Path(path), "tokenizer", open_input)
    pieces: list[PieceSpec] = []
    offset = 4  # max_token_length, unused
    try:
        while offset < len(data):
            score, length = struct.unpack_from("<fi", data, offset)
            raw = data[offset + 8 : offset + 8 + length]
            if length < 0 or len(raw) != length:
                raise ValueError("truncated piece")
            pieces.append(_piece_spec(len(pieces), raw.decode("utf-8"), score))
            offset += 8 + length
    except (struct.error, ValueError) as exc:  # UnicodeDecodeError is a ValueError
        raise InvalidArgument(
            f"{path} is not a llama2.c tokenizer export (unreadable piece {len(pieces)})",
            field="tokenizer",
            fix="pass the tokenizer .bin written by llama2.c's tokenizer.py for this model",
        ) from exc
    if vocab_size is not None and len(pieces) != vocab_size:
        raise InvalidArgument(
            f"tokenizer {path} has {len(pieces)} pieces but the model has {vocab_size} tokens",
            field="tokenizer",
            fix="pass the tokenizer the model was trained with",
        )
    return SentencePieceTokenizer.from_model_proto(sentencepiece_bpe_model(pieces))


def _piece_spec(token_id: int, text: str, score: float) -> PieceSpec:
    """Undoes the export's edits: bos/eos were written as "\\n<s>\\n", "▁" as a space."""
    t = sp_pb.ModelProto.SentencePiece
    if token_id == 0:
        return text, score, t.UNKNOWN
    if token_id in (1, 2) and text.strip() in ("<s>", "</s>"):
        return text.strip(), score, t.CONTROL
    if _BYTE_PIECE.match(text):
        return text.upper().replace("0X", "0x"), score, t.BYTE
    return text.replace(" ", "▁"), score, t.NORMAL


def _read_file(path: Path, what: str, open_input: Opener) -> bytes:
    try:
        with open_input(path, InputKind.MODEL_FILE) as f:
            return f.read()
    except OSError as exc:
        raise InvalidArgument(
            f"cannot read the llama2.c {what} {str(path)!r}: {exc.strerror or exc}",
            field=MODEL_FIELD if what == "model checkpoint" else "tokenizer",
            fix="check the path in 'llama2c:<model.bin>?tokenizer=<tok.bin>'",
        ) from exc


def _bad_checkpoint(path: str | Path, why: str) -> InvalidArgument:
    return InvalidArgument(
        f"{path} is not a legacy llama2.c checkpoint: {why}",
        field=MODEL_FIELD,
        fix="pass a .bin written by llama2.c's export.py --version 0 (e.g. stories260K.bin)",
    )
