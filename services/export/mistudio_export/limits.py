"""Every bound the export service puts on what it is sent or reads, in one place.

README's "Limits and inputs" lists them; the request bounds are checked where a request is
translated (``messages.export_options_from_pb``, the servicer), the archive and JSON bounds
wherever an archive or a folder is validated or an earlier archive is reused.
"""

from __future__ import annotations

from dataclasses import dataclass

from google.protobuf.descriptor import FieldDescriptor
from google.protobuf.message import Message
from mistudio_common.errors import InvalidArgument

_MIB = 1 << 20
_GIB = 1 << 30

MAX_NAME_CHARS = 256
"""Names and ids in a request: dataset_name, release_title, creator, np_model_id, owner, …"""
MAX_PATH_CHARS = 4096
"""A path in a request (tokens.token_file, tokens.text.paths): Linux's PATH_MAX."""
PATH_FIELDS = frozenset({"token_file", "paths"})
MAX_FEATURES_LISTED = 100_000
"""Indices in an explicit feature list (a range or "all" selects any number)."""
MAX_LIST_ITEMS = 1000
"""Any other repeated field of a request (formats, text paths)."""
# A whole message is bounded by the transport: mistudio_common.server.MAX_MESSAGE_BYTES (64 MiB).


def check_request_limits(message: Message, prefix: str) -> None:
    """Every string and list of ``message`` (recursively) within the bounds above;
    InvalidArgument names the first field over its bound as the request spells it."""
    for field, value in message.ListFields():
        name = f"{prefix}.{field.name}" if prefix else field.name
        repeated = field.is_repeated
        items = list(value) if repeated else [value]
        if repeated:
            bound = MAX_FEATURES_LISTED if field.name == "indices" else MAX_LIST_ITEMS
            _check_count(name, len(items), bound)
        for item in items:
            if field.type == FieldDescriptor.TYPE_STRING:
                bound = MAX_PATH_CHARS if field.name in PATH_FIELDS else MAX_NAME_CHARS
                _check_count(name, len(item), bound, "characters")
            elif field.type == FieldDescriptor.TYPE_MESSAGE and not _is_free_form(item):
                check_request_limits(item, name)


def check_name_length(field: str, value: str) -> None:
    """A name or id given outside a message (``sae_id``, ``owner``) within MAX_NAME_CHARS."""
    _check_count(field, len(value), MAX_NAME_CHARS, "characters")


def _is_free_form(message: Message) -> bool:
    """google.protobuf.Struct and friends: bounded by the message size alone."""
    return message.DESCRIPTOR.full_name.startswith("google.protobuf.")


def _check_count(field: str, count: int, bound: int, what: str = "entries") -> None:
    if count > bound:
        raise InvalidArgument(
            f"{field} has {count} {what}; at most {bound} are accepted",
            field=field,
            fix=f"shorten {field} to {bound} {what} or fewer (see README, Limits and inputs)",
        )


MAX_JSON_DEPTH = 64
"""Nesting of a JSON document being validated; export formats nest fewer than 10 levels."""
MAX_NUMBER_CHARS = 64
"""Characters of one JSON number; longer ones are not numbers any reader can hold."""


@dataclass(frozen=True)
class ArchiveLimits:
    """What an archive may expand to before anything is extracted (sizes as declared, which
    ``zipfile`` also enforces while reading)."""

    max_total_bytes: int = 64 * _GIB
    max_entry_bytes: int = 2 * _GIB
    """Also the limit for one file of an export folder."""
    max_entries: int = 2_000_000
    max_ratio: float = 200.0
    """Uncompressed / compressed size of an entry; export JSON deflates about 10:1."""
    ratio_min_bytes: int = _MIB
    """Entries smaller than this are not ratio-checked (tiny files compress unevenly)."""


ARCHIVE_LIMITS = ArchiveLimits()
