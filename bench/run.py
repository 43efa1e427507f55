"""`make bench`: ours vs SAEDashboard's NeuronpediaRunner on the same inputs, alternately.

Default: stories260K, blocks.2.hook_resid_post, random calibrated SAEs (see inputs.py), 2048 x 128
= 262,144 tokens, d_sae 4096 and 16384 (``--d-sae`` takes one or several), two ours/theirs pairs
per size (``--pairs``), then the scaling series for ours alone around the first size (tokens x2
x4, d_sae x2 x4; ``--no-scaling`` skips it): about 40 minutes on the 2-core CPU machine.
``--smoke``: 64 x 128 tokens, d_sae 64, one pair, under a minute once SAEDashboard's venv exists.
``--model gpt2-small-random`` swaps in a GPT-2-small-sized model (see gpu.sh). Writes
bench/results/latest.json (one entry per size under ``sizes``; the top-level figures are the
largest size's) and latest.md, and prints a table.
"""

from __future__ import annotations

import argparse
import compileall
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.float_ambiguity import TheirEncode, float_ambiguous_tokens
from bench.inputs import MODELS, REPO, BenchInputs, BenchModel, bench_model, prepare
from bench.measure import agreement, floors, flops_per_token, matmul_gflops
from bench.ours_job import archive_facts

BENCH = REPO / "bench"
THEIR_VENV = BENCH / ".venv-saedashboard"
THEIR_PY = THEIR_VENV / "bin" / "python"
THEIR_PINS = ["sae-dashboard==0.8.0", "pyarrow<19", "numpy<2"]
THEIR_HOOK_ACTIVATIONS = "hook_activations.npy"
"""Where ``saedashboard_job facts`` leaves, in a run's work folder, the activations it encoded."""
THEIR_ENCODER = "encoder.npz"
"""Where ``saedashboard_job run`` leaves, in its work folder, the encoder columns it used."""


def ensure_their_venv() -> str:
    """Creates bench/.venv-saedashboard once; returns '' when usable, else why not."""
    probe = [str(THEIR_PY), "-c", "import sae_dashboard, transformer_lens, sae_lens"]
    if THEIR_PY.exists() and subprocess.run(probe, capture_output=True).returncode == 0:
        return ""
    steps = [
        [sys.executable, "-m", "venv", str(THEIR_VENV)],
        [str(THEIR_PY), "-m", "pip", "install", "-q", "torch==2.13.0"],
        [str(THEIR_PY), "-m", "pip", "install", "-q", *THEIR_PINS],
        [str(THEIR_PY), "-m", "pip", "uninstall", "-y", "-q", "torchvision", "torchaudio"],
    ]
    for step in steps:
        if subprocess.run(step).returncode != 0 and "uninstall" not in step:
            return f"installing SAEDashboard failed at: {' '.join(step)}"
    return "" if subprocess.run(probe).returncode == 0 else "sae_dashboard does not import"


GNU_TIME = Path("/usr/bin/time")
RUSAGE_OF_CHILDREN = """
import resource, subprocess, sys
code = subprocess.run(sys.argv[2:]).returncode
used = resource.getrusage(resource.RUSAGE_CHILDREN)
with open(sys.argv[1], "w") as out:
    out.write(f"{used.ru_maxrss} {used.ru_utime} {used.ru_stime}")
sys.exit(code)
"""
"""What /usr/bin/time -f "%M %U %S" writes, where it is missing (the lent device's image): the
command's largest process's peak RSS in KB, and the user and system CPU s of it and all it
started, from a process that starts nothing else."""


def timed(
    cmd: list[str], cwd: Path, threads: int, extra_env: dict[str, str] | None = None
) -> dict[str, float]:
    """Runs ``cmd`` under /usr/bin/time: its wall s, peak RSS MB (of the largest process: the
    command's own, or one it started) and CPU s (user and system, its children included: what
    other load on the machine does not inflate)."""
    env = os.environ | {"OMP_NUM_THREADS": str(threads), "MKL_NUM_THREADS": str(threads)}
    env |= extra_env or {}
    rss_file = cwd / "rss.txt"
    measured = (
        [str(GNU_TIME), "-o", str(rss_file), "-f", "%M %U %S", *cmd]
        if GNU_TIME.exists()
        else [sys.executable, "-c", RUSAGE_OF_CHILDREN, str(rss_file), *cmd]
    )
    started = time.perf_counter()
    done = subprocess.run(measured, cwd=cwd, env=env, capture_output=True, text=True)
    wall = time.perf_counter() - started
    if done.returncode != 0:
        raise RuntimeError(f"{cmd[1]} failed:\n{done.stderr[-3000:]}")
    rss_kb, user, system = rss_file.read_text().split()[-3:]
    return {"wall_s": wall, "peak_rss_mb": int(rss_kb) / 1024, "cpu_s": float(user) + float(system)}


