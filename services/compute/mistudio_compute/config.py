"""Compute service settings, read from MISTUDIO_COMPUTE_* environment variables."""

from __future__ import annotations

import os
from pathlib import Path
from typing import TYPE_CHECKING

from mistudio_common.auth import SecuritySettings
from mistudio_common.retry import DEFAULT_PATIENCE_SECONDS
from mistudio_common.s3_address import parse_s3_url
from pydantic import SecretStr
from pydantic_settings import SettingsConfigDict

from mistudio_compute.input_files import SIZE_SETTINGS, InputPolicy
from mistudio_compute.object_inputs import ObjectInputs

if TYPE_CHECKING:
    from mistudio_compute.shard_objects import StateBucket

_GIB = 1 << 30
DEFAULT_MEMORY_BUDGET = _GIB
"""The budget when none is set: at the bench's parameters 1 GiB holds about 8,000 features'
pass state beside their batch, so d_sae 4096 runs in one shard and 16384 in three."""


class ComputeSettings(SecuritySettings):
    """Also the credential settings of SecuritySettings (TLS files, tokens)."""

    model_config = SettingsConfigDict(env_prefix="MISTUDIO_COMPUTE_", frozen=True)

    host: str = "127.0.0.1"
    """Interface to listen on; anything but loopback needs credentials (README 'Security')."""
    port: int = 50052
    """gRPC port; 0 picks a free one."""
    store_address: str = "127.0.0.1:50051"
    """Where the store service listens; computed dashboards are cached there."""
    data_dir: Path = Path("data")
    """Checkpoints of running computations live under data_dir/compute."""
    device: str = "auto"
    """Default device: auto (GPU when present), cpu, cuda, cuda:N."""
    transformer_lens_forward: bool = False
    """Read llama2.c models' hook activations through TransformerLens, the bits SAELens and
    SAEDashboard compute, instead of the lean forward (``fast_llama``, about a fifth of its CPU).
    The lean forward differs by float32 rounding (1e-5 on stories260K's residual stream), which
    moves a feature's firing count by a few tokens where its pre-activation sits at 0."""
    default_batch_rows: int = 32
    """Token rows per forward pass when a request gives none; halved on out-of-memory."""
    checkpoint_every_seconds: float = 60.0
    """How often a running activation pass saves its resumable state: the most of a pass a
    compute crash can cost (a pause or shutdown saves where it stops, in the pass or in its
    finalisation)."""
    fault_patience_seconds: float = DEFAULT_PATIENCE_SECONDS
    """How long a computation waits out an unreachable store (or database) before it fails."""
    max_workers: int = 32
    """Threads serving RPCs; each open progress stream holds one."""
    ray_address: str = ""
    """A Ray cluster ("auto", "ray://head:10001"): the activation pass then runs as token-range
    shards on it (needs the ``ray`` extra). Empty: everything runs in this process."""
    ray_shards: int = 8
    """Token-range shards per computation on the Ray cluster."""
    ray_max_shards_in_flight: int = 4
    """Shards of one computation running at once, so one big export cannot starve the others."""
    ray_gpus_per_task: float = 0.0
    """GPUs each shard asks Ray for (fractions share a GPU)."""
    ray_task_retries: int = 3
    """Re-runs of a shard whose Ray worker died."""
    ray_state_url: str = ""
    """A bucket (s3://bucket?endpoint=host:port&secure=false, as object_store_url) where each
    Ray shard task writes its finished state, under ray_state_prefix/<job id>/shards/, so a
    restarted compute, or another replica with an empty data_dir, re-attaches to the shards
    already done. Empty: the driver saves them under data_dir (this replica alone re-attaches)."""
    ray_state_prefix: str = "computations"
    """Key prefix of the shard states in that bucket."""
    ray_state_access_key: str = ""
    """A key that may read, write, list and delete under that prefix (and create the bucket
    when it is missing). Ray workers receive it with each shard task."""
    ray_state_secret_key: SecretStr = SecretStr("")
    finished_job_retention_seconds: float = 86400.0
    """Finished computations' folders under data_dir/compute/jobs are removed after this long
    (their dashboards stay cached in the store)."""
    retention_sweep_seconds: float = 600.0
    """How often finished job folders are looked for."""
    health_check_seconds: float = 10.0
    """How often the dependencies are probed; health is NOT_SERVING while one is down."""
    log_level: str = "INFO"
    input_roots: tuple[Path, ...] = ()
    """Folders (or single files) whose files requests may name, as a JSON list; empty: data_dir.
    Paths are resolved with realpath, so symlinks out of a root are refused."""
    object_store_url: str = ""
    """The export service's bucket, s3://bucket?endpoint=host:9000&secure=false (its
    MISTUDIO_EXPORT_OBJECT_STORE_URL), from which uploaded inputs (s3:// URIs) are read into
    data_dir/compute/uploads. Empty: s3:// URIs are refused."""
    s3_access_key: str = ""
    """A key that may read that bucket (read-only is enough)."""
    s3_secret_key: SecretStr = SecretStr("")
    max_sae_weights_bytes: int = 64 * _GIB
    max_sae_config_bytes: int = 1 << 20
    """A SAELens cfg.json is a few kB; a huge one only costs memory to parse."""
    max_token_file_bytes: int = 64 * _GIB
    max_text_file_bytes: int = 4 * _GIB
    max_model_file_bytes: int = 64 * _GIB
    memory_budget_bytes: int = 0
    """Peak memory one computation may take beyond the model and the SAE; a computation whose
    pass state would not fit runs in feature shards (``dashboards.shards``; later shards reuse
    the first one's hook activations when they fit, else each runs the model forward), and one
    where not even a single feature fits is refused before a job exists
    (``dashboards.memory``). 0: ``DEFAULT_MEMORY_BUDGET``, or 80% of physical memory when that
    is less. Raising it means fewer shards for a larger peak."""

    def memory_budget(self) -> int:
        if self.memory_budget_bytes:
            return self.memory_budget_bytes
        physical = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
        return min(DEFAULT_MEMORY_BUDGET, int(physical * 0.8))

    def ray_state_bucket(self) -> StateBucket | None:
        """Where Ray shard states are kept for every replica; None: on this replica's disk."""
        if not (self.ray_address and self.ray_state_url):
            return None
        from mistudio_compute.shard_objects import StateBucket  # minio: only with Ray

        return StateBucket(
            parse_s3_url(self.ray_state_url, "ray_state_url"),
            self.ray_state_prefix,
            self.ray_state_access_key,
            self.ray_state_secret_key.get_secret_value(),
        )

    def input_policy(self) -> InputPolicy:
        """Which files requests may open (``mistudio_compute.input_files``)."""
        limits = {kind: getattr(self, name) for kind, name in SIZE_SETTINGS.items()}
        uploads = (
            ObjectInputs(
                parse_s3_url(self.object_store_url),
                self.s3_access_key,
                self.s3_secret_key.get_secret_value(),
                (self.data_dir / "compute" / "uploads").resolve(),
            )
            if self.object_store_url
            else None
        )
        return InputPolicy.create(self.input_roots or (self.data_dir,), limits, uploads)
