"""Tokenizer adapters and readable token strings for dashboards.

A dashboard shows one string per token, so a token must never vanish: SentencePiece's "▁" becomes a
space, GPT-2's byte-level pieces ("Ġ", "Ċ") become the characters they encode, and byte tokens
("<0xE2>", or byte-level pieces holding part of a character) are decoded as UTF-8 across the run
they form. The rule for bytes is:

* a complete UTF-8 character is shown on the token that holds its last byte (the one at which the
  model has seen the whole character);
* a token left with nothing to show (it holds only the first bytes of a character completed by a
  later token) shows its bytes as ``<0xHH>``;
* bytes that are not valid UTF-8 are shown as ``<0xHH>`` too, never dropped and never raising;
* so are control characters other than tab, newline and carriage return (``<0x1A>``), which would
  not display and which the export validator flags (``mistudio_common.token_display``).

Special tokens (``<s>``, ``<|endoftext|>``) keep their names.
"""

from __future__ import annotations

import enum
import json
import re
import threading
from collections.abc import Sequence
from dataclasses import dataclass, field
from functools import cache
from typing import Any, Protocol, cast

import numpy as np
from mistudio_common.token_display import CONTROL_CHARACTERS, byte_escape

_Bytes = np.ndarray[Any, np.dtype[np.uint8]]
_Ints = np.ndarray[Any, np.dtype[np.int64]]


class PieceStyle(enum.Enum):
    """How a tokenizer spells token bytes in its piece strings."""

    SENTENCEPIECE = "sentencepiece"  # "▁" is a space, "<0xHH>" is a raw byte
    BYTE_LEVEL = "byte_level"  # GPT-2: every byte is mapped to a printable character
    PLAIN = "plain"  # pieces are the text itself


class TokenizerAdapter(Protocol):
    """What the compute service needs from a tokenizer, whatever library is behind it."""

    @property
    def vocab_size(self) -> int: ...
    @property
    def bos_id(self) -> int | None: ...
    @property
    def eos_id(self) -> int | None: ...
    @property
    def pad_id(self) -> int | None: ...
    @property
    def piece_style(self) -> PieceStyle: ...

    def encode(self, text: str) -> list[int]:
        """Token ids of ``text`` without any BOS/EOS."""
        ...

    def decode(self, ids: Sequence[int]) -> str: ...

    def piece(self, token_id: int) -> str:
        """The tokenizer's own string for one id (e.g. "▁the", "Ġthe", "<0x0A>")."""
        ...

    def is_special(self, token_id: int) -> bool:
        """True for control/unknown tokens whose name is shown instead of their bytes."""
        ...


class HfTokenizer:
    """Adapter for a Hugging Face tokenizer (what TransformerLens hub models carry)."""

    def __init__(self, tokenizer: Any) -> None:
        self._tok = tokenizer
        self._special = frozenset(int(i) for i in tokenizer.all_special_ids)
        self._style = _detect_hf_style(tokenizer)

    @property
    def vocab_size(self) -> int:
        return len(self._tok)

    @property
    def bos_id(self) -> int | None:
        return _optional_id(self._tok.bos_token_id)

    @property
    def eos_id(self) -> int | None:
        return _optional_id(self._tok.eos_token_id)

    @property
    def pad_id(self) -> int | None:
        return _optional_id(self._tok.pad_token_id)

    @property
    def piece_style(self) -> PieceStyle:
        return self._style

    def encode(self, text: str) -> list[int]:
        return [int(i) for i in self._tok.encode(text, add_special_tokens=False)]

    def decode(self, ids: Sequence[int]) -> str:
        return str(self._tok.decode(list(ids)))

    def piece(self, token_id: int) -> str:
        piece = self._tok.convert_ids_to_tokens(int(token_id))
        return piece if isinstance(piece, str) else ""

    def is_special(self, token_id: int) -> bool:
        return int(token_id) in self._special


def _optional_id(value: Any) -> int | None:
    return None if value is None else int(value)


def _detect_hf_style(tokenizer: Any) -> PieceStyle:
    """Reads the fast tokenizer's decoder; falls back to looking at the vocabulary."""
    backend = getattr(tokenizer, "backend_tokenizer", None)
    if backend is not None:
        decoder = json.loads(backend.to_str()).get("decoder") or {}
        kinds = {decoder.get("type")} | {d.get("type") for d in decoder.get("decoders") or []}
        if "ByteLevel" in kinds:
            return PieceStyle.BYTE_LEVEL
        if "ByteFallback" in kinds or "Metaspace" in kinds:
            return PieceStyle.SENTENCEPIECE
    pieces = tokenizer.get_vocab().keys()
    if any(p.startswith("Ġ") for p in pieces):
        return PieceStyle.BYTE_LEVEL
    if any(p.startswith("▁") for p in pieces):
        return PieceStyle.SENTENCEPIECE
    return PieceStyle.PLAIN


_BYTE_PIECE = re.compile(r"^<0x([0-9A-Fa-f]{2})>$")


