"""`make demo`: a real SAE exported end to end, offline, on embedded defaults.

Builds (or reuses) the demo assets — a corpus sampled from llama2.c's stories260K, a TopK SAE
trained on one of its hook points, heuristic explanations — starts store, compute and export
in this process on loopback (SQLite, local archive folder, CPU), registers the SAE, runs a full
export with live progress, and prints where the archive is, what it holds, its validation and
the upload steps. A second run reuses the cached assets and dashboards.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
import uuid
from pathlib import Path

from mistudio.common.v1 import tokens_pb2 as tpb
from mistudio.export.v1 import export_service_pb2 as epb
from mistudio_common.errors import FailedPrecondition, MistudioError

from mistudio_cli import commands
from mistudio_cli.annotations import read_annotations
from mistudio_cli.connection import connect
from mistudio_cli.options import FORMATS, parse_selection

REPO_ROOT = Path(__file__).resolve().parents[3]
DEFAULT_MODEL_DIR = REPO_ROOT.parent / "shared" / "data" / "stories260k"
RUNS_FILE = "demo-runs.json"
SAE_ID = "stories260k-l2-res-topk"
SOURCE_SET = "mistudio-res-topk"


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m mistudio_cli.demo", description=__doc__)
    parser.add_argument("--data-dir", default="data/demo", help="everything the demo writes")
    parser.add_argument(
        "--model-dir",
        default=os.environ.get("MISTUDIO_DEMO_MODEL_DIR", str(DEFAULT_MODEL_DIR)),
        help="folder with stories260K.bin and tok512.bin (env MISTUDIO_DEMO_MODEL_DIR)",
    )
    parser.add_argument("--rows", type=int, default=2048, help="corpus rows of 128 tokens")
    parser.add_argument("--d-sae", type=int, default=512)
    parser.add_argument("--steps", type=int, default=2000, help="SAE training steps")
    parser.add_argument("--features", default="all", help="all, START:END or a list")
    parser.add_argument("--threads", type=int, default=1, help="torch threads for the build")
    parser.add_argument("--debug", action="store_true")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        return run(args)
    except MistudioError as error:
        if args.debug:
            raise
        print(f"error: {error.message}", file=sys.stderr)
        if error.fix:
            print(f"  fix: {error.fix}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130


def run(args: argparse.Namespace) -> int:
    from mistudio_compute.training import ensure_demo_assets

    started = time.monotonic()
    data_dir = Path(args.data_dir).resolve()
    model_dir = Path(args.model_dir)
    model_path, tokenizer_path = model_dir / "stories260K.bin", model_dir / "tok512.bin"
    if not model_path.is_file() or not tokenizer_path.is_file():
        raise FailedPrecondition(
            f"the demo model is not in {model_dir}",
            violations=[("stories260K.bin", "llama2.c's stories260K checkpoint and tok512.bin")],
            fix="set MISTUDIO_DEMO_MODEL_DIR (or --model-dir) to the folder holding both files",
        )
    print("1/3 demo assets: corpus, SAE, explanations (cached after the first run)", flush=True)
    assets = ensure_demo_assets(
        data_dir / "assets",
        model_path,
        tokenizer_path,
        rows=args.rows,
        d_sae=args.d_sae,
        steps=args.steps,
        threads=args.threads,
        progress=lambda line: print(f"    {line}", flush=True),
    )
    metrics = assets.metrics
    print(
        f"    SAE: TopK d_sae={args.d_sae} on {assets.hook_name}; l0 {metrics['l0']:.1f}, "
        f"explained variance {metrics['explained_variance']:.3f}, "
        f"dead {metrics['dead_fraction']:.1%}; built now: {', '.join(assets.built) or 'nothing'}"
    )
    cli_args = argparse.Namespace(
        export_address="",
        store_address="",
        compute_address="",
        data_dir=str(data_dir / "services"),
        device="cpu",
        sae=str(assets.sae_folder),
        tokens=str(assets.token_file),
        model=assets.model_ref,
        hook=assets.hook_name,
        sae_id=f"{SAE_ID}-{args.d_sae}",
        source_set=f"{SOURCE_SET}-{args.d_sae}",
        owner="",  # the local user
    )
    notes = read_annotations("", str(assets.explanations_file))
    print("2/3 services: store, compute, export on loopback (SQLite, local archives, CPU)")
    with connect(cli_args) as services:
        assert services.stack is not None
        for name, address in services.stack.addresses.items():
            print(f"    {name:<8} {address}")
        sae_id = commands.register_local_sae(services, assets.sae_folder, cli_args, notes)
        commands.store_annotations(services, sae_id, notes, owner="")
        print(f"3/3 export of SAE {sae_id!r}", flush=True)
        outcome = commands.run_export(services, _export_request(args, assets.token_file, sae_id))
    commands.print_result(outcome)
    _report_speed(data_dir, time.monotonic() - started, outcome)
    return 0


def _export_request(
    args: argparse.Namespace, token_file: Path, sae_id: str
) -> epb.StartExportRequest:
    return epb.StartExportRequest(
        request_id=str(uuid.uuid4()),
        sae_id=sae_id,
        config=epb.ExportConfig(
            formats=FORMATS["both"],
            selection=parse_selection(args.features),
            tokens=tpb.TokenSource(token_file=str(token_file), dataset_name="stories260K samples"),
            compression=epb.Compression(zip_deflate=True),
            naming=epb.NeuronpediaNaming(
                model_id="stories260k",
                source_set=f"{SOURCE_SET}-{args.d_sae}",
                creator_name="miStudio demo",
                release_id="mistudio-demo-stories260k",
                release_title="miStudio Export demo: stories260K TopK SAE",
            ),
            device="cpu",
        ),
    )


def _report_speed(data_dir: Path, seconds: float, outcome: commands.ExportOutcome) -> None:
    """Keeps a log of demo runs so a rerun can say how much the caches saved."""
    log_path = data_dir / RUNS_FILE
    runs = json.loads(log_path.read_text()) if log_path.exists() else []
    result = outcome.last.result
    runs.append(
        {
            "seconds": round(seconds, 1),
            "features_computed": result.features_computed,
            "features_reused": result.features_reused,
        }
    )
    log_path.write_text(json.dumps(runs, indent=1))
    print(f"\nDemo finished in {seconds:.0f} s.", end=" ")
    if len(runs) > 1:
        first = runs[0]["seconds"]
        print(f"The first run took {first:.0f} s ({first / max(seconds, 1e-9):.1f}x this one).")
    else:
        print("Run `make demo` again: it reuses the cached assets and dashboards.")


if __name__ == "__main__":
    sys.exit(main())
