"""The checks an export passes before a job exists: the SAE record, the options, the peers.

Errors here reach the client at creation (INVALID_ARGUMENT, NOT_FOUND, FAILED_PRECONDITION);
anything later arrives in the job's progress stream instead.
"""

from __future__ import annotations

from mistudio.common.v1 import progress_pb2 as ppb
from mistudio_common.errors import (
    FailedPrecondition,
    InvalidArgument,
    MistudioError,
    NotFound,
    Unavailable,
)

from mistudio_export.limits import check_name_length
from mistudio_export.options import ExportOptions
from mistudio_export.packaging import ExportFormat
from mistudio_export.peers import ExportJobRecord, PlanningCompute, PlanningStore
from mistudio_export.plan import ExportPlan, build_plan, check_preconditions
from mistudio_export.selection import most_selected, require_candidates
from mistudio_export.token_facts import token_facts

_REQUEST_FIELDS = ("tokens", "device")
"""Fields of compute's answer that name this request's options (as config.<field>)."""


def _in_config(error: MistudioError) -> MistudioError:
    """Compute's error about the tokens or device, naming the export request's field."""
    field = f"config.{error.field}"
    if isinstance(error, FailedPrecondition):
        return FailedPrecondition(
            error.message, violations=[(field, error.message)], field=field, fix=error.fix
        )
    return InvalidArgument(error.message, field=field, fix=error.fix)


class Planner:
    """Builds plans from store records and asks compute whether the SAE can be loaded."""

    def __init__(self, store: PlanningStore, compute: PlanningCompute) -> None:
        self._store = store
        self._compute = compute

    def plan(self, sae_id: str, options: ExportOptions, owner: str) -> ExportPlan:
        if not sae_id:
            raise InvalidArgument("sae_id is empty", field="sae_id", fix="name a registered SAE")
        check_name_length("sae_id", sae_id)
        check_name_length("owner", owner)
        sae = self._store.get_sae(sae_id, owner)  # a job exports its owner's SAE
        return build_plan(sae, options, owner)

    def check(self, plan: ExportPlan) -> list[str]:
        """Raises FailedPrecondition listing what the SAE lacks; returns compute's warnings."""
        if plan.delta_base_job_id:
            self.base_job(plan)
        problems: list[tuple[str, str]] = []
        warnings: list[str] = []
        if plan.sae.weights_uri:
            try:
                warnings += self._compute.validate_sae(plan.sae, plan.tokens, plan.device)
            except Unavailable:
                raise
            except MistudioError as error:
                if error.field.startswith(_REQUEST_FIELDS):
                    raise _in_config(error) from None
                problems.append((error.field or "weights_uri", str(error)))
        if plan.selection.label_filtered:
            require_candidates(
                plan.selection,
                plan.sae.d_sae,
                lambda wanted: self._store.features(plan.sae.sae_id, wanted, plan.sae.owner),
            )
        if plan.neuronpedia and plan.tokens is not None and plan.sae.weights_uri and not problems:
            try:
                count = most_selected(plan.selection, plan.sae.d_sae)
                token_facts(self._compute, plan.sae, plan.tokens, plan.params, feature_count=count)
            except FailedPrecondition as error:
                problems += error.violations
        check_preconditions(plan, problems)
        return warnings

    def base_job(self, plan: ExportPlan) -> ExportJobRecord:
        """The finished export a delta export compares against."""
        field = "config.delta_base_job_id"
        try:
            base = self._store.get_job(plan.delta_base_job_id)
        except NotFound:
            raise missing_delta_base(plan.delta_base_job_id) from None
        if base.owner != plan.owner:  # another owner's export reads as missing, at this same step
            raise missing_delta_base(plan.delta_base_job_id)
        problems = []
        if (base.sae_id, base.sae_owner) != (plan.sae.sae_id, plan.sae.owner):
            problems.append((field, f"the base export is of SAE {base.sae_id!r}, not this one"))
        if base.state != ppb.JOB_STATE_SUCCEEDED:
            problems.append((field, "the base export has not succeeded: finish or redo it first"))
        if ExportFormat.NEURONPEDIA not in base.formats:
            problems.append((field, "the base export has no Neuronpedia dashboards to compare"))
        if problems:
            raise FailedPrecondition(
                f"export {plan.delta_base_job_id!r} cannot be the base of a delta export",
                violations=problems,
                field=field,
                fix=problems[0][1],
            )
        return base


def missing_delta_base(job_id: str) -> NotFound:
    """A delta base that does not exist, or that the caller may not see (the same words)."""
    return NotFound(
        f"delta base export {job_id!r} does not exist",
        resource_type="export job",
        resource_name="config.delta_base_job_id",
        fix="pass the job_id of an earlier finished export of this SAE",
    )
