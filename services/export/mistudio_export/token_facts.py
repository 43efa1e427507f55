"""The token source as the compute service sees it: filled dashboard params and its shape.

The dashboard cache is keyed by ``DashboardParams`` with ``token_source_fingerprint`` filled in,
which only the compute service can work out (a text source needs the model's tokenizer). So the
export service asks it (EstimateComputation) instead of reading the token source itself; any
token source the compute service accepts, token file or text, can then be exported.
"""

from __future__ import annotations

from dataclasses import dataclass

from mistudio_common.dashboard import DashboardParams
from mistudio_common.errors import MistudioError

from mistudio_export.peers import SaeRecord, TokenEstimates, TokenSource


@dataclass(frozen=True)
class TokenFacts:
    params: DashboardParams
    """The request's params as the dashboards are cached under (fingerprint filled in)."""
    n_rows: int
    context_size: int
    prepend_bos: bool
    """Whether the rows begin with BOS: as requested, or as the token file's provenance says."""
    n_layers: int


def token_facts(
    compute: TokenEstimates,
    sae: SaeRecord,
    tokens: TokenSource,
    params: DashboardParams,
    field: str = "config.tokens",
    feature_count: int = 0,
) -> TokenFacts:
    """Asks the compute service; its errors name ``field`` as the caller's request spells it.
    With ``feature_count`` it also checks that computing that many fits its memory budget."""
    try:
        answer = compute.estimate(sae, tokens, feature_count, params)
    except MistudioError as error:
        if error.field.startswith("tokens"):
            error.field = field + error.field.removeprefix("tokens")
        raise
    return TokenFacts(
        answer.params,
        int(answer.n_rows),
        int(answer.context_size),
        answer.prepend_bos,
        int(answer.n_layers),
    )
