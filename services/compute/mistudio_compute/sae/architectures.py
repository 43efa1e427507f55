"""SAE architectures: one small class each, sharing the ``Sae`` interface.

The encode rules are SAELens's (verified against ``SAE.load_from_disk`` in the tests):
``x_c = norm_in(x) - b_dec * apply_b_dec_to_input``, then

* standard: ``relu(x_c @ W_enc + b_enc)``
* jumprelu: ``pre = x_c @ W_enc + b_enc; relu(pre) * (pre > threshold)`` (strict, unshifted)
* topk: keep the k largest raw pre-activations per row, ReLU them, zero the rest
* gated: ``(x_c @ W_enc + b_gate > 0) * relu(x_c @ W_enc * exp(r_mag) + b_mag)`` (no b_enc)

and decode is ``norm_out(f @ W_dec + b_dec)``.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from typing import Any, ClassVar, NamedTuple, Self

import torch
from mistudio_common.errors import AlreadyExists, InvalidArgument

from mistudio_compute.encode_tile import AffineEncode, EncodeTile
from mistudio_compute.sae.config import SaeConfig

_LN_EPS = 1e-5  # SAELens's run-time layer norm epsilon
ENCODE_BLOCK = 512
"""Encoder columns per matmul. A feature shard encodes only the blocks its features fall in; a
matmul over another column count may round differently (MKL's narrow kernels do, in the last
bit), so the full encode runs the same blocks and both give the same bits."""
ENCODE_ROWS = 512
"""Rows per encode tile on a CPU. A tile [ENCODE_ROWS, ENCODE_BLOCK] (1 MiB) stays in the core's
cache from the matmul to the activation, so each activation goes out to memory once; a whole
block's did three times (bias, matmul, activation), or twice more when copied from a fresh
block. MKL computes a matmul's rows alike however they are tiled (tested), so tiles give the
untiled bits."""


class _Block(NamedTuple):
    """The wanted features of one ENCODE_BLOCK column block of the encoder."""

    columns: slice  # the block's encoder columns
    column: torch.Tensor  # [C] the wanted ones, from the block's first
    at: torch.Tensor  # [C] ascending: where they are in the features asked for


def _blocks(features: torch.Tensor, d_sae: int) -> Iterator[_Block]:
    """The blocks ``features`` [F] fall in, ascending."""
    block_of = torch.div(features, ENCODE_BLOCK, rounding_mode="floor")  # [F]
    for block in torch.unique(block_of).tolist():
        start = block * ENCODE_BLOCK
        at = (block_of == block).nonzero().squeeze(1)  # [C]
        columns = slice(start, min(start + ENCODE_BLOCK, d_sae))
        yield _Block(columns, features.index_select(0, at) - start, at)


def _tile_rows(x_c: torch.Tensor) -> int:
    """Rows per encode tile of inputs x_c [N, d_in]: ENCODE_ROWS on a CPU, all on an accelerator."""
    return ENCODE_ROWS if x_c.device.type == "cpu" else max(1, x_c.shape[0])


class Sae:
    """An SAE ready to encode: config plus weights under SAELens's tensor names.

    Weights are plain tensors (no autograd): this service only runs inference. ``W_dec`` rows are
    in hook space, so they can be mapped to the residual stream for a logit lens.
    """

    architecture: ClassVar[str] = ""
    tensor_names: ClassVar[tuple[str, ...]] = ("W_enc", "b_enc", "W_dec", "b_dec")

    def __init__(self, cfg: SaeConfig, weights: Mapping[str, torch.Tensor]) -> None:
        self.cfg = cfg
        self.weights = {name: weights[name] for name in self.tensor_names}

    @classmethod
    def tensor_shapes(cls, cfg: SaeConfig) -> dict[str, tuple[int, ...]]:
        """Expected shape of every tensor in ``tensor_names``."""
        d_in, d_sae = cfg.d_in, cfg.d_sae
        known = {"W_enc": (d_in, d_sae), "W_dec": (d_sae, d_in), "b_dec": (d_in,)}
        return {name: known.get(name, (d_sae,)) for name in cls.tensor_names}

    @property
    def d_in(self) -> int:
        return self.cfg.d_in

    @property
    def d_sae(self) -> int:
        return self.cfg.d_sae

    @property
    def hook_name(self) -> str | None:
        return self.cfg.hook_name

    @property
    def model_name(self) -> str | None:
        return self.cfg.model_name

    @property
    def config(self) -> Mapping[str, Any]:
        """The config dict the SAE was loaded with."""
        return self.cfg.raw

    @property
    def W_enc(self) -> torch.Tensor:
        return self.weights["W_enc"]  # [d_in, d_sae]

    @property
    def W_dec(self) -> torch.Tensor:
        return self.weights["W_dec"]  # [d_sae, d_in]

    @property
    def b_dec(self) -> torch.Tensor:
        return self.weights["b_dec"]  # [d_in]

    @property
    def device(self) -> torch.device:
        return self.W_dec.device

    @property
    def dtype(self) -> torch.dtype:
        return self.W_dec.dtype

    def to(
        self, device: str | torch.device | None = None, dtype: torch.dtype | None = None
    ) -> Self:
        """Moves the weights in place and returns the SAE."""
        self.weights = {n: w.to(device=device, dtype=dtype) for n, w in self.weights.items()}
        return self

    def state_dict(self) -> dict[str, torch.Tensor]:
        """The tensors SAELens stores for this architecture, by their SAELens names."""
        return dict(self.weights)

    @torch.inference_mode()
    def encode(self, x: torch.Tensor) -> torch.Tensor:
        """Feature activations [..., d_sae] of hook activations ``x`` [..., d_in]."""
        z = self.encode_features(x.reshape(-1, x.shape[-1]))  # [N, d_sae]
        return z.view(*x.shape[:-1], z.shape[-1])

    @torch.inference_mode()
    def encode_features(
        self, x: torch.Tensor, features: torch.Tensor | None = None
    ) -> torch.Tensor:
        """Activations [N, F] of ``features`` [F] (all when None) for ``x`` [N, d_in], bit for
        bit the matching columns of the full encode: only the ENCODE_BLOCK column blocks the
        features fall in are computed, each by the same call as in the full encode."""
        return self._encode_columns(self._centred(x), self._columns(features))

    @torch.inference_mode()
    def encode_tiles(self, x: torch.Tensor, features: torch.Tensor) -> Iterator[EncodeTile]:
        """``encode_features(x, features)`` tile by tile, with the same bits where positive
        (entries <= 0 do not fire: ``_activate_tile``): each tile is activated into one small
        buffer that the next tile overwrites, so a caller that reads each while it is in cache
        never has the dense [N, F] activations written to memory."""
        x_c, features = self._centred(x), self._columns(features)
        tile_rows = _tile_rows(x_c)
        buffer = x_c.new_empty(tile_rows * ENCODE_BLOCK)  # [tile_rows * ENCODE_BLOCK]
        for block in _blocks(features, self.d_sae):
            width = block.columns.stop - block.columns.start
            for r in range(0, x_c.shape[0], tile_rows):
                rows = slice(r, min(r + tile_rows, x_c.shape[0]))
                tile = buffer[: (rows.stop - r) * width].view(-1, width)  # [R, width]
                z = self._activate_tile(x_c[rows], block.columns, tile)
                yield EncodeTile(rows, z, block.column, block.at)

    @torch.inference_mode()
    def affine_encode(self, x: torch.Tensor) -> AffineEncode | None:
        """``x`` [N, d_in]'s encode as an ``AffineEncode`` where this architecture's is one (its
        activations are its pre-activations above a floor), else None."""
        floor = self._affine_floor()
        if floor is None:
            return None
        x_c = self._centred(x).contiguous()
        tile_rows = _tile_rows(x_c)
        W_enc = self.W_enc.contiguous()
        return AffineEncode(x_c, W_enc, self.weights["b_enc"], floor, ENCODE_BLOCK, tile_rows)

    def _affine_floor(self) -> torch.Tensor | None:
        """[d_sae] the pre-activation each feature fires strictly above, where its activation is
        then its pre-activation; None where the architecture is not that."""
        return None

    def _centred(self, x: torch.Tensor) -> torch.Tensor:
        """Hook activations [N, d_in] as the encoder's matmul takes them."""
        x_c = self._normalize_in(x.to(self.device, self.dtype))
        if self.cfg.apply_b_dec_to_input:
            x_c = x_c - self.b_dec
        return x_c

    def _columns(self, features: torch.Tensor | None) -> torch.Tensor:
        """``features`` [F] on the SAE's device; every feature when None."""
        if features is None:
            return torch.arange(self.d_sae, device=self.device)
        return features.to(self.device)

    def _encode_columns(self, x_c: torch.Tensor, features: torch.Tensor) -> torch.Tensor:
        """Activations [N, F] of ``features`` [F], tile by tile:
        ENCODE_ROWS rows of one block at a time (on a CPU). A block whose features are all
        wanted, in order, is activated straight into its columns of ``out``; any other block
        is activated whole and the wanted columns copied (a run of them as one slice)."""
        shape = (x_c.shape[0], len(features))
        out = x_c.new_empty(shape)
        tile_rows = _tile_rows(x_c)
        for columns, column, at in _blocks(features, self.d_sae):
            first, c0, n = int(at[0]), int(column[0]), len(at)
            run = int(at[-1]) - first + 1 == n and torch.equal(
                column, torch.arange(c0, c0 + n, device=column.device)
            )
            whole = run and c0 == 0 and n == columns.stop - columns.start
            for r in range(0, shape[0], tile_rows):
                rows = slice(r, r + tile_rows)
                if whole:
                    tile = out[rows, first : first + n]  # [R, n] strided, as BLAS takes it
                    z = self._activate(x_c[rows], columns, tile)
                    if z is not tile:  # an architecture that cannot write in place
                        tile.copy_(z)
                    continue
                z = self._activate(x_c[rows], columns)  # [R, block]
                if run:
                    out[rows, first : first + n] = z[:, c0 : c0 + n]
                else:
                    out[rows, at] = z.index_select(1, column)
        return out

    @torch.inference_mode()
    def decode(self, features: torch.Tensor, x: torch.Tensor | None = None) -> torch.Tensor:
        """Reconstruction [..., d_in] of ``features`` [..., d_sae].

        SAEs with a per-row run-time normalisation (constant_norm_rescale, layer_norm) need the
        original input ``x`` to map the reconstruction back to hook space.
        """
        out = self._decode_linear(features.to(self.device, self.dtype)) + self.b_dec
        return self._normalize_out(out, x)

    def reconstruct(self, x: torch.Tensor) -> torch.Tensor:
        return self.decode(self.encode(x), x)

    def _activate(
        self, x_c: torch.Tensor, columns: slice, out: torch.Tensor | None = None
    ) -> torch.Tensor:
        """Activations [N, columns] of the features ``columns`` for centred inputs [N, d_in],
        written into ``out`` [N, columns] when given (it may be a strided view)."""
        raise NotImplementedError

    def _activate_tile(self, x_c: torch.Tensor, columns: slice, out: torch.Tensor) -> torch.Tensor:
        """An ``encode_tiles`` tile: ``_activate``'s values where they are positive, any value
        <= 0 elsewhere (a tile's reader takes only its positive entries), so an architecture
        can skip the pass over the tile that only zeroes the others."""
        return self._activate(x_c, columns, out)

    def _encode_affine(
        self, x_c: torch.Tensor, bias: str, columns: slice, out: torch.Tensor | None
    ) -> torch.Tensor:
        """``x_c @ W_enc + weights[bias]`` over ``columns`` into ``out`` (new when None): the
        matmul, then the bias added to its result, as SAELens computes it (a fused addmm adds
        the bias to the first of MKL's partial sums over d_in > 256, other bits) and as
        ``fold_kernels.affine_entries`` does in the pass."""
        out = torch.mm(x_c, self.W_enc[:, columns], out=out)
        return out.add_(self.weights[bias][columns])

    def _decode_linear(self, features: torch.Tensor) -> torch.Tensor:
        return features @ self.W_dec

    def _normalize_in(self, x: torch.Tensor) -> torch.Tensor:
        mode = self.cfg.normalize_activations
        if mode == "constant_norm_rescale":
            return x * (self.d_in**0.5 / x.norm(dim=-1, keepdim=True))
        if mode == "layer_norm":
            centred = x - x.mean(dim=-1, keepdim=True)
            return centred / (centred.std(dim=-1, keepdim=True) + _LN_EPS)
        return x  # "none"; expected_average_only_in is folded into the weights at load time

    def _normalize_out(self, out: torch.Tensor, x: torch.Tensor | None) -> torch.Tensor:
        mode = self.cfg.normalize_activations
        if mode not in ("constant_norm_rescale", "layer_norm"):
            return out
        if x is None:
            raise ValueError(f"decode of a {mode} SAE needs the original input x")
        x = x.to(self.device, self.dtype)
        if mode == "constant_norm_rescale":
            return out * (x.norm(dim=-1, keepdim=True) / self.d_in**0.5)
        mu = x.mean(dim=-1, keepdim=True)
        return out * (x - mu).std(dim=-1, keepdim=True) + mu


