"""Training a small SAE on cached activations: seeded, deterministic on CPU, a screen of loop.

Two architectures, both loadable by SAELens: ``topk`` (keep the k largest pre-activations, with
OpenAI's auxiliary loss that lets dead features learn from the residual error) and ``standard``
(ReLU with an L1 penalty). Decoder rows are kept at unit norm after every step. Inputs are scaled
by one constant so that E[|x|^2] = d_in during training; ``export_weights`` folds that constant
back so the saved SAE reads and writes raw hook activations with ``normalize_activations: none``.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import torch
from mistudio_common.errors import InvalidArgument

ARCHITECTURES = ("topk", "standard")
ProgressFn = Callable[[int, int, dict[str, float]], None]
"""Called with (step, total steps, latest losses)."""


@dataclass(frozen=True)
class TrainConfig:
    """Hyperparameters; all of them are part of the SAE's cache key."""

    d_sae: int = 512
    architecture: str = "topk"
    k: int = 8
    """TopK only: active features per token."""
    l1_coefficient: float = 5.0
    """Standard only: weight of sum_i f_i |W_dec_i| relative to the summed squared error."""
    steps: int = 3000
    batch_size: int = 1024
    lr: float = 1e-3
    aux_k: int = 64
    """TopK only: dead features used by the auxiliary loss."""
    aux_coefficient: float = 1 / 32
    dead_after_tokens: int = 200_000
    """TopK only: a feature silent for this many training tokens counts as dead for the aux loss."""
    seed: int = 0

    def __post_init__(self) -> None:
        if self.architecture not in ARCHITECTURES:
            raise InvalidArgument(
                f"cannot train architecture {self.architecture!r}",
                field="architecture",
                fix=f"use one of {', '.join(ARCHITECTURES)}",
            )
        if min(self.d_sae, self.k, self.steps, self.batch_size) < 1 or self.k > self.d_sae:
            raise InvalidArgument(
                "d_sae, k, steps and batch_size must be positive, with k <= d_sae",
                field="training",
                fix="use e.g. d_sae=512, k=8, steps=3000, batch_size=1024",
            )


class TrainingSae(torch.nn.Module):
    """The trainable SAE, on inputs already scaled (module docstring)."""

    def __init__(self, d_in: int, cfg: TrainConfig, generator: torch.Generator) -> None:
        super().__init__()
        self.cfg = cfg
        W_dec = torch.randn(cfg.d_sae, d_in, generator=generator)
        W_dec = W_dec / W_dec.norm(dim=-1, keepdim=True)
        self.W_dec = torch.nn.Parameter(W_dec)  # [d_sae, d_in], unit rows
        self.W_enc = torch.nn.Parameter(W_dec.T.clone())  # [d_in, d_sae], tied at init
        self.b_enc = torch.nn.Parameter(torch.zeros(cfg.d_sae))
        self.b_dec = torch.nn.Parameter(torch.zeros(d_in))

    def pre_activation(self, x: torch.Tensor) -> torch.Tensor:
        return (x - self.b_dec) @ self.W_enc + self.b_enc  # [batch, d_sae]

    def activate(self, pre: torch.Tensor) -> torch.Tensor:
        if self.cfg.architecture == "standard":
            return torch.relu(pre)
        values, indices = pre.topk(self.cfg.k, dim=-1)  # as SAELens: top-k raw, then ReLU
        return torch.zeros_like(pre).scatter(-1, indices, torch.relu(values))

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        return self.activate(self.pre_activation(x))  # [batch, d_sae]

    def decode(self, f: torch.Tensor) -> torch.Tensor:
        return f @ self.W_dec + self.b_dec  # [batch, d_in]

    @torch.no_grad()
    def normalize_decoder(self) -> None:
        self.W_dec.div_(self.W_dec.norm(dim=-1, keepdim=True).clamp_min(1e-8))


@dataclass
class TrainResult:
    """Trained weights under SAELens names (folded to raw activations) and how training went."""

    weights: dict[str, torch.Tensor]
    scale: float
    """The input scale used in training (folded into ``weights``)."""
    losses: list[dict[str, float]] = field(default_factory=list)
    seconds: float = 0.0


def input_scale(acts: torch.Tensor) -> float:
    """The constant s with E[|s x|^2] = d_in (SAELens's expected_average_only_in)."""
    return math.sqrt(acts.shape[1] / float(acts.pow(2).sum(-1).mean()))


