"""The compiled pass of ``outline``: bytes (uint8) to the nodes of their first levels.

Compiled at its first call in a process, or loaded from the cache on disk (beside this module,
else ``NUMBA_CACHE_DIR``) that the image and ``make setup`` fill.
"""

from __future__ import annotations

import numpy as np
from numba import njit

from mistudio_export.validation.outline import (
    ARRAY,
    CHILDREN,
    END,
    INVALID,
    KEY_END,
    KEY_START,
    KIND,
    LITERAL,
    NUMBER,
    OBJECT,
    OVERFLOW,
    PARENT,
    START,
    STRING,
)


@njit(nogil=True, cache=True)
def _space(data, i):  # type: ignore[no-untyped-def]
    """The first position from ``i`` that is not JSON white space."""
    n = len(data)
    while i < n and (data[i] == 32 or data[i] == 10 or data[i] == 13 or data[i] == 9):
        i += 1
    return i


@njit(nogil=True, cache=True)
def _continuations(data, i, count, low, high):  # type: ignore[no-untyped-def]
    """The position after ``count`` UTF-8 continuation bytes from ``i``, the first within
    [low, high]; -1 when they are not."""
    if i + count > len(data) or not low <= data[i] <= high:
        return -1
    for k in range(1, count):
        if not 0x80 <= data[i + k] <= 0xBF:
            return -1
    return i + count


@njit(nogil=True, cache=True)
def _string(data, i):  # type: ignore[no-untyped-def]
    """The position after the string that opens at ``i``; -1 when it is not one (or holds an
    escape other than \\" \\\\ \\/ \\n \\r \\t, or bytes that are not valid UTF-8)."""
    n = len(data)
    if i >= n or data[i] != 34:
        return -1
    i += 1
    while i < n:
        b = data[i]
        if b == 34:
            return i + 1
        if b == 92:
            if i + 1 >= n:
                return -1
            e = data[i + 1]
            if not (e == 34 or e == 92 or e == 47 or e == 110 or e == 114 or e == 116):
                return -1
            i += 2
        elif b < 0x20:
            return -1
        elif b < 0x80:
            i += 1
        elif 0xC2 <= b <= 0xDF:
            i = _continuations(data, i + 1, 1, 0x80, 0xBF)
        elif b == 0xE0:
            i = _continuations(data, i + 1, 2, 0xA0, 0xBF)
        elif b == 0xED:  # no UTF-16 surrogates
            i = _continuations(data, i + 1, 2, 0x80, 0x9F)
        elif 0xE1 <= b <= 0xEF:
            i = _continuations(data, i + 1, 2, 0x80, 0xBF)
        elif b == 0xF0:
            i = _continuations(data, i + 1, 3, 0x90, 0xBF)
        elif 0xF1 <= b <= 0xF3:
            i = _continuations(data, i + 1, 3, 0x80, 0xBF)
        elif b == 0xF4:
            i = _continuations(data, i + 1, 3, 0x80, 0x8F)
        else:
            return -1
        if i < 0:
            return -1
    return -1


@njit(nogil=True, cache=True)
def _digits(data, i):  # type: ignore[no-untyped-def]
    n = len(data)
    while i < n and 48 <= data[i] <= 57:
        i += 1
    return i


@njit(nogil=True, cache=True)
def _number(data, i):  # type: ignore[no-untyped-def]
    """The position after the number at ``i``; -1 when it is none, or has over 20 integer
    digits or over 2 exponent digits (always finite then: orjson refuses what overflows)."""
    n = len(data)
    if i < n and data[i] == 45:
        i += 1
    if i >= n or not 48 <= data[i] <= 57:
        return -1
    end = i + 1 if data[i] == 48 else _digits(data, i)
    if end - i > 20:
        return -1
    i = end
    if i < n and data[i] == 46:
        end = _digits(data, i + 1)
        if end == i + 1:
            return -1
        i = end
    if i < n and (data[i] == 101 or data[i] == 69):
        i += 1
        if i < n and (data[i] == 43 or data[i] == 45):
            i += 1
        end = _digits(data, i)
        if end == i or end - i > 2:
            return -1
        i = end
    return i