SOURCE_ROOTS = ("services", "protos/gen/python")
"""Our Python, byte-compiled before any timed run as ``pip install`` does: run from the
checkout under PYTHONDONTWRITEBYTECODE, each run would compile every module from source (about
half a CPU second, in the export's helper process again), which SAEDashboard's installed
packages never do."""


def compile_sources() -> None:
    for root in SOURCE_ROOTS:
        if not compileall.compile_dir(REPO / root, quiet=1):
            raise SystemExit(f"byte-compiling {REPO / root} failed")


def run_ours(
    inputs: BenchInputs,
    args: argparse.Namespace,
    work: Path,
    extra_env: dict[str, str] | None = None,
    features: bool = False,
    read_rate: bool = True,
) -> dict[str, Any]:
    """One export in its own process (its peak RSS is the export's); then, here, what the
    report reads from its archive (``features``: what the agreement with theirs compares).
    ``read_rate``: the machine's matmul rate is read just before, for the compared sizes'
    stage shares (the scaling and Ray runs report none: a reading is 1-2 s of both cores)."""
    out = work / "ours.json"
    cmd = [sys.executable, str(BENCH / "ours_job.py"), "--model-ref", inputs.model.model_ref]
    cmd += ["--sae", str(inputs.sae_folder), "--tokens", str(inputs.token_file)]
    cmd += ["--context", str(inputs.context), "--n-examples", str(args.n_examples)]
    cmd += ["--logit-k", str(args.logit_k), "--bins", str(args.bins), "--device", args.device]
    budget = (
        {}
        if args.memory_budget is None
        else {"MISTUDIO_COMPUTE_MEMORY_BUDGET_BYTES": str(args.memory_budget)}
    )  # the compute service of our in-process stack reads it
    cmd += ["--keep-data", str(work.parent / "ours-data")]  # rates measured by earlier runs
    archive = work / "ours.zip"
    cmd += ["--out", str(out), "--archive", str(archive)]
    rate = matmul_gflops(threads=args.threads, device=args.device) if read_rate else None
    load = os.getloadavg()[0]
    measured = timed(cmd, work, args.threads, budget | (extra_env or {}))
    facts = archive_facts(archive, features)  # here: not the export's memory
    archive.unlink()  # it grows with d_sae; its facts are what the report needs
    load_avg = (load, os.getloadavg()[0])
    beside = {"load_avg": load_avg, "matmul_gflops_before": rate}
    return json.loads(out.read_text()) | facts | measured | beside


def run_theirs(inputs: BenchInputs, args: argparse.Namespace, work: Path) -> dict[str, Any]:
    out = work / "theirs.json"
    model = inputs.model
    job = [str(THEIR_PY), str(BENCH / "saedashboard_job.py")]
    cmd = [*job, "run", "--model", str(model.checkpoint)]
    cmd += ["--tokenizer", str(model.tokenizer), "--device", args.device]
    cmd += ["--check-reference"] if model.has_reference else []
    cmd += ["--sae", str(inputs.sae_folder), "--tokens", str(inputs.token_file)]
    cmd += ["--work", str(work), "--n-examples", str(args.n_examples), "--out", str(out)]
    cmd += ["--encoder", str(work / THEIR_ENCODER)]
    measured = timed(cmd, work, args.threads)
    facts = work / "theirs-facts.json"  # read afterwards, outside the measured process, as ours
    acts = ["--hook-activations", str(work / THEIR_HOOK_ACTIVATIONS)]
    subprocess.run([*job, "facts", "--work", str(work), "--out", str(facts), *acts], check=True)
    return json.loads(out.read_text()) | json.loads(facts.read_text()) | measured


def their_encode(work: Path) -> TheirEncode:
    """What the SAEDashboard run in ``work`` encoded (``float_ambiguity`` re-encodes it)."""
    encoder = np.load(work / THEIR_ENCODER)
    return TheirEncode(np.load(work / THEIR_HOOK_ACTIVATIONS), encoder["W_enc"], encoder["b_enc"])


def inputs_dir(args: argparse.Namespace, scratch: Path) -> Path:
    """Where the inputs are written, or found from an earlier run (``--inputs``)."""
    return Path(args.inputs) if args.inputs else scratch / "inputs"


def summary(run: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in run.items() if k != "features"}


