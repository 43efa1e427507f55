"""What EstimateComputation predicts of a computation before any job exists: its stages' seconds
by the rates measured on this machine (the priors where none were), its tokens and its memory,
from the same plan and the same stages a job of that request would run."""

from __future__ import annotations

from mistudio_common.stage_rates import StageEstimate, StageRates

from mistudio_compute.jobs import job_stages
from mistudio_compute.planning import TokenPlan
from mistudio_compute.run_dashboards import job_size
from mistudio_compute.values import ComputationEstimate


def estimate_computation(
    plan: TokenPlan, feature_count: int, rates: StageRates
) -> ComputationEstimate:
    """``feature_count`` 0: every feature of the SAE."""
    dataset = plan.dataset
    size = job_size(dataset.n_tokens, feature_count or plan.d_sae, plan.params, plan.memory)
    stages = job_stages(plan.params)
    predicted = rates.predict(stages, size)
    return ComputationEstimate(
        seconds=sum(predicted),
        tokens=dataset.n_tokens,
        measured=rates.all_measured(stages),
        params=plan.params,
        n_rows=dataset.n_rows,
        context_size=dataset.context_size,
        prepend_bos=dataset.prepend_bos,
        n_layers=plan.n_layers,
        peak_memory_bytes=plan.memory.peak_bytes,
        stages=tuple(
            StageEstimate(stage, seconds) for stage, seconds in zip(stages, predicted, strict=True)
        ),
    )