@njit(nogil=True, cache=True)
def _literal(data, i):  # type: ignore[no-untyped-def]
    """The position after true, false or null at ``i``; -1 when there is none."""
    n, b = len(data), data[i]
    if b == 116 and i + 4 <= n and data[i + 1] == 114 and data[i + 2] == 117 and data[i + 3] == 101:
        return i + 4
    if (
        b == 102 and i + 5 <= n and data[i + 1] == 97 and data[i + 2] == 108
        and data[i + 3] == 115 and data[i + 4] == 101
    ):  # fmt: skip
        return i + 5
    if b == 110 and i + 4 <= n and data[i + 1] == 117 and data[i + 2] == 108 and data[i + 3] == 108:
        return i + 4
    return -1


@njit(nogil=True, cache=True)
def outline_nodes(data, max_depth, limit, nodes):  # type: ignore[no-untyped-def]
    """Fills ``nodes`` [capacity, 7] with the values down to ``max_depth``; their count, or
    INVALID / OVERFLOW. A loop with a stack of open containers (no recursion)."""
    n, capacity = len(data), nodes.shape[0]
    container = np.empty(limit + 1, np.int64)  # the node of each open container, or -1
    is_object = np.empty(limit + 1, np.bool_)
    children = np.zeros(limit + 1, np.int64)  # the values begun so far in each open container
    count, depth, key_start, key_end = 0, 0, -1, -1
    i = _space(data, 0)
    while True:
        # a value at ``i``, ``depth`` levels down
        if i >= n:
            return INVALID
        node = -1
        if depth > 0:
            children[depth - 1] += 1
        if depth <= max_depth:
            if count == capacity:
                return OVERFLOW
            node = count
            count += 1
            nodes[node, PARENT] = container[depth - 1] if depth > 0 else -1
            nodes[node, KEY_START], nodes[node, KEY_END], nodes[node, START] = key_start, key_end, i
        b = data[i]
        closed = False  # whether the value ended (else a container opened)
        if b == 123 or b == 91:
            if depth == limit:
                return INVALID
            if node >= 0:
                nodes[node, KIND] = OBJECT if b == 123 else ARRAY
            container[depth], is_object[depth], children[depth] = node, b == 123, 0
            depth += 1
            i = _space(data, i + 1)
            if i < n and data[i] == b + 2:  # } or ]: empty
                depth -= 1
                if node >= 0:
                    nodes[node, END], nodes[node, CHILDREN] = i + 1, 0
                i = _space(data, i + 1)
                closed = True
        else:
            if b == 34:
                end, kind = _string(data, i), STRING
            elif b == 45 or 48 <= b <= 57:
                end, kind = _number(data, i), NUMBER
            else:
                end, kind = _literal(data, i), LITERAL
            if end < 0:
                return INVALID
            if node >= 0:
                nodes[node, END], nodes[node, KIND], nodes[node, CHILDREN] = end, kind, 0
            i = _space(data, end)
            closed = True
        while closed:  # after a value: a separator, or the end of its container
            if depth == 0:
                return count if i == n else INVALID
            if i >= n:
                return INVALID
            b = data[i]
            if b == 44:
                i = _space(data, i + 1)
                closed = False
            elif b == (125 if is_object[depth - 1] else 93):
                depth -= 1
                if container[depth] >= 0:
                    nodes[container[depth], END] = i + 1
                    nodes[container[depth], CHILDREN] = children[depth]
                i = _space(data, i + 1)
            else:
                return INVALID
        key_start, key_end = -1, -1
        if is_object[depth - 1]:  # a member: its key, then its value
            end = _string(data, i)
            if end < 0:
                return INVALID
            key_start, key_end = i + 1, end - 1
            i = _space(data, end)
            if i >= n or data[i] != 58:
                return INVALID
            i = _space(data, i + 1)
