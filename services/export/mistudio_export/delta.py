"""Content hashes of exported features, and what an earlier export lets a new one skip.

A feature's hash covers everything the archive says about it: its dashboard (by the cache's
canonical content hash), its label and category, and its explanations. A finished export records
the hash of every feature it wrote in the store, beside its job record (which stays small); a
delta export keeps only the features whose hash changed, and any export copies the files of
unchanged features from an earlier archive written with the same rendering options instead of
regenerating them.
"""

from __future__ import annotations

import hashlib
import zipfile
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from mistudio.common.v1 import dashboard_pb2 as dpb
from mistudio_common import dashboard_codec
from mistudio_common.dashboard_options import Component

from mistudio_export.packaging.archive import verify_archive
from mistudio_export.packaging.safe_extract import check_limits
from mistudio_export.peers import ExportJobRecord, FeatureHashRecords, FeatureRecord
from mistudio_export.plan import ExportPlan
from mistudio_export.records import EXPORT_FORMAT_VERSION, ExplanationRecord


def feature_hash(
    dashboard: dpb.FeatureDashboard,
    record: FeatureRecord | None,
    explanations: Iterable[ExplanationRecord],
) -> str:
    """SHA-256 over the dashboard's content hash, the label, category and explanations."""
    digest = hashlib.sha256(dashboard_codec.content_hash(dashboard).encode())
    if record is not None:
        digest.update(f"\x1flabel={record.label}\x1fcategory={record.category}".encode())
    lines = sorted(
        f"{e.explanation_id}\x1e{e.description}\x1e{e.method}\x1e{e.explainer_model}\x1e{e.score!r}"
        for e in explanations
    )
    for line in lines:
        digest.update(b"\x1f" + line.encode())
    return digest.hexdigest()


def render_key(plan: ExportPlan) -> str:
    """Identifies everything besides a feature's content that shapes its files' bytes."""
    parts = [
        EXPORT_FORMAT_VERSION,
        plan.sae.sae_id,
        dashboard_codec.params_key(plan.params),
        f"gzip={plan.compression.gzip_json}",
        f"auto_fix={plan.auto_fix}",
        plan.naming.neuronpedia_id,
    ]
    if Component.EXPLANATIONS in plan.omitted:  # only then, so earlier exports' keys still match
        parts.append("explanations=omitted")
    return hashlib.sha256("\x1f".join(parts).encode()).hexdigest()


@dataclass(frozen=True)
class EarlierExport:
    """A finished export whose files (and hashes) a new export may reuse."""

    job_id: str
    output_uri: str
    render_key: str
    archive_sha256: str
    """As the job recorded it: the downloaded archive must match."""
    hashes: Mapping[int, str] = field(default_factory=dict)

    @classmethod
    def of(cls, job: ExportJobRecord, records: FeatureHashRecords) -> EarlierExport:
        """The job with the feature hashes the store keeps for its archive."""
        outcome, result = job.outcome, job.result
        recorded = outcome is not None and outcome.feature_hash_count > 0
        return cls(
            job_id=job.job_id,
            output_uri=job.output_uri,
            render_key=outcome.render_key if outcome is not None else "",
            archive_sha256=result.archive_sha256 if result is not None else "",
            hashes=records.feature_hashes(job.job_id) if recorded else {},
        )

    def unchanged(self, index: int, content_hash: str) -> bool:
        return self.hashes.get(index) == content_hash


def archive_problem(path: Path, earlier: EarlierExport) -> str:
    """Why the downloaded archive of ``earlier`` may not be copied from ("" when it may): it
    must be the archive the job recorded (SHA-256), within the archive limits, and match its own
    manifest file by file. The object store is not trusted to hold what the job wrote."""
    if not earlier.archive_sha256:
        return "the job recorded no archive checksum"
    digest = hashlib.sha256()
    with path.open("rb") as f:
        while chunk := f.read(1 << 20):
            digest.update(chunk)
    if digest.hexdigest() != earlier.archive_sha256:
        return "its SHA-256 differs from the one the job recorded"
    try:
        with zipfile.ZipFile(path) as zf:
            over_limit = check_limits(zf)
    except (zipfile.BadZipFile, OSError) as exc:
        return f"not a readable ZIP archive ({type(exc).__name__})"
    if over_limit:
        return over_limit
    integrity = verify_archive(path)
    return "" if integrity.ok else "; ".join(integrity.lines()[:3])


def hashes_to_json(hashes: Mapping[int, str]) -> dict[str, str]:
    return {str(index): value for index, value in sorted(hashes.items())}


def hashes_from_json(data: Any) -> dict[int, str]:
    if not isinstance(data, Mapping):
        return {}
    return {int(index): str(value) for index, value in data.items()}
