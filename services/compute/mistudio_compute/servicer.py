"""The ComputeService gRPC adapter: translates messages and delegates.

Long computations live in :class:`~mistudio_compute.jobs.ComputeJobManager`; progress streams
only watch a job, so a client that disconnects leaves it running. Errors are mapped to statuses
by ``handle_errors``, also when raised while a stream is being iterated.
"""

from __future__ import annotations

from collections.abc import Iterator

import grpc
from mistudio.common.v1 import progress_pb2 as ppb
from mistudio.compute.v1 import compute_service_pb2 as cpb
from mistudio.compute.v1 import compute_service_pb2_grpc as cgrpc
from mistudio_common.auth import current_caller
from mistudio_common.grpc_errors import handle_errors

from mistudio_compute.jobs import ComputeJobManager, job_stages, progress_message
from mistudio_compute.object_inputs import check_caller_uploads
from mistudio_compute.planning import Planner
from mistudio_compute.run_dashboards import job_size
from mistudio_compute.saelens_export import saelens_chunks


class ComputeServicer(cgrpc.ComputeServiceServicer):
    def __init__(self, manager: ComputeJobManager, planner: Planner) -> None:
        self._manager = manager
        self._planner = planner

    @handle_errors
    def ComputeDashboards(
        self, request: cpb.ComputeDashboardsRequest, context: grpc.ServicerContext
    ) -> Iterator[cpb.ComputeProgress]:
        job_id = self._manager.start(request)
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
        check_caller_uploads(request.sae, request.tokens, current_caller())
        tokens = request.tokens if request.HasField("tokens") else None
        check = self._planner.validate(
            request.sae, request.hook_point, request.model_id, request.device, tokens
        )
        return cpb.ValidateSaeResponse(
            architecture=check.architecture,
            d_in=check.d_in,
            d_sae=check.d_sae,
            hook_point=check.hook_point,
            model_id=check.model_id,
            hook_width=check.hook_width,
            d_vocab=check.d_vocab,
            warnings=check.warnings,
        )

    @handle_errors
    def ResolveHookPoint(
        self, request: cpb.ResolveHookPointRequest, context: grpc.ServicerContext
    ) -> cpb.ResolveHookPointResponse:
        return self._planner.resolve_hook_point(request.model_id, request.layer, request.kind)

    @handle_errors
    def EstimateComputation(
        self, request: cpb.EstimateComputationRequest, context: grpc.ServicerContext
    ) -> cpb.EstimateComputationResponse:
        plan = self._planner.token_plan(
            request.sae, request.tokens, request.params, request.feature_count, request.batch_size
        )
        tokens = plan.dataset.n_tokens
        features = request.feature_count or plan.d_sae
        size = job_size(tokens, features, plan.params, plan.memory)
        stages, rates = job_stages(plan.params), self._manager.rates.rates()
        predicted = rates.predict(stages, size)
        return cpb.EstimateComputationResponse(
            estimated_seconds=sum(predicted),
            estimated_tokens=tokens,
            rate_source="measured" if rates.all_measured(stages) else "default",
            params=plan.params,
            n_rows=plan.dataset.n_rows,
            context_size=plan.dataset.context_size,
            prepend_bos=plan.dataset.prepend_bos,
            n_layers=plan.n_layers,
            estimated_peak_memory_bytes=plan.memory.peak_bytes,
            stages=[
                ppb.StageEstimate(stage=stage, seconds=seconds)
                for stage, seconds in zip(stages, predicted, strict=True)
            ],
        )

    @handle_errors
    def ExportSaeLensFiles(
        self, request: cpb.ExportSaeLensFilesRequest, context: grpc.ServicerContext
    ) -> Iterator[cpb.ExportSaeLensFilesResponse]:
        resolved = self._planner.resolve_sae(request.sae)
        frequencies = list(request.feature_frequencies)
        for name, chunk, last in saelens_chunks(resolved, request.neuronpedia_id, frequencies):
            yield cpb.ExportSaeLensFilesResponse(file_name=name, chunk=chunk, last_chunk=last)
