"""OUR side of one bench run: a full export (every format, ZIP archive) on the local stack.

Run as a subprocess by ``run.py`` so its peak RSS is the export's own: it writes ``--out`` (JSON:
wall time, per-stage elapsed seconds and peak RSS from the export's progress stream, when each
step outside the stages ended (``Marks``: imports, stack start, ValidateExport, download, ...),
ValidateExport's estimate beforehand, from the rates earlier runs measured when ``--keep-data``
is shared) and downloads the archive to ``--archive``. What the bench reads from the archive
afterwards (``archive_facts``: sizes, byte rates, per feature what the agreement check needs) is
read by ``run.py`` in its own process, so that reading never counts as the export's memory.
"""

from __future__ import annotations

import argparse
import gzip
import hashlib
import itertools
import json
import os
import sys
import tempfile
import threading
import time
import zipfile
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from mistudio.export.v1 import export_service_pb2 as epb

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

DONE_STATES = ("JOB_STATE_SUCCEEDED", "JOB_STATE_FAILED", "JOB_STATE_CANCELLED")


class Marks:
    """Wall and CPU seconds since this process started at each named point, so the report can
    say where the time outside the export's stages goes (interpreter start and imports included:
    the wall run.py measures starts there too)."""

    def __init__(self) -> None:
        self.wall_s: dict[str, float] = {}
        self.cpu_s: dict[str, float] = {}

    def __call__(self, point: str) -> None:
        self.wall_s[point] = since_process_start()
        self.cpu_s[point] = time.process_time()  # every thread of this process


def since_process_start() -> float:
    """Seconds since the kernel started this process (/proc/self/stat field 22, in ticks)."""
    start_ticks = int(Path("/proc/self/stat").read_text().rsplit(")", 1)[1].split()[19])
    return time.clock_gettime(time.CLOCK_BOOTTIME) - start_ticks / os.sysconf("SC_CLK_TCK")


