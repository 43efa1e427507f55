"""How a stored export job is shown to clients.

The store keeps the job's typed configuration; the finished job's full result is its typed
``outcome``.
"""

from __future__ import annotations

from mistudio.common.v1 import progress_pb2 as ppb
from mistudio.export.v1 import export_service_pb2 as epb
from mistudio.store.v1 import store_service_pb2 as spb

from mistudio_export.messages import FORMAT_FROM_PB


def result_of(job: spb.ExportJob) -> epb.ExportResult | None:
    return job.outcome.result if job.outcome.HasField("result") else None


def progress_of(job: spb.ExportJob) -> ppb.Progress:
    """The stored snapshot, with the record's state (the snapshot may lag a state change)."""
    progress = ppb.Progress()
    progress.CopyFrom(job.progress)
    progress.job_id = job.job_id
    progress.state = job.state
    return progress


def message_of(job: spb.ExportJob) -> epb.ExportProgress:
    message = epb.ExportProgress(progress=progress_of(job))
    result = result_of(job) if job.state == ppb.JOB_STATE_SUCCEEDED else None
    if result is not None:
        message.result.CopyFrom(result)
    return message


def view_of(job: spb.ExportJob, live: epb.ExportProgress | None = None) -> epb.ExportJobView:
    """The client's view of a job; ``live`` is the in-memory progress of a job running here."""
    view = epb.ExportJobView(
        job_id=job.job_id,
        sae_id=job.sae_id,
        owner=job.owner,
        config=job.config,
    )
    message = live if live is not None else message_of(job)
    view.progress.CopyFrom(message.progress)
    if message.HasField("result"):
        view.result.CopyFrom(message.result)
    if job.HasField("created_at"):
        view.created_at.CopyFrom(job.created_at)
    if job.HasField("finished_at"):
        view.finished_at.CopyFrom(job.finished_at)
    return view


SUMMARY_TEXT_LIMIT = 200
"""Characters of free text in a summary: a page stays small whatever the jobs hold."""


def summary_of(job: spb.ExportJob) -> epb.ExportJobSummary:
    """A job as ListExports shows it: identity, state and a one-line config, bounded in size."""
    progress = progress_of(job)
    summary = epb.ExportJobSummary(
        job_id=job.job_id,
        sae_id=job.sae_id,
        owner=job.owner,
        state=job.state,
        stage=progress.stage,
        fraction=progress.fraction,
        config_summary=config_summary(job.config)[:SUMMARY_TEXT_LIMIT],
        error_message=job.error_message[:SUMMARY_TEXT_LIMIT],
    )
    if job.HasField("created_at"):
        summary.created_at.CopyFrom(job.created_at)
    if job.HasField("updated_at"):
        summary.updated_at.CopyFrom(job.updated_at)
    return summary


def config_summary(config: epb.ExportConfig) -> str:
    """e.g. "neuronpedia+saelens; features 0..32; top 20"."""
    names = [FORMAT_FROM_PB[f].value for f in config.formats if f in FORMAT_FROM_PB]
    parts = ["+".join(names) or "all formats"]
    selection = config.selection
    which = selection.WhichOneof("base")
    if which == "range":
        parts.append(f"features {selection.range.start}..{selection.range.end}")
    elif which == "list":
        parts.append(f"{len(selection.list.indices)} listed features")
    else:
        parts.append("all features")
    if selection.labeled_only or selection.label_contains or selection.category:
        parts.append("label filters")
    if config.dashboard.n_top_examples:
        parts.append(f"top {config.dashboard.n_top_examples}")
    if config.delta_base_job_id:
        parts.append(f"delta of {config.delta_base_job_id[:32]}")
    return "; ".join(parts)
