"""Export job records: idempotent create, masked updates, newest-first listing.

The store only keeps the record; the export service runs the job and writes its state,
progress and checkpoint here, so a restarted export service can find and resume its jobs.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterable, Sequence
from datetime import datetime, timedelta
from typing import Any, cast

from mistudio.common.v1 import progress_pb2
from mistudio.store.v1 import store_service_pb2 as pb
from mistudio_common.errors import AlreadyExists, FailedPrecondition, InvalidArgument, NotFound
from mistudio_common.repeated_requests import differing_fields, refuse_a_different_request
from sqlalchemy import CursorResult, Select, or_, select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from mistudio_store import convert, validation
from mistudio_store.base import RepositoryBase
from mistudio_store.db.models import ExportJobRow, SaeRow
from mistudio_store.db.statements import before
from mistudio_store.pagination import Page, scope_of

MAX_LEASE_SECONDS = 3600.0
"""Longest lease one claim grants: a holder that stops renewing frees its jobs within this."""
_STOPPABLE = frozenset({progress_pb2.JOB_STATE_QUEUED, progress_pb2.JOB_STATE_RUNNING})
"""States a pause or cancel can be requested in (a request for the holder to act on)."""
_REQUESTS = frozenset({progress_pb2.JOB_STATE_PAUSED, progress_pb2.JOB_STATE_CANCELLED})
_CANCEL = convert.enum_name(progress_pb2.JobState, progress_pb2.JOB_STATE_CANCELLED)
FINAL_STATES = frozenset({progress_pb2.JOB_STATE_SUCCEEDED, progress_pb2.JOB_STATE_CANCELLED})
"""States a job never leaves. FAILED is not one: a failed export may resume from its checkpoint."""


class ExportJobs(RepositoryBase):
    def create_export_job(self, job: pb.ExportJob) -> tuple[pb.ExportJob, bool]:
        """Stores a new job; returns (job, created). created is False when the same request was
        stored already under this (sae_id, request_id): that job is returned (a retried start).
        The job's SAE is ``sae_owner``'s of ``sae_id`` (ids are unique per owner).
        The same request_id with another owner or config is ALREADY_EXISTS naming what differs."""
        if job.job_id:
            validation.job_id(job.job_id, "job.job_id")
        if job.state:
            job_states([job.state], "job.state")
        validation.max_length(job.owner, 128, "job.owner")
        validation.max_length(job.request_id, 128, "job.request_id")
        try:
            with self._sessions.write.begin() as session:
                sae = self._sae(session, job.sae_id, job.sae_owner or None, "job.sae_id")
                existing = self._by_request(session, sae.id, job.request_id)
                if existing is not None:
                    return _same_request(
                        convert.job_to_pb(existing, sae.sae_id, sae.owner), job
                    ), False
                if job.job_id and session.get(ExportJobRow, job.job_id) is not None:
                    raise _duplicate_job(job.job_id)
                row = _new_row(job, sae.id)
                session.add(row)
                session.flush()
                return convert.job_to_pb(row, sae.sae_id, sae.owner), True
        except IntegrityError as error:  # lost a race with an identical create
            with self._sessions.read() as session:
                sae = self._sae(session, job.sae_id, job.sae_owner or None, "job.sae_id")
                existing = self._by_request(session, sae.id, job.request_id)
                if existing is None:
                    raise _duplicate_job(job.job_id) from error
                return _same_request(convert.job_to_pb(existing, sae.sae_id, sae.owner), job), False

    def get_export_job(self, job_id: str) -> pb.ExportJob:
        validation.job_id(job_id)
        with self._sessions.read() as session:
            row, sae_id, sae_owner = _job(session, job_id)
            return convert.job_to_pb(row, sae_id, sae_owner)

    def update_export_job(self, job: pb.ExportJob, update_mask: Sequence[str]) -> pb.ExportJob:
        """Writes only the masked fields. A succeeded or cancelled job cannot change state; a
        stop is requested (``requested_state``) only of a queued or running job."""
        validation.job_id(job.job_id, "job.job_id")
        paths = validation.update_mask(update_mask)
        if "state" in paths:
            job_states([job.state], "job.state")
        validation.max_length(job.owner, 128, "job.owner")
        with self._sessions.write.begin() as session:
            row, sae_id, sae_owner = _job(session, job.job_id, for_update=True)
            current = convert.enum_value(progress_pb2.JobState, row.state)
            if "state" in paths and current in FINAL_STATES and job.state != current:
                raise FailedPrecondition(
                    f"job {job.job_id} is {row.state} and cannot become "
                    f"{convert.enum_name(progress_pb2.JobState, job.state)}",
                    violations=[("job.state", f"the job already finished ({row.state})")],
                    field="job.state",
                    fix="start a new job (with a new request_id) to run the export again",
                )
            if "requested_state" in paths:
                _check_request(job, current)
                if row.requested_state == _CANCEL:  # a cancel overrides a pause
                    paths = [p for p in paths if p != "requested_state"]
            for path in paths:
                setattr(row, path, convert.job_column_value(job, path))
            if "state" in paths and job.state not in _STOPPABLE:
                row.requested_state = ""  # the job stopped: nothing is left to ask of it
            if "progress" in paths:
                stage = job.progress.stage if job.HasField("progress") else 0
                row.stage = convert.enum_name(progress_pb2.Stage, stage)
            row.updated_at = convert.now()
            session.flush()
            return convert.job_to_pb(row, sae_id, sae_owner)

    def claim_export_job(
        self, job_id: str, holder: str, lease_seconds: float
    ) -> tuple[pb.ExportJob, bool]:
        """Gives ``holder`` the job's lease for ``lease_seconds`` (by this store's clock) when
        the job is unfinished and nobody else holds a live lease; 0 gives ``holder``'s lease back.
        One conditional UPDATE, so two instances racing for a job cannot both win."""
        validation.job_id(job_id)
        validation.max_length(holder, 64, "holder")
        if not holder or not 0.0 <= lease_seconds <= MAX_LEASE_SECONDS:
            raise InvalidArgument(
                f"holder {holder!r} with lease_seconds {lease_seconds} cannot claim a job",
                field="lease_seconds" if holder else "holder",
                fix=f"name the instance and ask for 0..{MAX_LEASE_SECONDS:.0f} seconds",
            )
        at = convert.now()
        rows = update(ExportJobRow).where(ExportJobRow.job_id == job_id)
        if lease_seconds == 0.0:
            rows = rows.where(ExportJobRow.holder == holder)
            rows = rows.values(holder="", lease_expires_at=None)
        else:
            finished = [convert.enum_name(progress_pb2.JobState, s) for s in FINAL_STATES]
            free = or_(
                ExportJobRow.holder == "",
                ExportJobRow.holder == holder,
                ExportJobRow.lease_expires_at.is_(None),
                ExportJobRow.lease_expires_at < at,
            )
            rows = rows.where(ExportJobRow.state.not_in(finished), free)
            rows = rows.values(
                holder=holder, lease_expires_at=at + timedelta(seconds=lease_seconds)
            )
        with self._sessions.write.begin() as session:
            claimed = cast(CursorResult[Any], session.execute(rows)).rowcount == 1
            return convert.job_to_pb(*_job(session, job_id)), claimed

    def delete_export_job(self, job_id: str) -> None:
        validation.job_id(job_id)
        with self._sessions.write.begin() as session:
            row, _, _ = _job(session, job_id, for_update=True)
            session.delete(row)

    def list_export_jobs(
        self,
        page_size: int = 0,
        page_token: str = "",
        *,
        sae_id: str = "",
        owner: str = "",
        states: Sequence[int] = (),
        sae_owner: str = "",
        finished_before: datetime | None = None,
    ) -> Page[pb.ExportJob]:
        """Newest first; an empty filter matches everything (``sae_owner``: the SAE's owner;
        ``finished_before``: jobs that ended before then)."""
        if sae_id:
            validation.sae_id(sae_id)
        job_states(states)
        wanted = sorted({convert.enum_name(progress_pb2.JobState, s) for s in states})
        scope = scope_of("jobs", sae_id, owner, wanted, sae_owner, finished_before)
        page = self._page(page_size, page_token, scope, (datetime, str))
        order = (ExportJobRow.created_at, ExportJobRow.job_id)
        query: Select[ExportJobRow, str, str] = select(
            ExportJobRow, SaeRow.sae_id, SaeRow.owner
        ).join(SaeRow)
        if sae_id:
            query = query.where(SaeRow.sae_id == sae_id)
        if sae_owner:
            query = query.where(SaeRow.owner == sae_owner)
        if owner:
            query = query.where(ExportJobRow.owner == owner)
        if wanted:
            query = query.where(ExportJobRow.state.in_(wanted))
        if finished_before is not None:
            query = query.where(ExportJobRow.finished_at < finished_before)
        if page.after:
            query = query.where(before(order, page.after))
        query = query.order_by(*(c.desc() for c in order)).limit(page.limit)
        with self._sessions.read() as session:
            return page.finish_within_bytes(
                session.execute(query).all(),
                lambda r: [convert.utc(r[0].created_at), r[0].job_id],
                lambda found: convert.job_to_pb(*found),
            )

    @staticmethod
    def _by_request(session: Session, sae_pk: int, request_id: str) -> ExportJobRow | None:
        if not request_id:
            return None
        query = select(ExportJobRow).where(
            ExportJobRow.sae_pk == sae_pk, ExportJobRow.request_id == request_id
        )
        return session.scalars(query).one_or_none()


def _check_request(job: pb.ExportJob, current: int) -> None:
    name = convert.enum_name(progress_pb2.JobState, current)
    if job.requested_state not in _REQUESTS:
        raise InvalidArgument(
            f"requested_state {job.requested_state} is not a state a job can be asked to reach",
            field="job.requested_state",
            fix="request JOB_STATE_PAUSED or JOB_STATE_CANCELLED",
        )
    if current not in _STOPPABLE:
        raise FailedPrecondition(
            f"job {job.job_id} is {name}; only a queued or running job can be asked to stop",
            violations=[("job.requested_state", f"the job is {name}")],
            field="job.requested_state",
            fix="read the job again: it stopped already",
        )


def _new_row(job: pb.ExportJob, sae_pk: int) -> ExportJobRow:
    at = convert.now()
    state = job.state or progress_pb2.JOB_STATE_QUEUED
    return ExportJobRow(
        job_id=job.job_id or uuid.uuid4().hex,
        sae_pk=sae_pk,
        owner=job.owner,
        request_id=job.request_id or None,
        config=convert.job_column_value(job, "config"),
        state=convert.enum_name(progress_pb2.JobState, state),
        stage=convert.enum_name(progress_pb2.Stage, job.progress.stage),
        progress=convert.job_column_value(job, "progress"),
        output_uri=job.output_uri,
        output_size_bytes=job.output_size_bytes,
        feature_count=job.feature_count,
        error_message=job.error_message,
        error_details=convert.job_column_value(job, "error_details"),
        resume=convert.job_column_value(job, "resume"),
        outcome=convert.job_column_value(job, "outcome"),
        created_at=at,
        started_at=convert.from_timestamp(job, "started_at"),
        finished_at=convert.from_timestamp(job, "finished_at"),
        updated_at=at,
        holder=job.holder,
        lease_expires_at=convert.from_timestamp(job, "lease_expires_at"),
    )


def _job(session: Session, job_id: str, for_update: bool = False) -> tuple[ExportJobRow, str, str]:
    """The job row with its SAE's (sae_id, owner)."""
    query = (
        select(ExportJobRow, SaeRow.sae_id, SaeRow.owner)
        .join(SaeRow)
        .where(ExportJobRow.job_id == job_id)
    )
    if for_update:
        query = query.with_for_update(of=ExportJobRow)
    found = session.execute(query).one_or_none()
    if found is None:
        raise job_not_found(job_id)
    return found


