"""The tokens a dashboard computation reads, with where every row came from.

Two sources, mirroring ``mistudio.common.v1.TokenSource``:

* a token file (``.npy``, or ``.safetensors`` holding a ``"tokens"`` tensor) of int [rows, width];
  rows longer than ``context_size`` are cut to it (their first ``context_size`` tokens). A sibling
  ``<file>.provenance.json`` may say where rows came from (schema in ``read_provenance``);
* plain-text files, where each non-empty line is one document. Documents are tokenized
  separately and concatenated into one stream, separated by BOS when ``prepend_bos`` (SAELens's
  default separator), then cut into rows of ``context_size`` tokens, each starting with BOS when
  ``prepend_bos``. A row's provenance is the file, line and token offset of its first text token;
  documents that begin inside a row are listed as breaks, so every token traces to its own
  document (``TokenDataset.locate``). A BOS belongs to the document it precedes, at offset -1.

The fingerprint (sha256 of the int32 little-endian token bytes, the context size and the BOS
flag) identifies the dataset in caches and results.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, BinaryIO

import numpy as np
import torch
from mistudio_common.dashboard import SourceRef
from mistudio_common.dashboard_options import DEFAULT_PREPEND_BOS
from mistudio_common.errors import InvalidArgument
from safetensors import SafetensorError
from safetensors.numpy import load_file

from mistudio_compute.input_files import InputKind, Opener, descriptor_path, open_trusted
from mistudio_compute.references import provenance_path
from mistudio_compute.token_text import TokenizerAdapter

FILE_FIELD = "tokens.token_file"
TEXT_FIELD = "tokens.text.paths"
DEFAULT_CONTEXT_SIZE = 128
_Int32 = np.ndarray[Any, np.dtype[np.int32]]
_Int64 = np.ndarray[Any, np.dtype[np.int64]]


@dataclass(frozen=True)
class DocBreaks:
    """Documents that begin inside rows, sorted by (row, position): where their first token sits
    and which source row (text line, story) they are. Their offset there is 0."""

    row: _Int64  # [breaks]
    position: _Int64  # [breaks], position in the row of the document's first token
    source: _Int32  # [breaks], index into the dataset's sources
    origin: _Int64  # [breaks], row (or text line) in that source

    @classmethod
    def none(cls) -> DocBreaks:
        return cls(np.zeros(0, np.int64), np.zeros(0, np.int64), np.zeros(0, np.int32),
                   np.zeros(0, np.int64))  # fmt: skip

    @classmethod
    def of_stream(
        cls, first: Sequence[int], source: Sequence[int], origin: Sequence[int], body: int,
        bos: int, n_rows: int,
    ) -> DocBreaks:  # fmt: skip
        """Breaks of documents whose first tokens sit at stream positions ``first`` when the
        stream is cut into rows of ``body`` tokens, each after ``bos`` (0 or 1) BOS tokens."""
        at = np.asarray(first, dtype=np.int64)
        keep = at < n_rows * body
        return cls(
            (at // body)[keep],
            (at % body + bos)[keep],
            np.asarray(source, dtype=np.int32)[keep],
            np.asarray(origin, dtype=np.int64)[keep],
        )

    def ordered(self) -> DocBreaks:
        """Sorted by (row, position), as ``TokenDataset.locate`` searches them."""
        order = np.lexsort((self.position, self.row))
        return DocBreaks(self.row[order], self.position[order], self.source[order],
                         self.origin[order])  # fmt: skip

    def rows_below(self, n_rows: int) -> DocBreaks:
        keep = self.row < n_rows
        return DocBreaks(self.row[keep], self.position[keep], self.source[keep], self.origin[keep])


@dataclass(frozen=True)
class TokenDataset:
    """Rows of token ids and, per row, the source, original row and offset it came from."""

    tokens: _Int32  # [rows, context]
    dataset_name: str
    prepend_bos: bool
    sources: tuple[str, ...]
    row_source: _Int32  # [rows], index into sources
    row_origin: _Int64  # [rows], row (or text line) in the source
    row_offset: _Int64  # [rows], offset in that source row of the row's first text token
    breaks: DocBreaks = field(default_factory=DocBreaks.none)
    fingerprint: str = field(init=False)

    def __post_init__(self) -> None:
        n = self.tokens.shape[0]
        if any(len(a) != n for a in (self.row_source, self.row_origin, self.row_offset)):
            raise InvalidArgument(
                f"provenance describes a different number of rows than the {n} token rows",
                field=FILE_FIELD,
                fix="give one provenance entry per row",
            )
        object.__setattr__(self, "fingerprint", fingerprint(self.tokens, self.prepend_bos))

    @classmethod
    def from_array(
        cls,
        tokens: np.ndarray[Any, Any],
        dataset_name: str,
        prepend_bos: bool = False,
        provenance: Mapping[str, Any] | None = None,
    ) -> TokenDataset:
        """Rows as given; without provenance, row i of ``dataset_name`` at offset 0."""
        array = np.ascontiguousarray(tokens, dtype=np.int32)
        n = array.shape[0]
        if provenance is None:
            return cls(
                array,
                dataset_name,
                prepend_bos,
                (dataset_name,),
                np.zeros(n, np.int32),
                np.arange(n, dtype=np.int64),
                np.zeros(n, np.int64),
            )
        return cls(array, dataset_name, prepend_bos, *_provenance_arrays(provenance, n))

    @property
    def n_rows(self) -> int:
        return int(self.tokens.shape[0])

    @property
    def context_size(self) -> int:
        return int(self.tokens.shape[1])

    @property
    def n_tokens(self) -> int:
        return int(self.tokens.size)

    def locate(self, row: int, position: int) -> tuple[int, int, int]:
        """(source index, source row, offset) of token ``position`` of ``row``: the document it
        belongs to, a BOS counting as offset -1 of the document it precedes."""
        source, origin, offset = self.locate_many(np.array([row]), np.array([position]))
        return int(source[0]), int(origin[0]), int(offset[0])

    def locate_many(
        self, rows: np.ndarray[Any, Any], positions: np.ndarray[Any, Any]
    ) -> tuple[_Int64, _Int64, _Int64]:
        """``locate`` of many (row, position) pairs at once: int64 arrays (source index, source
        row, offset), one search over the breaks for all of them."""
        rows, positions = np.asarray(rows, np.int64), np.asarray(positions, np.int64)
        b, width = self.breaks, self.context_size
        k = np.searchsorted(b.row * width + b.position, rows * width + positions, "right") - 1
        inside = k >= 0
        inside[inside] = b.row[k[inside]] == rows[inside]  # a break earlier in the same row
        at = k[inside]
        source = self.row_source[rows].astype(np.int64)
        origin = self.row_origin[rows].astype(np.int64)
        offset = self.row_offset[rows] + positions - int(self.prepend_bos)
        source[inside], origin[inside] = b.source[at], b.origin[at]
        offset[inside] = positions[inside] - b.position[at]
        return source, origin, offset

    def source_ref(self, row: int, position: int) -> SourceRef:
        """Where token ``position`` of ``row`` came from."""
        source, origin, offset = self.locate(row, position)
        return SourceRef(dataset=self.sources[source], row=origin, offset=offset)

    def check_vocab(self, d_vocab: int) -> None:
        """Every id must index the model's vocabulary."""
        if self.n_tokens and (int(self.tokens.min()) < 0 or int(self.tokens.max()) >= d_vocab):
            raise InvalidArgument(
                f"token ids range over {int(self.tokens.min())}..{int(self.tokens.max())} but the "
                f"model's vocabulary has {d_vocab} ids",
                field=FILE_FIELD,
                fix="tokenize the dataset with the model's own tokenizer",
            )

    def iter_batches(
        self, batch_rows: int, start_row: int = 0
    ) -> Iterator[tuple[int, torch.Tensor]]:
        """(first row index, LongTensor [batch, context]) for consecutive batches of rows."""
        if batch_rows <= 0:
            raise InvalidArgument(
                f"batch size {batch_rows} must be positive", field="batch_size", fix="use >= 1"
            )
        for row in range(start_row, self.n_rows, batch_rows):
            batch = self.tokens[row : row + batch_rows]
            yield row, torch.from_numpy(batch.astype(np.int64))  # [batch, context]


