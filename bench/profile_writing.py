"""Profile the writing of the Neuronpedia formats (``feature_ranges.write_range``) on a staged
folder: CPU seconds per step (reading the staged dashboards, building the column batches,
checking them) and per format (rendering, orjson, gzip, writing files), so a change to it can
be judged on a busy machine. Ends with the sha256 of every file written: equal before and
after a change means byte-identical output.

The staged folder is an export's staging (``work/dashboards/chunk-*.bin`` with their hashes),
e.g. copied from a bench run's ``--keep-data`` while it writes its files.

    python bench/profile_writing.py --staging /tmp/staged --out /tmp/written
"""

from __future__ import annotations

import argparse
import cProfile
import hashlib
import pstats
import shutil
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from mistudio.common.v1 import dashboard_pb2 as dpb
from mistudio_common.dashboard_codec import dashboard_head_from_pb
from mistudio_export.feature_ranges import (
    RangeTask,
    feature_ranges,
    payloads_path,
    write_range,
)
from mistudio_export.formats.bulk_json import StringTable
from mistudio_export.formats.columns import (
    ExampleColumns,
    batch_sized,
    wire_columns,
    wire_tokens,
)
from mistudio_export.formats.example_wire import TokenCodes
from mistudio_export.formats.neuronpedia_importer import write_importer_export
from mistudio_export.formats.prd_json import write_feature_files
from mistudio_export.formats.saedashboard_batch import write_saedashboard_batches
from mistudio_export.formats.upload_payloads import PayloadNotes, payload_features
from mistudio_export.generate import FOLDERS, ROOT
from mistudio_export.packaging import FormatKind
from mistudio_export.records import NeuronpediaNaming, SaeInfo
from mistudio_export.staged import read_wires, staged_chunks
from mistudio_export.validation.column_checks import column_findings

FEATURES_PER_BATCH = 128
STEPS = {"orjson": "orjson.dumps", "gzip": "igzip_lib.compress", "open/replace": "posix."}
"""Built-in functions (by a part of their name) whose CPU time is a step of its own."""


def info(d_sae: int) -> SaeInfo:
    return SaeInfo(
        model_id="stories260k", sae_id="bench", hook_point="blocks.2.hook_resid_post", layer=2,
        d_sae=d_sae, d_in=64, architecture="standard", training_dataset="bench",
        n_training_tokens=1, l0=1.0, explained_variance=0.5, created_at="2026-01-01T00:00:00Z",
        mistudio_version="bench", n_prompts=2048, n_tokens_in_prompt=128, prepend_bos=True,
        model_layers=5,
    )  # fmt: skip


def naming() -> NeuronpediaNaming:
    return NeuronpediaNaming(
        model_id="stories260k", source_set="bench-res", layer=2, creator_name="bench",
        release_id="bench", release_title="bench",
    )  # fmt: skip


def tasks(staging: Path, out: Path, compress: bool) -> list[RangeTask]:
    kinds = (
        FormatKind.PRD_JSON, FormatKind.SAEDASHBOARD, FormatKind.NEURONPEDIA_IMPORT,
        FormatKind.NEURONPEDIA_UPLOAD,
    )  # fmt: skip
    folders = {k: out if FOLDERS[k] == ROOT else out / FOLDERS[k] for k in kinds}
    ranges = list(feature_ranges(staged_chunks(staging), FEATURES_PER_BATCH))
    d_sae = max(i for r in ranges for i in r.indices) + 1
    return [
        RangeTask(
            range=r,
            folders=folders,
            info=info(d_sae),
            naming=naming(),
            explanations=(),
            features_per_batch=FEATURES_PER_BATCH,
            compress_features=compress,
            reuse=None,
            payloads=payloads_path(out / "upload-parts", n),
        )
        for n, r in enumerate(ranges)
    ]


def _cpu(run: Callable[[], Any]) -> tuple[float, Any]:
    start = time.process_time()
    out = run()
    return time.process_time() - start, out


def _split(profile: cProfile.Profile, total: float) -> dict[str, float]:
    """The profiled CPU seconds by step (``STEPS``, cumulative), the rest as 'python'."""
    functions = pstats.Stats(profile).get_stats_profile().func_profiles
    split = {}
    for step, name in STEPS.items():
        split[step] = sum(
            f.cumtime
            for function, f in functions.items()
            if f.file_name == "~" and name in function
        )
    split["python"] = total - sum(split.values())
    return split


