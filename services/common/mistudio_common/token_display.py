"""Which characters a token display string may hold: compute writes them, export validates them.

Control characters other than tab, newline and carriage return neither display nor survive every
store (Postgres refuses NUL), so they are written as the ``<0xHH>`` form of their UTF-8 bytes,
the same form byte tokens that are not valid UTF-8 already take.
"""

from __future__ import annotations

import re

CONTROL_CHARACTERS = re.compile("[\x00-\x08\x0b\x0c\x0e-\x1f\x7f-\x9f]")


def byte_escape(data: bytes) -> str:
    """``b"\\x1a"`` -> ``"<0x1A>"``."""
    return "".join(f"<0x{b:02X}>" for b in data)


def escape_controls(text: str) -> str:
    """``text`` with every control character in its ``<0xHH>`` byte form."""
    return CONTROL_CHARACTERS.sub(lambda m: byte_escape(m.group().encode("utf-8")), text)