@cache
def _byte_level_decoder() -> dict[str, int]:
    """GPT-2's printable-character -> byte table (the inverse of its ``bytes_to_unicode``)."""
    printable = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1)]
    printable += list(range(ord("®"), ord("ÿ") + 1))
    chars = list(printable)
    extra = 0
    for b in range(256):
        if b not in printable:
            printable.append(b)
            chars.append(256 + extra)
            extra += 1
    return {chr(c): b for b, c in zip(printable, chars, strict=True)}


def piece_bytes(piece: str, style: PieceStyle) -> bytes:
    """The bytes a (non-special) piece stands for."""
    if style is PieceStyle.SENTENCEPIECE:
        match = _BYTE_PIECE.match(piece)
        if match:
            return bytes([int(match.group(1), 16)])
        return piece.replace("▁", " ").encode("utf-8")
    if style is PieceStyle.BYTE_LEVEL:
        table = _byte_level_decoder()
        if all(c in table for c in piece):
            return bytes(table[c] for c in piece)
    return piece.encode("utf-8")


def display_tokens(tokenizer: TokenizerAdapter, ids: Sequence[int]) -> list[str]:
    """One readable string per id, decoding byte runs across neighbouring tokens (module doc)."""
    texts = [""] * len(ids)
    run: list[tuple[int, bytes]] = []  # (position, bytes) of consecutive non-special tokens
    for pos, token_id in enumerate(ids):
        if _is_special(tokenizer, int(token_id)):
            _decode_run(run, texts)
            run = []
            texts[pos] = _special_name(tokenizer, int(token_id))
        else:
            run.append((pos, piece_bytes(tokenizer.piece(int(token_id)), tokenizer.piece_style)))
    _decode_run(run, texts)
    return texts


def display_token(tokenizer: TokenizerAdapter, token_id: int) -> str:
    """A single token shown on its own (logit tables): partial characters become ``<0xHH>``."""
    return display_tokens(tokenizer, [token_id])[0]


def vocab_display_strings(tokenizer: TokenizerAdapter) -> list[str]:
    """``display_token`` for every id, in id order."""
    return [display_token(tokenizer, i) for i in range(tokenizer.vocab_size)]


_UNSEEN, _MIXED = -2, -1
"""``_Utf8Table.length`` of an id not seen yet, and of one shown by its neighbours."""


@dataclass(frozen=True, slots=True)
class _Utf8Table:
    """The UTF-8 bytes of each id seen so far that shows alike whatever its neighbours: id i's
    are ``data[start[i] : start[i] + length[i]]``. Never changed once made: a reader on one
    thread keeps a consistent table while another thread learns new ids into a new one."""

    data: _Bytes = field(default_factory=lambda: np.zeros(0, np.uint8))
    start: _Ints = field(default_factory=lambda: np.zeros(0, np.int64))
    length: _Ints = field(default_factory=lambda: np.zeros(0, np.int64))