def run_export(
    args: argparse.Namespace, data_dir: Path, archive: Path, sampler: StageRss, mark: Marks
) -> dict[str, Any]:
    from mistudio.common.v1 import dashboard_pb2 as dpb
    from mistudio.common.v1 import progress_pb2 as ppb
    from mistudio.common.v1 import tokens_pb2 as tpb
    from mistudio.export.v1 import export_service_pb2 as epb
    from mistudio.export.v1 import export_service_pb2_grpc as egrpc
    from mistudio.store.v1 import store_service_pb2 as spb
    from mistudio.store.v1 import store_service_pb2_grpc as sgrpc
    from mistudio_cli.local_stack import start_local_stack
    from mistudio_common.server import insecure_channel
    from mistudio_compute.references import LLAMA2C_PREFIX, parse_llama2c_ref

    mark("imports")
    cfg = json.loads((Path(args.sae) / "cfg.json").read_text(encoding="utf-8"))
    sae_id = f"bench-{cfg['d_sae']}-{os.getpid()}"  # unique: a kept data folder is shared
    started = time.perf_counter()
    inputs = [Path(args.sae), Path(args.tokens)]
    if args.model_ref.startswith(LLAMA2C_PREFIX):
        inputs.extend(parse_llama2c_ref(args.model_ref))
    with start_local_stack(data_dir, device=args.device, input_paths=inputs) as stack:
        mark("stack_start")
        store = sgrpc.StoreServiceStub(insecure_channel(stack.store.address))
        exports = egrpc.ExportServiceStub(insecure_channel(stack.export.address))
        sae = spb.Sae(
            sae_id=sae_id,
            model_id=args.model_ref,
            hook_point=cfg["metadata"]["hook_name"],
            d_in=cfg["d_in"],
            d_sae=cfg["d_sae"],
            architecture=spb.ARCHITECTURE_STANDARD,
            weights_uri=str(Path(args.sae).resolve()),
            training_dataset="local/bench-random",
            neuronpedia_model_id=cfg["metadata"]["model_name"],
            neuronpedia_source_set=f"bench-res-{cfg['d_sae']}",
        )
        store.CreateSae(spb.CreateSaeRequest(sae=sae))
        config = epb.ExportConfig(
            formats=[epb.EXPORT_FORMAT_NEURONPEDIA, epb.EXPORT_FORMAT_SAELENS],
            dashboard=dpb.DashboardParams(
                n_top_examples=args.n_examples,
                n_quantile_groups=5,
                examples_per_quantile_group=5,
                logit_k=args.logit_k,
                histogram_bins=args.bins,
            ),
            tokens=tpb.TokenSource(
                token_file=str(Path(args.tokens).resolve()),
                dataset_name="bench-random",
                context_size=args.context,
                prepend_bos=True,
            ),
            compression=epb.Compression(zip_deflate=True),
            auto_fix=True,
            device=args.device,
        )
        estimate = exports.ValidateExport(epb.ValidateExportRequest(sae_id=sae_id, config=config))
        mark("validate_export")
        rest_rss_mb = _rss_mb()  # the stack at rest with the model loaded (the estimate did)
        request = epb.StartExportRequest(request_id=sae_id, sae_id=sae_id, config=config)
        export_started = time.perf_counter()  # what the estimate predicts: StartExport to done
        last = None
        etas: list[tuple[float, float, str]] = []  # (seconds since StartExport, ETA, stage)
        for message in exports.StartExport(request):
            last = message
            sampler.stage = ppb.Stage.Name(message.progress.stage).removeprefix("STAGE_").lower()
            sampler.progress = message.progress.message or message.progress.unit
            sampler.fraction = message.progress.fraction
            since = time.perf_counter() - export_started
            etas.append((since, message.progress.eta_seconds, sampler.stage))
            if ppb.JobState.Name(message.progress.state) in DONE_STATES:
                break
        assert last is not None
        state = ppb.JobState.Name(last.progress.state)
        if state != "JOB_STATE_SUCCEEDED":
            print(last.progress, file=sys.stderr)
            raise SystemExit(f"export ended {state}: {last.progress.error}")
        job_done = time.perf_counter()
        mark("export_job")

        def stage_name(stage: int) -> str:
            return ppb.Stage.Name(stage).removeprefix("STAGE_").lower()  # type: ignore[arg-type]

        stages = {stage_name(s.stage): s.elapsed_seconds for s in last.progress.stages}
        sampler.stage = "download"
        download = epb.DownloadExportRequest(job_id=last.progress.job_id)
        with archive.open("wb") as sink:  # streamed: the archive grows with d_sae, RSS must not
            for chunk in exports.DownloadExport(download):
                sink.write(chunk.chunk)
        mark("download")
    mark("stack_stop")
    return {
        "export_peak_rss_mb": _status_mb("VmHWM"),  # this process's peak: the export's
        "job_wall_s": job_done - started,
        "export_wall_s": job_done - export_started,
        "eta_checks": eta_checks(etas, job_done - export_started),
        "stages_s": stages,
        "rest_rss_mb": rest_rss_mb,
        "estimated_s": estimate.estimate.estimated_seconds,
        "estimated_stages_s": {stage_name(s.stage): s.seconds for s in estimate.estimate.stages},
        "estimated_peak_memory_mb": estimate.estimate.estimated_peak_memory_bytes / 2**20,
        "estimate_from_measured_rates": not any("default" in w for w in estimate.warnings),
        "archive_bytes": archive.stat().st_size,
        "n_files": len(last.result.files),
        **shard_plan(data_dir, args.device, config, cfg["d_sae"], cfg["d_in"]),
    }