def compare(
    args: argparse.Namespace, scratch: Path, model: BenchModel, d_sae: int, their_problem: str
) -> dict[str, Any]:
    """``--pairs`` ours/theirs pairs on one size, the two sides alternating within a pair; then,
    outside the timed runs, the tokens whose firing float rounding decides (``ambiguity``)."""
    inputs = prepare(inputs_dir(args, scratch), model, args.rows, args.context, d_sae,
                     args.fire_rate)  # fmt: skip
    ours: list[dict[str, Any]] = []
    theirs: list[dict[str, Any]] = []
    with_theirs = not (their_problem or d_sae >= OURS_ONLY_D_SAE)
    for pair in range(args.pairs):
        for side, runs in (("ours", ours), ("theirs", theirs)):
            if side == "theirs" and not with_theirs:
                continue
            work = Path(tempfile.mkdtemp(prefix=f"{side}-{d_sae}-{pair}-", dir=scratch))
            if side == "ours":
                runs.append(run_ours(inputs, args, work, features=with_theirs))
            else:
                runs.append(run_theirs(inputs, args, work))
                their_work = work
            wall, rss = runs[-1]["wall_s"], runs[-1]["peak_rss_mb"]
            print(f"d_sae {d_sae} pair {pair} {side}: {wall:.1f}s {rss:.0f}MB")
    ambiguity = float_ambiguous_tokens(inputs, their_encode(their_work)) if theirs else None
    return {"inputs": inputs, "ours": ours, "theirs": theirs, "ambiguity": ambiguity}


OURS_ONLY_D_SAE = 131072
"""From this size on only ours runs: the point shows the memory budget holding at d_sae far past
the comparison sizes (SAEDashboard would take hours there)."""


def memory_size(text: str) -> int:
    """Bytes from e.g. ``1500000000``, ``1.5G``, ``800M`` (powers of 1024)."""
    units = {"K": 2**10, "M": 2**20, "G": 2**30}
    scale = units.get(text[-1:].upper(), 1)
    return int(float(text[:-1] if scale > 1 else text) * scale)


def ray_overhead(args: argparse.Namespace, inputs: BenchInputs, scratch: Path) -> dict[str, Any]:
    """Ours on the local path, then with its pass as ``--ray`` shards on a Ray cluster started on
    this machine: the wall time sharding adds (on a few cores the point is the overhead), and
    whether the feature files are byte-identical. On CUDA the shards share the one GPU."""
    ray_env = {
        "MISTUDIO_COMPUTE_RAY_ADDRESS": "local",
        "MISTUDIO_COMPUTE_RAY_SHARDS": str(args.ray),
        "MISTUDIO_COMPUTE_RAY_MAX_SHARDS_IN_FLIGHT": str(args.ray),
    }
    if args.device.startswith("cuda"):
        ray_env["MISTUDIO_COMPUTE_RAY_GPUS_PER_TASK"] = str(1 / args.ray)
    runs = {}
    for side, env in (("local", None), ("ray", ray_env)):
        work = Path(tempfile.mkdtemp(prefix=f"ray-overhead-{side}-", dir=scratch))
        runs[side] = run_ours(inputs, args, work, env, read_rate=False)
        print(f"ray overhead {side}: {runs[side]['wall_s']:.1f}s")
    local, ray = runs["local"], runs["ray"]
    return {
        "shards": args.ray,
        "d_sae": inputs.d_sae,
        "n_tokens": inputs.n_tokens,
        "local_wall_s": local["wall_s"],
        "ray_wall_s": ray["wall_s"],
        "overhead_s": ray["wall_s"] - local["wall_s"],
        "local_pass_s": local["stages_s"].get("activation_pass"),
        "ray_pass_s": ray["stages_s"].get("activation_pass"),
        "identical_feature_files": local["feature_files_sha256"] == ray["feature_files_sha256"],
    }


STAGE_GROUPS = {
    "activation_pass": ("activation_pass",),
    "finalisation": ("loading_examples", "logit_lens", "histograms", "token_aggregation"),
    "caching": ("caching",),
    "serialization": ("generating_files",),
    "validation": ("validating", "validating_output"),
    "archive": ("creating_archive",),
}
"""The export's stages as the report shows them: finalisation (examples, logit lens, histograms,
token lists) runs chunk by chunk as one step."""