def fingerprint(tokens: np.ndarray[Any, Any], prepend_bos: bool) -> str:
    digest = hashlib.sha256(np.ascontiguousarray(tokens, dtype="<i4").tobytes())
    digest.update(f"|context={tokens.shape[1]}|prepend_bos={int(prepend_bos)}".encode())
    return digest.hexdigest()


@dataclass(frozen=True, slots=True)
class TokenSourceSpec:
    """``mistudio.common.v1.TokenSource`` as plain values (exactly one of the two sources)."""

    token_file: str = ""
    text_paths: Sequence[str] = ()
    dataset_name: str = ""
    context_size: int = 0
    prepend_bos: bool = DEFAULT_PREPEND_BOS
    max_tokens: int = 0
    open_input: Opener = open_trusted
    """How the files are opened (for a request's: ``InputPolicy.open``)."""


def load_token_source(
    spec: TokenSourceSpec, tokenizer: TokenizerAdapter | None = None, d_vocab: int | None = None
) -> TokenDataset:
    """Builds the dataset a request describes and checks it against the vocabulary if given."""
    if bool(spec.token_file) == bool(spec.text_paths):
        raise InvalidArgument(
            "give either a token file or text files",
            field="tokens",
            fix="set exactly one of tokens.token_file and tokens.text",
        )
    if spec.token_file:
        dataset = load_token_file(
            spec.token_file,
            dataset_name=spec.dataset_name,
            context_size=spec.context_size,
            prepend_bos=spec.prepend_bos,
            max_tokens=spec.max_tokens,
            open_input=spec.open_input,
        )
    else:
        if tokenizer is None:
            raise InvalidArgument(
                "text needs the model's tokenizer, and this model has none",
                field=TEXT_FIELD,
                fix="pass a pre-tokenized token_file instead",
            )
        dataset = tokenize_text_files(
            spec.text_paths,
            tokenizer,
            dataset_name=spec.dataset_name,
            context_size=spec.context_size or DEFAULT_CONTEXT_SIZE,
            prepend_bos=spec.prepend_bos,
            max_tokens=spec.max_tokens,
            open_input=spec.open_input,
        )
    if d_vocab is not None:
        dataset.check_vocab(d_vocab)
    return dataset


