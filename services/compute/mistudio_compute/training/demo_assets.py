"""The demo's model-side assets, built once and reused: corpus, trained SAE, explanations.

``ensure_demo_assets`` checks the cache for each of the three folders (keys in ``cache``'s
sense) and builds only what is missing, loading the model only if something must be built:

* ``corpus-<key>/``: stories sampled from the model (``corpus``);
* ``sae-<key>/sae/``: the SAELens 6 folder, with ``training.json`` beside it (metrics, seed,
  hyperparameters, timings);
* ``explanations-<key>/explanations.json``: heuristic top-token explanations (``explanations``).
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch

from mistudio_compute.model_access import LoadedModel, load_model
from mistudio_compute.sae.architectures import Sae
from mistudio_compute.sae.loading import build_sae, load_sae
from mistudio_compute.sae.saelens_writer import SaeLensMetadata, write_saelens_folder
from mistudio_compute.training.activations import TokenActivations, collect_activations
from mistudio_compute.training.cache import (
    build_folder,
    cache_key,
    cached_folder,
    file_sha256,
    is_complete,
    write_json,
)
from mistudio_compute.training.corpus import Corpus, CorpusSpec, ensure_corpus
from mistudio_compute.training.explanations import (
    explain_features,
    explanations_json,
    top_activations,
)
from mistudio_compute.training.sae_trainer import TrainConfig, evaluate, train_sae

SAE_FORMAT = 2
EXPLANATIONS_FORMAT = 1
DEFAULT_HOOK = "blocks.2.hook_resid_post"
"""The middle of stories260K's five blocks: token-and-word features with the best fit we found."""
SAE_SUBFOLDER = "sae"
TRAINING_FILE = "training.json"
EXPLANATIONS_FILE = "explanations.json"
HELD_OUT_SHARE = 0.05
"""Last share of the corpus's tokens kept out of training, for explained variance and l0."""

ProgressFn = Callable[[str], None]


@dataclass(frozen=True)
class DemoAssets:
    """Where everything is, and what this call had to build."""

    model_ref: str
    """``load_model`` reference of the model the assets belong to."""
    hook_name: str
    token_file: Path
    sae_folder: Path
    explanations_file: Path
    training: dict[str, Any]
    """``training.json``: metrics (l0, explained_variance, dead_fraction), seed, sizes, timings."""
    built: tuple[str, ...] = field(default=())
    """Which of "corpus", "sae", "explanations" were built by this call (empty: all cached)."""

    @property
    def metrics(self) -> dict[str, Any]:
        return dict(self.training["metrics"])


def llama2c_ref(model_path: Path, tokenizer_path: Path) -> str:
    return f"llama2c:{model_path}?tokenizer={tokenizer_path}"


def ensure_demo_assets(
    cache_dir: str | Path,
    model_path: str | Path,
    tokenizer_path: str | Path,
    *,
    rows: int = 2048,
    context: int = 128,
    d_sae: int = 512,
    steps: int = 2000,
    seed: int = 0,
    hook_name: str = DEFAULT_HOOK,
    train: TrainConfig | None = None,
    threads: int = 1,
    progress: ProgressFn | None = None,
) -> DemoAssets:
    """Builds whatever is missing under ``cache_dir`` and returns the paths (module docstring).

    ``train`` overrides every SAE hyperparameter; otherwise TopK (k=8) with ``d_sae``, ``steps``
    and ``seed``. The corpus uses ``seed`` too. Builds run on ``threads`` torch threads (0: torch's
    default): with d_model 64 the ops are tiny, and on a shared 2-core machine two threads made
    sampling and training 5-15x slower than one; the results are the same either way.
    """
    spec = CorpusSpec(rows=rows, context=context, seed=seed)
    train = train or TrainConfig(d_sae=d_sae, steps=steps, seed=seed)
    with _torch_threads(threads):
        files = (Path(cache_dir), Path(model_path), Path(tokenizer_path))
        return _ensure(*files, spec, train, hook_name, progress)


