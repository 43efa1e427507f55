"""The few values the checks of a clean written document need, decoded by msgspec into typed
Structs instead of a full orjson parse.

The validator parsed every written file in full only to read a handful of values (a feature's
index, the names of a batch) and to learn that the bytes parse; building and freeing those
objects was about half of its CPU. ``msgspec.json.Decoder(Struct)`` still checks every byte as
JSON but builds only the declared fields; a field typed ``msgspec.Raw`` keeps its value's bytes,
parsed by orjson when read, so a value is the one the full parse gives there.

msgspec and orjson agree on what is JSON except where ``outline`` sends the bytes the full way:
msgspec does not check UTF-8 in the strings it skips, nor whether a number it skips overflows a
float (orjson refuses 1e400). Both keep the last of equal keys; both refuse NaN, Infinity, lone
surrogates (raw or as \\u escapes) and a leading BOM; msgspec refuses nesting before orjson does
(about 1000 levels against 1024). A document of another shape (a field of another type, a list
over an API limit) is refused too, and gets the full checks.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterator
from typing import Annotated, Any, TypeVar

import msgspec
import orjson

from mistudio_export.formats.upload_payloads import (
    MAX_EXPLANATION_CHARS,
    MAX_LOGITS,
    MAX_TOKENS_PER_EXAMPLE,
)

ABSENT = msgspec.Raw()
"""A Raw field's value when its key is missing (a present value has at least one byte)."""
_NUMBER_TEXT = bytes(
    ord("0") if b in b"0123456789" else ord("e") if b in b"eE" else ord("+") if b in b"+-"
    else ord(".") if b == ord(".") else 32 if b in b" \t\n\r[,:" else ord("a")
    for b in range(256)
)  # fmt: skip
"""Bytes mapped to their part in a number's text: digits to 0, exponent marks to e, signs to +,
the point to itself, what may come before a number in JSON to a space, the rest to "a" (a
translation runs at memory speed; a regex took 20 times as long)."""
_LONG_EXPONENT = re.compile(rb"e\+?000")
_LONG_MANTISSA = b"0" * 200
_MANTISSA_SPAN = 2 * len(_LONG_MANTISSA) + 1
"""What the text of a number that may exceed a float holds, once mapped: an exponent of three
digits or, with a shorter one, over 200 digits. The exponent is a regex that finds each "e" at
memchr speed (as two substrings ending in a digit, found everywhere, it cost twice the mapping,
1.2 CPU-s of a 16,384-feature export's validation); one whose mantissa follows a letter or a
quote is in a string (the importer's row ids hold such text on most lines). A mantissa with no
run of 200 digits has at most ``_MANTISSA_SPAN`` characters. A number's text in a string still
sends the document the full way."""


def _overflows(number_text: bytes) -> bool:
    """Whether the mapped text holds a number that may exceed a float."""
    if _LONG_MANTISSA in number_text:
        return True
    for exponent in _LONG_EXPONENT.finditer(number_text):
        at = exponent.start()
        before = number_text[max(0, at - _MANTISSA_SPAN) : at].rstrip(b"0.")
        if before[-1:] in (b"", b" ", b"+"):
            return True
    return False


def value(raw: msgspec.Raw) -> Any:
    """The value orjson parses from ``raw`` (None when its key was missing, as ``dict.get``)."""
    return orjson.loads(memoryview(raw)) if raw else None


class PrdFeature(msgspec.Struct):
    feature_index: msgspec.Raw = ABSENT


class BatchFeature(msgspec.Struct):
    feature_index: msgspec.Raw = ABSENT


class Batch(msgspec.Struct):
    """An SAEDashboard batch: its names, its features' indices."""

    model_id: msgspec.Raw = ABSENT
    layer: msgspec.Raw = ABSENT
    sae_set: msgspec.Raw = ABSENT
    features: list[BatchFeature] = []


class PayloadExplanation(msgspec.Struct):
    text: Annotated[str, msgspec.Meta(max_length=MAX_EXPLANATION_CHARS)] = ""