class StandardSae(Sae):
    architecture = "standard"

    def _activate(
        self, x_c: torch.Tensor, columns: slice, out: torch.Tensor | None = None
    ) -> torch.Tensor:
        return self._encode_affine(x_c, "b_enc", columns, out).relu_()

    def _activate_tile(self, x_c: torch.Tensor, columns: slice, out: torch.Tensor) -> torch.Tensor:
        """The pre-activations: their positive entries are the ReLU's (about 2% of a pass's
        CPU time was the ReLU over every tile)."""
        return self._encode_affine(x_c, "b_enc", columns, out)

    def _affine_floor(self) -> torch.Tensor:
        return torch.zeros_like(self.weights["b_enc"])


class JumpReluSae(Sae):
    architecture = "jumprelu"
    tensor_names = ("W_enc", "b_enc", "W_dec", "b_dec", "threshold")

    def _activate(
        self, x_c: torch.Tensor, columns: slice, out: torch.Tensor | None = None
    ) -> torch.Tensor:
        pre = self._encode_affine(x_c, "b_enc", columns, out)  # [N, columns]
        above = pre > self.weights["threshold"][columns]
        return pre.relu_().mul_(above)

    def _affine_floor(self) -> torch.Tensor:
        """Fires where pre > threshold and pre > 0 (ReLU), and is then pre * 1."""
        return self.weights["threshold"].clamp(min=0)


