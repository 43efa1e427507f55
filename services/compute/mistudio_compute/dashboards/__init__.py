"""Feature dashboards in one streaming pass: exact, mergeable, checkpointable, bounded in memory.

``compute_dashboards`` is the entry point; ``run_activation_pass`` + ``PassState.merge`` +
``finalize_dashboards`` are its parts, for split or resumed runs. Inputs are the Protocols in
``inputs``. Memory: about 19.5 KB per feature for the pass state at default parameters (the
fine histogram grid, and the context windows of the n_top + 4 x groups x per_group example
candidates, kept so the examples need no second model pass; counts in int32 below 2**31
positions) plus one batch of encoder output, whatever the number of tokens; under a memory
budget the features run in shards (``shards``). Special tokens (BOS/EOS/PAD) are never an
example's max token and count in no statistic, histogram or token table (also not in
``token_count``); they are shown in windows with value 0.
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