class TokenDisplay:
    """``display_tokens`` for one tokenizer, fast enough for hundreds of thousands of windows.

    A token whose bytes are whole UTF-8 characters shows the same string whatever its neighbours:
    a character begun by earlier bytes could only end on a continuation byte, which such a token
    never starts with. Those strings are cached per id; only runs of the other tokens (partial
    characters, invalid bytes) are decoded together, exactly as ``display_tokens`` does.
    """

    def __init__(self, tokenizer: TokenizerAdapter) -> None:
        self._tokenizer = tokenizer
        self._alone: dict[int, str] = {}  # id -> its string, whatever the neighbours
        self._partial: dict[int, bytes] = {}  # id -> its bytes, decoded with its neighbours
        self._utf8 = _Utf8Table()
        self._learning = threading.Lock()  # finalisation shows windows on several threads

    def window(self, ids: Sequence[int]) -> list[str]:
        texts = list(map(self._alone.get, ids))
        if None in texts:
            self._fill(ids, texts)
        return cast(list[str], texts)

    def windows_utf8(self, ids: _Ints, lengths: _Ints) -> tuple[_Bytes, _Ints]:
        """``window`` of each window laid one after another in ``ids`` (``lengths`` tokens
        each) as UTF-8: every string's bytes one after another, and each one's length. Ids
        that show alike whatever their neighbours are copied from a table of their bytes;
        a window holding any other id is decoded on its own."""
        table = self._utf8_table(ids)
        inside = (ids >= 0) & (ids < len(table.length))
        size = np.where(inside, table.length[np.where(inside, ids, 0)], -1)  # [T] -1: mixed
        start = table.start[np.where(size >= 0, ids, 0)]
        data = table.data
        window = np.repeat(np.arange(len(lengths)), lengths)  # [T]
        mixed = np.unique(window[size < 0])
        if len(mixed):
            firsts = np.cumsum(lengths) - lengths
            at = np.concatenate([np.arange(firsts[w], firsts[w] + lengths[w]) for w in mixed])
            texts = [t.encode() for w in mixed.tolist() for t in self.window(
                ids[firsts[w] : firsts[w] + lengths[w]].tolist())]  # fmt: skip
            size[at] = [len(t) for t in texts]
            start[at] = len(data) + np.cumsum(size[at]) - size[at]
            data = np.concatenate([data, np.frombuffer(b"".join(texts), np.uint8)])
        before = np.cumsum(size) - size  # [T] where each string begins in the result
        return data[np.repeat(start - before, size) + np.arange(int(size.sum()))], size

    def _utf8_table(self, ids: _Ints) -> _Utf8Table:
        """The table, with every id of ``ids`` not seen before learnt."""
        with self._learning:
            table = self._utf8
            top = max(int(ids.max(initial=-1)) + 1, 1)  # id 0's row stands in for ids outside
            length, start = table.length, table.start
            if top > len(length):
                length = np.concatenate([length, np.full(top - len(length), _UNSEEN, np.int64)])
                start = np.resize(start, top)
            seen = ids[ids >= 0]
            new = np.unique(seen[length[seen] == _UNSEEN]).tolist()
            if length is table.length:  # not grown: the table others may be reading
                if not new:
                    return table
                length, start = length.copy(), start.copy()
            shown = [None if self._learn(i) is not None else self._alone[i].encode() for i in new]
            length[new] = [_MIXED if b is None else len(b) for b in shown]
            sizes = length[new].clip(0)
            start[new] = len(table.data) + np.cumsum(sizes) - sizes
            tail = np.frombuffer(b"".join(b for b in shown if b is not None), np.uint8)
            self._utf8 = _Utf8Table(np.concatenate([table.data, tail]), start, length)
            return self._utf8

    def _fill(self, ids: Sequence[int], texts: list[str | None]) -> None:
        """Fills the None entries: ids not seen yet, and runs of partial characters."""
        decoded = cast(list[str], texts)  # run positions are set to "" before decoding
        run: list[tuple[int, bytes]] = []
        for pos, token_id in enumerate(ids):
            if texts[pos] is None:
                chunk = self._learn(int(token_id))
                if chunk is not None:
                    run.append((pos, chunk))
                    texts[pos] = ""
                    continue
                texts[pos] = self._alone[int(token_id)]
            if run:
                _decode_run(run, decoded)
                run = []
        if run:
            _decode_run(run, decoded)

    def _learn(self, token_id: int) -> bytes | None:
        """The id's bytes when they are partial characters, else None (its string is cached)."""
        if token_id in self._alone:
            return None
        chunk = self._partial.get(token_id)
        if chunk is None:
            tok = self._tokenizer
            if _is_special(tok, token_id):
                self._alone[token_id] = _special_name(tok, token_id)
                return None
            chunk = piece_bytes(tok.piece(token_id), tok.piece_style)
            if _decode_strict(chunk) is not None:
                self._alone[token_id] = display_tokens(tok, [token_id])[0]
                return None
            self._partial[token_id] = chunk
        return chunk


def _special_name(tokenizer: TokenizerAdapter, token_id: int) -> str:
    """The name of a special token; ids the tokenizer lacks (padded vocabularies) as <id:N>."""
    if 0 <= token_id < tokenizer.vocab_size:
        return tokenizer.piece(token_id) or f"<id:{token_id}>"
    return f"<id:{token_id}>"


def _is_special(tokenizer: TokenizerAdapter, token_id: int) -> bool:
    return not 0 <= token_id < tokenizer.vocab_size or tokenizer.is_special(token_id)


def _decode_run(run: list[tuple[int, bytes]], texts: list[str]) -> None:
    """Fills ``texts`` for one run of byte-carrying tokens."""
    data = b"".join(b for _, b in run)
    owner = [pos for pos, chunk in run for _ in chunk]  # [n_bytes] -> token position
    i = 0
    while i < len(data):
        n = _utf8_length(data[i])
        char = _decode_strict(data[i : i + n]) if n and i + n <= len(data) else None
        if char is None:
            texts[owner[i]] += byte_escape(data[i : i + 1])
            i += 1
        elif CONTROL_CHARACTERS.match(char):  # readable bytes, each on the token holding it
            for k in range(i, i + n):
                texts[owner[k]] += byte_escape(data[k : k + 1])
            i += n
        else:
            texts[owner[i + n - 1]] += char
            i += n
    for pos, chunk in run:
        if not texts[pos]:
            texts[pos] = byte_escape(chunk)


def _utf8_length(lead: int) -> int:
    """Length of the UTF-8 sequence a lead byte starts, 0 when it cannot start one."""
    if lead < 0x80:
        return 1
    if 0xC2 <= lead <= 0xDF:
        return 2
    if 0xE0 <= lead <= 0xEF:
        return 3
    if 0xF0 <= lead <= 0xF4:
        return 4
    return 0


def _decode_strict(data: bytes) -> str | None:
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError:
        return None
