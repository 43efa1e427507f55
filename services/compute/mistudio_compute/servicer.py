"""The ComputeService gRPC adapter: translates messages (``messages``) and delegates.

Long computations live in :class:`~mistudio_compute.jobs.ComputeJobManager`; progress streams
only watch a job, so a client that disconnects leaves it running. Errors are mapped to statuses
by ``handle_errors``, also when raised while a stream is being iterated.
"""

from __future__ import annotations

from collections.abc import Iterator

import grpc
from mistudio.compute.v1 import compute_service_pb2 as cpb
from mistudio.compute.v1 import compute_service_pb2_grpc as cgrpc
from mistudio_common.auth import current_caller
from mistudio_common.grpc_errors import handle_errors

from mistudio_compute import messages
from mistudio_compute.estimate import estimate_computation
from mistudio_compute.jobs import ComputeJobManager, progress_message
from mistudio_compute.object_inputs import check_caller_uploads
from mistudio_compute.planning import Planner
from mistudio_compute.saelens_export import saelens_chunks


class ComputeServicer(cgrpc.ComputeServiceServicer):
    def __init__(self, manager: ComputeJobManager, planner: Planner) -> None:
        self._manager = manager
        self._planner = planner

    @handle_errors
    def ComputeDashboards(
        self, request: cpb.ComputeDashboardsRequest, context: grpc.ServicerContext
    ) -> Iterator[cpb.ComputeProgress]:
        job_id = self._manager.start(messages.computation_request_from_pb(request))
        for snapshot in self._manager.channel(job_id).watch(still_wanted=context.is_active):
            yield progress_message(snapshot)

    @handle_errors
    def WatchComputation(
        self, request: cpb.WatchComputationRequest, context: grpc.ServicerContext
    ) -> Iterator[cpb.ComputeProgress]:
        channel = self._manager.channel(request.job_id)
        for snapshot in channel.watch(still_wanted=context.is_active):
            yield progress_message(snapshot)

    @handle_errors
    def GetComputation(
        self, request: cpb.GetComputationRequest, context: grpc.ServicerContext
    ) -> cpb.GetComputationResponse:
        latest = self._manager.channel(request.job_id).latest
        return cpb.GetComputationResponse(computation=progress_message(latest))

    @handle_errors
    def CancelComputation(
        self, request: cpb.CancelComputationRequest, context: grpc.ServicerContext
    ) -> cpb.CancelComputationResponse:
        return cpb.CancelComputationResponse(state=self._manager.cancel(request.job_id))

    @handle_errors
    def PauseComputation(
        self, request: cpb.PauseComputationRequest, context: grpc.ServicerContext
    ) -> cpb.PauseComputationResponse:
        return cpb.PauseComputationResponse(state=self._manager.pause(request.job_id))

    @handle_errors
    def ValidateSae(
        self, request: cpb.ValidateSaeRequest, context: grpc.ServicerContext
    ) -> cpb.ValidateSaeResponse:
        sae = messages.sae_ref_from_pb(request.sae)
        tokens = messages.validate_tokens_from_pb(request)
        check_caller_uploads(sae, tokens, current_caller())
        check = self._planner.validate(
            sae, request.hook_point, request.model_id, request.device, tokens
        )
        return messages.sae_check_to_pb(check)

    @handle_errors
    def ResolveHookPoint(
        self, request: cpb.ResolveHookPointRequest, context: grpc.ServicerContext
    ) -> cpb.ResolveHookPointResponse:
        kind = messages.hook_kind_from_pb(request.kind)
        hook = self._planner.resolve_hook_point(request.model_id, request.layer, kind)
        return messages.hook_point_to_pb(hook)

    @handle_errors
    def EstimateComputation(
        self, request: cpb.EstimateComputationRequest, context: grpc.ServicerContext
    ) -> cpb.EstimateComputationResponse:
        asked = messages.estimate_request_from_pb(request)
        plan = self._planner.token_plan(asked)
        estimate = estimate_computation(plan, asked.feature_count, self._manager.rates.rates())
        return messages.estimate_to_pb(estimate)

    @handle_errors
    def ExportSaeLensFiles(
        self, request: cpb.ExportSaeLensFilesRequest, context: grpc.ServicerContext
    ) -> Iterator[cpb.ExportSaeLensFilesResponse]:
        resolved = self._planner.resolve_sae(messages.sae_ref_from_pb(request.sae))
        frequencies = list(request.feature_frequencies)
        for name, chunk, last in saelens_chunks(resolved, request.neuronpedia_id, frequencies):
            yield cpb.ExportSaeLensFilesResponse(file_name=name, chunk=chunk, last_chunk=last)
