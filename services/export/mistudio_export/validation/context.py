"""Where checks report to: one session per validation run, one context per file.

A check reports a problem with an optional ``repair``. When fixing, the repair runs at once (so
later checks see the repaired document), is recorded as a Change, and marks the file for
rewriting; otherwise the problem is recorded, flagged as fixable when a repair exists.
"""

from __future__ import annotations

import gzip
import json
import os
import re
import stat
import zlib
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Generic

import msgspec
import orjson

from mistudio_export.formats import jsonio
from mistudio_export.limits import ARCHIVE_LIMITS, MAX_JSON_DEPTH, MAX_NUMBER_CHARS
from mistudio_export.validation.outline import T, outline
from mistudio_export.validation.report import PROBLEM_CLASSES, Change, Problem, Severity

Repair = Callable[[], str]
"""Performs the repair in place and describes it."""
SUSPECT = re.compile("[\x00-\x08\x0b\x0c\x0e-\x1f\x7f-\x9f\ud800-\udfff\ufffd]")
"""Characters the text checks report: controls, lone surrogates, U+FFFD."""
_SUSPECT_ESCAPE = re.compile(r"\\[ubf]")
"""A JSON escape that may decode to a suspect character (searched apart: twice as fast)."""
_CONTROL_BYTES = bytes([*range(0x09), 0x0B, 0x0C, *range(0x0E, 0x20), 0x7F])
_OTHER_BYTES = bytes(b for b in range(256) if b not in _CONTROL_BYTES)
_C1_CONTROL = re.compile(rb"\xc2[\x80-\x9f]")
_ESCAPE_BYTES = re.compile(rb"\\[ubf]")
_LEAD_STEPS = 100_000
"""Lead bytes looked at one by one before a regex searches the rest (a hostile file may be
all backslashes; the writers' files hold a few thousand per MB at most)."""


def suspect_bytes(data: bytes) -> bool:
    """Whether valid UTF-8 ``data`` may hold what SUSPECT or a suspect escape finds in its text,
    searched without decoding: controls are single bytes, U+0080-U+009F start with C2, U+FFFD is
    EF BF BD, and no valid UTF-8 holds a lone surrogate (byte searches, faster than a regex)."""
    if data.translate(None, _OTHER_BYTES):
        return True
    if b"\xef" in data and b"\xef\xbf\xbd" in data:
        return True
    return _pair_in(data, _ESCAPE_BYTES, b"\\", b"ubf") or _pair_in(
        data, _C1_CONTROL, b"\xc2", bytes(range(0x80, 0xA0))
    )


def _pair_in(data: bytes, pattern: re.Pattern[bytes], lead: bytes, seconds: bytes) -> bool:
    """Whether ``pattern``, ``lead`` then a byte of ``seconds``, occurs in ``data``: the byte
    after each ``lead`` is looked at, found at memchr speed where ``lead`` is rare (three
    substring searches took five times as long); past ``_LEAD_STEPS`` the regex goes on."""
    at = data.find(lead)
    for _ in range(_LEAD_STEPS):
        if at < 0:
            return False
        if at + 1 < len(data) and data[at + 1] in seconds:
            return True
        at = data.find(lead, at + 1)
    return at >= 0 and pattern.search(data, at) is not None


@dataclass
class Session:
    root: Path
    fix: bool
    max_file_bytes: int = ARCHIVE_LIMITS.max_entry_bytes
    columns_checked: bool = False
    """The files were written by this export from column batches that ``column_checks`` found
    clean: a file whose bytes are strict, clean JSON needs no per-value checks."""
    walk_features: frozenset[int] = frozenset()
    """Features whose PRD files get the per-value checks all the same."""
    problems: list[Problem] = field(default_factory=list)
    changes: list[Change] = field(default_factory=list)
    files_checked: int = 0
    _real_folders: dict[str, str] = field(default_factory=dict, repr=False)

    def real_path(self, path: str | Path) -> str:
        """``os.path.realpath(path)``, each folder resolved once per session: an export's
        thousands of files share a few folders, and resolving every component of each file's
        path again was a tenth of the PRD checks. Only the file's own name is looked at anew
        (a link there is resolved in full)."""
        folder, name = os.path.split(path)
        if name in ("", ".", ".."):
            return os.path.realpath(path)
        joined = os.path.join(self.real_folder(folder), name)
        return os.path.realpath(joined) if os.path.islink(joined) else joined

    def real_folder(self, folder: str | Path) -> str:
        """``os.path.realpath(folder)``, resolved once per session."""
        key = os.fspath(folder)
        real = self._real_folders.get(key)
        if real is None:
            real = self._real_folders[key] = os.path.realpath(key)
        return real

    def context(self, path: Path, *, reading: bool = True) -> FileContext:
        """A context for problems of ``path``; ``reading`` counts it as a checked file."""
        self.files_checked += reading
        return FileContext(self, relative(self.root, path))


