"""How long an export will take and how large its archive will be, from measured rates.

The computation's stages come from the compute service's own measured rates
(EstimateComputation, per stage); this service's own stages (``stage_rates``: checks a fixed
cost, the file stages features × example tokens) and the bytes per feature come from the
exports it has finished, which record their measurements in their outcome and progress. Without
any finished export the priors are used, and the estimate says so. ValidateExport sums the
per-stage prediction; a running export weighs its progress by it, so its ETA follows the same
rates.
"""

from __future__ import annotations

import statistics
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, replace

from mistudio.common.v1 import progress_pb2 as ppb
from mistudio.export.v1 import export_job_pb2 as jpb
from mistudio_common.dashboard import DashboardParams
from mistudio_common.dashboard_options import Component
from mistudio_common.stage_rates import (
    JobSize,
    StageEstimate,
    StageRates,
    StageTime,
    example_tokens,
    machine_pace,
    stage_times,
)
from mistudio_common.stages import FILE_STAGES

from mistudio_export.options import ExportOptions
from mistudio_export.peers import (
    ComputationEstimate,
    EstimateRecords,
    EstimateStore,
    ExportJobRecord,
    SaeRecord,
    TokenEstimates,
)
from mistudio_export.plan import ExportPlan
from mistudio_export.preflight import Planner
from mistudio_export.presets import PRESETS, Preset
from mistudio_export.selection import candidate_indices
from mistudio_export.token_facts import token_facts

DEFAULT_BYTES_PER_FEATURE = 60_000.0
"""Archive bytes per feature for all Neuronpedia formats (SAEDashboard alone writes ~88 KB of
JSON per feature with full contexts; our contexts are shorter and the ZIP deflates)."""
# Rough bytes per item of a feature's files over all Neuronpedia formats, for relative sizes.
_BYTES_FIXED, _BYTES_PER_EXAMPLE_TOKEN, _BYTES_PER_LOGIT = 2_000.0, 40.0, 60.0
_BYTES_PER_BIN, _BYTES_PER_TOP_TOKEN = 30.0, 80.0


OWN_STAGES = (ppb.STAGE_VALIDATING, *FILE_STAGES)
"""The stages this service times itself; the others are the computation's."""
MEASURED_EXPORTS = 50
"""How many of the newest finished exports the rates are fitted over."""


@dataclass(frozen=True)
class Rates:
    bytes_per_feature: float
    own: StageRates
    """Seconds per cost unit of this service's own stages (checks: fixed; files: features ×
    example tokens)."""
    measured: bool


def measurement(
    progress: ppb.Progress, neuronpedia_bytes: int, features: int, params: DashboardParams
) -> jpb.ExportMeasurement:
    """What a finished export records for later estimates."""
    seconds = sum(s.elapsed_seconds for s in progress.stages if s.stage in FILE_STAGES)
    return jpb.ExportMeasurement(
        features=features,
        neuronpedia_bytes=neuronpedia_bytes,
        seconds=seconds,
        example_tokens=example_tokens(params),
    )


def rates_from(jobs: Iterable[ExportJobRecord]) -> Rates:
    """Median archive bytes per feature and this service's stage rates fitted over finished
    exports that measured some features."""
    per_byte: list[float] = []
    times: list[StageTime] = []
    for job in jobs:
        measured = job.outcome.measured if job.outcome is not None else None
        if measured is None or not measured.features:
            continue
        per_byte.append(measured.neuronpedia_bytes / measured.features)
        size = JobSize(0, measured.features, measured.example_tokens)
        times += [t for t in stage_times(job.progress, size) if t.stage in OWN_STAGES]
    own = StageRates.fit(times, machine_pace())
    if not per_byte:
        return Rates(DEFAULT_BYTES_PER_FEATURE, own, measured=False)
    return Rates(statistics.median(per_byte), own, measured=own.all_measured(FILE_STAGES))


@dataclass(frozen=True)
class Prediction:
    """How long each stage of an export of ``candidates`` would take, and what it would compute."""

    stages: list[StageEstimate]
    """The plan's stages in order, each with its predicted seconds."""
    features_cached: int
    computation: ComputationEstimate | None
    """The compute service's estimate of the features to compute; None when all are cached."""
    rates: Rates

    @property
    def seconds(self) -> float:
        return sum(s.seconds for s in self.stages)


def predict(
    plan: ExportPlan,
    candidates: Sequence[int],
    store: EstimateRecords,
    compute: TokenEstimates,
) -> Prediction:
    """Each stage of ``plan`` exporting ``candidates``: the computation's stages as the compute
    service predicts them for the features not cached yet, this service's own from its rates."""
    rates = rates_from(store.recent_finished_jobs(MEASURED_EXPORTS))
    cached, computation = 0, None
    if plan.neuronpedia and candidates:
        assert plan.tokens is not None  # the plan's checks made sure
        sae = plan.sae
        params = token_facts(compute, sae, plan.tokens, plan.params).params
        hashes = store.cached_hashes(sae.sae_id, params, sae.owner)
        cached = sum(1 for i in candidates if i in hashes)
        if cached < len(candidates):
            computation = compute.estimate(
                sae, plan.tokens, len(candidates) - cached, plan.params, plan.batch_size
            )
    computed = computation.stage_seconds if computation else {}
    written = JobSize(0, len(candidates), example_tokens(plan.params))
    stages = [
        StageEstimate(
            stage=stage,
            seconds=rates.own.seconds(stage, written)
            if stage in OWN_STAGES
            else computed.get(stage, 0.0),
        )
        for stage in plan.stages
    ]
    return Prediction(stages, cached, computation, rates)


