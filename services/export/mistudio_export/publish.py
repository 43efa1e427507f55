"""CREATING_ARCHIVE: README and prefill.json, manifest, deterministic ZIP, one atomic publish.

The ZIP is built in the job's staging folder; the object store's put is the only step that
makes anything visible, and it happens last, so a cancelled job never leaves half an archive.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

from mistudio.common.v1 import progress_pb2 as ppb
from mistudio_common.dashboard_options import Component

from mistudio_export.formats.neuronpedia_explanations import missing_on_neuronpedia
from mistudio_export.generate import included_formats, output_dir
from mistudio_export.packaging import (
    MANIFEST_NAME,
    ArchiveFacts,
    FormatKind,
    build_archive,
    pretrained_saes_entry,
    write_archive_docs,
)
from mistudio_export.packaging.format_notes import LEFT_OUT
from mistudio_export.peers import ArchiveUpload
from mistudio_export.plan import ExportPlan
from mistudio_export.records import ExplanationRecord, SaeInfo
from mistudio_export.runtime import JobRuntime
from mistudio_export.validation_summary import ValidationSummary


@dataclass(frozen=True)
class Published:
    key: str
    size: int
    sha256: str
    files: list[str]


def archive_facts(
    plan: ExportPlan,
    info: SaeInfo,
    kinds: Sequence[FormatKind],
    n_features: int,
    summary: ValidationSummary | None = None,
    explanations: Sequence[ExplanationRecord] = (),
) -> ArchiveFacts:
    """What the README and prefill.json say: only facts of the input, never the clock."""
    naming = plan.naming
    pending_types, pending_models = missing_on_neuronpedia(explanations)
    return ArchiveFacts(
        title=f"{plan.sae.sae_id} ({naming.neuronpedia_id})",
        sae_ids=(plan.sae.sae_id,),
        model_id=naming.model_id,
        hook_name=plan.sae.hook_point,
        layer=naming.layer,
        source_set=naming.source_set,
        n_features=n_features,
        d_sae=plan.sae.d_sae,
        formats=included_formats(kinds),
        validation_summary=tuple(summary_lines(summary)) if summary is not None else (),
        n_explanations=len(explanations),
        pending_types=tuple(pending_types) if plan.neuronpedia else (),
        pending_models=tuple(pending_models) if plan.neuronpedia else (),
        left_out=left_out_lines(plan),
        dataset=info.prompts_dataset,
        n_prompts=info.n_prompts,
        n_tokens_in_prompt=info.n_tokens_in_prompt,
        source_suffix=naming.source_suffix,
        creator_name=naming.creator_name,
        release_id=naming.release_id,
        release_title=naming.release_title,
        hf_repo=naming.hf_repo,
        hf_path=naming.hf_folder,
        created_at=info.created_at,
    )


def left_out_lines(plan: ExportPlan) -> tuple[str, ...]:
    """The README's statement of every part left out, with the plan's own reasons first."""
    if not plan.neuronpedia:
        return ()
    return (*plan.notes, *(LEFT_OUT[c] for c in Component if c in plan.omitted))


def summary_lines(summary: ValidationSummary) -> list[str]:
    head = (
        f"{'valid' if summary.valid else 'INVALID'}: {summary.files_checked} files checked, "
        f"{summary.error_count} errors, {summary.warning_count} warnings"
    )
    lines = [head]
    # Only what the files are now: which repairs were needed depends on what an earlier
    # archive already held, and equal files must give an equal archive.
    lines += [f"{c.code}: {c.count} ({c.suggested_fix})" for c in summary.classes]
    return lines


def pretrained_yaml(plan: ExportPlan, info: SaeInfo) -> str:
    return pretrained_saes_entry(archive_facts(plan, info, (FormatKind.SAELENS,), plan.sae.d_sae))


def pack_and_publish(
    job: JobRuntime, objects: ArchiveUpload, facts: ArchiveFacts, key: str
) -> Published:
    out = output_dir(job.staging)
    job.report(ppb.STAGE_CREATING_ARCHIVE, 0, 0, "bytes", "writing README, prefill and manifest")
    write_archive_docs(out, facts)

    def progress_of(message: str) -> Callable[[int, int], None]:
        def progress(done: int, total: int) -> None:
            job.report(ppb.STAGE_CREATING_ARCHIVE, done, total, "bytes", message)
            job.check()  # raising here aborts packing or the upload: nothing is published

        return progress

    path = job.staging / "archive.zip"
    archive = build_archive(
        out, path, compression=job.plan.zip_compression, progress=progress_of("packing the archive")
    )
    objects.put_file(key, archive.path, progress=progress_of("uploading the archive"))
    files = [MANIFEST_NAME, *(entry.path for entry in archive.manifest.files)]
    return Published(key=key, size=archive.size, sha256=archive.sha256, files=files)