def throughput(ours: list[dict[str, Any]], inputs: BenchInputs, gflops: float) -> dict[str, Any]:
    """Per stage group: median seconds, and the tokens it handles per second times the pass's
    FLOPs per token as a share of the measured matmul rate (what a stage would reach if it were
    as efficient as the hardware's dense matmul; only the activation pass does model work); and
    the stage's byte floor (``measure.floors``: the output's bytes over this machine's orjson and
    deflate rates) with the stage's distance to it ("whole_export": the floor after the pass)."""
    model = inputs.model
    flops = flops_per_token(model.dims(), model.hook_layer, inputs.d_sae, inputs.context)
    stages = {
        group: statistics.median(sum(r["stages_s"].get(k, 0.0) for k in keys) for r in ours)
        for group, keys in STAGE_GROUPS.items()
    }
    stages["whole_export"] = statistics.median(r["job_wall_s"] for r in ours)
    fractions: dict[str, float | None] = {
        k: (flops * inputs.n_tokens / s / 1e9) / gflops if s > 0 else None
        for k, s in stages.items()
    }
    stages["startup_and_overhead"] = statistics.median(
        r["wall_s"] - sum(r["stages_s"].values()) for r in ours
    )  # the process's wall outside every stage: see outside_stages for where it goes
    fractions["startup_and_overhead"] = None
    size_keys = ("json_bytes", "gzip_bytes", "output_bytes")
    sizes = {k: int(statistics.median(r[k] for r in ours)) for k in size_keys}
    rates = {k: statistics.median(r["byte_rates"][k] for r in ours) for k in ours[0]["byte_rates"]}
    floor = floors(sizes, rates)
    return {
        "flops_per_token": flops,
        "stages_s": stages,
        "fraction_of_matmul_rate": fractions,
        **sizes,
        "byte_rates": rates,
        "floor_s": floor,
        "x_floor": {k: stages[k] / f if f > 0 else None for k, f in floor.items()},
    }


def scaling(
    args: argparse.Namespace, scratch: Path, model: BenchModel, measured: list[dict[str, Any]]
) -> list[dict[str, Any]]:
    """Ours alone around the first size: x1, tokens x2 x4, d_sae x2 x4 (``--scaling`` picks one
    axis); a point already measured by the comparison (x1, and d_sae x4 in the default run)
    reuses that run."""
    done = {(r["inputs"].n_rows, r["inputs"].d_sae): r["ours"][0] for r in measured if r["ours"]}
    rows, d_sae = [], args.d_sae[0]
    for mult_rows, mult_sae in SCALING_POINTS[args.scaling]:
        size = (args.rows * mult_rows, d_sae * mult_sae)
        run = done.get(size)
        if run is None:
            inputs = prepare(
                inputs_dir(args, scratch), model, size[0], args.context, size[1], args.fire_rate
            )
            work = Path(tempfile.mkdtemp(prefix="scale-", dir=scratch))
            run = run_ours(inputs, args, work, read_rate=False)
            print(f"scaling {size[0]} rows x {size[1]}: {run['wall_s']:.1f}s")
        point = {"n_tokens": size[0] * args.context, "d_sae": size[1]}
        rows.append(point | {"tokens_x": mult_rows, "d_sae_x": mult_sae} | summary(run))
    return rows


SCALING_POINTS = {
    "both": ((1, 1), (2, 1), (4, 1), (1, 2), (1, 4)),
    "tokens": ((1, 1), (2, 1), (4, 1)),
    "d_sae": ((1, 1), (1, 2), (1, 4)),
}
"""(tokens x, d_sae x) of each scaling point, per ``--scaling`` axis."""


def source_commit() -> str:
    """The measured code's commit, marked ``+changes`` when the tree differs from it."""

    def git(*cmd: str) -> str:
        try:
            done = subprocess.run(["git", *cmd], cwd=REPO, capture_output=True, text=True)
        except FileNotFoundError:  # no git where the tree was carried to
            return ""
        return done.stdout.strip() if done.returncode == 0 else ""

    commit = git("rev-parse", "HEAD") or "unknown"
    paths = ("services", "bench", ":!bench/results")
    dirty = git("status", "--porcelain", "--untracked-files=no", "--", *paths)
    return commit + ("+changes" if dirty else "")


def median(runs: list[dict[str, Any]], key: str) -> float | None:
    return statistics.median(r[key] for r in runs) if runs else None


def pair_ratio(ours: list[dict[str, Any]], theirs: list[dict[str, Any]], key: str) -> float | None:
    """Median over pairs of theirs ÷ ours: each pair ran back to back, under the same load."""
    ratios = [t[key] / o[key] for o, t in zip(ours, theirs, strict=False) if o[key] > 0]
    return statistics.median(ratios) if ratios else None


def outside_stages(run: dict[str, Any]) -> dict[str, dict[str, float | None]]:
    """Where one run's wall outside the export's stages goes, step by step in the order they ran
    (``ours_job.Marks``), wall and CPU seconds each (CPU of this process, every thread): the
    export job's share is its wall less its stages (job creation, progress messages, handing over
    between stages; no CPU figure, the stages' is in it); ``exit`` is the interpreter's teardown
    up to the end run.py measured (wall only)."""
    wall, cpu = run["marks_wall_s"], run["marks_cpu_s"]
    steps: dict[str, dict[str, float | None]] = {}
    before = {"wall": 0.0, "cpu": 0.0}
    for point in wall:
        steps[point] = {"wall": wall[point] - before["wall"], "cpu": cpu[point] - before["cpu"]}
        before = {"wall": wall[point], "cpu": cpu[point]}
    job = steps["export_job"]
    steps["export_job"] = {"wall": job["wall"] - sum(run["stages_s"].values()), "cpu": None}
    steps["exit"] = {"wall": run["wall_s"] - before["wall"], "cpu": None}
    return steps


