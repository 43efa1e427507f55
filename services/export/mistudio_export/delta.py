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
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from mistudio_common import dashboard_codec
from mistudio_common.dashboard_options import Component

from mistudio_export import deflate
from mistudio_export.packaging.archive import verify_archive
from mistudio_export.packaging.safe_extract import check_limits
from mistudio_export.peers import ExportJobRecord, FeatureHashRecords, FeatureRecord
from mistudio_export.plan import ExportPlan
from mistudio_export.records import EXPORT_FORMAT_VERSION, ExplanationRecord


def feature_hash(
    content_hash: str,
    record: FeatureRecord | None,
    explanations: Iterable[ExplanationRecord],
) -> str:
    """SHA-256 over the dashboard's content hash (``dashboard_codec.content_hash``), the label,
    category and explanations."""
    digest = hashlib.sha256(content_hash.encode())
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
        f"gzip={plan.gzip_json}",
        f"auto_fix={plan.auto_fix}",
        plan.naming.neuronpedia_id,
    ]
    if Component.EXPLANATIONS in plan.omitted:  # only then, so earlier exports' keys still match
        parts.append("explanations=omitted")
    if plan.gzip_json:  # gzipped feature files are the deflater's bytes; plain ones are not
        parts.append(f"deflater={deflate.IDENTITY}")
    return hashlib.sha256("\x1f".join(parts).encode()).hexdigest()


_DIGEST_BYTES = 32


class FeatureHashes(Mapping[int, str]):
    """Content hashes (``feature_hash``) by feature index in two sorted columns: 40 bytes a
    feature where a dict of hex strings took about 200, in the export's process and in the one
    writing formats aside (which gets a pickled copy)."""

    def __init__(self, indices: np.ndarray, digests: np.ndarray) -> None:
        order = np.argsort(indices, kind="stable")
        self._indices = indices[order]  # [features], sorted
        self._digests = digests[order]  # [features, 32]
        if np.any(self._indices[1:] == self._indices[:-1]):
            raise ValueError("a feature index is given two hashes")

    @classmethod
    def of(cls, hashes: Mapping[int, str]) -> FeatureHashes:
        try:
            raw = b"".join(bytes.fromhex(h) for h in hashes.values())
        except ValueError:
            raw = b""
        if len(raw) != _DIGEST_BYTES * len(hashes):  # hexdigest() is lowercase: it round-trips
            raise ValueError("feature hashes are SHA-256 digests in hex")
        indices = np.fromiter(hashes.keys(), dtype=np.int64, count=len(hashes))
        return cls(indices, np.frombuffer(raw, dtype=np.uint8).reshape(-1, _DIGEST_BYTES))

    @classmethod
    def joined(cls, parts: Iterable[FeatureHashes]) -> FeatureHashes:
        parts = [FeatureHashes.of({}), *parts]
        indices = np.concatenate([p._indices for p in parts])
        return cls(indices, np.concatenate([p._digests for p in parts]))

    def __getitem__(self, index: int) -> str:
        at = self._position(index)
        if at is None:
            raise KeyError(index)
        return self._digests[at].tobytes().hex()

    def __contains__(self, index: object) -> bool:
        return self._position(index) is not None

    def _position(self, index: object) -> int | None:
        if not isinstance(index, int) or not -(2**63) <= index < 2**63:
            return None
        at = int(np.searchsorted(self._indices, index))
        return at if at < len(self._indices) and self._indices[at] == index else None

    def __iter__(self) -> Iterator[int]:
        return iter(self._indices.tolist())

    def __len__(self) -> int:
        return len(self._indices)


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