class TopKSae(Sae):
    """Picks each token's k largest pre-activations among all features, so a subset of features
    is never encoded on its own: its encode_features is the full encode, then the columns."""

    architecture = "topk"

    @torch.inference_mode()
    def encode_features(
        self, x: torch.Tensor, features: torch.Tensor | None = None
    ) -> torch.Tensor:
        """The k largest of every feature are picked first, then the columns."""
        pre = super().encode_features(x)  # [N, d_sae]
        if self.cfg.rescale_acts_by_decoder_norm:
            pre = pre * self.W_dec.norm(dim=-1)
        assert self.cfg.k is not None  # guaranteed by parse_sae_config
        values, indices = torch.topk(pre, k=self.cfg.k, dim=-1, sorted=False)
        z = torch.zeros_like(pre).scatter_(-1, indices, torch.relu(values))
        return z if features is None else z.index_select(1, self._columns(features))

    @torch.inference_mode()
    def encode_tiles(self, x: torch.Tensor, features: torch.Tensor) -> Iterator[EncodeTile]:
        """One tile: every feature's activations (the k largest are picked among all)."""
        wanted = self._columns(features)
        every = self.encode_features(x)  # [N, d_sae]
        yield EncodeTile(
            slice(0, every.shape[0]), every, wanted, torch.arange(len(wanted), device=wanted.device)
        )

    def _activate(
        self, x_c: torch.Tensor, columns: slice, out: torch.Tensor | None = None
    ) -> torch.Tensor:
        return self._encode_affine(x_c, "b_enc", columns, out)  # pre-activations: k is picked above

    def _decode_linear(self, features: torch.Tensor) -> torch.Tensor:
        if self.cfg.rescale_acts_by_decoder_norm:
            features = features / self.W_dec.norm(dim=-1)
        return features @ self.W_dec


