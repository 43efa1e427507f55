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
    ord("0") if b in b"0123456789" else ord("e") if b in b"eE" else ord("+") if b in b"+-" else 32
    for b in range(256)
)
"""Bytes mapped to their part in a number's text: digits to 0, exponent marks to e, signs to +,
the rest to a space (a translation runs at memory speed; a regex took 20 times as long)."""
_LONG_EXPONENT = re.compile(rb"e\+?000")
_LONG_MANTISSA = b"0" * 200
"""What the text of a number that may exceed a float holds, once mapped: an exponent of three
digits or, with a shorter one, over 200 digits. In a string too, which only sends such a
document the full way. The exponent is a regex that finds each "e" at memchr speed: as two
substrings ending in a digit (found everywhere) it cost twice the mapping, 1.2 CPU-s of a
16,384-feature export's validation."""


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


T = TypeVar("T", PrdFeature, Batch, Payload)
"""The outline of a document kind."""


def outline(data: bytes, decoder: msgspec.json.Decoder[T]) -> T | None:
    """``data`` decoded by ``decoder``, or None when msgspec refuses it or where orjson might
    not read it alike (invalid UTF-8, a number that may overflow)."""
    try:
        shape = decoder.decode(data)
    except (msgspec.DecodeError, RecursionError):  # msgspec's nesting bound raises the latter
        return None
    if not data.isascii():
        try:
            data.decode()
        except UnicodeDecodeError:
            return None
    number_text = data.translate(_NUMBER_TEXT)
    overflows = _LONG_MANTISSA in number_text or _LONG_EXPONENT.search(number_text) is not None
    return None if overflows else shape