def shard_plan(
    data_dir: Path, device: str, config: epb.ExportConfig, features: int, hook_width: int
) -> dict[str, int]:
    """The feature shards the computation ran in and its model forwards, as the compute plans
    them (``planning.plan_shards``; its settings read the environment as the stack's did), so
    that a replay of the stage times sizes each stage by the work it timed."""
    from mistudio_common.dashboard_codec import params_from_pb
    from mistudio_compute.config import ComputeSettings
    from mistudio_compute.planning import plan_shards
    from mistudio_compute.tokens import TokenSourceSpec, load_token_source

    source = config.tokens
    dataset = load_token_source(
        TokenSourceSpec(
            token_file=source.token_file,
            context_size=source.context_size,
            prepend_bos=source.prepend_bos,
        )
    )
    settings = ComputeSettings(data_dir=data_dir, device=device)
    params = params_from_pb(config.dashboard)
    plan = plan_shards(
        settings, params, features, dataset, batch_rows=config.batch_size, hook_width=hook_width
    )
    return {"shards": plan.shards, "forwards": plan.forwards}


def archive_facts(archive: Path, features: bool) -> dict[str, Any]:
    """What the report reads from a run's archive: its sizes and this machine's byte rates, the
    feature files' digest and, with ``features``, what ``measure.agreement`` compares (held for
    every feature at once, so only read when there is another side to compare with)."""
    return {
        **byte_facts(archive),
        "features": feature_facts(archive) if features else {},
        "feature_files_sha256": feature_files_digest(archive),
    }


ETA_CHECKPOINTS = (0.1, 0.25, 0.5, 0.75, 0.9)


def eta_checks(etas: list[tuple[float, float, str]], wall: float) -> list[dict[str, Any]]:
    """The ETA the progress stream showed at each share of the export's wall time (its last
    message by then, and its stage) beside the time that was actually left."""
    checks = []
    for share in ETA_CHECKPOINTS:
        shown = [(t, eta, stage) for t, eta, stage in etas if t <= share * wall and eta >= 0]
        if shown:
            t, eta, stage = shown[-1]
            checks.append({"at": share, "eta_s": eta, "remaining_s": wall - t, "stage": stage})
    return checks


JSON_SUFFIXES = (".json", ".jsonl", ".json.gz", ".jsonl.gz")
SAMPLE_BYTES = 1 << 20
"""Per format folder, about this much of its JSON is timed for the machine's byte rates."""


class StageRss:
    """Samples this process's resident set every 50 ms and keeps the peak per export stage (the
    stage the progress stream last named), so a bench run shows where memory goes; and the CPU
    seconds per stage of this process and its child processes (the file writers and validators
    run in some), which a busy machine inflates far less than wall time, for calibrating the
    estimate's rates (a child's last 50 ms before it exits go uncounted). Every 0.5 s it also
    adds the private memory of every process it started (/usr/bin/time reports only the largest
    one of them); every few seconds the peaks so far are written to ``trace`` (what a run cut
    short still shows)."""

    def __init__(self, trace: Path) -> None:
        self.stage = "starting"
        self.progress, self.fraction = "", 0.0
        """The last progress message and the job's fraction done, for the trace."""
        self.peaks: dict[str, float] = {}
        self.tree_peaks: dict[str, float] = {}
        self._trace = trace
        self._started = time.perf_counter()
        self.cpu_s: dict[str, float] = {}
        self._pids = _descendants()
        self._cpu = _cpu_s(self._pids)
        self._done = threading.Event()
        self._thread = threading.Thread(target=self._sample, daemon=True)
        self._thread.start()

    def _sample(self) -> None:
        for tick in itertools.count(1):
            if self._done.wait(0.05):
                return
            if tick % 10 == 0:  # a new child's CPU so far counts once it is found
                self._pids = _descendants()
            mb, cpu, stage = _rss_mb(), _cpu_s(self._pids), self.stage
            self.peaks[stage] = max(self.peaks.get(stage, 0.0), mb)
            spent = sum(s - self._cpu.get(pid, 0.0) for pid, s in cpu.items())
            self.cpu_s[stage] = self.cpu_s.get(stage, 0.0) + spent
            self._cpu = {**self._cpu, **cpu}
            if tick % 10 == 0:
                tree = _tree_mb(self._pids)
                self.tree_peaks[stage] = max(self.tree_peaks.get(stage, 0.0), tree)
            if tick % 100 == 0:
                so_far = {
                    "elapsed_s": time.perf_counter() - self._started,
                    "stage": stage,
                    "progress": self.progress,
                    "fraction": self.fraction,
                    "rss_mb": mb,
                }
                peaks = {"peaks": self.peaks, "tree_peaks": self.tree_peaks}
                self._trace.write_text(json.dumps(so_far | peaks))

    def stop(self) -> None:
        self._done.set()
        self._thread.join()


