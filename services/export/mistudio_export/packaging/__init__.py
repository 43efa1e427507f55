"""Turning a finished staging folder into the archive a user downloads: ZIP, manifest, README."""

from mistudio_export.packaging.archive import (
    ArchiveResult,
    Compression,
    CorruptFile,
    VerifyReport,
    build_archive,
    verify_archive,
)
from mistudio_export.packaging.format_notes import EVERY_FORMAT, ExportFormat, FormatKind
from mistudio_export.packaging.manifest import (
    ARCHIVE_FORMAT_VERSION,
    MANIFEST_NAME,
    Manifest,
    ManifestEntry,
)
from mistudio_export.packaging.readme import (
    PREFILL_NAME,
    README_NAME,
    ArchiveFacts,
    IncludedFormat,
    prefill_json,
    pretrained_saes_entry,
    render_readme,
    write_archive_docs,
)

__all__ = [
    "ARCHIVE_FORMAT_VERSION",
    "EVERY_FORMAT",
    "MANIFEST_NAME",
    "PREFILL_NAME",
    "README_NAME",
    "ArchiveFacts",
    "ArchiveResult",
    "Compression",
    "CorruptFile",
    "ExportFormat",
    "FormatKind",
    "IncludedFormat",
    "Manifest",
    "ManifestEntry",
    "VerifyReport",
    "build_archive",
    "prefill_json",
    "pretrained_saes_entry",
    "render_readme",
    "verify_archive",
    "write_archive_docs",
]
