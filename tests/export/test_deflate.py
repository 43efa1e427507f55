"""The export's deflater: ISA-L's, at one level, making gzip that every reader takes."""

from __future__ import annotations

import gzip
import json
import zlib

from isal import isal_zlib
from mistudio_export import deflate
from mistudio_export.formats import jsonio

ROWS = b"".join(
    json.dumps({"index": i, "values": [i / 7, i / 3], "tokens": ["the", f"t{i}"]}).encode() + b"\n"
    for i in range(2000)
)


def _raw_zlib_level_1(data: bytes) -> bytes:
    compressor = zlib.compressobj(1, zlib.DEFLATED, -15)
    return compressor.compress(data) + compressor.flush()


def test_gzip_is_byte_identical_for_equal_data() -> None:
    assert deflate.gzip_bytes(ROWS) == deflate.gzip_bytes(ROWS)


def test_gzip_header_has_zero_mtime_and_no_file_name() -> None:
    header = deflate.gzip_bytes(b"x")[:10]
    assert header[:3] == b"\x1f\x8b\x08"  # gzip, deflate
    assert header[3] == 0  # no flags: no file name, comment or extra field
    assert header[4:8] == b"\x00\x00\x00\x00"


def test_gzip_is_one_member_that_gzip_and_the_validator_s_inflater_read() -> None:
    packed = deflate.gzip_bytes(ROWS)
    inflater = zlib.decompressobj(wbits=31)  # as validation.context reads .gz files

    assert inflater.decompress(packed) == ROWS
    assert inflater.eof and inflater.unused_data == b""
    assert gzip.decompress(packed) == ROWS


def test_gzip_body_is_isa_l_s_deflate_not_zlib_s() -> None:
    body = deflate.gzip_bytes(ROWS)[10:-8]  # past the header, before CRC-32 and size

    assert isal_zlib.decompress(body, wbits=-15) == ROWS
    assert body != _raw_zlib_level_1(ROWS)


def test_raw_deflater_is_isa_l_s_at_the_export_s_level() -> None:
    ours = deflate.raw_deflater()
    isa_l = isal_zlib.compressobj(deflate.LEVEL, isal_zlib.DEFLATED, -15)

    deflated = ours.compress(ROWS) + ours.flush()

    assert deflated == isa_l.compress(ROWS) + isa_l.flush()
    assert deflated != _raw_zlib_level_1(ROWS)


def test_crc32_is_zlib_s() -> None:
    assert deflate.crc32(ROWS) == zlib.crc32(ROWS)
    assert deflate.crc32(ROWS[1000:], deflate.crc32(ROWS[:1000])) == zlib.crc32(ROWS)


def test_documents_named_gz_are_written_with_the_export_s_gzip(tmp_path) -> None:
    path = tmp_path / "batch-0.jsonl.gz"
    jsonio.write_document(path, ROWS)

    assert path.read_bytes() == deflate.gzip_bytes(ROWS)