def job_not_found(job_id: str) -> NotFound:
    return NotFound(
        f"no export job with id {job_id!r}",
        resource_type="mistudio.store.v1.ExportJob",
        resource_name=job_id,
        fix="list jobs with ListExportJobs",
    )


def _same_request(stored: pb.ExportJob, asked: pb.ExportJob) -> pb.ExportJob:
    """The stored job when ``asked`` repeats its request; ALREADY_EXISTS naming the differences
    otherwise (a reused request_id must not silently return someone else's job)."""
    differences = ["job.owner"] if stored.owner != asked.owner else []
    differences += differing_fields(stored.config, asked.config, "job.config")
    refuse_a_different_request(asked.request_id, stored.job_id, differences, field="job.request_id")
    return stored


def _duplicate_job(job_id: str) -> AlreadyExists:
    return AlreadyExists(
        f"an export job with id {job_id!r} already exists",
        field="job.job_id",
        fix="leave job_id empty to have the store assign one, or reuse the request_id",
    )


def job_states(states: Iterable[int], field: str = "states") -> None:
    for i, state in enumerate(states):
        if state == 0 or state not in progress_pb2.JobState.values():
            raise InvalidArgument(
                f"job state {state} is unspecified or unknown",
                field=f"{field}[{i}]",
                fix="use QUEUED, RUNNING, PAUSED, SUCCEEDED, FAILED or CANCELLED",
            )
