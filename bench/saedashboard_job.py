"""THEIR side of one bench run: SAEDashboard's real NeuronpediaRunner, offline.

Runs in bench/.venv-saedashboard (sae-dashboard from PyPI), self-contained: it imports nothing from
this repository. Three hub-touching steps are replaced by local objects: the model (a llama2.c
file, stories260K or the GPU profile's random one, read with numpy into a HookedSAETransformer),
the activation store (none) and token sampling (our token file). Everything else is
``NeuronpediaRunner.run()`` as published, watched by one recorder (``EncoderColumns``).
``run`` writes ``--out`` (JSON): its run seconds, and ``--encoder``: the encoder weights it encoded
each feature with; ``facts``, run afterwards outside the measured process, writes per feature what
the agreement check needs, and the hook activations the run encoded (``float_ambiguity``
re-encodes them with those weights beside ours).
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
from sae_dashboard import feature_data_generator
from sae_dashboard.neuronpedia.neuronpedia_runner import NeuronpediaRunner
from sae_dashboard.neuronpedia.neuronpedia_runner_config import NeuronpediaRunnerConfig
from sae_lens import HookedSAETransformer
from transformer_lens import HookedTransformerConfig


def read_llama2c(path: Path) -> tuple[dict[str, int], dict[str, np.ndarray[Any, Any]]]:
    """The legacy (v0) llama2.c checkpoint: 7 int32 then fp32 weights, shared embedding."""
    raw = path.read_bytes()
    dim, hidden, n_layers, n_heads, n_kv, vocab, seq_len = np.frombuffer(raw[:28], np.int32)
    head = dim // n_heads
    floats = np.frombuffer(raw[28:], np.float32)
    shapes = {
        "emb": (vocab, dim),
        "rms_att": (n_layers, dim),
        "wq": (n_layers, dim, dim),
        "wk": (n_layers, n_kv * head, dim),
        "wv": (n_layers, n_kv * head, dim),
        "wo": (n_layers, dim, dim),
        "rms_ffn": (n_layers, dim),
        "w1": (n_layers, hidden, dim),
        "w2": (n_layers, dim, hidden),
        "w3": (n_layers, hidden, dim),
        "rms_final": (dim,),
    }
    weights, at = {}, 0
    for name, shape in shapes.items():
        size = int(np.prod(shape))
        weights[name] = floats[at : at + size].reshape(shape).copy()
        at += size
    config = dict(dim=dim, hidden=hidden, n_layers=n_layers, n_heads=n_heads, n_kv=n_kv)
    return {k: int(v) for k, v in (config | {"vocab": vocab, "seq_len": seq_len}).items()}, weights


def llama2c_model(checkpoint: Path, tokenizer: Path, device: str) -> HookedSAETransformer:
    c, w = read_llama2c(checkpoint)
    head = c["dim"] // c["n_heads"]
    cfg = HookedTransformerConfig(
        n_layers=c["n_layers"], d_model=c["dim"], d_head=head, n_heads=c["n_heads"],
        n_key_value_heads=c["n_kv"], d_mlp=c["hidden"], d_vocab=c["vocab"], n_ctx=c["seq_len"],
        act_fn="silu", gated_mlp=True, normalization_type="RMS", eps=1e-5, final_rms=True,
        positional_embedding_type="rotary", rotary_dim=head, rotary_adjacent_pairs=True,
        model_name=checkpoint.stem, device=device,
    )  # fmt: skip
    model = HookedSAETransformer(cfg)
    t = torch.from_numpy
    # Zero the parameters only (llama has no biases): the buffers (causal mask, rotary tables,
    # IGNORE) must stay as built, or attention sees the future and rotary is lost.
    state = {k: torch.zeros_like(v) for k, v in model.named_parameters()}
    state["embed.W_E"] = t(w["emb"])
    state["unembed.W_U"] = t(w["emb"].T.copy())
    state["ln_final.w"] = t(w["rms_final"])
    for i in range(c["n_layers"]):
        b = f"blocks.{i}."
        state[b + "ln1.w"], state[b + "ln2.w"] = t(w["rms_att"][i]), t(w["rms_ffn"][i])
        state[b + "attn.W_Q"] = t(w["wq"][i].reshape(c["n_heads"], head, -1).transpose(0, 2, 1))
        state[b + "attn._W_K"] = t(w["wk"][i].reshape(c["n_kv"], head, -1).transpose(0, 2, 1))
        state[b + "attn._W_V"] = t(w["wv"][i].reshape(c["n_kv"], head, -1).transpose(0, 2, 1))
        state[b + "attn.W_O"] = t(w["wo"][i].T.reshape(c["n_heads"], head, -1))
        state[b + "mlp.W_gate"], state[b + "mlp.W_in"] = t(w["w1"][i].T), t(w["w3"][i].T)
        state[b + "mlp.W_out"] = t(w["w2"][i].T)
    model.load_state_dict({k: v.contiguous().float() for k, v in state.items()}, strict=False)
    model.tokenizer = PieceVocab(tokenizer)  # type: ignore[assignment]
    return model


STORY_IDS = [1, 403, 407, 261, 378, 432, 383, 286, 261, 376]
"""``<s>Once upon a time, there was a little`` in tok512 ids."""


def check_model(model: HookedSAETransformer) -> None:
    """Stops the run unless the model gives the reference next pieces (``▁g`` 0.64, ``▁b`` 0.28,
    from the stories260k data README): a mis-built model silently skews every comparison."""
    with torch.inference_mode():
        top = model(torch.tensor([STORY_IDS], device=model.cfg.device))[0, -1].softmax(-1).topk(2)
    if top.indices.tolist() != [298, 268] or abs(float(top.values[0]) - 0.640) > 0.005:
        raise SystemExit(f"stories260K built wrong: next pieces {top} (expected 298 0.64, 268)")


class PieceVocab:
    """What the runner reads from a tokenizer: ``vocab`` and the special ids."""

    bos_token_id, eos_token_id, pad_token_id = 1, 2, 2
    padding_side = "right"

    def __init__(self, path: Path) -> None:
        raw, at, self.vocab = path.read_bytes(), 4, {}
        for i in range(int(np.frombuffer(raw[4:8], np.int32)[0] * 0) or 512):
            length = int(np.frombuffer(raw[at + 4 : at + 8], np.int32)[0])
            piece = raw[at + 8 : at + 8 + length].decode("utf-8", "replace")
            self.vocab.setdefault(piece if piece not in self.vocab else f"{piece}#{i}", i)
            at += 8 + length


class EncoderColumns:
    """The ``W_enc`` column and ``b_enc`` entry the run encoded each feature with. They are not
    the SAE folder's bit for bit: the runner folds the decoder's row norms into them
    (``fold_W_dec_norm``) when it loads the SAE and again at every feature batch (each
    ``SaeVisRunner.run``), and a float32 norm of a unit row is 1 only to within an ulp, so each
    batch's columns differ in the last bit from the folder's and from the other batches'."""

    def __init__(self) -> None:
        self.W_enc: np.ndarray[Any, Any] | None = None  # [d_in, d_sae]
        self.b_enc: np.ndarray[Any, Any] | None = None  # [d_sae]
        self.seen: set[int] = set()

    def watch(self) -> None:
        """Records the columns as ``FeatureMaskingContext`` hands them to the encode, once per
        feature batch (the weights stay put between its token minibatches)."""
        columns, plain = self, feature_data_generator.FeatureMaskingContext

        class Recorded(plain):  # type: ignore[misc, valid-type]
            def __enter__(self) -> Any:
                entered = super().__enter__()
                columns.record(self.sae, self.feature_idxs)
                return entered

        feature_data_generator.FeatureMaskingContext = Recorded

    def record(self, sae: Any, features: list[int]) -> None:
        if features[0] in self.seen:
            return
        if self.W_enc is None or self.b_enc is None:
            self.W_enc = np.zeros((sae.cfg.d_in, sae.cfg.d_sae), np.float32)
            self.b_enc = np.zeros(sae.cfg.d_sae, np.float32)
        self.W_enc[:, features] = sae.W_enc.detach().cpu().numpy()  # [d_in, len(features)]
        self.b_enc[features] = sae.b_enc.detach().cpu().numpy()
        self.seen.update(features)

    def save(self, path: Path) -> None:
        np.savez(path, W_enc=self.W_enc, b_enc=self.b_enc)


