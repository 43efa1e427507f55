"""What each `mistudio-export` command does; all of it through the services' gRPC contracts."""

from __future__ import annotations

import argparse
import json
import re
import sys
import tempfile
import uuid
from collections import Counter
from pathlib import Path
from typing import Any

import grpc
from mistudio.compute.v1 import compute_service_pb2 as cpb
from mistudio.export.v1 import export_service_pb2 as epb
from mistudio.store.v1 import store_service_pb2 as spb
from mistudio.store.v1 import store_service_pb2_grpc as sgrpc
from mistudio_common import stages
from mistudio_common.architectures import enum_name
from mistudio_common.errors import AlreadyExists, Cancelled, InvalidArgument, MistudioError
from mistudio_common.grpc_errors import error_from_rpc
from mistudio_common.uploaded_inputs import SCHEME
from mistudio_export.packaging import MANIFEST_NAME, build_archive
from mistudio_export.validation import ValidationReport, validate_export
from mistudio_export.validation.archives import validate_zip

from mistudio_cli.annotations import LABEL_MASK, Annotations, read_annotations
from mistudio_cli.connection import Services, connect, job_table, store_only
from mistudio_cli.interrupts import follow_until_interrupted
from mistudio_cli.options import export_config, model_reference, token_source
from mistudio_cli.progress_view import follow, format_seconds, state_label, summarize_stages

TRAINING_INFO_FILE = "training.json"
"""Optional sidecar in or beside an SAE folder: dataset, training tokens, l0, explained variance."""


def _call(fn: Any, request: Any, **kwargs: Any) -> Any:
    try:
        return fn(request, **kwargs)
    except grpc.RpcError as error:
        raise error_from_rpc(error) from None


def sae_id_for(path: Path) -> str:
    return re.sub(r"[^a-z0-9._-]+", "-", path.resolve().name.lower()).strip("-") or "sae"


HUB_PREFIXES = ("hf://", "saelens://")
"""SAE locations the compute service downloads from the HuggingFace hub (sae/hub.py)."""
REMOTE_PREFIXES = (*HUB_PREFIXES, SCHEME)
"""SAE locations that are not on this disk: the hub, and uploads (``upload-input``)."""


def register_local_sae(
    services: Services, path: Path | str, args: argparse.Namespace, notes: Annotations
) -> str:
    """Registers a SAELens folder, safetensors file, hub location or uploaded SAE; returns its
    sae_id. ``notes`` are checked against the SAE before it is stored."""
    store, compute = services.require_store_and_compute()
    remote = str(path).startswith(REMOTE_PREFIXES)
    location = str(path) if remote else str(Path(path).resolve())
    path = Path(str(path).split("://", 1)[-1].rstrip("/")) if remote else Path(path)
    if not remote and not path.exists():
        raise InvalidArgument(
            f"SAE path {path} does not exist",
            field="SAE",
            fix="give a SAELens folder (cfg.json + sae_weights.safetensors) or a registered SAE id",
        )
    model = model_reference(args.model)
    info: cpb.ValidateSaeResponse = _call(
        compute.ValidateSae,
        cpb.ValidateSaeRequest(
            sae=cpb.SaeReference(files=cpb.SaeFiles(path=location, model_id=model)),
            hook_point=args.hook,
            model_id=model,
        ),
    )
    notes.check(info.d_sae)
    sae_id = args.sae_id or sae_id_for(path)
    sae = spb.Sae(
        sae_id=sae_id,
        model_id=info.model_id,
        hook_point=info.hook_point,
        d_in=info.d_in,
        d_sae=info.d_sae,
        architecture=architecture_of(info.architecture),
        weights_uri=location,
        neuronpedia_source_set=args.source_set,
        owner=args.owner,
    )
    if not remote:
        _fill_training_info(sae, path)
    try:
        _call(store.CreateSae, spb.CreateSaeRequest(sae=sae))
    except AlreadyExists:
        existing = _call(store.GetSae, spb.GetSaeRequest(sae_id=sae_id, owner=args.owner)).sae
        if existing.weights_uri != sae.weights_uri:
            raise InvalidArgument(
                f"SAE id {sae_id!r} is already registered for {existing.weights_uri}",
                field="--sae-id",
                fix="choose another --sae-id",
            ) from None
    return sae_id


def _fill_training_info(sae: spb.Sae, path: Path) -> None:
    folder = path if path.is_dir() else path.parent
    cfg_path = folder / "cfg.json"
    if cfg_path.exists():
        cfg = json.loads(cfg_path.read_text())
        metadata = cfg.get("metadata") or cfg
        sae.training_dataset = str(metadata.get("dataset_path") or "")
    for info_path in (folder / TRAINING_INFO_FILE, folder.parent / TRAINING_INFO_FILE):
        if not info_path.exists():
            continue
        info = json.loads(info_path.read_text())
        sae.training_dataset = str(
            info.get("training_dataset") or info.get("dataset_path") or sae.training_dataset
        )
        sae.n_training_tokens = int(info.get("n_training_tokens", 0))
        metrics = info.get("metrics", info)
        sae.l0 = float(metrics.get("l0", 0.0))
        sae.explained_variance = float(metrics.get("explained_variance", 0.0))
        return


