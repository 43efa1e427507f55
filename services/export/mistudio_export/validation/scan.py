"""Checks that apply to every value of every document: NaN/Inf and text encoding."""

from __future__ import annotations

import math
import re
from typing import Any

from mistudio_common.token_display import CONTROL_CHARACTERS, escape_controls

from mistudio_export.formats.jsonio import pointer
from mistudio_export.validation.context import SUSPECT as _SUSPECT
from mistudio_export.validation.context import FileContext
from mistudio_export.validation.report import Severity

_SURROGATE = re.compile("[\ud800-\udfff]")
_CONTROL = CONTROL_CHARACTERS


def clean_text(text: str) -> str:
    """Lone surrogates become U+FFFD; control characters their byte form, e.g. <0x07>."""
    return escape_controls(_SURROGATE.sub("\ufffd", text))


def _describe(text: str) -> tuple[Severity, str, bool]:
    """(severity, what is wrong, repairable)."""
    if _SURROGATE.search(text):
        return Severity.ERROR, "lone UTF-16 surrogate (not encodable as UTF-8)", True
    if "\x00" in text:
        return Severity.ERROR, "NUL character (Postgres cannot store it)", True
    control = _CONTROL.search(text)
    if control:
        return Severity.WARNING, f"control character U+{ord(control.group()):04X}", True
    return Severity.WARNING, "U+FFFD replacement character (bytes lost in decoding)", False


def scan(ctx: FileContext, doc: Any, base: tuple[str | int, ...] = ()) -> None:
    """Report every non-finite number and badly encoded string in ``doc``; repair in place.

    Skipped when the file's text already showed there is nothing to find (``text_clean``).
    """
    if not ctx.text_clean:
        _walk(ctx, doc, list(base))


_NUMBERS = frozenset({int, float})
_STRINGS = frozenset({str})


def _clean_list(node: list[Any]) -> bool:
    """Quick pass over a list of plain numbers or strings: True when nothing needs a look."""
    kinds = set(map(type, node))
    if kinds <= _NUMBERS:
        try:
            return math.isfinite(sum(node))
        except OverflowError:
            return False
    return kinds <= _STRINGS and _SUSPECT.search(" ".join(node)) is None


def _walk(ctx: FileContext, node: Any, path: list[str | int]) -> None:
    items: Any
    if isinstance(node, dict):
        items = node.items()
    elif isinstance(node, list):
        if _clean_list(node):
            return
        items = enumerate(node)
    else:
        return
    for key, value in items:
        if isinstance(value, float):
            if not math.isfinite(value):
                _non_finite(ctx, node, key, value, [*path, key])
        elif isinstance(value, str):
            if _SUSPECT.search(value):
                _bad_text(ctx, node, key, value, [*path, key])
        elif isinstance(value, dict | list):
            _walk(ctx, value, [*path, key])


def _non_finite(ctx: FileContext, node: Any, key: Any, value: float, path: list[Any]) -> None:
    def repair() -> str:
        node[key] = 0.0
        return f"replaced {value} with 0"

    ctx.report("NON_FINITE", pointer(path), f"{value} is not a finite number", repair=repair)


def _bad_text(ctx: FileContext, node: Any, key: Any, value: str, path: list[Any]) -> None:
    severity, what, repairable = _describe(value)

    def repair() -> str:
        node[key] = clean_text(value)
        return f"{what}: {value!a} -> {node[key]!a}"

    ctx.report(
        "TOKEN_ENCODING",
        pointer(path),
        f"{what} in {ascii(value)[:80]}",
        severity=severity,
        repair=repair if repairable else None,
    )
