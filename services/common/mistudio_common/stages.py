"""The stages of long jobs: one table of each stage's label, running note and weight.

The compute service's dashboard computation and the export both report these stages; their
trackers, the export's relay of compute progress and the CLI all read this table, so a stage
means the same everywhere. Weights are relative shares of a job's time (the activation pass
dominates a computation); a job normalises them over the stages it runs.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from mistudio.common.v1 import progress_pb2 as ppb

from mistudio_common.progress import ProgressTracker, StageId


@dataclass(frozen=True)
class StageSpec:
    stage: StageId
    label: str
    """How the CLI names the stage."""
    note: str
    """What a progress message says while the stage runs."""
    weight: float


STAGE_TABLE: tuple[StageSpec, ...] = (
    StageSpec(ppb.STAGE_VALIDATING, "Validating SAE data", "checking the request", 0.5),
    StageSpec(
        ppb.STAGE_ACTIVATION_PASS, "Activation pass", "activation pass over the tokens", 12.0
    ),
    StageSpec(
        ppb.STAGE_LOADING_EXAMPLES,
        "Loading activation examples",
        "loading activation examples",
        1.6,
    ),
    StageSpec(ppb.STAGE_LOGIT_LENS, "Computing logit lens data", "logit lens", 2.0),
    StageSpec(ppb.STAGE_HISTOGRAMS, "Computing histograms", "histograms", 1.6),
    StageSpec(ppb.STAGE_TOKEN_AGGREGATION, "Aggregating tokens", "aggregating tokens", 1.4),
    StageSpec(ppb.STAGE_CACHING, "Caching dashboard data", "caching dashboard data", 1.0),
    StageSpec(ppb.STAGE_GENERATING_FILES, "Generating JSON files", "writing the formats", 5.0),
    StageSpec(ppb.STAGE_VALIDATING_OUTPUT, "Validating output", "validating the files", 2.0),
    StageSpec(ppb.STAGE_CREATING_ARCHIVE, "Creating archive", "packing and publishing", 2.0),
)
_BY_STAGE = {spec.stage: spec for spec in STAGE_TABLE}

COMPUTE_STAGES: tuple[StageId, ...] = tuple(s.stage for s in STAGE_TABLE[:7])
"""A dashboard computation, from checking its request to caching its results."""
DASHBOARD_STAGES: tuple[StageId, ...] = COMPUTE_STAGES[1:]
"""The computation's stages an export shows (its own VALIDATING comes first)."""
FILE_STAGES: tuple[StageId, ...] = tuple(s.stage for s in STAGE_TABLE[7:])
"""What an export does after the computation: write, validate, pack and publish."""


def spec(stage: StageId) -> StageSpec | None:
    return _BY_STAGE.get(stage)


def label(stage: int) -> str:
    found = _BY_STAGE.get(stage)  # type: ignore[call-overload]
    return found.label if found is not None else "Starting"


def weight(of: Sequence[StageId]) -> float:
    """The summed weight of ``of``: what share of a job these stages are."""
    return sum(_BY_STAGE[s].weight for s in of)


def tracker(job_id: str, stages: Sequence[StageId], first_sequence: int = 0) -> ProgressTracker:
    """A progress tracker over ``stages`` weighted by the table."""
    weights = [_BY_STAGE[s].weight for s in stages]
    return ProgressTracker(job_id, stages, weights, first_sequence=first_sequence)