class GatedSae(Sae):
    architecture = "gated"
    tensor_names = ("W_enc", "b_gate", "b_mag", "r_mag", "W_dec", "b_dec")

    def _activate(
        self, x_c: torch.Tensor, columns: slice, out: torch.Tensor | None = None
    ) -> torch.Tensor:
        pre = x_c @ self.W_enc[:, columns]  # [N, columns], shared by the gate and the magnitude
        gate = pre + self.weights["b_gate"][columns] > 0
        r_mag, b_mag = self.weights["r_mag"][columns], self.weights["b_mag"][columns]
        magnitude = torch.relu(pre * r_mag.exp() + b_mag)
        return torch.mul(gate, magnitude, out=out)


_REGISTRY: dict[str, type[Sae]] = {}


def register_architecture(name: str, cls: type[Sae]) -> None:
    """Makes ``cls`` the implementation of architecture ``name``; a name is registered once."""
    if name in _REGISTRY:
        raise AlreadyExists(
            f"SAE architecture {name!r} is already registered ({_REGISTRY[name].__name__})",
            field="architecture",
            fix="register the new class under another name",
        )
    _REGISTRY[name] = cls


def architecture_class(name: str) -> type[Sae]:
    """The class for ``name``; unknown names are an InvalidArgument listing the known ones."""
    try:
        return _REGISTRY[name]
    except KeyError:
        raise InvalidArgument(
            f"unknown SAE architecture {name!r}",
            field="architecture",
            fix=f"use one of {', '.join(known_architectures())}",
        ) from None


def known_architectures() -> list[str]:
    return sorted(_REGISTRY)


for _cls in (StandardSae, JumpReluSae, TopKSae, GatedSae):
    register_architecture(_cls.architecture, _cls)