def relative(root: Path, path: Path) -> str:
    """``path`` below ``root`` as a POSIX path, else all of it; a file under the root is cut
    from its text (pathlib's ``relative_to`` and ``is_relative_to``, parsing both paths again,
    were a tenth of reading a PRD feature file)."""
    text, prefix = str(path), f"{root}{os.sep}"
    if text.startswith(prefix) and len(text) > len(prefix):
        return text[len(prefix) :]
    try:
        return path.relative_to(root).as_posix()
    except ValueError:
        return path.as_posix()


@dataclass
class FileContext:
    session: Session
    file: str
    line: int | None = None
    dirty: bool = False
    unparsed: dict[int, str] = field(default_factory=dict)
    """Lines that are not JSON, kept verbatim so that a repaired file loses nothing."""
    lenient: bool = False
    """Some of the text parsed only with NaN, Infinity or lone surrogates allowed."""
    text_clean: bool = False
    """The document(s) came from text that is strict JSON (so every number is finite) holding
    no suspect character or escape: a scan would find nothing."""
    values_checked: bool = False
    """``text_clean`` and written from checked columns: the per-value checks (schema, examples,
    histograms) would find nothing; the checks across rows and files still run."""
    _reported: set[tuple[int | None, str]] = field(default_factory=set)

    def report(
        self,
        code: str,
        pointer: str,
        message: str,
        *,
        severity: Severity | None = None,
        repair: Repair | None = None,
    ) -> None:
        self._reported.add((self.line, pointer))
        if self.session.fix and repair is not None:
            description = repair()
            self.session.changes.append(Change(code, self.file, pointer, description, self.line))
            self.dirty = True
            return
        cls = PROBLEM_CLASSES[code]
        self.session.problems.append(
            Problem(
                severity or cls.severity,
                code,
                self.file,
                pointer,
                message,
                self.line,
                fixable=repair is not None,
            )
        )

    def mark_reported(self, pointer: str) -> None:
        """Keep later checks (the schema) from reporting ``pointer`` again."""
        self._reported.add((self.line, pointer))

    def already_reported(self, pointer: str) -> bool:
        return (self.line, pointer) in self._reported


def inside_root(session: Session, path: Path) -> bool:
    """Whether ``path``, links resolved, lies under the session's root (links may point out).
    Both are real paths, absolute and normalised, so a prefix of the text up to a separator
    decides (as ``PurePath.is_relative_to``, without parsing both into parts for every file)."""
    real, root = session.real_path(path), session.real_folder(session.root)
    return real == root or real.startswith(root if root.endswith(os.sep) else root + os.sep)


def read_text(ctx: FileContext, path: Path) -> str | None:
    """The file as text (gunzipped); invalid UTF-8 is reported and decoded with U+FFFD.

    Only regular files inside the root and within the size limit are read."""
    data = _read_bounded(ctx, path)
    return None if data is None else _decode(ctx, data)


def _decode(ctx: FileContext, data: bytes) -> str:
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as e:
        ctx.report(
            "INVALID_UTF8",
            "",
            f"invalid UTF-8 at byte {e.start}: {data[e.start : e.start + 4]!r}",
            repair=lambda: "decoded invalid UTF-8 bytes as U+FFFD",
        )
        return data.decode("utf-8", "replace")


