"""A streaming structural check of JSON bytes that builds no Python objects: one compiled pass
proves the bytes strict JSON and records where the values of the first few levels lie.

The validator parsed every written file in full (orjson) only to read a handful of values (a
feature's index, the names of a batch) and to learn that the bytes parse; building and freeing
those objects was about half of its CPU. The outline accepts only a plain subset of what orjson
accepts (no \\u, \\b or \\f escape, at most 20 integer digits and 2 exponent digits, nesting within
``MAX_JSON_DEPTH``), so bytes it accepts orjson parses too, and a value read from a span is the
value orjson gives there; bytes it refuses go the way they went before.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import orjson

from mistudio_export.limits import MAX_JSON_DEPTH

OBJECT, ARRAY, STRING, NUMBER, LITERAL = 1, 2, 3, 4, 5
"""A node's kind."""
PARENT, KEY_START, KEY_END, START, END, KIND, CHILDREN = range(7)
"""A node's columns: its container's node (-1 for the root), the span of its key's text (-1 when
it is an array's element) and of its value's bytes, its kind, its members' or elements' count."""
INVALID, OVERFLOW = -1, -2
"""What the kernel returns in place of a count of nodes."""


@dataclass(frozen=True, slots=True)
class Outline:
    """The nodes of a document's first levels: node 0 is the document's value, its members or
    elements come next in order, then theirs (as they occur in the bytes)."""

    data: bytes
    nodes: np.ndarray  # [nodes, 7] int64, columns PARENT .. CHILDREN

    def children(self, node: int) -> np.ndarray:
        """The member or element nodes of ``node`` [children], in order."""
        return np.flatnonzero(self.nodes[:, PARENT] == node)

    def key(self, node: int) -> bytes:
        """The text of ``node``'s key as written (b"" for an element)."""
        return self.data[self.nodes[node, KEY_START] : self.nodes[node, KEY_END]]

    def member(self, node: int, key: bytes) -> int | None:
        """The node of ``key`` in object ``node`` (the last one: orjson keeps the last of equal
        keys), or None. ``key`` holds no character JSON may escape but as \\u (none of " \\ /):
        then its text is the same in every document the outline accepts."""
        found = None
        for child in self.children(node).tolist():
            if self.key(child) == key:
                found = child
        return found

    def kind(self, node: int) -> int:
        return int(self.nodes[node, KIND])

    def get(self, node: int, key: bytes) -> Any:
        """``node``'s value's ``get(key)`` (None when it is no object or lacks the key)."""
        member = self.member(node, key) if self.kind(node) == OBJECT else None
        return None if member is None else self.value(member)

    def value(self, node: int) -> Any:
        """The value at ``node``, parsed from its bytes alone."""
        return orjson.loads(self.data[self.nodes[node, START] : self.nodes[node, END]])


def outline(data: bytes, depth: int, capacity: int = 4096) -> Outline | None:
    """The outline of ``data`` down to ``depth`` levels below the document's value (0: the
    value alone), or None when the bytes are not plainly strict JSON or hold over ``capacity``
    nodes in those levels."""
    # numba and the compiled kernel load here, in a process that outlines a file: the writers'
    # processes import this package too (0.75 CPU-s a process)
    from mistudio_export.validation.outline_kernel import outline_nodes

    nodes = np.empty((capacity, 7), dtype=np.int64)
    count = outline_nodes(np.frombuffer(data, dtype=np.uint8), depth, MAX_JSON_DEPTH, nodes)
    return None if count < 0 else Outline(data, nodes[:count])