def load_token_file(
    path: str | Path,
    *,
    dataset_name: str = "",
    context_size: int = 0,
    prepend_bos: bool = False,
    max_tokens: int = 0,
    open_input: Opener = open_trusted,
) -> TokenDataset:
    """Reads a token file (module doc); ``prepend_bos`` records whether its rows start with BOS."""
    file = Path(path)
    array = _read_token_array(file, open_input)
    if array.ndim != 2 or array.shape[0] == 0 or array.shape[1] == 0:
        raise InvalidArgument(
            f"{file} holds an array of shape {list(array.shape)}; "
            "expected a non-empty [rows, context]",
            field=FILE_FIELD,
            fix="save the tokens as a 2-D integer array, one row per context window",
        )
    if not np.issubdtype(array.dtype, np.integer):
        raise InvalidArgument(
            f"{file} holds {array.dtype} values; token ids must be integers",
            field=FILE_FIELD,
            fix="save the token ids as int32 or int64",
        )
    if np.issubdtype(array.dtype, np.signedinteger) and array.size and int(array.min()) < 0:
        raise InvalidArgument(
            f"{file} holds negative token ids", field=FILE_FIELD, fix="remove padding markers"
        )
    if array.max(initial=0) > np.iinfo(np.int32).max:
        raise InvalidArgument(
            f"{file} holds ids beyond int32", field=FILE_FIELD, fix="check the tokenization"
        )
    width = array.shape[1]
    context = context_size or width
    if context > width:
        raise InvalidArgument(
            f"context_size {context} exceeds the file's rows of {width} tokens",
            field="tokens.context_size",
            fix=f"use a context_size of at most {width}, or 0 for the file's width",
        )
    name = dataset_name or file.stem
    provenance = read_provenance(file, open_input)
    recorded_bos = bool(provenance and provenance.get("prepend_bos"))
    dataset = TokenDataset.from_array(
        array[:, :context], name, prepend_bos or recorded_bos, provenance
    )
    return _limit_rows(dataset, max_tokens)


def _check_npy_size(handle: BinaryIO) -> None:
    """A header may claim any shape; np.load would try to allocate it (40 GB for a 1 kB file).
    Leaves ``handle`` at its start."""
    version = np.lib.format.read_magic(handle)
    if version == (1, 0):
        shape, _, dtype = np.lib.format.read_array_header_1_0(handle)
    else:
        shape, _, dtype = np.lib.format.read_array_header_2_0(handle)
    claimed = math.prod(shape) * dtype.itemsize
    held = os.fstat(handle.fileno()).st_size - handle.tell()
    handle.seek(0)
    if claimed > held:
        raise InvalidArgument(
            f"the token file's header claims {claimed} bytes of {shape} {dtype} ids but the file "
            f"holds {held}",
            field=FILE_FIELD,
            fix="write the file again with numpy.save",
        )


