"""The entry point: validate, stream once over the tokens, then emit dashboards in chunks."""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence

from mistudio_common.dashboard import DashboardParams, FeatureDashboard

from mistudio_compute.dashboards.activation_pass import (
    Checkpointing,
    PassResult,
    run_activation_pass,
)
from mistudio_compute.dashboards.finalize import finalize_dashboards
from mistudio_compute.dashboards.inputs import CancelCheck, DashboardInputs, ProgressCallback
from mistudio_compute.dashboards.params import (
    state_config,
    validate_batch_size,
    validate_features,
    validate_params,
)


def compute_dashboards(
    inputs: DashboardInputs,
    params: DashboardParams,
    *,
    features: Sequence[int] | None = None,
    batch_size: int = 32,
    chunk_size: int = 256,
    checkpoint: Checkpointing | None = None,
    progress: ProgressCallback | None = None,
    cancel: CancelCheck | None = None,
    on_pass: Callable[[PassResult], None] | None = None,
) -> Iterator[list[FeatureDashboard]]:
    """Dashboards of ``features`` (default: all), in ascending feature order, ``chunk_size`` per
    yielded list. Arguments are validated now; the work runs as the iterator is consumed.
    ``on_pass`` receives the activation pass's result (e.g. the batch size it ended with)."""
    validate_params(params)
    validate_batch_size(batch_size)
    feats = validate_features(features, inputs.encoder.d_sae)
    config = state_config(params, inputs.token_text.special_ids)

    def run() -> Iterator[list[FeatureDashboard]]:
        result = run_activation_pass(
            inputs, config, feats,
            batch_size=batch_size, checkpoint=checkpoint, progress=progress, cancel=cancel,
        )  # fmt: skip
        if on_pass is not None:
            on_pass(result)
        yield from finalize_dashboards(
            result.state, inputs, params, chunk_size=chunk_size, progress=progress, cancel=cancel
        )

    return run()