def estimate_report(run: dict[str, Any]) -> dict[str, Any]:
    """ValidateExport's estimate beside what the run measured: the export's wall time (from
    StartExport to its end), each stage group's seconds, and the compute stages' peak RSS above
    the stack at rest (what estimated_peak_memory_bytes means). The first run of a bench has
    only the priors; every later one the rates the runs before it measured (they share a data
    folder)."""
    compute = ("activation_pass", "loading_examples", "logit_lens", "histograms",
               "token_aggregation", "caching")  # fmt: skip
    peaks = run["stages_peak_rss_mb"]
    compute_peak = max((peaks[k] for k in compute if k in peaks), default=run["rest_rss_mb"])
    measured_mb = compute_peak - run["rest_rss_mb"]
    predicted = run["estimated_stages_s"]
    return {
        "from_measured_rates": run["estimate_from_measured_rates"],
        "estimated_s": run["estimated_s"],
        "measured_s": run["export_wall_s"],
        "time_ratio": run["estimated_s"] / run["export_wall_s"],
        "stages": {
            group: {
                "estimated_s": sum(predicted.get(k, 0.0) for k in keys),
                "measured_s": sum(run["stages_s"].get(k, 0.0) for k in keys),
            }
            for group, keys in STAGE_GROUPS.items()
        },
        "eta_checks": [
            check | {"ratio": check["eta_s"] / check["remaining_s"]} for check in run["eta_checks"]
        ],
        "estimated_compute_peak_mb": run["estimated_peak_memory_mb"],
        "measured_compute_peak_mb": measured_mb,
        "memory_ratio": run["estimated_peak_memory_mb"] / measured_mb if measured_mb > 0 else None,
    }


ESTIMATE_TOLERANCE = 0.30
"""Issue 14: the time and memory estimates within ±30% of the measured run."""


def size_report(result: dict[str, Any], args: argparse.Namespace, gflops: float) -> dict[str, Any]:
    """One size's figures: medians over its pairs, agreement of its last pair."""
    inputs: BenchInputs = result["inputs"]
    ours, theirs = result["ours"], result["theirs"]
    for run in ours:  # /usr/bin/time sees the largest process; ours starts writers and validators
        run["memory_mb"] = max(run["peak_rss_mb"], tree_mb(run))
    for run in theirs:  # one process
        run["memory_mb"] = run["peak_rss_mb"]
    ow, tw = median(ours, "wall_s"), median(theirs, "wall_s")
    orss, trss = median(ours, "memory_mb"), median(theirs, "memory_mb")
    tp = throughput(ours, inputs, gflops)
    return {
        "d_sae": inputs.d_sae,
        "n_tokens": inputs.n_tokens,
        "ours_wall_s": ow,
        "saedashboard_wall_s": tw,
        "ratio_wall": pair_ratio(ours, theirs, "wall_s"),
        "ours_peak_rss_mb": orss,
        "saedashboard_peak_rss_mb": trss,
        "ratio_peak_rss": pair_ratio(ours, theirs, "memory_mb"),
        "activation_pass_fraction_of_matmul_rate": tp["fraction_of_matmul_rate"].get(
            "activation_pass"
        ),
        "throughput": tp,
        "estimates": [estimate_report(r) for r in ours],
        "outside_stages": outside_stages(ours[-1]),
        "agreement": agreement(
            ours[-1]["features"],
            theirs[-1]["features"],
            args.logit_k,
            inputs.n_tokens,
            result["ambiguity"],
        )
        if theirs
        else None,
        "runs": {"ours": [summary(r) for r in ours], "saedashboard": [summary(r) for r in theirs]},
    }