class OfflineRunner(NeuronpediaRunner):
    """NeuronpediaRunner with its model, activation store and token sampling made local."""

    checkpoint: Path
    tokenizer: Path
    device: str
    check_reference: bool
    token_file: Path

    def _extract_model_info(self) -> None:
        meta = json.loads((Path(self.cfg.sae_path) / "cfg.json").read_text())["metadata"]
        for key, value in meta.items():  # this SAELens reads them from the top level only
            setattr(self.sae.cfg.metadata, key, value)
        self.model_id = self.cfg.model_id = meta["model_name"]
        self.hook_name = meta["hook_name"]
        self.layer = self.cfg.layer = int(self.hook_name.split(".")[1])

    def _initialize_model(self) -> None:
        self.model = llama2c_model(self.checkpoint, self.tokenizer, self.device)
        if self.check_reference:
            check_model(self.model)

    def _setup_activation_store(self) -> None:
        self.activations_store = None
        self.cached_activations_dir = Path(self.cfg.outputs_dir) / "cached_activations"

    def get_tokens(self) -> torch.Tensor:
        return torch.from_numpy(np.load(self.token_file).astype(np.int64))


VOCAB = "vocab.json"
"""The runner's id -> piece map, kept in --work by the run for the facts read afterwards."""


def feature_facts(outputs: Path, vocab: dict[int, str]) -> dict[str, dict[str, Any]]:
    """Per feature what ``measure.agreement`` compares (the keys match ours_job's)."""
    ids = {s: i for i, s in vocab.items()}
    facts = {}
    for batch in sorted(outputs.rglob("batch-*.json")):
        for f in json.loads(batch.read_text())["features"]:
            top = [a for a in f["activations"] if a["bin_min"] == -1]
            values = sorted((a["values"][a["qualifying_token_index"]] for a in top), reverse=True)
            facts[str(f["feature_index"])] = {
                "top_values": values,  # the k largest token values, any positions
                "prompt_maxima": sorted({max(a["values"]) for a in top}, reverse=True),
                "max_activation": values[0] if values else 0.0,
                "pos_ids": [ids.get(s, -1) for s in f["pos_str"]],
                "pos_values": f["pos_values"],
                "neg_ids": [ids.get(s, -1) for s in f["neg_str"]],
                "neg_values": f["neg_values"],
                "frequency": f["frac_nonzero"],  # nonzero non-special over all tokens
            }
    return facts