def store_annotations(services: Services, sae_id: str, notes: Annotations, owner: str) -> None:
    """Labels and explanations of ``owner``'s SAE (empty: the caller's), each batch
    all-or-nothing; given again, they update, never duplicate (the store matches explanations by
    feature, method, model and text)."""
    if not (notes.labels or notes.explanations):
        return  # nothing to store: a run through --export-address alone needs no store
    store, _ = services.require_store_and_compute()
    store_labels(store, sae_id, notes, owner)
    if notes.explanations:
        explanations = [e for _, e in notes.explanations]
        add = spb.AddExplanationsRequest(sae_id=sae_id, explanations=explanations, owner=owner)
        _call(store.AddExplanations, add)


def store_labels(
    store: sgrpc.StoreServiceStub, sae_id: str, notes: Annotations, owner: str
) -> None:
    """Labels and categories only: the features' statistics stay as stored."""
    if notes.labels:
        request = spb.UpsertFeaturesRequest(
            sae_id=sae_id,
            features=list(notes.labels.values()),
            update_mask=list(LABEL_MASK),
            owner=owner,
        )
        _call(store.UpsertFeatures, request)


def sae_of(services: Services, args: argparse.Namespace) -> str:
    """The SAE argument as a registered id (a folder, file or hub location is registered first),
    with the --labels and --explanations given stored for it."""
    target: Path | str = args.sae if args.sae.startswith(REMOTE_PREFIXES) else Path(args.sae)
    looks_like_path = (
        "/" in args.sae or args.sae.endswith(".safetensors") or Path(args.sae).exists()
    )
    notes = read_annotations(args.labels, args.explanations)
    if looks_like_path:
        sae_id = register_local_sae(services, target, args, notes)
    else:
        sae_id = str(args.sae)
        if notes.labels or notes.explanations:
            store, _ = services.require_store_and_compute()
            request = spb.GetSaeRequest(sae_id=sae_id, owner=args.owner)
            notes.check(_call(store.GetSae, request).sae.d_sae)
    store_annotations(services, sae_id, notes, args.owner)
    return sae_id


def cmd_run(args: argparse.Namespace) -> int:
    with connect(args) as services:
        sae_id = sae_of(services, args)
        request = epb.StartExportRequest(
            request_id=args.request_id or str(uuid.uuid4()),
            sae_id=sae_id,
            owner=args.owner,
            config=export_config(args),
        )
        result = run_export(services, request)
        print_result(result)
        if args.output:
            download(services, result.job_id, Path(args.output))
        return 0


class ExportOutcome:
    def __init__(self, job_id: str, last: epb.ExportProgress, location: str = "") -> None:
        self.job_id = job_id
        self.last = last
        self.location = location
        """Where a person can fetch the archive: a file:// path or a presigned URL."""


def run_export(services: Services, request: epb.StartExportRequest) -> ExportOutcome:
    """Starts an export and follows its stream; Ctrl-C cancels the job, then re-raises."""
    stream = services.export.StartExport(request)
    job_id = ""

    def remember(messages: Any) -> Any:
        nonlocal job_id
        for message in messages:
            job_id = message.progress.job_id
            yield message

    try:
        last = follow_until_interrupted(stream, lambda: follow(remember(stream)))
    except KeyboardInterrupt:
        stream.cancel()
        if job_id:
            print(f"\ncancelling export {job_id}…", file=sys.stderr)
            _call(services.export.CancelExport, epb.CancelExportRequest(job_id=job_id), timeout=30)
        raise
    except grpc.RpcError as error:
        raise error_from_rpc(error) from None
    if last is None:
        raise Cancelled("the export stream ended without a message", fix="run `status` on the job")
    if last.progress.error.code:
        status = last.progress.error
        raise _job_error(job_id, status.message)
    link = _call(
        services.export.GetDownloadUrl,
        epb.GetDownloadUrlRequest(job_id=job_id, expiry_seconds=7 * 24 * 3600),
    )
    return ExportOutcome(job_id, last, link.url)


def _job_error(job_id: str, message: str) -> MistudioError:
    return MistudioError(
        f"export {job_id} ended: {message}",
        fix=f"see `mistudio-export status {job_id}`; fix the cause and run again",
    )