def _read_bounded(ctx: FileContext, path: Path) -> bytes | None:
    limit = ctx.session.max_file_bytes
    if not inside_root(ctx.session, path):
        ctx.report("UNSAFE_PATH", "", "a link to a place outside the export; not read")
        return None
    try:
        info = path.stat()
        if not stat.S_ISREG(info.st_mode):
            ctx.report("UNSAFE_PATH", "", "not a regular file; not read")
            return None
        if info.st_size > limit:
            ctx.report("FILE_TOO_LARGE", "", f"{info.st_size} bytes; the limit is {limit}")
            return None
        raw = path.read_bytes()
        if not path.name.endswith(".gz"):
            return raw
        inflater = zlib.decompressobj(wbits=31)  # gzip framing
        data = inflater.decompress(raw, limit + 1)
    except (OSError, EOFError, gzip.BadGzipFile, zlib.error) as e:
        ctx.report("FILE_UNREADABLE", "", f"{type(e).__name__}: {e}")
        return None
    if len(data) > limit:
        ctx.report("FILE_TOO_LARGE", "", f"expands to over {limit} bytes; not read")
        return None
    if not inflater.eof:
        ctx.report("FILE_UNREADABLE", "", "truncated gzip stream")
        return None
    return data


_INVALID = object()


class _NumberTooLong(ValueError):
    pass


def _bounded_int(text: str) -> int:
    if len(text) > MAX_NUMBER_CHARS:
        raise _NumberTooLong(f"a number of {len(text)} digits (the limit is {MAX_NUMBER_CHARS})")
    return int(text)


def parse(ctx: FileContext, text: str) -> Any:
    """Parse JSON, accepting NaN/Infinity and lone surrogates so that checks can name them;
    nesting and number length are bounded (``limits``) so that no input ends in a traceback."""
    try:
        doc = orjson.loads(text)
    except orjson.JSONDecodeError:
        ctx.lenient = True
        try:
            doc = json.loads(text, parse_int=_bounded_int)
        except json.JSONDecodeError as e:
            ctx.report("INVALID_JSON", "", f"line {e.lineno} column {e.colno}: {e.msg}")
            return _INVALID
        except RecursionError:
            ctx.report("INVALID_JSON", "", f"nested deeper than {MAX_JSON_DEPTH} levels")
            return _INVALID
        except ValueError as e:  # _NumberTooLong, or Python's own digit limit
            ctx.report("INVALID_JSON", "", str(e)[:200])
            return _INVALID
    if not _depth_within(doc, MAX_JSON_DEPTH):
        ctx.report("INVALID_JSON", "", f"nested deeper than {MAX_JSON_DEPTH} levels")
        return _INVALID
    return doc


_SCALARS = frozenset({int, float, str, bool, type(None)})


def _depth_within(doc: Any, limit: int) -> bool:
    """Level by level (a deep document must not exhaust the stack); lists and objects holding
    only scalars, most of an export, end their branch in one pass over their value types."""
    if type(doc) is not dict and type(doc) is not list:
        return True
    level = [doc]
    for _ in range(limit):
        nested: list[Any] = []
        for node in level:
            values = node.values() if type(node) is dict else node
            if not _SCALARS.issuperset(map(type, values)):
                nested += [v for v in values if type(v) is dict or type(v) is list]
        if not nested:
            return True
        level = nested
    return False


def _parse_strict(data: bytes, *, bounded: bool = True) -> Any:
    """The document when ``data`` is strict JSON in valid UTF-8 within the nesting bound (what
    the exporter writes), parsed without decoding it first; else _INVALID, and ``parse`` then
    takes the text the slow way and reports what is wrong."""
    try:
        doc = orjson.loads(data)
    except orjson.JSONDecodeError:
        return _INVALID
    if bounded and not _depth_within(doc, MAX_JSON_DEPTH):
        return _INVALID
    return doc


def vouch(ctx: FileContext, data: bytes) -> bool:
    """Sets ``text_clean`` and ``values_checked`` for the strict JSON ``data``; returns the
    latter: whether the bytes vouch for the values."""
    ctx.text_clean = not suspect_bytes(data)
    ctx.values_checked = ctx.text_clean and ctx.session.columns_checked
    return ctx.values_checked


def load_document(session: Session, path: Path) -> tuple[FileContext, Any]:
    """(context, document); the document is None when the file could not be read or parsed."""
    ctx = session.context(path)
    data = _read_bounded(ctx, path)
    return ctx, None if data is None else _document(ctx, data)


