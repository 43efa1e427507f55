"""One feature's dashboard (PRD FR-4.3): from the cache, or computed on demand and cached."""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from typing import Protocol

from mistudio.common.v1 import dashboard_pb2 as dpb
from mistudio.common.v1 import progress_pb2 as ppb
from mistudio_common.dashboard import DashboardParams
from mistudio_common.errors import FailedPrecondition, InvalidArgument, NotFound, Unavailable

from mistudio_export.peers import (
    RECORDED_TOKENS_KEY,
    ComputationProgress,
    ComputationRequest,
    DashboardCache,
    DashboardComputer,
    SaeRecord,
    TokenEstimates,
    TokenSource,
)
from mistudio_export.token_facts import token_facts


@dataclass(frozen=True, slots=True)
class DashboardQuery:
    """Which dashboard of an SAE: one feature, computed with these params on these tokens."""

    feature_index: int
    params: DashboardParams
    tokens: TokenSource | None
    """None: none given and none recorded with the SAE (refused)."""
    compute_if_missing: bool = False


class OnDemandCompute(DashboardComputer, TokenEstimates, Protocol):
    """The compute service as one feature's dashboard needs it."""


class FeatureDashboards:
    def __init__(self, store: DashboardCache, compute: OnDemandCompute) -> None:
        self._store = store
        self._compute = compute

    def get(self, sae: SaeRecord, query: DashboardQuery) -> tuple[dpb.FeatureDashboard, bool]:
        """The dashboard of one feature of ``sae``, and whether it came from the cache."""
        index, params, tokens = query.feature_index, query.params, query.tokens
        if not 0 <= index < sae.d_sae:
            raise InvalidArgument(
                f"feature_index {index} is outside [0, {sae.d_sae})",
                field="feature_index",
                fix=f"use an index between 0 and {sae.d_sae - 1}",
            )
        if tokens is None:
            raise FailedPrecondition(
                "no token source was given and none is recorded for this SAE",
                violations=[
                    (
                        "tokens",
                        "pass tokens (a token_file), or record one in the SAE's config under "
                        f"'{RECORDED_TOKENS_KEY}'",
                    )
                ],
                field="tokens",
            )
        cached_under = token_facts(self._compute, sae, tokens, params, "tokens").params
        found, _ = self._store.dashboards(sae.sae_id, cached_under, [index], sae.owner)
        if found:
            return dpb.FeatureDashboard.FromString(found[0]), True
        if not query.compute_if_missing:
            raise NotFound(
                f"feature {index} of {sae.sae_id} has no cached dashboard for these parameters",
                resource_type="dashboard",
                resource_name=f"{sae.sae_id}/{index}",
                fix="set compute_if_missing to compute it (it is cached afterwards)",
            )
        self._compute_one(sae, index, params, tokens)
        found, _ = self._store.dashboards(sae.sae_id, cached_under, [index], sae.owner)
        if not found:
            raise Unavailable(
                f"the computed dashboard of feature {index} did not reach the cache",
                fix="retry; if it persists, check the compute service's logs",
            )
        return dpb.FeatureDashboard.FromString(found[0]), False

    def _compute_one(
        self,
        sae: SaeRecord,
        index: int,
        params: DashboardParams,
        tokens: TokenSource,
    ) -> None:
        compute_request = ComputationRequest(
            request_id=f"dashboard/{sae.sae_id}/{index}/{uuid.uuid4().hex}",
            sae=sae,
            params=params,
            tokens=tokens,
            feature_indices=(index,),
            reuse_cached=True,
        )
        last: ComputationProgress | None = None
        for event in self._compute.compute_dashboards(compute_request):
            last = event
            if event.ended:
                break
        if last is None or last.state != ppb.JOB_STATE_SUCCEEDED:
            if last is not None and last.error is not None:
                raise last.error
            raise Unavailable(
                f"computing the dashboard of feature {index} did not finish",
                fix="retry; if it persists, check the compute service's logs",
            )