def relative_size(params: DashboardParams, omitted: frozenset[Component]) -> float:
    """One feature's files under ``params`` relative to the default parameters' (what the
    measured rates mostly saw): example tokens dominate, then logits, bins and top tokens."""

    def weight(p: DashboardParams, left_out: frozenset[Component]) -> float:
        def on(c: Component) -> bool:
            return c not in left_out

        width = p.context_left + 1 + p.context_right
        examples = p.n_top_examples * on(Component.TOP_EXAMPLES) + (
            p.n_quantile_groups * p.examples_per_quantile_group
        ) * on(Component.QUANTILE_EXAMPLES)
        logits = (2 * p.logit_k + p.logit_histogram_bins) * on(Component.LOGIT_LENS)
        bins = p.histogram_bins * on(Component.ACTIVATION_HISTOGRAM)
        tokens = p.n_top_tokens * on(Component.TOKEN_AGGREGATION)
        return (
            _BYTES_FIXED
            + examples * width * _BYTES_PER_EXAMPLE_TOKEN
            + logits * _BYTES_PER_LOGIT
            + bins * _BYTES_PER_BIN
            + tokens * _BYTES_PER_TOP_TOKEN
        )

    return weight(params, omitted) / weight(DashboardParams(), frozenset())


def saelens_bytes(sae: SaeRecord) -> int:
    """Weights (W_enc, W_dec, b_enc, b_dec and a threshold at most) plus sparsity, in fp32."""
    return 4 * (2 * sae.d_in * sae.d_sae + 3 * sae.d_sae + sae.d_in) + 4096


@dataclass(frozen=True)
class ExportEstimate:
    """What ValidateExport answers: the export's predicted time, size and features, and what
    the caller should know about them."""

    estimated_seconds: float
    feature_count: int
    features_cached: int
    features_to_compute: int
    stages: tuple[StageEstimate, ...]
    estimated_size_bytes: int
    estimated_peak_memory_bytes: int
    """What the computation of the features not cached would take at its peak; 0: none."""
    warnings: tuple[str, ...]


@dataclass(frozen=True)
class PresetEstimate:
    preset: Preset
    estimate: ExportEstimate | None
    """None when no SAE was named."""


class ExportEstimator:
    """ValidateExport: every check of StartExport, plus an estimate of time and size."""

    def __init__(self, store: EstimateStore, compute: TokenEstimates, planner: Planner) -> None:
        self._store = store
        self._compute = compute
        self._planner = planner

    def estimate(self, sae_id: str, options: ExportOptions, owner: str) -> ExportEstimate:
        plan = self._planner.plan(sae_id, options, owner)
        warnings = [*plan.notes, *self._planner.check(plan)]
        sae = plan.sae
        candidates = (
            candidate_indices(
                plan.selection, sae.d_sae, lambda f: self._store.features(sae.sae_id, f, sae.owner)
            )
            if plan.neuronpedia
            else []
        )
        prediction = predict(plan, candidates, self._store, self._compute)
        features = len(candidates)
        if plan.neuronpedia:
            warnings += _dashboard_notes(plan, prediction, features)
        size = int(
            features * prediction.rates.bytes_per_feature * relative_size(plan.params, plan.omitted)
        )
        if plan.saelens:
            size += saelens_bytes(plan.sae)
        if not prediction.rates.measured:
            warnings.append(
                "no export has been measured yet: file generation and size use default rates"
            )
        computation = prediction.computation
        return ExportEstimate(
            estimated_seconds=prediction.seconds,
            feature_count=features,
            features_cached=prediction.features_cached,
            features_to_compute=features - prediction.features_cached,
            stages=tuple(prediction.stages),
            estimated_size_bytes=size,
            estimated_peak_memory_bytes=computation.estimated_peak_memory_bytes
            if computation is not None
            else 0,
            warnings=tuple(warnings),
        )

    def list_presets(self, sae_id: str, options: ExportOptions, owner: str) -> list[PresetEstimate]:
        """Every preset, with its estimate for ``options`` when an SAE is named."""
        return [
            PresetEstimate(
                preset,
                self.estimate(sae_id, replace(options, preset=preset.name), owner)
                if sae_id
                else None,
            )
            for preset in PRESETS.values()
        ]


def _dashboard_notes(plan: ExportPlan, prediction: Prediction, features: int) -> list[str]:
    warnings = []
    if not features:
        warnings.append("the feature selection matches no feature: the export would fail")
    if plan.selection.statistics.active:
        warnings.append(
            "activation-frequency and max-activation filters apply after computing: "
            "feature_count is an upper bound"
        )
    answer = prediction.computation
    if answer is not None:
        warnings.append(
            f"{features - prediction.features_cached} features have no cached dashboard and "
            f"will be computed during the export (compute rate: {answer.rate_source})"
        )
    return warnings