def cached_hook_activations(outputs: Path) -> np.ndarray[Any, Any]:
    """The hook activations its run encoded, [rows, context, d_in]: the runner keeps each
    forward minibatch's in ``cached_activations`` (``model_activations_{i}.pt``, a dict by hook
    name) and encodes every feature batch from there."""
    files = (outputs / "cached_activations").glob("model_activations_*.pt")
    ordered = sorted(files, key=lambda f: int(f.stem.rsplit("_", 1)[1]))
    return torch.cat([next(iter(torch.load(f).values())) for f in ordered]).numpy()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    run = sub.add_parser("run", help="the timed run: writes its outputs and vocabulary to --work")
    run.add_argument("--model", required=True, help="legacy llama2.c checkpoint")
    run.add_argument("--tokenizer", required=True, help="llama2.c tokenizer export")
    run.add_argument("--device", default="cpu")
    run.add_argument("--check-reference", action="store_true", help="stories260K only")
    run.add_argument("--sae", required=True)
    run.add_argument("--tokens", required=True)
    run.add_argument("--work", required=True)
    run.add_argument("--n-examples", type=int, default=20)
    run.add_argument("--out", required=True)
    run.add_argument("--encoder", required=True, help="where its encoder weights go (.npz)")
    facts = sub.add_parser("facts", help="afterwards, untimed: per feature facts of the outputs")
    facts.add_argument("--work", required=True)
    facts.add_argument("--out", required=True)
    facts.add_argument("--hook-activations", required=True, help="where its run's go (.npy)")
    args = parser.parse_args()
    if args.command == "facts":  # read outside the measured process, as ours' archive is
        work = Path(args.work)
        vocab = {int(i): piece for i, piece in json.loads((work / VOCAB).read_text()).items()}
        found = {"features": feature_facts(work / "outputs", vocab)}
        Path(args.out).write_text(json.dumps(found), encoding="utf-8")
        np.save(args.hook_activations, cached_hook_activations(work / "outputs"))
        return
    started = time.perf_counter()
    n_rows, context = np.load(args.tokens, mmap_mode="r").shape
    OfflineRunner.checkpoint, OfflineRunner.tokenizer = Path(args.model), Path(args.tokenizer)
    OfflineRunner.device, OfflineRunner.check_reference = args.device, args.check_reference
    OfflineRunner.token_file = Path(args.tokens)
    cfg = NeuronpediaRunnerConfig(
        sae_set="bench", sae_path=str(Path(args.sae).resolve()), from_local_sae=True,
        outputs_dir=str(Path(args.work) / "outputs"), n_prompts_total=int(n_rows),
        n_tokens_in_prompt=int(context), top_acts_group_size=args.n_examples,
        huggingface_dataset_path="local/bench-random", model_dtype="float32", sae_dtype="float32",
        model_device=args.device, sae_device=args.device, activation_store_device=args.device,
        shuffle_tokens=False,
    )  # fmt: skip
    columns = EncoderColumns()
    columns.watch()
    runner = OfflineRunner(cfg)
    run_started = time.perf_counter()
    runner.run()
    run_s = time.perf_counter() - run_started
    (Path(args.work) / VOCAB).write_text(json.dumps(runner.vocab_dict), encoding="utf-8")
    result = {"run_s": run_s, "job_wall_s": time.perf_counter() - started}
    Path(args.out).write_text(json.dumps(result), encoding="utf-8")
    columns.save(Path(args.encoder))


if __name__ == "__main__":
    main()