def train_sae(
    acts: torch.Tensor, cfg: TrainConfig, *, progress: ProgressFn | None = None
) -> TrainResult:
    """Trains on ``acts`` [n_tokens, d_in] (float32); same inputs and seed give the same bytes."""
    started = time.perf_counter()
    generator = torch.Generator().manual_seed(cfg.seed)
    scale = input_scale(acts)
    x_all = acts * scale  # [n, d_in]
    sae = TrainingSae(acts.shape[1], cfg, generator)
    with torch.no_grad():
        sae.b_dec.copy_(x_all.mean(0))  # start at the data's centre, not the origin
    optimizer = torch.optim.Adam(sae.parameters(), lr=cfg.lr)
    decay_from = int(cfg.steps * 0.8)  # linear decay over the last 20% of steps
    schedule = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda s: min(1.0, (cfg.steps - s) / max(1, cfg.steps - decay_from))
    )
    since_fired = torch.zeros(cfg.d_sae)  # [d_sae], training tokens since each feature fired
    losses: list[dict[str, float]] = []
    order = torch.randperm(len(x_all), generator=generator)
    cursor = 0
    for step in range(cfg.steps):
        if cursor + cfg.batch_size > len(order):
            order, cursor = torch.randperm(len(x_all), generator=generator), 0
        x = x_all[order[cursor : cursor + cfg.batch_size]]  # [batch, d_in]
        cursor += cfg.batch_size
        loss, parts, fired = _loss(sae, x, since_fired >= cfg.dead_after_tokens)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        schedule.step()
        sae.normalize_decoder()
        since_fired = torch.where(fired, 0.0, since_fired + len(x))
        if step % 100 == 0 or step == cfg.steps - 1:
            losses.append({"step": float(step), **parts})
            if progress is not None:
                progress(step + 1, cfg.steps, parts)
    return TrainResult(export_weights(sae, scale), scale, losses, time.perf_counter() - started)


def _loss(
    sae: TrainingSae, x: torch.Tensor, dead: torch.Tensor
) -> tuple[torch.Tensor, dict[str, float], torch.Tensor]:
    pre = sae.pre_activation(x)  # [batch, d_sae]
    f = sae.activate(pre)
    recon = sae.decode(f)
    error = x - recon  # [batch, d_in]
    mse = error.pow(2).sum(-1).mean()
    parts = {"mse": mse.item() / x.shape[1]}
    loss = mse
    if sae.cfg.architecture == "standard":
        l1 = (f * sae.W_dec.norm(dim=-1)).sum(-1).mean()
        loss = loss + sae.cfg.l1_coefficient * l1
        parts["l1"] = l1.item()
    elif bool(dead.any()):
        loss = loss + sae.cfg.aux_coefficient * _aux_loss(sae, pre, error, dead)
    fired = (f > 0).any(0)  # [d_sae]
    parts["l0"] = float((f > 0).float().sum(-1).mean())
    return loss, parts, fired


def _aux_loss(
    sae: TrainingSae, pre: torch.Tensor, error: torch.Tensor, dead: torch.Tensor
) -> torch.Tensor:
    """OpenAI's AuxK: the top dead features must explain what the live ones missed."""
    k = min(sae.cfg.aux_k, int(dead.sum()))
    masked = pre.masked_fill(~dead, float("-inf"))  # [batch, d_sae]
    values, indices = masked.topk(k, dim=-1)
    f_dead = torch.zeros_like(pre).scatter(-1, indices, torch.relu(values))
    error_hat = f_dead @ sae.W_dec  # [batch, d_in], no bias: it predicts a residual
    target = error.detach()
    return (error_hat - target).pow(2).sum(-1).mean() / target.pow(2).sum(-1).mean().clamp_min(1e-8)


@torch.no_grad()
def export_weights(sae: TrainingSae, scale: float) -> dict[str, torch.Tensor]:
    """SAELens tensors for raw inputs: f_saved = f(s x) / s and x_hat = x_hat(s x) / s.

    Dividing both biases by s gives exactly that for ReLU and TopK (both commute with a positive
    factor), and keeps the decoder rows at unit norm.
    """
    return {
        "W_enc": sae.W_enc.detach().clone().contiguous(),  # [d_in, d_sae]
        "b_enc": (sae.b_enc / scale).detach().clone(),  # [d_sae]
        "W_dec": sae.W_dec.detach().clone().contiguous(),  # [d_sae, d_in]
        "b_dec": (sae.b_dec / scale).detach().clone(),  # [d_in]
    }


@dataclass(frozen=True)
class SaeMetrics:
    """Quality on a set of activations, as SAE papers report it."""

    l0: float
    """Mean number of active features per token."""
    explained_variance: float
    """1 - E|x - x_hat|^2 / E|x - E x|^2."""
    dead_fraction: float
    """Share of features that never fire on these tokens."""
    mse: float
    n_tokens: int


@torch.no_grad()
def evaluate(
    encode: Callable[[torch.Tensor], torch.Tensor],
    decode: Callable[[torch.Tensor], torch.Tensor],
    acts: torch.Tensor,
    d_sae: int,
    batch_size: int = 8192,
) -> tuple[SaeMetrics, torch.Tensor]:
    """Metrics of an SAE on ``acts`` [n, d_in], and each feature's firing frequency [d_sae]."""
    fired = torch.zeros(d_sae, dtype=torch.float64)
    sq_error = active = 0.0
    for start in range(0, len(acts), batch_size):
        x = acts[start : start + batch_size]
        f = encode(x)  # [batch, d_sae]
        sq_error += float((decode(f) - x).pow(2).sum())
        on = f > 0
        active += float(on.sum())
        fired += on.sum(0, dtype=torch.float64)
    n = len(acts)
    variance = float((acts - acts.mean(0)).pow(2).sum())
    metrics = SaeMetrics(
        l0=active / n,
        explained_variance=1.0 - sq_error / variance,
        dead_fraction=float((fired == 0).float().mean()),
        mse=sq_error / (n * acts.shape[1]),
        n_tokens=n,
    )
    return metrics, fired / n
