"""The deflater behind every byte the export compresses: the archive's ZIP entries and the gzip
files the writers produce. It is Intel ISA-L's (python-isal), at one level.

ISA-L is another DEFLATE encoder than zlib: its output is equally standard (zipfile, ``unzip``,
``gzip.decompress`` and Node's zlib read it) but not the same bytes. Byte-identical output holds
for one build, as it did with zlib, and, unlike zlib's, for one way of cutting a stream into
``compress`` calls: whoever streams must feed fixed-size chunks (the archive feeds CHUNK_SIZE).
"""

from __future__ import annotations

import isal
from isal import igzip, isal_zlib

LEVEL = 1
"""ISA-L's level 1, for every file. On the 4096-feature bench export (CPU s, min of 3 to 7 runs)
the 251 MB of JSON the archive deflates take 0.44 s for 63.4 MB (zlib's level 1: 1.9 s, 66.6 MB);
the importer's 146 MB of rows gzip in 0.14 s for 23.0 MB (zlib 1: 0.92 s, 24.0 MB); the 106 MB
of PRD feature files, when gzipped, in 0.24 s for 32.7 MB (zlib 6: 2.5 s, 29.9 MB). Level 2
costs 6% more for 0.7% less, level 3 twice as much for 3% less; level 0 writes 8% more than
zlib's level 1."""

IDENTITY = f"isal {isal.__version__} level {LEVEL}"
"""What the compressed bytes depend on besides the data: the build and the level."""

_RAW = -15
"""wbits for DEFLATE without zlib or gzip framing: what a ZIP entry holds."""

Deflater = isal_zlib.Compress

crc32 = isal_zlib.crc32
"""zlib's CRC-32 (the one ZIP and gzip carry), computed by ISA-L about ten times faster."""


def raw_deflater() -> Deflater:
    """A streaming compressor of raw DEFLATE, as a ZIP entry holds it."""
    return isal_zlib.compressobj(LEVEL, isal_zlib.DEFLATED, _RAW)


def gzip_bytes(data: bytes) -> bytes:
    """One gzip member with mtime 0 and no file name, so equal data gives equal bytes."""
    return igzip.compress(data, LEVEL, mtime=0)
