"""Feature dashboards in one streaming pass: exact, mergeable, checkpointable, bounded in memory.

``compute_dashboards`` is the entry point; ``run_activation_pass`` + ``PassState.merge`` +
``finalize_dashboards`` are its parts, for split or resumed runs.
"""

from mistudio_compute.dashboards.activation_pass import (
    Checkpointing,
    PassResult,
    run_activation_pass,
)
from mistudio_compute.dashboards.checkpoint import Cursor, load_checkpoint, save_checkpoint
from mistudio_compute.dashboards.finalize import finalize_dashboards
from mistudio_compute.dashboards.grid import FineGrid
from mistudio_compute.dashboards.inputs import (
    ActivationReader,
    ArrayTokenSource,
    CancelCheck,
    DashboardInputs,
    FeatureEncoder,
    LogitLensSource,
    ProgressCallback,
    Stage,
    TokenSource,
    TokenText,
)
from mistudio_compute.dashboards.params import (
    state_config,
    validate_features,
    validate_params,
)
from mistudio_compute.dashboards.pipeline import compute_dashboards
from mistudio_compute.dashboards.state import PassState, StateConfig

__all__ = [
    "ActivationReader",
    "ArrayTokenSource",
    "CancelCheck",
    "Checkpointing",
    "Cursor",
    "DashboardInputs",
    "FeatureEncoder",
    "FineGrid",
    "LogitLensSource",
    "PassResult",
    "PassState",
    "ProgressCallback",
    "Stage",
    "StateConfig",
    "TokenSource",
    "TokenText",
    "compute_dashboards",
    "finalize_dashboards",
    "load_checkpoint",
    "run_activation_pass",
    "save_checkpoint",
    "state_config",
    "validate_features",
    "validate_params",
]
