"""gRPC adapter of the store: unpack the request into plain values (``messages``), call the
repository, pack the response.

The server lets users call only the SAE methods below (``server.USER_METHODS``); those see and
touch only the caller's own SAEs. An sae_id is unique per owner, so every SAE a request names is
looked up as (owner, sae_id) with the owner ``auth.sae_owner`` gives: another owner's SAE is
NOT_FOUND, as if it did not exist.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from dataclasses import replace
from typing import TypeAlias

import grpc
from mistudio.store.v1 import store_service_pb2 as pb
from mistudio.store.v1 import store_service_pb2_grpc
from mistudio_common.auth import current_caller, owner_for, sae_owner
from mistudio_common.errors import InvalidArgument
from mistudio_common.grpc_errors import handle_errors, register_translation

from mistudio_store import convert, messages, validation
from mistudio_store.db.faults import database_fault
from mistudio_store.records import SerializedDashboard
from mistudio_store.repository import StoreRepository

Context: TypeAlias = grpc.ServicerContext
register_translation(database_fault)


def _addressed_owner(requested: str) -> str | None:
    """Whose SAE a request names (``auth.sae_owner``), the name checked first like a stored one:
    PostgreSQL would refuse a NUL with an error quoting the SQL."""
    return sae_owner(validation.owner(requested), current_caller())


class StoreServicer(store_service_pb2_grpc.StoreServiceServicer):
    def __init__(self, repository: StoreRepository) -> None:
        self._repo = repository

    @handle_errors
    def CreateSae(self, request: pb.CreateSaeRequest, context: Context) -> pb.CreateSaeResponse:
        sae = messages.sae_from_pb(request.sae)
        sae = replace(sae, owner=owner_for(sae.owner, current_caller()))
        return pb.CreateSaeResponse(sae=messages.sae_to_pb(self._repo.create_sae(sae)))

    @handle_errors
    def GetSae(self, request: pb.GetSaeRequest, context: Context) -> pb.GetSaeResponse:
        owner = _addressed_owner(request.owner)
        return pb.GetSaeResponse(sae=messages.sae_to_pb(self._repo.get_sae(request.sae_id, owner)))

    @handle_errors
    def ListSaes(self, request: pb.ListSaesRequest, context: Context) -> pb.ListSaesResponse:
        caller = current_caller()
        owner = None if caller.sees_everything else caller.name
        page = self._repo.list_saes(request.page_size, request.page_token, owner)
        saes = [messages.sae_to_pb(s) for s in page.items]
        return pb.ListSaesResponse(saes=saes, next_page_token=page.next_page_token)

    @handle_errors
    def DeleteSae(self, request: pb.DeleteSaeRequest, context: Context) -> pb.DeleteSaeResponse:
        self._repo.delete_sae(request.sae_id, _addressed_owner(request.owner))
        return pb.DeleteSaeResponse()

    @handle_errors
    def UpsertFeatures(
        self, request: pb.UpsertFeaturesRequest, context: Context
    ) -> pb.UpsertFeaturesResponse:
        owner = _addressed_owner(request.owner)
        features = [messages.feature_from_pb(f) for f in request.features]
        count = self._repo.upsert_features(request.sae_id, features, request.update_mask, owner)
        return pb.UpsertFeaturesResponse(upserted_count=count)

    @handle_errors
    def ListFeatures(
        self, request: pb.ListFeaturesRequest, context: Context
    ) -> pb.ListFeaturesResponse:
        owner = _addressed_owner(request.owner)
        found = messages.feature_filter_from_pb(request.filter)
        page = self._repo.list_features(
            request.sae_id, request.page_size, request.page_token, found, owner
        )
        features = [messages.feature_to_pb(f) for f in page.items]
        return pb.ListFeaturesResponse(features=features, next_page_token=page.next_page_token)

    @handle_errors
    def AddExplanations(
        self, request: pb.AddExplanationsRequest, context: Context
    ) -> pb.AddExplanationsResponse:
        owner = _addressed_owner(request.owner)
        given = [messages.explanation_from_pb(e) for e in request.explanations]
        added = self._repo.add_explanations(request.sae_id, given, owner)
        return pb.AddExplanationsResponse(
            explanations=[messages.explanation_to_pb(e) for e in added]
        )

    @handle_errors
    def ListExplanations(
        self, request: pb.ListExplanationsRequest, context: Context
    ) -> pb.ListExplanationsResponse:
        owner = _addressed_owner(request.owner)
        page = self._repo.list_explanations(
            request.sae_id,
            request.page_size,
            request.page_token,
            request.feature_indices,
            owner,
        )
        return pb.ListExplanationsResponse(
            explanations=[messages.explanation_to_pb(e) for e in page.items],
            next_page_token=page.next_page_token,
        )

    @handle_errors
    def PutDashboards(
        self, request_iterator: Iterable[pb.PutDashboardsRequest], context: Context
    ) -> pb.PutDashboardsResponse:
        """Each message is written (and committed) as it arrives; a broken stream keeps them."""
        written, key = 0, ""
        for first, dashboards in _dashboard_batches(request_iterator):
            owner = _addressed_owner(first.owner)
            count, key = self._repo.put_dashboards(first.sae_id, first.params, dashboards, owner)
            written += count
        return pb.PutDashboardsResponse(written_count=written, params_key=key)

    @handle_errors
    def GetDashboards(
        self, request: pb.GetDashboardsRequest, context: Context
    ) -> Iterator[pb.GetDashboardsResponse]:
        owner = _addressed_owner(request.owner)
        batches = self._repo.get_dashboards(
            request.sae_id, request.params, request.feature_indices, owner
        )
        for batch in batches:
            found = [messages.serialized_dashboard_to_pb(d) for d in batch.dashboards]
            yield pb.GetDashboardsResponse(serialized_dashboards=found, missing=batch.missing)

    @handle_errors
    def ListCachedDashboards(
        self, request: pb.ListCachedDashboardsRequest, context: Context
    ) -> pb.ListCachedDashboardsResponse:
        page = self._repo.list_cached_dashboards(
            request.sae_id,
            request.params,
            request.page_size,
            request.page_token,
            _addressed_owner(request.owner),
        )
        return pb.ListCachedDashboardsResponse(
            dashboards=[messages.cached_dashboard_to_pb(h) for h in page.items],
            next_page_token=page.next_page_token,
        )

    @handle_errors
    def CreateExportJob(
        self, request: pb.CreateExportJobRequest, context: Context
    ) -> pb.CreateExportJobResponse:
        job, created = self._repo.create_export_job(request.job)
        return pb.CreateExportJobResponse(job=job, created=created)

    @handle_errors
    def GetExportJob(
        self, request: pb.GetExportJobRequest, context: Context
    ) -> pb.GetExportJobResponse:
        return pb.GetExportJobResponse(job=self._repo.get_export_job(request.job_id))

    @handle_errors
    def UpdateExportJob(
        self, request: pb.UpdateExportJobRequest, context: Context
    ) -> pb.UpdateExportJobResponse:
        job = self._repo.update_export_job(request.job, request.update_mask)
        return pb.UpdateExportJobResponse(job=job)

    @handle_errors
    def ListExportJobs(
        self, request: pb.ListExportJobsRequest, context: Context
    ) -> pb.ListExportJobsResponse:
        page = self._repo.list_export_jobs(
            request.page_size,
            request.page_token,
            sae_id=request.sae_id,
            owner=request.owner,
            states=request.states,
            sae_owner=request.sae_owner,
            finished_before=convert.from_timestamp(request, "finished_before"),
        )
        return pb.ListExportJobsResponse(jobs=page.items, next_page_token=page.next_page_token)

    @handle_errors
    def ClaimExportJob(
        self, request: pb.ClaimExportJobRequest, context: Context
    ) -> pb.ClaimExportJobResponse:
        job, claimed = self._repo.claim_export_job(
            request.job_id, request.holder, request.lease_seconds
        )
        return pb.ClaimExportJobResponse(claimed=claimed, job=job)

    @handle_errors
    def DeleteExportJob(
        self, request: pb.DeleteExportJobRequest, context: Context
    ) -> pb.DeleteExportJobResponse:
        self._repo.delete_export_job(request.job_id)
        return pb.DeleteExportJobResponse()

    @handle_errors
    def PutExportFeatureHashes(
        self, request: pb.PutExportFeatureHashesRequest, context: Context
    ) -> pb.PutExportFeatureHashesResponse:
        hashes = [messages.feature_hash_from_pb(h) for h in request.hashes]
        written = self._repo.put_export_feature_hashes(request.job_id, hashes)
        return pb.PutExportFeatureHashesResponse(written_count=written)

    @handle_errors
    def ListExportFeatureHashes(
        self, request: pb.ListExportFeatureHashesRequest, context: Context
    ) -> pb.ListExportFeatureHashesResponse:
        page = self._repo.list_export_feature_hashes(
            request.job_id, request.page_size, request.page_token
        )
        return pb.ListExportFeatureHashesResponse(
            hashes=[messages.feature_hash_to_pb(h) for h in page.items],
            next_page_token=page.next_page_token,
        )


def _dashboard_batches(
    requests: Iterable[pb.PutDashboardsRequest],
) -> Iterator[tuple[pb.PutDashboardsRequest, list[SerializedDashboard]]]:
    """(the stream's first message, dashboards) per message: later messages may leave sae_id,
    owner and params unset to inherit the first message's; naming different ones is an error."""
    first: pb.PutDashboardsRequest | None = None
    for request in requests:
        if first is None:
            first = request
        elif request.sae_id and request.sae_id != first.sae_id:
            raise InvalidArgument(
                f"sae_id {request.sae_id!r} differs from the stream's first {first.sae_id!r}",
                field="sae_id",
                fix="send one PutDashboards stream per SAE and parameter set",
            )
        elif request.owner and request.owner != first.owner:
            raise InvalidArgument(
                f"owner {request.owner!r} differs from the stream's first {first.owner!r}",
                field="owner",
                fix="send one PutDashboards stream per SAE and parameter set",
            )
        elif request.HasField("params") and request.params != first.params:
            raise InvalidArgument(
                "params differ from the stream's first message",
                field="params",
                fix="send one PutDashboards stream per SAE and parameter set",
            )
        yield (
            first,
            [messages.serialized_dashboard_from_pb(d) for d in request.serialized_dashboards],
        )