def report(
    args: argparse.Namespace, model: BenchModel, results: list[dict[str, Any]],
    scaled: list[dict[str, Any]], their_problem: str, ray: dict[str, Any] | None = None,
) -> dict[str, Any]:  # fmt: skip
    rates = [run["matmul_gflops_before"] for r in results for run in r["ours"]]
    rates.append(matmul_gflops(threads=args.threads, device=args.device))
    gflops = max(rates)  # what the machine can do: a shared host's rate wanders below it
    sizes = [size_report(r, args, gflops) for r in results]
    largest = max(sizes, key=lambda s: (s["d_sae"], s["n_tokens"]))
    top = {k: v for k, v in largest.items() if k != "runs"}
    return {
        "mode": "smoke" if args.smoke else "default",
        "commit": source_commit(),
        "model": f"{model.name} ({model.hook})",
        "machine": f"{platform.machine()} {os.cpu_count()} cpus, {args.threads} threads, {args.device}",  # noqa: E501
        "sae": f"random standard SAE, b_enc calibrated to fire on {args.fire_rate:.0%} of tokens",
        "params": {"n_examples": args.n_examples, "logit_k": args.logit_k, "bins": args.bins},
        "pairs": args.pairs,
        "memory_budget_bytes": args.memory_budget,
        "saedashboard": their_problem or "ran (sae-dashboard 0.8.0 NeuronpediaRunner)",
        "matmul_gflops": gflops,
        "matmul_gflops_measured": rates,
        "top_level_size": f"the figures beside this key are the largest size's (d_sae "
        f"{largest['d_sae']}, {largest['n_tokens']} tokens); every size is in sizes",
        **top,
        "sizes": sizes,
        "scaling": scaled,
        "ray": ray,
    }


def budget_text(budget: int | None) -> str:
    return (
        "default (1 GiB, or 80% of RAM if less)" if budget is None else f"{budget / 2**20:.0f} MiB"
    )


def matmul_text(rates: list[float]) -> str:
    return (
        f"the best of {len(rates)} measurements, one before each of our runs at the compared "
        f"sizes and one at the end: {fmt(min(rates))}-{fmt(max(rates))}; the stages' % of it"
    )