def _read_token_array(file: Path, open_input: Opener) -> np.ndarray[Any, Any]:
    if not file.is_file():
        raise InvalidArgument(
            f"token file {str(file)!r} does not exist",
            field=FILE_FIELD,
            fix="pass the path of a .npy or .safetensors token file readable by the service",
        )
    try:
        if file.suffix == ".npy":
            with open_input(file, InputKind.TOKEN_FILE) as handle:
                _check_npy_size(handle)
                return np.load(handle, allow_pickle=False)  # type: ignore[no-any-return]
        if file.suffix == ".safetensors":
            with open_input(file, InputKind.TOKEN_FILE) as handle:
                tensors = load_file(descriptor_path(handle))
            if "tokens" not in tensors:
                raise InvalidArgument(
                    f"{file} has no 'tokens' tensor (it has {sorted(tensors)})",
                    field=FILE_FIELD,
                    fix='store the ids under the name "tokens"',
                )
            return tensors["tokens"]
    except (OSError, ValueError, SafetensorError) as exc:
        raise InvalidArgument(
            f"cannot read token file {file} ({type(exc).__name__})",
            field=FILE_FIELD,
            fix="pass a valid .npy or .safetensors file",
        ) from exc
    raise InvalidArgument(
        f"token file {file} is neither .npy nor .safetensors",
        field=FILE_FIELD,
        fix="save the tokens with numpy.save or safetensors",
    )


def read_provenance(token_file: Path, open_input: Opener = open_trusted) -> dict[str, Any] | None:
    """``<file>.provenance.json``: ``{"sources": [names], "source_index": [per row],
    "row": [per row], "offset": [per row]}``, optionally ``"prepend_bos": true`` (the rows begin
    with BOS) and ``"breaks": {"row", "position", "source_index", "origin": [per document that
    begins inside a row]}``; None when absent."""
    path = provenance_path(token_file)
    if not path.is_file():
        return None
    try:
        with open_input(path, InputKind.TOKEN_FILE) as handle:
            loaded = json.loads(handle.read().decode("utf-8"))
    except (OSError, ValueError) as exc:
        raise InvalidArgument(
            f"cannot read {path}: {exc}", field=FILE_FIELD, fix="write valid JSON or remove it"
        ) from exc
    return loaded if isinstance(loaded, dict) else {}


def write_token_file(dataset: TokenDataset, path: str | Path) -> Path:
    """Saves tokens as .npy with their provenance next to them (the inverse of load)."""
    file = Path(path)
    np.save(file, dataset.tokens)
    provenance = {
        "dataset_name": dataset.dataset_name,
        "sources": list(dataset.sources),
        "source_index": dataset.row_source.tolist(),
        "row": dataset.row_origin.tolist(),
        "offset": dataset.row_offset.tolist(),
        "prepend_bos": dataset.prepend_bos,
        "breaks": {
            "row": dataset.breaks.row.tolist(),
            "position": dataset.breaks.position.tolist(),
            "source_index": dataset.breaks.source.tolist(),
            "origin": dataset.breaks.origin.tolist(),
        },
    }
    provenance_path(file).write_text(json.dumps(provenance), encoding="utf-8")
    return file


def _provenance_arrays(
    provenance: Mapping[str, Any], n_rows: int
) -> tuple[tuple[str, ...], _Int32, _Int64, _Int64, DocBreaks]:
    try:
        sources = tuple(str(s) for s in provenance["sources"])
        index = np.asarray(provenance["source_index"], dtype=np.int32)
        origin = np.asarray(provenance["row"], dtype=np.int64)
        offset = np.asarray(provenance["offset"], dtype=np.int64)
        given = provenance.get("breaks") or {}
        breaks = DocBreaks(
            np.asarray(given.get("row", []), dtype=np.int64),
            np.asarray(given.get("position", []), dtype=np.int64),
            np.asarray(given.get("source_index", []), dtype=np.int32),
            np.asarray(given.get("origin", []), dtype=np.int64),
        )
    except (KeyError, TypeError, ValueError, AttributeError) as exc:
        raise InvalidArgument(
            f"provenance lacks or mangles {exc}",
            field=FILE_FIELD,
            fix='write "sources", "source_index", "row" and "offset" lists',
        ) from exc
    lengths = {len(index), len(origin), len(offset)}
    if lengths != {n_rows} or (n_rows and not 0 <= index.min() <= index.max() < len(sources)):
        raise InvalidArgument(
            f"provenance does not describe the {n_rows} token rows",
            field=FILE_FIELD,
            fix="give one source_index/row/offset entry per row, indexing into sources",
        )
    n_breaks = {len(breaks.row), len(breaks.position), len(breaks.source), len(breaks.origin)}
    bad_source = len(breaks.source) and not 0 <= breaks.source.min() <= breaks.source.max() < len(
        sources
    )
    if len(n_breaks) != 1 or bad_source:
        raise InvalidArgument(
            "provenance breaks are not parallel lists indexing into sources",
            field=FILE_FIELD,
            fix='give "breaks" as equal-length "row", "position", "source_index", "origin" lists',
        )
    return sources, index, origin, offset, breaks.ordered()