@contextmanager
def _torch_threads(threads: int) -> Iterator[None]:
    before = torch.get_num_threads()
    if threads > 0:
        torch.set_num_threads(threads)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def _ensure(
    cache: Path,
    model_path: Path,
    tokenizer_path: Path,
    spec: CorpusSpec,
    train: TrainConfig,
    hook_name: str,
    progress: ProgressFn | None,
) -> DemoAssets:
    model_file, tokenizer_file = model_path.resolve(), tokenizer_path.resolve()
    ref = llama2c_ref(model_file, tokenizer_file)
    say = progress or (lambda _msg: None)
    model_sha, tokenizer_sha = file_sha256(model_file), file_sha256(tokenizer_file)
    model = _LazyModel(ref)
    built: list[str] = []

    corpus = ensure_corpus(
        cache, model, spec, model_sha256=model_sha, tokenizer_sha256=tokenizer_sha, progress=say
    )
    built += ["corpus"] if corpus.built else []
    say(f"corpus: {corpus.token_file} ({_state('corpus', built)})")

    key_parts = {"format": SAE_FORMAT, "model": model_sha, "hook": hook_name, "corpus": corpus.key}
    sae_key = cache_key(key_parts | asdict(train))
    sae_dir = cached_folder(cache, "sae", sae_key)
    acts = _LazyActivations(model, corpus, hook_name, say)
    if not is_complete(sae_dir):
        build_folder(sae_dir, lambda d: _build_sae(d, model(), corpus, acts(), hook_name, train))
        built.append("sae")
    training = json.loads((sae_dir / TRAINING_FILE).read_text(encoding="utf-8"))
    say(f"sae: {sae_dir / SAE_SUBFOLDER} ({_state('sae', built)})")

    expl_dir = cached_folder(
        cache, "explanations", cache_key({"format": EXPLANATIONS_FORMAT, "sae": sae_key})
    )
    if not is_complete(expl_dir):
        sae = load_sae(sae_dir / SAE_SUBFOLDER)
        build_folder(expl_dir, lambda tmp: _build_explanations(tmp, model(), corpus, acts(), sae))
        built.append("explanations")
    say(f"explanations: {expl_dir / EXPLANATIONS_FILE} ({_state('explanations', built)})")
    return DemoAssets(
        model_ref=ref,
        hook_name=hook_name,
        token_file=corpus.token_file,
        sae_folder=sae_dir / SAE_SUBFOLDER,
        explanations_file=expl_dir / EXPLANATIONS_FILE,
        training=training,
        built=tuple(built),
    )


def _state(name: str, built: list[str]) -> str:
    return "built" if name in built else "cached"


class _LazyModel:
    """Loads the model on first call (on CPU, where sampling and training are deterministic)."""

    def __init__(self, ref: str) -> None:
        self.ref = ref
        self._loaded: LoadedModel | None = None

    def __call__(self) -> LoadedModel:
        if self._loaded is None:
            self._loaded = load_model(self.ref, device="cpu")
        return self._loaded


class _LazyActivations:
    """Collects the corpus's activations once, for training and explanations alike."""

    def __init__(self, model: _LazyModel, corpus: Corpus, hook_name: str, say: ProgressFn) -> None:
        self.model, self.corpus, self.hook_name, self.say = model, corpus, hook_name, say
        self._acts: TokenActivations | None = None

    def __call__(self) -> TokenActivations:
        if self._acts is None:
            started = time.perf_counter()
            self._acts = collect_activations(self.model(), self.corpus.load(), self.hook_name)
            self.say(
                f"activations: {tuple(self._acts.acts.shape)} at {self.hook_name} "
                f"in {time.perf_counter() - started:.1f}s"
            )
        return self._acts


def _build_sae(
    folder: Path,
    loaded: LoadedModel,
    corpus: Corpus,
    acts: TokenActivations,
    hook_name: str,
    train: TrainConfig,
) -> None:
    """Trains on all but the last ``HELD_OUT_SHARE`` of the tokens and writes the folders."""
    n_train = int(len(acts) * (1 - HELD_OUT_SHARE))
    result = train_sae(acts.acts[:n_train], train)
    dataset_path = f"local/{corpus.info['dataset_name']}-{corpus.key}"
    # No sae_lens_version: we did not train with SAELens, so the writer states only its format.
    config = {
        "architecture": train.architecture,
        "d_in": acts.acts.shape[1],
        "d_sae": train.d_sae,
        "dtype": "float32",
        "hook_name": hook_name,
    } | ({"k": train.k} if train.architecture == "topk" else {})
    sae = build_sae(config, result.weights)
    held_out, _ = evaluate(sae.encode, sae.decode, acts.acts[n_train:], sae.d_sae)
    everywhere, frequencies = evaluate(sae.encode, sae.decode, acts.acts, sae.d_sae)
    meta = SaeLensMetadata(
        model_name=loaded.name,
        hook_name=hook_name,
        context_size=corpus.info["spec"]["context"],
        prepend_bos=True,
        dataset_path=dataset_path,
    )
    write_saelens_folder(sae, folder / SAE_SUBFOLDER, meta, frequencies.numpy())
    write_json(
        folder / TRAINING_FILE,
        {
            "metrics": {
                "l0": round(held_out.l0, 4),
                "explained_variance": round(held_out.explained_variance, 4),
                "dead_fraction": round(everywhere.dead_fraction, 4),
                "mse": round(held_out.mse, 6),
                "evaluated_on": "held-out tokens (dead_fraction: the whole corpus)",
                "n_eval_tokens": held_out.n_tokens,
            },
            "n_training_tokens": n_train,
            "seed": train.seed,
            "hook_name": hook_name,
            "model_name": loaded.name,
            "dataset_path": dataset_path,
            "corpus_key": corpus.key,
            "train_config": asdict(train),
            "input_scale": result.scale,
            "train_seconds": round(result.seconds, 2),
            "losses": result.losses,
            "torch_version": torch.__version__,
        },
    )


def _build_explanations(
    folder: Path, loaded: LoadedModel, corpus: Corpus, acts: TokenActivations, sae: Sae
) -> None:
    assert loaded.tokenizer is not None  # checked when the corpus was sampled
    top = top_activations(sae.encode, acts, sae.d_sae)
    explanations = explain_features(top, acts, corpus.load(), loaded.tokenizer)
    write_json(folder / EXPLANATIONS_FILE, explanations_json(explanations))