class PayloadActivation(msgspec.Struct):
    """An example within the API's limit of tokens, else refused (its ``values`` counted)."""

    values: msgspec.Raw = ABSENT

    def __post_init__(self) -> None:
        # msgspec refuses the document on a ValueError here. Its values kept as bytes, no value
        # built (a list of Raw took 8 times as long): over the limit, a list's bytes are at least
        # "[0" and ",0" a value, so only rows that long are counted
        if len(self.values) > 2 * MAX_TOKENS_PER_EXAMPLE + 1:
            values = value(self.values)
            if isinstance(values, list) and len(values) > MAX_TOKENS_PER_EXAMPLE:
                raise ValueError("over the API's limit of tokens")


_Logits = Annotated[list[msgspec.Raw], msgspec.Meta(max_length=MAX_LOGITS)]


class PayloadFeature(msgspec.Struct):
    """A payload's feature within the API's limits (one over a limit is refused: its repair
    needs the document)."""

    index: msgspec.Raw = ABSENT
    topLogits: _Logits = []  # the payload's keys
    bottomLogits: _Logits = []
    explanations: list[PayloadExplanation] = []
    activations: list[PayloadActivation] = []


class Payload(msgspec.Struct):
    """An upload payload: its identities, its features within the API's limits."""

    modelId: msgspec.Raw = ABSENT
    source: msgspec.Raw = ABSENT
    features: list[PayloadFeature] = []


class ActivationRow(msgspec.Struct, forbid_unknown_fields=True, gc=False):
    """An importer Activation row with exactly the columns the writer writes (``ACTIVATION_
    COLUMNS``), its NOT NULL ones typed so that null is refused: a row with a key missing or
    unknown, or a NOT NULL value null, is refused and its file gets the full checks."""

    id: str
    modelId: str
    layer: str
    index: str
    creatorId: str
    maxValue: float
    maxValueTokenIndex: int
    minValue: float
    tokens: msgspec.Raw
    values: msgspec.Raw
    createdAt: msgspec.Raw
    dataSource: msgspec.Raw
    dataIndex: msgspec.Raw
    dfaValues: msgspec.Raw
    dfaTargetIndex: msgspec.Raw
    dfaMaxValue: msgspec.Raw
    lossValues: msgspec.Raw
    logitContributions: msgspec.Raw
    binMin: msgspec.Raw
    binMax: msgspec.Raw
    binContains: msgspec.Raw
    qualifyingTokenIndex: msgspec.Raw
    zIndices: msgspec.Raw
    zValues: msgspec.Raw


T = TypeVar("T", PrdFeature, Batch, Payload, ActivationRow)
"""The outline of a document kind."""
D = TypeVar("D")
LINES_CHUNK_BYTES = 256 << 10
"""About how many bytes of JSON Lines ``outline_lines`` decodes at a time: its rows' objects
stay small whatever the file's size, and the passes over a chunk (decode, UTF-8, numbers) find
it in the cache (11% less CPU than 4 MB chunks)."""


def outline(data: bytes, decoder: msgspec.json.Decoder[T]) -> T | None:
    """``data`` decoded by ``decoder``, or None when msgspec refuses it or where orjson might
    not read it alike (invalid UTF-8, a number that may overflow)."""
    return _alike(data, decoder.decode)


def outline_lines(
    data: bytes, decoder: msgspec.json.Decoder[T], chunk_bytes: int = LINES_CHUNK_BYTES
) -> Iterator[list[T] | None]:
    """The rows of the JSON Lines ``data``, a chunk of whole lines at a time, each row the
    outline of its line; None in place of a chunk that ``outline`` would refuse, or that has a
    blank line or two documents on a line (its rows would not be its lines, one each)."""
    start = 0
    while start < len(data):
        end = data.find(b"\n", start + chunk_bytes) + 1 or len(data)
        chunk = data[start:end]
        rows = _alike(chunk, decoder.decode_lines)
        lines = chunk.count(b"\n") + (not chunk.endswith(b"\n"))
        yield rows if rows is not None and len(rows) == lines else None
        start = end


def _alike(data: bytes, decode: Callable[[bytes], D]) -> D | None:
    """``decode(data)``, or None when msgspec refuses it or where orjson might not read it
    alike."""
    try:
        shape = decode(data)
    except (msgspec.DecodeError, RecursionError):  # msgspec's nesting bound raises the latter
        return None
    if not data.isascii():
        try:
            data.decode()
        except UnicodeDecodeError:
            return None
    return None if _overflows(data.translate(_NUMBER_TEXT)) else shape