def markdown(out: dict[str, Any]) -> str:
    lines = [
        f"# Bench ({out['mode']}): {out['model']}, d_sae "
        + ", ".join(str(s["d_sae"]) for s in out["sizes"]),
        "",
        f"Commit {out['commit']}. Machine: {out['machine']}; SAEDashboard: {out['saedashboard']}; "
        f"{out['pairs']} pair(s) per size; matmul {fmt(out['matmul_gflops'])} GFLOP/s "
        f"({matmul_text(out['matmul_gflops_measured'])}); "
        f"compute memory budget: {budget_text(out.get('memory_budget_bytes'))}.",
        "",
        "| d_sae | tokens | ours wall s | SAEDashboard wall s | theirs / ours | ours RSS MB "
        "(with its processes) "
        "| SAEDashboard RSS MB | theirs / ours |",
        "|---|---|---|---|---|---|---|---|",
    ]
    lines += [
        f"| {s['d_sae']} | {s['n_tokens']} | {fmt(s['ours_wall_s'])} | "
        f"{fmt(s['saedashboard_wall_s'])} | {fmt(s['ratio_wall'])} | "
        f"{fmt(s['ours_peak_rss_mb'])} | {fmt(s['saedashboard_peak_rss_mb'])} | "
        f"{fmt(s['ratio_peak_rss'])} |"
        for s in out["sizes"]
    ]
    for s in out["sizes"]:
        tp = s["throughput"]
        lines += ["", f"## d_sae {s['d_sae']}", ""]
        lines += ["| stage | s | byte floor s | x floor | % of the matmul rate |"]
        lines += ["|---|---|---|---|---|"] + [
            f"| {k} | {fmt(sec)} | {fmt(tp['floor_s'].get(k))} | {fmt(tp['x_floor'].get(k))} "
            f"| {percent(tp['fraction_of_matmul_rate'][k])} |"
            for k, sec in tp["stages_s"].items()
        ]
        rates = ", ".join(f"{k} {v / 1e6:.0f} MB/s" for k, v in tp["byte_rates"].items())
        lines += [
            "",
            f"Output {tp['output_bytes'] / 1e6:.1f} MB ({tp['json_bytes'] / 1e6:.1f} MB JSON, "
            f"{tp['gzip_bytes'] / 1e6:.1f} MB gzipped as written); "
            f"one core here: {rates}. Floors: serialization = JSON ÷ dumps + gzip files ÷ "
            "deflate, validation = JSON ÷ loads, archive = the rest ÷ deflate, whole_export = "
            "the floor after the pass (all ÷ dumps, then deflate).",
        ]
        lines += [
            "",
            "startup_and_overhead is the process's wall outside every stage; in the last run:",
            "",
            "| step | wall s | CPU s |",
            "|---|---|---|",
        ]
        lines += [
            f"| {step} | {fmt(t['wall'])} | {fmt(t['cpu'])} |"
            for step, t in s["outside_stages"].items()
        ]
        for run, e in enumerate(s["estimates"], 1):
            staged = ", ".join(
                f"{k} {fmt(v['estimated_s'])}/{fmt(v['measured_s'])}"
                for k, v in e["stages"].items()
                if v["estimated_s"] or v["measured_s"]
            )
            etas = ", ".join(
                f"{c['at']:.0%} x{fmt(c['ratio'])} ({c['stage']})" for c in e["eta_checks"]
            )
            lines += [
                "",
                f"Run {run} estimated/measured s per stage ({rates_text(e)}): {staged}. "
                f"Running ETA ÷ time actually left, at shares of the export's wall time: {etas}.",
            ]
        lines += ["", memory_text(s["runs"]["ours"][-1], out.get("memory_budget_bytes"))]
        lines += ["", "Agreement:", "", "```", json.dumps(s["agreement"], indent=1), "```"]
    lines += [
        "",
        "## Estimates",
        "",
        "ValidateExport's estimate before each run (its export's wall time from StartExport to "
        f"the end, and the compute stages' peak RSS above the stack at rest), and whether it is "
        f"within ±{ESTIMATE_TOLERANCE:.0%}; the runs share a data folder, so every run after "
        "the first is estimated from the rates the runs before it measured.",
        "",
        "| d_sae | run | rates | estimated s | measured s | x | within | estimated MB "
        "| measured MB | x | within |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    lines += [
        f"| {s['d_sae']} | {run} | {rates_text(e)} | {fmt(e['estimated_s'])} | "
        f"{fmt(e['measured_s'])} | {fmt(e['time_ratio'])} | {within(e['time_ratio'])} | "
        f"{fmt(e['estimated_compute_peak_mb'])} | {fmt(e['measured_compute_peak_mb'])} | "
        f"{fmt(e['memory_ratio'])} | {within(e['memory_ratio'])} |"
        for s in out["sizes"]
        for run, e in enumerate(s["estimates"], 1)
    ]
    if out["scaling"]:
        base = out["scaling"][0]
        lines += [
            "",
            "## Scaling (ours)",
            "",
            "| tokens | d_sae | wall s | CPU s | x base | peak RSS MB | x base | above the stack "
            "at rest MB | x base | with its processes MB | load before / after |",
            "|---|---|---|---|---|---|---|---|---|---|---|",
        ]
        lines += [
            f"| {r['n_tokens']} (x{r['tokens_x']}) | {r['d_sae']} (x{r['d_sae_x']}) | "
            f"{fmt(r['wall_s'])} | {fmt(r['cpu_s'])} | {fmt(r['cpu_s'] / base['cpu_s'])} | "
            f"{fmt(r['peak_rss_mb'])} | {fmt(r['peak_rss_mb'] / base['peak_rss_mb'])} | "
            f"{fmt(above_rest(r))} | {fmt(above_rest(r) / above_rest(base))} | "
            f"{fmt(tree_mb(r))} | {load_text(r)} |"
            for r in out["scaling"]
        ]
        lines += [
            "",
            "Peak RSS is the export's whole process (/usr/bin/time: the in-process stack of "
            "store, compute and export, with the model loaded, and the client downloading the "
            "archive); the bench reads the archive afterwards in its own process. Above the "
            "stack at rest: that peak less the process's RSS once the stack is up and the model "
            "loaded. With its processes: the peak of that RSS plus the private memory of the "
            "processes it starts (the second format writer, the validation pool), which "
            "/usr/bin/time does not add up. Load: the machine's "
            "1-minute load average before and after the run.",
        ]
    if out.get("ray"):
        r = out["ray"]
        lines += [
            "",
            f"## Ray ({r['shards']} shards on this machine, d_sae {r['d_sae']}, "
            f"{r['n_tokens']} tokens)",
            "",
            "| path | wall s | activation pass s |",
            "|---|---|---|",
            f"| local | {fmt(r['local_wall_s'])} | {fmt(r['local_pass_s'])} |",
            f"| Ray | {fmt(r['ray_wall_s'])} | {fmt(r['ray_pass_s'])} |",
            "",
            f"Overhead of sharding: {fmt(r['overhead_s'])} s; byte-identical feature files: "
            f"{r['identical_feature_files']}.",
        ]
    return "\n".join(lines) + "\n"


def above_rest(run: dict[str, Any]) -> float:
    """The run's peak RSS above the stack at rest (the model loaded, nothing computed yet)."""
    return float(run["peak_rss_mb"] - run["rest_rss_mb"])


def tree_mb(run: dict[str, Any]) -> float:
    """The run's peak of the export's process RSS plus its children's private memory."""
    return float(max(run["stages_peak_tree_mb"].values(), default=0.0))


def load_text(run: dict[str, Any]) -> str:
    return " / ".join(f"{x:.1f}" for x in run["load_avg"])


