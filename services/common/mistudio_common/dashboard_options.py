"""What a dashboard request may ask for: the parameter bounds, the default token source setting,
the components that can be left out (and so the progress stages a computation runs) and the
hooks that have a logit lens.

The contract, the CLI, the compute service and the export service all import these, so that a
request means the same computation (and the same cache entry) whoever sends it. The parameter
defaults themselves are the field defaults of ``mistudio_common.dashboard.DashboardParams``.
"""

from __future__ import annotations

import enum
import re
from collections.abc import Iterable

from mistudio.common.v1.progress_pb2 import (
    STAGE_ACTIVATION_PASS,
    STAGE_HISTOGRAMS,
    STAGE_LOADING_EXAMPLES,
    STAGE_LOGIT_LENS,
    STAGE_TOKEN_AGGREGATION,
    Stage,
)
from mistudio.common.v1.tokens_pb2 import TokenSource

from mistudio_common.errors import InvalidArgument

PARAM_BOUNDS: dict[str, tuple[int, int]] = {
    "n_top_examples": (20, 100),
    "logit_k": (10, 50),
    "histogram_bins": (20, 100),
    "logit_histogram_bins": (10, 200),
    "n_quantile_groups": (1, 20),
    "examples_per_quantile_group": (1, 50),
    "context_left": (1, 256),
    "context_right": (1, 256),
    "n_top_tokens": (1, 200),
}
"""Inclusive ranges: examples, logit K and bins are the PRD's (FR-3.1); the rest keep memory
bounded. 0 on the wire means "the default", so no range starts at 0: a part is left out with a
``Component`` switch instead."""

DEFAULT_PREPEND_BOS = True
"""Whether token rows start with BOS when the request does not say (SAELens's default, and how
the demo model was trained). ``TokenSource.prepend_bos`` is optional so unset means this."""


class Component(enum.Enum):
    """A part of the dashboard that a request may leave out; values are the CLI's spellings."""

    TOP_EXAMPLES = "top-examples"
    QUANTILE_EXAMPLES = "quantile-examples"
    LOGIT_LENS = "logit-lens"
    """The top/bottom logit tables and the logit histogram."""
    ACTIVATION_HISTOGRAM = "activation-histogram"
    TOKEN_AGGREGATION = "token-aggregation"
    EXPLANATIONS = "explanations"
    """Labels from the store; not computed, so never part of the computation's cache key."""

    @property
    def computed(self) -> bool:
        return self is not Component.EXPLANATIONS


COMPUTED_COMPONENTS = tuple(c for c in Component if c.computed)

_NO_LOGIT_LENS = re.compile(r"^blocks\.\d+\.attn\.hook_[qkv]$")


def logit_lens_defined(hook_point: str) -> bool:
    """Whether a decoder direction at this hook reaches the unembedding: queries, keys and values
    are never written to the residual stream, so for them the logit lens means nothing."""
    return not _NO_LOGIT_LENS.match(hook_point)


def check_bounds(values: Iterable[tuple[str, int]], field: str, zero_is_default: bool) -> None:
    """InvalidArgument naming ``field.name`` for the first value outside ``PARAM_BOUNDS``."""
    for name, value in values:
        low, high = PARAM_BOUNDS[name]
        if (value != 0 or not zero_is_default) and not low <= value <= high:
            default = ", or 0 for the default" if zero_is_default else ""
            raise InvalidArgument(
                f"{name} {value} is outside {low}..{high}",
                field=f"{field}.{name}" if field else name,
                fix=f"choose {name} between {low} and {high}{default}",
            )


def prepend_bos(source: TokenSource) -> bool:
    """The request's BOS setting, or the one default when it leaves it unset."""
    return source.prepend_bos if source.HasField("prepend_bos") else DEFAULT_PREPEND_BOS


def computation_stages(omitted: frozenset[Component]) -> tuple[Stage.ValueType, ...]:
    """The progress stages a computation runs, in order: a part left out has no stage."""
    wanted = {
        STAGE_ACTIVATION_PASS: True,
        STAGE_LOADING_EXAMPLES: not {Component.TOP_EXAMPLES, Component.QUANTILE_EXAMPLES}
        <= omitted,
        STAGE_LOGIT_LENS: Component.LOGIT_LENS not in omitted,
        STAGE_HISTOGRAMS: Component.ACTIVATION_HISTOGRAM not in omitted,
        STAGE_TOKEN_AGGREGATION: Component.TOKEN_AGGREGATION not in omitted,
    }
    return tuple(stage for stage, runs in wanted.items() if runs)