def _stat(pid: int) -> list[str]:
    """/proc/<pid>/stat's fields from the state on (field 3); empty once the process is gone."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except (OSError, IndexError):
        return []


def _descendants() -> set[int]:
    """This process and every process below it, found through the kernel's children lists
    (scanning all of /proc each second cost the measured process a few CPU seconds a run on a
    machine with many processes)."""
    tree, pending = set(), [os.getpid()]
    while pending:
        pid = pending.pop()
        tree.add(pid)
        pending += [child for child in _children(pid) if child not in tree]
    return tree


def _children(pid: int) -> list[int]:
    """The processes ``pid``'s threads started; empty once it is gone."""
    try:
        tasks = list(Path(f"/proc/{pid}/task").iterdir())
        return [int(c) for task in tasks for c in (task / "children").read_text().split()]
    except (FileNotFoundError, ProcessLookupError):
        return []


def _cpu_s(pids: set[int]) -> dict[int, float]:
    """User + system CPU seconds of each of ``pids`` still running (all its threads)."""
    tick = os.sysconf("SC_CLK_TCK")
    found = {pid: _stat(pid) for pid in pids}
    return {pid: (int(f[11]) + int(f[12])) / tick for pid, f in found.items() if f}


def _rss_mb() -> float:
    """This process's resident set, read where it costs least (smaps_rollup walks every
    mapping: 6 ms a read with torch loaded, where the sampler reads it twice a second)."""
    return int(Path("/proc/self/statm").read_text().split()[1]) * _PAGE_BYTES / 2**20


_PAGE_BYTES = os.sysconf("SC_PAGE_SIZE")


def _tree_mb(pids: set[int] | None = None) -> float:
    """This process's resident set plus the private memory of the processes it started
    (``pids``, found afresh when not given; their shared libraries are this process's too, and
    already counted here)."""
    total_kb = _rss_mb() * 1024
    for pid in (_descendants() if pids is None else pids) - {os.getpid()}:
        try:
            rollup = Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines()
        except (FileNotFoundError, ProcessLookupError):  # it ended meanwhile
            continue
        fields = {line.split(":")[0]: int(line.split()[1]) for line in rollup[1:]}
        total_kb += fields["Private_Clean"] + fields["Private_Dirty"]
    return total_kb / 1024


def _status_mb(field: str) -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(f"{field}:"):
            return int(line.split()[1]) / 1024
    return 0.0


def byte_facts(archive: Path) -> dict[str, Any]:
    """The output's size (every file, and its JSON alone; gzip files counted unpacked, as both
    are serialised and deflated once) and this machine's orjson and deflate rates on samples of it
    from every format folder, for the bench's floors."""
    from bench.measure import byte_rates

    samples: dict[str, list[bytes]] = {}
    json_bytes = gzip_bytes = output_bytes = 0
    with zipfile.ZipFile(archive) as zf:
        for info in zf.infolist():
            packed = info.filename.endswith(".gz")
            data = zf.read(info) if packed else b""
            size = int.from_bytes(data[-4:], "little") if packed else info.file_size  # ISIZE
            output_bytes += size
            gzip_bytes += size if packed else 0
            if not info.filename.endswith(JSON_SUFFIXES):
                continue
            json_bytes += size
            folder = samples.setdefault(info.filename.split("/")[0], [])
            if sum(map(len, folder)) < SAMPLE_BYTES:
                text = gzip.decompress(data) if packed else zf.read(info)
                lines = ".jsonl" in info.filename
                folder += [line for line in text.splitlines() if line] if lines else [text]
    chosen = [s for folder in samples.values() for s in folder]
    return {
        "json_bytes": json_bytes,
        "gzip_bytes": gzip_bytes,
        "output_bytes": output_bytes,
        "byte_rates": byte_rates(chosen),
    }