def memory_text(run: dict[str, Any], budget: int | None) -> str:
    """Where the last run's memory went, beside the compute memory budget."""
    stages = ", ".join(f"{k} {v:.0f}" for k, v in run["stages_peak_rss_mb"].items())
    return (
        f"Memory (last run): peak RSS {run['peak_rss_mb']:.0f} MB, of which the stack at rest "
        f"{run['rest_rss_mb']:.0f} MB and {above_rest(run):.0f} MB above it; with the processes "
        f"it starts, at most {tree_mb(run):.0f} MB (their private memory added); compute "
        f"memory budget {budget_text(budget)}. Peak RSS MB per stage: {stages}. Wall "
        f"{run['wall_s']:.0f} s ({run['cpu_s']:.0f} CPU s) at a 1-minute load average of "
        f"{load_text(run)} (before / after) on this machine."
    )


def rates_text(estimate: dict[str, Any]) -> str:
    return "measured by earlier runs" if estimate["from_measured_rates"] else "default"


def within(ratio: float | None) -> str:
    if ratio is None:
        return "-"
    return "yes" if abs(ratio - 1.0) <= ESTIMATE_TOLERANCE else "no"


def percent(fraction: float | None) -> str:
    return "-" if fraction is None else f"{100 * fraction:.2f}%"


def fmt(value: Any, digits: int = 2) -> str:
    return (
        "-" if value is None else f"{value:.{digits}f}" if isinstance(value, float) else str(value)
    )


def parse(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--smoke", action="store_true")
    parser.add_argument("--ours-only", action="store_true", help="skip SAEDashboard")
    parser.add_argument("--rows", type=int, default=2048, help="token rows (x --context)")
    parser.add_argument("--context", type=int, default=128)
    parser.add_argument("--model", choices=MODELS, default=MODELS[0], help="see bench/inputs.py")
    parser.add_argument("--d-sae", type=int, nargs="+", default=[4096, 16384])
    parser.add_argument("--fire-rate", type=float, default=0.01)
    parser.add_argument("--pairs", type=int, default=2, help="ours/theirs pairs per size")
    parser.add_argument("--n-examples", type=int, default=20)
    parser.add_argument("--logit-k", type=int, default=10)
    parser.add_argument("--bins", type=int, default=50)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--device", default="cpu")
    parser.add_argument(
        "--memory-budget", type=memory_size, default=None,
        help="ours: MISTUDIO_COMPUTE_MEMORY_BUDGET_BYTES (e.g. 1G); computation in feature shards",
    )  # fmt: skip
    parser.add_argument("--no-scaling", action="store_true", help="skip the ours-only series")
    parser.add_argument(
        "--scaling", choices=SCALING_POINTS, default="both", help="the series' axes (x2 x4 each)"
    )
    parser.add_argument(
        "--ray", type=int, default=0, metavar="N",
        help="also time ours with the pass as N Ray shards on this machine (needs the ray extra)",
    )  # fmt: skip
    parser.add_argument(
        "--inputs", default="", help="keep the inputs (SAEs, tokens) in this folder and reuse them"
    )
    parser.add_argument("--dry-run", action="store_true", help="print the plan only")
    parser.add_argument("--results", default=str(BENCH / "results"))
    args = parser.parse_args(argv)
    if args.smoke:
        args.rows, args.d_sae, args.pairs, args.no_scaling, args.fire_rate = 64, [64], 1, True, 0.05
    return args


def main(argv: list[str] | None = None) -> dict[str, Any]:
    args = parse(argv)
    if args.dry_run:
        print(json.dumps(vars(args)))
        return {}
    their_problem = "skipped (--ours-only)" if args.ours_only else ensure_their_venv()
    results = Path(args.results)
    results.mkdir(parents=True, exist_ok=True)
    compile_sources()
    with tempfile.TemporaryDirectory(prefix="mistudio-bench-") as tmp:
        scratch = Path(tmp)
        model = bench_model(args.model, inputs_dir(args, scratch))
        sizes = [compare(args, scratch, model, d_sae, their_problem) for d_sae in args.d_sae]
        scaled = [] if args.no_scaling else scaling(args, scratch, model, sizes)
        ray = ray_overhead(args, sizes[0]["inputs"], scratch) if args.ray else None
        out = report(args, model, sizes, scaled, their_problem, ray)
    (results / "latest.json").write_text(json.dumps(out, indent=1) + "\n", encoding="utf-8")
    (results / "latest.md").write_text(markdown(out), encoding="utf-8")
    print(markdown(out).split("\n## ")[0])
    if ray:
        print(f"Ray ({ray['shards']} shards): {fmt(ray['ray_wall_s'])} s vs local "
              f"{fmt(ray['local_wall_s'])} s, overhead {fmt(ray['overhead_s'])} s, "
              f"byte-identical feature files: {ray['identical_feature_files']}")  # fmt: skip
    return out


if __name__ == "__main__":
    main()