def print_result(outcome: ExportOutcome) -> None:
    result = outcome.last.result
    validation = result.validation
    print(f"\nExport {outcome.job_id} complete")
    print(f"  archive:    {outcome.location or result.output_uri}")
    print(f"  size:       {result.size_bytes / 1e6:.1f} MB ({result.archive_sha256[:16]}…)")
    print(
        f"  features:   {result.feature_count} "
        f"(computed {result.features_computed}, reused from cache {result.features_reused}, "
        f"unchanged {result.features_unchanged})"
    )
    print(f"  time:       {format_seconds(outcome.last.progress.elapsed_seconds)}")
    for line in summarize_stages(outcome.last.progress):
        print(line)
    verdict = "valid" if validation.valid else "INVALID"
    print(
        f"  validation: {verdict}: {validation.files_checked} files, "
        f"{validation.error_count} errors, {validation.warning_count} warnings"
    )
    for problem in validation.classes:
        print(f"    - {problem.code} ×{problem.count}: {problem.suggested_fix}")
    for fix in validation.fixes_applied:
        print(f"    fixed: {fix}")
    if result.files:
        groups = Counter(
            name.split("/", 1)[0] + ("/" if "/" in name else "") for name in result.files
        )
        print(
            "  contains:   "
            + ", ".join(f"{name} ({n})" if n > 1 else name for name, n in sorted(groups.items()))
        )
    print("\nNext steps: read README.md inside the archive — it walks through Neuronpedia's upload")
    print("API (upload-payloads/), the maintainers' bulk import, and the HuggingFace upload.")


def download(services: Services, job_id: str, destination: Path) -> None:
    destination.parent.mkdir(parents=True, exist_ok=True)
    partial = destination.with_name(destination.name + ".part")
    offset = partial.stat().st_size if partial.exists() else 0
    try:
        with partial.open("ab") as sink:
            for chunk in services.export.DownloadExport(
                epb.DownloadExportRequest(job_id=job_id, offset=offset)
            ):
                sink.write(chunk.chunk)
    except grpc.RpcError as error:
        raise error_from_rpc(error) from None
    partial.replace(destination)
    print(f"downloaded {destination} ({destination.stat().st_size / 1e6:.1f} MB)")


def cmd_estimate(args: argparse.Namespace) -> int:
    """What an export would compute, how long it would take and how large it would be."""
    with connect(args) as services:
        sae_id = sae_of(services, args)
        response: epb.ValidateExportResponse = _call(
            services.export.ValidateExport,
            epb.ValidateExportRequest(sae_id=sae_id, config=export_config(args), owner=args.owner),
        )
    estimate = response.estimate
    print(f"Estimate for {sae_id} (no job was created)")
    print(
        f"  features:   {estimate.feature_count} "
        f"(to compute {estimate.features_to_compute}, cached {estimate.features_cached})"
    )
    print(f"  time:       ~{format_seconds(estimate.estimated_seconds)}")
    for stage in estimate.stages:
        print(f"    {stages.label(stage.stage):<30} ~{format_seconds(stage.seconds)}")
    print(f"  size:       ~{estimate.estimated_size_bytes / 1e6:.1f} MB")
    if estimate.features_to_compute:
        memory = estimate.estimated_peak_memory_bytes / 2**20
        print(f"  memory:     ~{memory:,.0f} MiB at peak in the compute service")
    for warning in response.warnings:
        print(f"  note:       {warning}")
    return 0


def cmd_status(args: argparse.Namespace) -> int:
    with job_table(args) as jobs:
        print_job(_call(jobs.get, args.job_id), verbose=True)
        return 0


def print_summary(job: epb.ExportJobSummary) -> None:
    print(
        f"{job.job_id}  {state_label(job.state):<9}  {job.fraction * 100:5.1f}%  "
        f"sae={job.sae_id}  owner={job.owner}  {job.config_summary}"
    )


def print_job(job: epb.ExportJobView, verbose: bool = False) -> None:
    progress = job.progress
    print(
        f"{job.job_id}  {state_label(progress.state):<9}  {progress.fraction * 100:5.1f}%  "
        f"sae={job.sae_id}  owner={job.owner}"
    )
    if not verbose:
        return
    for line in summarize_stages(progress):
        print(line)
    if progress.error.message:
        print(f"  error: {progress.error.message}")
    if job.result.output_uri:
        print(f"  archive: {job.result.output_uri} ({job.result.size_bytes / 1e6:.1f} MB)")


def cmd_list(args: argparse.Namespace) -> int:
    with job_table(args) as jobs:
        for page in jobs.pages(args.sae_id, args.owner):
            for summary in page:
                print_summary(summary)
        return 0


def cmd_cancel(args: argparse.Namespace) -> int:
    with connect(args) as services:
        job = _call(services.export.CancelExport, epb.CancelExportRequest(job_id=args.job_id)).job
        print_job(job)
        return 0


