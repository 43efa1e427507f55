"""Export service settings, read from MISTUDIO_EXPORT_* environment variables."""

from __future__ import annotations

from pathlib import Path

from mistudio_common.auth import SecuritySettings
from mistudio_common.retry import DEFAULT_PATIENCE_SECONDS
from pydantic_settings import SettingsConfigDict

from mistudio_export.uploads import UploadLimits

_GIB = 1 << 30


class ExportSettings(SecuritySettings):
    """Also the credential settings of SecuritySettings (TLS files, tokens)."""

    model_config = SettingsConfigDict(env_prefix="MISTUDIO_EXPORT_", frozen=True)

    host: str = "127.0.0.1"
    """Interface to listen on; anything but loopback needs credentials (README 'Security')."""
    port: int = 50053
    """gRPC port; 0 picks a free one."""
    store_address: str = "127.0.0.1:50051"
    """Where the store service listens (SAEs, cache, job records)."""
    compute_address: str = "127.0.0.1:50052"
    """Where the compute service listens (all tensor work)."""
    data_dir: Path = Path("data")
    """Staging folders of running exports live under data_dir/export."""
    object_store_url: str = ""
    """file:///path (default: data_dir/archives) or s3://bucket?endpoint=host:9000&secure=false."""
    s3_access_key: str = ""
    s3_secret_key: str = ""
    max_upload_sae_weights_bytes: int = 64 * _GIB
    """UploadInput: sae_weights.safetensors and sparsity.safetensors, each."""
    max_upload_sae_config_bytes: int = 1 << 20
    """UploadInput: cfg.json (a few kB in practice)."""
    max_upload_token_file_bytes: int = 64 * _GIB
    """UploadInput: one token file."""
    max_upload_bytes_per_owner: int = 256 * _GIB
    """UploadInput: everything one owner keeps uploaded at once."""
    health_check_seconds: float = 10.0
    """How often the dependencies are probed; health is NOT_SERVING while one is down."""
    log_level: str = "INFO"
    max_workers: int = 16
    """Threads doing the blocking work behind RPCs (store reads, validation); progress streams
    hold none."""
    max_watchers: int = 1000
    """Open StartExport/WatchExport streams served at once; one more gets RESOURCE_EXHAUSTED."""
    max_concurrent_jobs: int = 2
    """Exports running at once; further ones wait QUEUED."""
    features_per_batch: int = 128
    """Features per generated batch file and per checkpoint (SAEDashboard's default)."""
    progress_persist_seconds: float = 2.0
    """How often a running job's progress snapshot is written to the store between checkpoints."""
    staging_retention_seconds: float = 86400.0
    """Staging folders (data_dir/export/<job_id>) of jobs that succeeded, were cancelled or no
    longer exist, and archive uploads a crash left unfinished, are removed after this long; a
    FAILED job keeps its staging for ResumeExport until it is deleted (DeleteExport)."""
    upload_staging_retention_seconds: float = 3600.0
    """A staging folder (data_dir/uploads/upload-*) that no stream is writing is removed after
    this long (they are left only by a crash mid-upload; at start all of them go)."""
    finished_job_retention_seconds: float = 0.0
    """Finished exports (record, archive and staging) are removed this long after they ended;
    0 keeps them until DeleteExport."""
    retention_sweep_seconds: float = 600.0
    """How often finished exports past their retention and leftover staging folders are looked
    for."""
    control_wait_seconds: float = 30.0
    """How long Pause/CancelExport wait for the job to reach its next checkpoint."""
    lease_seconds: float = 30.0
    """How long this instance's hold on a running job lasts unless renewed (every third of it).
    Another export service on the same store adopts the job only after the lease ran out, so a
    crashed instance's jobs resume within this long."""
    follow_seconds: float = 1.0
    """How often the record of a job another instance runs is read for this instance's
    WatchExport streams (one read per watched job, whatever the number of its watchers), and
    for a Pause/CancelExport waiting for that instance to stop it."""
    fault_patience_seconds: float = DEFAULT_PATIENCE_SECONDS
    """How long a running export waits out an unreachable store, compute service, database or
    object store (retrying with exponential backoff from its last checkpoint) before it fails."""

    def upload_limits(self) -> UploadLimits:
        return UploadLimits(
            sae_config_bytes=self.max_upload_sae_config_bytes,
            sae_weights_bytes=self.max_upload_sae_weights_bytes,
            token_file_bytes=self.max_upload_token_file_bytes,
            owner_bytes=self.max_upload_bytes_per_owner,
        )