def feature_files_digest(archive: Path) -> str:
    """SHA-256 over every feature file's name and bytes: equal for two runs whose dashboards are
    byte-identical (the archive itself also holds the SAE's creation date, which differs)."""
    digest = hashlib.sha256()
    with zipfile.ZipFile(archive) as zf:
        for name in sorted(n for n in zf.namelist() if n.startswith("features/")):
            digest.update(name.encode() + b"\0" + zf.read(name))
    return digest.hexdigest()


def feature_facts(archive: Path) -> dict[str, dict[str, Any]]:
    """Per feature what ``measure.agreement`` compares (the keys match saedashboard_job's)."""
    facts: dict[str, dict[str, Any]] = {}
    with zipfile.ZipFile(archive) as zf:
        for name in zf.namelist():
            if not (name.startswith("features/") and name.endswith(".json")):
                continue
            doc = json.loads(zf.read(name))
            top = sorted((a["max_value"] for a in doc["activations"]), reverse=True)
            logits, stats = doc["logits"], doc["statistics"]
            facts[str(doc["feature_index"])] = {
                "top_values": top,  # each top example's peak (= its window's maximum)
                "max_activation": top[0] if top else 0.0,
                "pos_ids": [e["token_id"] for e in logits["top_positive"]],
                "pos_values": [e["value"] for e in logits["top_positive"]],
                "neg_ids": [e["token_id"] for e in logits["top_negative"]],
                "neg_values": [e["value"] for e in logits["top_negative"]],
                "frequency": stats["activation_frequency"],  # over non-special tokens
                "nonzero_count": stats["nonzero_count"],
            }
    return facts


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--model-ref", required=True)
    parser.add_argument("--sae", required=True)
    parser.add_argument("--tokens", required=True)
    parser.add_argument("--context", type=int, required=True)
    parser.add_argument("--n-examples", type=int, default=20)
    parser.add_argument("--logit-k", type=int, default=10)
    parser.add_argument("--bins", type=int, default=50)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--out", required=True)
    parser.add_argument("--archive", required=True, help="where the export's ZIP is downloaded")
    parser.add_argument("--keep-data", default="", help="data folder to keep (default: a temp one)")
    args = parser.parse_args(argv)
    started = time.perf_counter()
    sampler = StageRss(Path(args.out).with_suffix(".trace.json"))
    mark = Marks()
    with tempfile.TemporaryDirectory(prefix="bench-ours-") as tmp:
        data = Path(args.keep_data) if args.keep_data else Path(tmp) / "data"
        result = run_export(args, data, Path(args.archive), sampler, mark)
    sampler.stop()
    result["stages_peak_rss_mb"] = sampler.peaks
    result["stages_peak_tree_mb"] = sampler.tree_peaks
    result["stages_cpu_s"] = sampler.cpu_s
    result["wall_s"] = time.perf_counter() - started
    result["marks_wall_s"], result["marks_cpu_s"] = mark.wall_s, mark.cpu_s
    Path(args.out).write_text(json.dumps(result), encoding="utf-8")


if __name__ == "__main__":
    from mistudio_common.gc_pause import skip_final_collection

    skip_final_collection()  # as the mistudio-export command (mistudio_cli.main.run)
    main()