def cmd_pause(args: argparse.Namespace) -> int:
    with connect(args) as services:
        job = _call(services.export.PauseExport, epb.PauseExportRequest(job_id=args.job_id)).job
        print_job(job)
        return 0


def cmd_resume(args: argparse.Namespace) -> int:
    with connect(args) as services:
        job = _call(services.export.ResumeExport, epb.ResumeExportRequest(job_id=args.job_id)).job
        print_job(job)
        return 0


def cmd_labels(args: argparse.Namespace) -> int:
    """Sets feature labels and categories, read as `run --labels` reads them."""
    try:
        notes = read_annotations(args.file, "")
    except InvalidArgument as error:  # the file is this command's FILE, not run's --labels
        raise InvalidArgument(error.message, field="FILE", fix=error.fix) from None
    with store_only(args) as store:
        notes.check(_call(store.GetSae, spb.GetSaeRequest(sae_id=args.sae_id)).sae.d_sae)
        store_labels(store, args.sae_id, notes, owner="")
    print(f"set the labels and categories of {len(notes.labels)} features of {args.sae_id}")
    return 0


def cmd_delete(args: argparse.Namespace) -> int:
    with connect(args) as services:
        _call(services.export.DeleteExport, epb.DeleteExportRequest(job_id=args.job_id))
        print(f"deleted export {args.job_id}")
        return 0


def cmd_download(args: argparse.Namespace) -> int:
    with connect(args) as services:
        if args.url:
            response = _call(
                services.export.GetDownloadUrl,
                epb.GetDownloadUrlRequest(job_id=args.job_id, expiry_seconds=args.expiry),
            )
            print(response.url)
            print(f"expires at {response.expires_at.ToJsonString()}", file=sys.stderr)
            return 0
        download(services, args.job_id, Path(args.output or f"{args.job_id}.zip"))
        return 0


def cmd_validate(args: argparse.Namespace) -> int:
    """Validates locally (no services needed); a repaired zip is written beside the original."""
    path = Path(args.path)
    if not path.exists():
        raise InvalidArgument(
            f"{path} does not exist", field="path", fix="give an export .zip or an export folder"
        )
    if path.is_dir():
        report = validate_export(path, fix=args.auto_fix)
        integrity_lines: list[str] = []
    else:
        report, integrity_lines = _validate_zip(path, args.auto_fix)
    print(report.summary())
    for line in integrity_lines:
        print(f"archive integrity: {line}")
    for change in report.changes[:50]:
        print(f"fixed: {change.file} {change.pointer}: {change.description}")
    if args.json:
        Path(args.json).write_bytes(report.to_json())
        print(f"full report written to {args.json}")
    return 0 if report.ok and not integrity_lines else 1


def _validate_zip(path: Path, auto_fix: bool) -> tuple[ValidationReport, list[str]]:
    with tempfile.TemporaryDirectory(prefix="mistudio-validate-") as scratch:
        folder = Path(scratch) / "archive"
        checked = validate_zip(path, folder, fix=auto_fix)
        if checked.unreadable:
            raise InvalidArgument(
                f"{path} is {checked.unreadable}",
                field="path",
                fix="download the archive again (`mistudio-export download JOB_ID`)",
            )
        report, integrity = checked.report, checked.integrity
        if auto_fix and report.changes:
            (folder / MANIFEST_NAME).unlink(missing_ok=True)
            fixed = path.with_name(path.stem + ".fixed.zip")
            build_archive(folder, fixed)
            print(f"repaired archive written to {fixed}")
    return report, [] if integrity.ok else integrity.lines()


def cmd_presets(args: argparse.Namespace) -> int:
    """Lists the presets, with their estimates when an SAE (and tokens) are named."""
    config = epb.ExportConfig(tokens=token_source(args))
    with connect(args) as services:
        request = epb.ListPresetsRequest(sae_id=args.sae_id, config=config)
        response = _call(services.export.ListPresets, request)
    for preset in response.presets:
        budget = f"{preset.max_tokens:,} tokens" if preset.max_tokens else "all tokens"
        print(f"{preset.name:<12} {preset.title} ({budget})")
        print(f"{'':<12} {preset.description}")
        if preset.HasField("estimate"):
            e = preset.estimate
            print(
                f"{'':<12} estimate: {e.estimated_seconds:,.0f} s, "
                f"{e.estimated_size_bytes / 1e6:,.1f} MB, {e.feature_count:,} features"
            )
    return 0


def architecture_of(name: str) -> spb.Architecture.ValueType:
    """The store's enum value of a SAELens architecture name; UNSPECIFIED (refused by the store,
    naming the field) for a name it does not know."""
    try:
        return spb.Architecture.Value(enum_name(name))
    except ValueError:
        return spb.ARCHITECTURE_UNSPECIFIED
