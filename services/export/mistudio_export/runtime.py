"""What a running export sees of its job: the engine's running job, with its plan and staging."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from mistudio.export.v1 import export_job_pb2 as jpb
from mistudio_common.jobs.running import RunningJob

from mistudio_export.plan import ExportPlan
from mistudio_export.worker_pool import WorkerPool


@dataclass
class JobRuntime(RunningJob[jpb.ExportCheckpoint]):
    """Progress, checkpoint and stop requests (from the engine), and what this export runs."""

    plan: ExportPlan
    staging: Path
    """Private folder under data_dir/export/<job_id>; nobody else reads it."""
    workers: WorkerPool
    """The service's processes for the CPU-bound stages (writing and validating the files)."""

    @classmethod
    def of(
        cls,
        job: RunningJob[jpb.ExportCheckpoint],
        plan: ExportPlan,
        staging: Path,
        workers: WorkerPool,
    ) -> JobRuntime:
        return cls(
            job_id=job.job_id,
            checkpoint=job.checkpoint,
            tracker=job.tracker,
            control=job.control,
            publish=job.publish,
            persist=job.persist,
            plan=plan,
            staging=staging,
            workers=workers,
        )
