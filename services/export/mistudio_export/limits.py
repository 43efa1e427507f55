"""Every bound the export service puts on what it is sent or reads, in one place.

README's "Limits and inputs" lists them; the request bounds are checked where a request enters
(``plan.check_request_limits``), the archive and JSON bounds wherever an archive or a folder is
validated or an earlier archive is reused.
"""

from __future__ import annotations

from dataclasses import dataclass

_MIB = 1 << 20
_GIB = 1 << 30

MAX_NAME_CHARS = 256
"""Names and ids in a request: dataset_name, release_title, creator, np_model_id, owner, …"""
MAX_FEATURES_LISTED = 100_000
"""Indices in an explicit feature list (a range or "all" selects any number)."""
MAX_REQUEST_BYTES = 4 * _MIB
"""gRPC's default receive limit, which every service keeps."""

MAX_JSON_DEPTH = 64
"""Nesting of a JSON document being validated; export formats nest fewer than 10 levels."""
MAX_NUMBER_CHARS = 64
"""Characters of one JSON number; longer ones are not numbers any reader can hold."""


@dataclass(frozen=True)
class ArchiveLimits:
    """What an archive may expand to before anything is extracted (sizes as declared, which
    ``zipfile`` also enforces while reading)."""

    max_total_bytes: int = 64 * _GIB
    max_entry_bytes: int = 2 * _GIB
    """Also the limit for one file of an export folder."""
    max_entries: int = 2_000_000
    max_ratio: float = 200.0
    """Uncompressed / compressed size of an entry; export JSON deflates about 10:1."""
    ratio_min_bytes: int = _MIB
    """Entries smaller than this are not ratio-checked (tiny files compress unevenly)."""


ARCHIVE_LIMITS = ArchiveLimits()
