"""``python -m mistudio_compute.training``: build (or reuse) the demo assets and say what they are.

With ``--show N`` it also prints N features' top activating contexts, to judge by eye whether
the features mean something.
"""

from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path

import torch

from mistudio_compute.model_access import load_model
from mistudio_compute.sae.loading import load_sae
from mistudio_compute.tokens import load_token_file
from mistudio_compute.training.activations import collect_activations
from mistudio_compute.training.demo_assets import DEFAULT_HOOK, DemoAssets, ensure_demo_assets
from mistudio_compute.training.explanations import feature_examples, top_activations

DEFAULT_MODEL_DIR = Path("../shared/data/stories260k")
"""Relative to the repository root, where ``make demo`` runs."""


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    torch.set_num_threads(args.threads or torch.get_num_threads())  # --show runs outside the build
    started = time.perf_counter()
    assets = ensure_demo_assets(
        args.cache_dir,
        args.model,
        args.tokenizer,
        rows=args.rows,
        context=args.context,
        d_sae=args.d_sae,
        steps=args.steps,
        seed=args.seed,
        hook_name=args.hook,
        threads=args.threads,
        progress=lambda msg: print(f"[{time.perf_counter() - started:6.1f}s] {msg}", flush=True),
    )
    print(f"built: {', '.join(assets.built) or 'nothing (all cached)'}")
    print(f"model:        {assets.model_ref}")
    print(f"tokens:       {assets.token_file}")
    print(f"sae:          {assets.sae_folder}")
    print(f"explanations: {assets.explanations_file}")
    print(f"metrics:      {json.dumps(assets.metrics)}")
    if args.show:
        show_features(assets, args.show, args.seed)
    return 0


def show_features(assets: DemoAssets, n: int, seed: int) -> None:
    """Prints n randomly chosen live features with their explanation and top contexts."""
    loaded = load_model(assets.model_ref, device="cpu")
    assert loaded.tokenizer is not None
    dataset = load_token_file(assets.token_file, prepend_bos=True)
    sae = load_sae(assets.sae_folder)
    acts = collect_activations(loaded, dataset, assets.hook_name)
    top = top_activations(sae.encode, acts, sae.d_sae)
    described: dict[int, list[str]] = {}
    for row in json.loads(assets.explanations_file.read_text(encoding="utf-8")):
        described.setdefault(row["feature_index"], []).append(row["description"])
    live = torch.nonzero(top.values[0] > 0).flatten()
    chosen = live[torch.randperm(len(live), generator=torch.Generator().manual_seed(seed))[:n]]
    for feature in sorted(chosen.tolist()):
        print(f"\nfeature {feature}: {' | '.join(described.get(feature, []))}")
        for line in feature_examples(top, acts, dataset, loaded.tokenizer, feature):
            print(f"    {line}")


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser("python -m mistudio_compute.training", description=__doc__)
    model_dir = Path(os.environ.get("MISTUDIO_DEMO_MODEL_DIR", str(DEFAULT_MODEL_DIR)))
    parser.add_argument("--model", type=Path, default=model_dir / "stories260K.bin")
    parser.add_argument("--tokenizer", type=Path, default=model_dir / "tok512.bin")
    parser.add_argument("--cache-dir", type=Path, default=Path("data/demo-assets"))
    parser.add_argument("--rows", type=int, default=2048, help="corpus rows")
    parser.add_argument("--context", type=int, default=128, help="tokens per row")
    parser.add_argument("--d-sae", type=int, default=512)
    parser.add_argument("--steps", type=int, default=2000)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--hook", default=DEFAULT_HOOK)
    parser.add_argument("--threads", type=int, default=1, help="torch threads (0: torch default)")
    parser.add_argument("--show", type=int, default=0, help="print N features' top contexts")
    return parser


if __name__ == "__main__":
    raise SystemExit(main())
