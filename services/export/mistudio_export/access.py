"""Which SAEs and export jobs a caller may see: its own; admins and services see all.

Anything else is reported exactly as a missing one would be, so a caller learns nothing about
what other identities hold. The export service calls the store as a service identity, so the
check happens here, before a job or SAE is used on the caller's behalf.
"""

from __future__ import annotations

from typing import Protocol

from mistudio_common.auth import Identity, can_see, owner_for, sae_owner
from mistudio_common.errors import InvalidArgument, NotFound
from mistudio_common.uploaded_inputs import check_owner, is_object_uri, parse_input_uri

from mistudio_export.peers import ExportJobRecord, SaeRecord


class Records(Protocol):
    def get_sae(self, sae_id: str, owner: str = "") -> SaeRecord: ...

    def get_job(self, job_id: str) -> ExportJobRecord: ...


def job_not_found(job_id: str) -> NotFound:
    """The same error the store gives for an unknown job id."""
    return NotFound(
        f"no export job with id {job_id!r}",
        resource_type="mistudio.store.v1.ExportJob",
        resource_name=job_id,
        fix="list jobs with ListExportJobs",
    )


def sae_not_found(sae_id: str) -> NotFound:
    """The same error the store gives for an unknown SAE id."""
    return NotFound(
        f"no SAE with id {sae_id!r}",
        resource_type="mistudio.store.v1.Sae",
        resource_name=sae_id,
        fix="create it with CreateSae, or list stored SAEs with ListSaes",
    )


class Access:
    def __init__(self, records: Records) -> None:
        self._records = records

    def job(self, job_id: str, caller: Identity) -> ExportJobRecord:
        """The job, when the caller may see it; NOT_FOUND otherwise."""
        job = self._records.get_job(job_id)
        if not can_see(job.owner, caller):
            raise job_not_found(job_id)
        return job

    def sae(self, sae_id: str, owner: str, caller: Identity) -> SaeRecord:
        """The SAE ``sae_id`` of ``owner`` (a user's: always its own, as ids are unique per
        owner), when the caller may use it; NOT_FOUND otherwise."""
        if not sae_id:
            raise InvalidArgument("sae_id is empty", field="sae_id", fix="name a registered SAE")
        sae = self._records.get_sae(sae_id, sae_owner(owner, caller) or "")
        if not can_see(sae.owner, caller):
            raise sae_not_found(sae_id)
        return sae


def check_uploaded_weights(sae: SaeRecord) -> None:
    """An SAE registered on an upload must be its owner's upload (NOT_FOUND otherwise, as for
    a missing one); compute checks the same before it reads the weights."""
    if is_object_uri(sae.weights_uri):
        check_owner(parse_input_uri(sae.weights_uri, "weights_uri"), sae.owner, "weights_uri")


def check_uploaded_tokens(token_file: str, caller: Identity, field: str) -> None:
    """An uploaded token file is usable only by its uploader (and admins and services): another
    owner's upload is NOT_FOUND, as a missing one. Paths are compute's to confine. ``field``
    names the token source in the request."""
    if is_object_uri(token_file) and not caller.sees_everything:
        name = f"{field}.token_file"
        check_owner(parse_input_uri(token_file, name), caller.name, name)


def list_owner(requested: str, caller: Identity) -> str:
    """The owner filter of a listing: a user's is always itself (naming another is refused)."""
    return requested if caller.sees_everything else owner_for(requested, caller)
