"""SAE architecture names: SAELens's spelling of each ``mistudio.store.v1.Architecture`` value.

Each value of the enum is ``ARCHITECTURE_`` and the SAELens name in capitals
(``ARCHITECTURE_JUMPRELU`` is ``"jumprelu"``), so one rule here turns one into the other for
every service, rather than a table in each (this package may not import the store's contract:
callers pass the enum's value names, ``Architecture.Name(value)`` and ``Architecture.Value``).
"""

from __future__ import annotations

ENUM_PREFIX = "ARCHITECTURE_"
UNSPECIFIED = "ARCHITECTURE_UNSPECIFIED"


def saelens_name(enum_name: str) -> str:
    """``"ARCHITECTURE_TOPK"`` → ``"topk"``; ``""`` for ``ARCHITECTURE_UNSPECIFIED``."""
    if enum_name == UNSPECIFIED or not enum_name.startswith(ENUM_PREFIX):
        return ""
    return enum_name.removeprefix(ENUM_PREFIX).lower()


def enum_name(saelens_name: str) -> str:
    """``"topk"`` → ``"ARCHITECTURE_TOPK"`` (look it up in the enum: an unknown name is not
    there); ``ARCHITECTURE_UNSPECIFIED`` for an empty name."""
    return ENUM_PREFIX + saelens_name.upper() if saelens_name else UNSPECIFIED