def tokenize_text_files(
    paths: Sequence[str | Path],
    tokenizer: TokenizerAdapter,
    *,
    dataset_name: str = "",
    context_size: int = DEFAULT_CONTEXT_SIZE,
    prepend_bos: bool = True,
    max_tokens: int = 0,
    open_input: Opener = open_trusted,
) -> TokenDataset:
    """Rows of ``context_size`` tokens from text files, one document per line (module doc)."""
    bos = tokenizer.bos_id if prepend_bos else None
    if prepend_bos and bos is None:
        raise InvalidArgument(
            "prepend_bos is set but the tokenizer has no BOS token",
            field="tokens.prepend_bos",
            fix="set prepend_bos to false",
        )
    body = context_size - (1 if prepend_bos else 0)  # tokens per row after the BOS
    if body < 1:
        raise InvalidArgument(
            f"context_size {context_size} leaves no room for text",
            field="tokens.context_size",
            fix="use a context_size of at least 2",
        )
    max_rows = max(1, max_tokens // context_size) if max_tokens > 0 else None
    files = [Path(p) for p in paths]
    stream: list[int] = []
    docs: list[tuple[int, int, int, int]] = []  # (stream start, source, line, separator length)
    for source, file in enumerate(files):
        for line_no, line in enumerate(_read_text(file, open_input).splitlines()):
            if max_rows is not None and len(stream) >= max_rows * body:
                break
            if not line.strip():
                continue
            separator = [bos] if bos is not None and stream else []
            docs.append((len(stream), source, line_no, len(separator)))
            stream += separator + tokenizer.encode(line)
    n_rows = len(stream) // body if max_rows is None else min(max_rows, len(stream) // body)
    if n_rows == 0:
        raise InvalidArgument(
            f"the text holds {len(stream)} tokens, fewer than one row of {context_size}",
            field=TEXT_FIELD,
            fix="add text or lower context_size",
        )
    rows = np.asarray(stream[: n_rows * body], dtype=np.int32).reshape(n_rows, body)
    if bos is not None:
        rows = np.concatenate([np.full((n_rows, 1), bos, np.int32), rows], axis=1)
    starts = np.asarray([d[0] for d in docs], dtype=np.int64)
    row_doc = np.searchsorted(starts, np.arange(n_rows) * body, side="right") - 1  # [rows]
    row_offset = np.arange(n_rows) * body - starts[row_doc] - [docs[d][3] for d in row_doc]
    return TokenDataset(
        rows,
        dataset_name or (files[0].stem if len(files) == 1 else "text"),
        prepend_bos,
        tuple(f.name for f in files),
        np.asarray([docs[d][1] for d in row_doc], dtype=np.int32),
        np.asarray([docs[d][2] for d in row_doc], dtype=np.int64),
        np.maximum(row_offset, 0).astype(np.int64),
        DocBreaks.of_stream(
            [d[0] + d[3] for d in docs],
            [d[1] for d in docs],
            [d[2] for d in docs],
            body,
            int(bos is not None),
            n_rows,
        ),
    )


def _read_text(file: Path, open_input: Opener) -> str:
    try:
        with open_input(file, InputKind.TEXT_FILE) as handle:
            return handle.read().decode("utf-8", errors="replace")
    except OSError as exc:
        raise InvalidArgument(
            f"cannot read text file {str(file)!r}: {exc.strerror or exc}",
            field=TEXT_FIELD,
            fix="pass paths of UTF-8 text files readable by the service",
        ) from exc


def _limit_rows(dataset: TokenDataset, max_tokens: int) -> TokenDataset:
    """Keeps whole rows up to ``max_tokens`` (at least one); 0 keeps all."""
    if max_tokens <= 0 or max_tokens >= dataset.n_tokens:
        return dataset
    rows = max(1, max_tokens // dataset.context_size)
    return replace(
        dataset,
        tokens=dataset.tokens[:rows],
        row_source=dataset.row_source[:rows],
        row_origin=dataset.row_origin[:rows],
        row_offset=dataset.row_offset[:rows],
        breaks=dataset.breaks.rows_below(rows),
    )