def _profiled(run: Callable[[], Any], top: int) -> tuple[float, dict[str, float]]:
    profile = cProfile.Profile(time.process_time)  # CPU seconds: the machine is shared
    start = time.process_time()
    profile.runcall(run)
    total = time.process_time() - start
    if top:
        pstats.Stats(profile).sort_stats("tottime").print_stats(top)
    return total, _split(profile, total)


def steps(task_list: list[RangeTask], out: Path, top: int) -> None:
    """CPU seconds of each step alone, every range in turn, in this thread; then each format
    again under cProfile for its split (a profile sees one thread, and ``write_range`` runs
    each format in a thread of its own; profiling inflates the Python part)."""
    chunks = [c for t in task_list for c in t.range.chunks]
    read, sized = _cpu(
        lambda: [
            list(map(dpb.FeatureDashboardSplit.FromString, wires))
            for wires in batch_sized(read_wires(chunks), wire_tokens)
        ]
    )
    heads, head_lists = _cpu(lambda: [list(map(dashboard_head_from_pb, chunk)) for chunk in sized])
    codes = TokenCodes(StringTable())
    built, batches = _cpu(
        lambda: [wire_columns(h, codes, c) for h, c in zip(head_lists, sized, strict=True)]
    )
    if any(b is None for b in batches):
        raise SystemExit("a batch's examples are laid out otherwise: not measured here")
    checked, _ = _cpu(lambda: [column_findings(b) for b in batches])
    print(f"read + split staged dashboards {read:6.2f} s CPU")
    print(f"dashboard heads (no examples)  {heads:6.2f} s CPU")
    print(f"example columns                {built:6.2f} s CPU ({len(batches)} batches)")
    print(f"column checks                  {checked:6.2f} s CPU")
    first = task_list[0]
    i, n = first.info, first.naming
    writers: dict[str, Callable[[Iterator[ExampleColumns]], object]] = {
        "prd": lambda b: write_feature_files(out / "prd", b),
        "saedashboard": lambda b: write_saedashboard_batches(out / "sd", i, n, b),
        "importer": lambda b: write_importer_export(out / "imp", i, n, b),
        "upload": lambda b: sum(1 for _ in payload_features(b, (), PayloadNotes())),
    }
    for name, write in writers.items():
        alone, _ = _cpu(lambda w=write: w(iter(batches)))  # type: ignore[misc]
        total, split = _profiled(lambda w=write: w(iter(batches)), top)  # type: ignore[misc]
        parts = "  ".join(f"{k} {v / total:4.0%}" for k, v in split.items())
        print(f"{name:14s} {alone:6.2f} s CPU; profiled {total:5.2f} s: {parts}")


def digest(out: Path) -> str:
    h = hashlib.sha256()
    for path in sorted(p for p in out.rglob("*") if p.is_file()):
        h.update(path.relative_to(out).as_posix().encode() + b"\0" + path.read_bytes())
    return h.hexdigest()


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--staging", type=Path, required=True)
    parser.add_argument("--out", type=Path, required=True, help="emptied, then written")
    parser.add_argument("--gzip-json", action="store_true", help="PRD feature files gzipped")
    parser.add_argument("--steps", action="store_true", help="each step alone, profiled")
    parser.add_argument("--top", type=int, default=0, help="functions listed per format")
    args = parser.parse_args(argv)

    shutil.rmtree(args.out, ignore_errors=True)
    task_list = tasks(args.staging, args.out, args.gzip_json)
    n = sum(len(t.range.indices) for t in task_list)
    if args.steps:
        steps(task_list, args.out / "steps", args.top)
        shutil.rmtree(args.out / "steps")
    wall, cpu = time.perf_counter(), time.process_time()
    for task in task_list:
        write_range(task)
    wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
    print(f"write_range over {len(task_list)} ranges, {n} features: {wall:.2f} s wall, "
          f"{cpu:.2f} s CPU (all threads); sha256 of the files {digest(args.out)}")  # fmt: skip


if __name__ == "__main__":
    main()
