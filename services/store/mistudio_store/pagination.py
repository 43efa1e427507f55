"""Page sizes and opaque page tokens for the list RPCs (AIP-158).

A token is URL-safe base64 of ``{"s": scope, "k": last_key}``: ``scope`` fingerprints the list
and its filters, so a token cannot be replayed against a different query, and ``k`` is the sort
key of the last item served (keyset pagination: stable under concurrent inserts, no OFFSET scan).
"""

from __future__ import annotations

import base64
import binascii
import hashlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Generic, TypeVar

import orjson
from google.protobuf.message import Message
from mistudio_common.errors import InvalidArgument

T = TypeVar("T")
R = TypeVar("R")
M = TypeVar("M", bound=Message)

MAX_PAGE_BYTES = 32 * 1024 * 1024
"""A page of large messages (export jobs, whose accepted configs reach a few MB each) holds fewer
of them rather than pass the transport's 64 MiB limit and fail the list for everyone."""
KeyPart = int | str | datetime


@dataclass(frozen=True)
class Page(Generic[T]):
    items: list[T]
    next_page_token: str = ""


@dataclass(frozen=True)
class PageRequest:
    """A validated page request: how many items, and the key to continue after (if any)."""

    size: int
    after: tuple[Any, ...] | None = None
    scope: str = ""

    @property
    def limit(self) -> int:
        """Rows to fetch: one more than the page, to learn whether another page follows."""
        return self.size + 1

    def finish(
        self, rows: Sequence[R], key: Callable[[R], Sequence[KeyPart]]
    ) -> tuple[list[R], str]:
        """Drops the extra row and makes the next token from the last row kept ("" at the end)."""
        if len(rows) <= self.size:
            return list(rows), ""
        kept = list(rows[: self.size])
        return kept, encode_token(self.scope, key(kept[-1]))

    def finish_within_bytes(
        self,
        rows: Sequence[R],
        key: Callable[[R], Sequence[KeyPart]],
        message: Callable[[R], M],
        max_bytes: int = MAX_PAGE_BYTES,
    ) -> Page[M]:
        """``finish`` for rows whose messages may be large: the page also stops before its
        messages pass ``max_bytes`` (it always holds one), and its token continues from there."""
        kept, token = self.finish(rows, key)
        items: list[M] = []
        total = 0
        for row in kept:
            item = message(row)
            total += item.ByteSize()
            if items and total > max_bytes:
                return Page(items, encode_token(self.scope, key(kept[len(items) - 1])))
            items.append(item)
        return Page(items, token)


def resolve_page_size(requested: int, *, default: int, maximum: int) -> int:
    """0 means the default; negative or above ``maximum`` is rejected, not clamped."""
    if requested < 0:
        raise InvalidArgument(
            f"page_size is {requested}", field="page_size", fix=f"use 0 (default) to {maximum}"
        )
    if requested > maximum:
        raise InvalidArgument(
            f"page_size {requested} is larger than the maximum {maximum}",
            field="page_size",
            fix=f"request at most {maximum} items and follow next_page_token",
        )
    return requested or default


def scope_of(*parts: object) -> str:
    """A short fingerprint of the list and its filters."""
    return hashlib.sha256(orjson.dumps([str(p) for p in parts])).hexdigest()[:16]


def encode_token(scope: str, key: Sequence[KeyPart]) -> str:
    plain = [k.isoformat() if isinstance(k, datetime) else k for k in key]
    return base64.urlsafe_b64encode(orjson.dumps({"s": scope, "k": plain})).decode().rstrip("=")


def decode_token(token: str, scope: str, key_types: Sequence[type]) -> tuple[Any, ...]:
    """The key stored in ``token``; InvalidArgument(page_token) for anything malformed."""
    bad = InvalidArgument(
        "page_token is not one this list issued",
        field="page_token",
        fix="pass next_page_token from the previous response unchanged, with the same filters",
    )
    try:
        payload = orjson.loads(base64.urlsafe_b64decode(token + "=" * (-len(token) % 4)))
    except (binascii.Error, ValueError) as error:
        raise bad from error
    if not isinstance(payload, dict) or payload.get("s") != scope:
        raise bad
    key = payload.get("k")
    if not isinstance(key, list) or len(key) != len(key_types):
        raise bad
    try:
        return tuple(_typed(value, kind) for value, kind in zip(key, key_types, strict=True))
    except (TypeError, ValueError) as error:
        raise bad from error


def _typed(value: Any, kind: type) -> Any:
    if kind is datetime:
        if not isinstance(value, str):
            raise TypeError("timestamp expected")
        return datetime.fromisoformat(value)
    if type(value) is not kind:
        raise TypeError(f"{kind.__name__} expected")
    return value


def page_request(
    page_size: int,
    page_token: str,
    *,
    scope: str,
    key_types: Sequence[type],
    default: int,
    maximum: int,
) -> PageRequest:
    size = resolve_page_size(page_size, default=default, maximum=maximum)
    after = decode_token(page_token, scope, key_types) if page_token else None
    return PageRequest(size=size, after=after, scope=scope)
