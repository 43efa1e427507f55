"""The token source's fingerprint (which keys the dashboard cache) and its shape.

Contract gap, worked around here: the compute service fills in
``DashboardParams.token_source_fingerprint`` when it caches dashboards but reports it nowhere
(``ComputeResult`` carries only ``params_key``, while the store is addressed by the full
params). Until ``ComputeResult`` and ``EstimateComputationResponse`` return the filled params,
the export service computes the fingerprint with the compute service's own function, which
needs the token file to be readable here too. Text sources need the model's tokenizer, so only
pre-tokenized token files are supported for exports with dashboards.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from pathlib import Path

from mistudio.common.v1 import dashboard_pb2 as dpb
from mistudio.common.v1 import tokens_pb2 as tpb
from mistudio_common.errors import FailedPrecondition, InvalidArgument


@dataclass(frozen=True)
class TokenFacts:
    fingerprint: str
    n_rows: int
    context_size: int


def token_facts(tokens: tpb.TokenSource, field: str = "config.tokens") -> TokenFacts:
    """Loads the token file the way the compute service does and fingerprints it."""
    if tokens.WhichOneof("source") != "token_file":
        raise FailedPrecondition(
            "dashboards from text files cannot be read back by the export service yet",
            violations=[
                (
                    field,
                    "the export needs a pre-tokenized token_file (.npy or .safetensors) to find "
                    "the cached dashboards; tokenize the text once and pass the file",
                )
            ],
            field=field,
        )
    path = Path(tokens.token_file)
    try:
        stat = path.stat()
    except OSError:
        raise InvalidArgument(
            f"token file {tokens.token_file!r} does not exist",
            field=f"{field}.token_file",
            fix="pass the path of a .npy or .safetensors token file readable by the services",
        ) from None
    return _load(
        str(path),
        stat.st_mtime_ns,
        stat.st_size,
        tokens.dataset_name,
        tokens.context_size,
        tokens.prepend_bos,
        tokens.max_tokens,
    )


@functools.lru_cache(maxsize=16)
def _load(
    path: str,
    _mtime_ns: int,
    _size: int,
    dataset_name: str,
    context_size: int,
    prepend_bos: bool,
    max_tokens: int,
) -> TokenFacts:
    from mistudio_compute.tokens import load_token_file  # the compute service's own reader

    dataset = load_token_file(
        path,
        dataset_name=dataset_name,
        context_size=context_size,
        prepend_bos=prepend_bos,
        max_tokens=max_tokens,
    )
    return TokenFacts(dataset.fingerprint, dataset.n_rows, dataset.context_size)


def filled_params(params: dpb.DashboardParams, facts: TokenFacts) -> dpb.DashboardParams:
    """``params`` as the compute service caches them: with the token source's fingerprint."""
    filled = dpb.DashboardParams()
    filled.CopyFrom(params)
    filled.token_source_fingerprint = facts.fingerprint
    return filled