@dataclass(frozen=True, slots=True)
class Loaded(Generic[T]):
    """A file read by ``load_outline``: its document, or in its place the outline of bytes that
    vouch for the values (``values_checked``); both None when it could not be read or parsed."""

    ctx: FileContext
    doc: Any
    outline: T | None


def load_outline(session: Session, path: Path, decoder: msgspec.json.Decoder[T]) -> Loaded[T]:
    """The file as ``load_document`` gives it, except that bytes that vouch for the values come
    as their outline (the fields ``decoder``'s Struct declares), no document built: the checks
    left for such files need only a few values."""
    ctx = session.context(path)
    data = _read_bounded(ctx, path)
    if data is None:
        return Loaded(ctx, None, None)
    shape = outline(data, decoder) if session.columns_checked else None
    if shape is not None:
        vouch(ctx, data)
        if ctx.values_checked:
            return Loaded(ctx, None, shape)
    return Loaded(ctx, _document(ctx, data), None)


def _document(ctx: FileContext, data: bytes) -> Any:
    # the writers' documents have a fixed, shallow shape: no need to walk them for their depth
    doc = _parse_strict(data, bounded=not ctx.session.columns_checked)
    if doc is not _INVALID:
        vouch(ctx, data)
        return doc
    text = _decode(ctx, data)
    doc = parse(ctx, text)
    _mark_clean(ctx, text)
    return None if doc is _INVALID else doc


def _mark_clean(ctx: FileContext, text: str) -> None:
    ctx.text_clean = (
        not ctx.lenient and SUSPECT.search(text) is None and _SUSPECT_ESCAPE.search(text) is None
    )


def load_rows(session: Session, path: Path) -> tuple[FileContext, list[tuple[int, Any]]]:
    """(context, [(line number, row)]) of a JSON Lines file; unparseable lines are reported."""
    ctx, data = read_file(session, path)
    return ctx, [] if data is None else rows_of(ctx, data)


def read_file(session: Session, path: Path) -> tuple[FileContext, bytes | None]:
    """(context, bytes) of the file, gunzipped; None when it could not be read."""
    ctx = session.context(path)
    return ctx, _read_bounded(ctx, path)


def rows_of(ctx: FileContext, data: bytes) -> list[tuple[int, Any]]:
    """[(line number, row)] of the JSON Lines ``data``; unparseable lines are reported."""
    rows = _strict_rows(ctx, data)
    if rows is not None:
        return rows
    text = _decode(ctx, data)
    rows = []
    for n, line in enumerate(text.split("\n"), start=1):
        if line.strip():
            ctx.line = n
            row = parse(ctx, line)
            if row is _INVALID:
                ctx.unparsed[n] = line
            else:
                rows.append((n, row))
    ctx.line = None
    _mark_clean(ctx, text)
    return rows


def _strict_rows(ctx: FileContext, data: bytes) -> list[tuple[int, Any]] | None:
    """Every line of ``data`` parsed as by ``_parse_strict``, or None when one line needs the
    slow way (which then reads the whole file again, so that problems come in line order)."""
    rows: list[tuple[int, Any]] = []
    bounded = not ctx.session.columns_checked
    for n, line in enumerate(data.split(b"\n"), start=1):
        if line.strip():
            row = _parse_strict(line, bounded=bounded)
            if row is _INVALID:
                return None
            rows.append((n, row))
    vouch(ctx, data)
    return rows


def save_document(ctx: FileContext, path: Path, doc: Any) -> None:
    if ctx.dirty and inside_root(ctx.session, path):
        jsonio.write_document(path, jsonio.dumps_plain(doc))


def save_rows(ctx: FileContext, path: Path, rows: list[tuple[int, Any]]) -> None:
    if ctx.dirty and inside_root(ctx.session, path):
        lines = {n: jsonio.dumps_plain(row) for n, row in rows}
        lines.update({n: text.encode("utf-8", "replace") for n, text in ctx.unparsed.items()})
        data = b"".join(lines[n] + b"\n" for n in sorted(lines))
        jsonio.write_document(path, data)
