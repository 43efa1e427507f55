"""What the validators remember per feature across files, in sorted numpy columns.

A 131,072-feature export held about 3 KB a feature in the validation processes as dicts and sets
of Python objects (an int, a string and a tuple each, plus the table slot); these keep 16 to 24
bytes. The keys of the file being read wait in a dict, at most one file's rows (bounded by the
writers' batch size), and join the columns when the file ends.
"""

from __future__ import annotations

from collections.abc import Hashable, Iterator

import numpy as np

_INT64_MIN, _INT64_MAX = -(2**63), 2**63 - 1


def _column_key(key: Hashable) -> int | None:
    """``key`` as the columns keep it; None when it is kept apart."""
    return int(key) if isinstance(key, int) and _INT64_MIN <= key <= _INT64_MAX else None


class FirstSeen:
    """Keys (feature indices) and the place, file and line, where each was first added.

    Integers that fit 64 bits go to the columns; any other key (a larger integer, an index
    written as text that is not plain digits) is kept as it is, apart: a hostile file may hold
    such keys, a written one does not."""

    def __init__(self) -> None:
        self._keys = np.empty(0, dtype=np.int64)  # [seen], sorted
        self._file = np.empty(0, dtype=np.int32)  # [seen], into self._files
        self._line = np.empty(0, dtype=np.int64)  # [seen]
        self._files: list[str] = []
        self._file_no: dict[str, int] = {}
        self._pending: dict[int, tuple[int, int]] = {}
        self._other: dict[Hashable, tuple[int, int]] = {}

    def __contains__(self, key: Hashable) -> bool:
        return self._find(key) is not None

    def where(self, key: Hashable) -> tuple[str, int] | None:
        """(file, line) where ``key`` was first added; None when it never was."""
        found = self._find(key)
        return None if found is None else (self._files[found[0]], found[1])

    def add(self, key: Hashable, file: str, line: int = 0) -> None:
        """Remembers ``key`` at ``file``:``line`` unless it was added before."""
        if key in self:
            return
        number = self._file_no.setdefault(file, len(self._file_no))
        if number == len(self._files):
            self._files.append(file)
        column = _column_key(key)
        if column is not None:
            self._pending[column] = (number, line)
        else:
            self._other[key] = (number, line)

    def end_file(self) -> None:
        """Moves the keys added since the last call into the columns."""
        if not self._pending:
            return
        keys = np.fromiter(self._pending, dtype=np.int64, count=len(self._pending))
        places = np.array(list(self._pending.values()), dtype=np.int64).reshape(-1, 2)
        self._pending = {}
        order = np.argsort(keys)
        at = np.searchsorted(self._keys, keys[order])  # none is in the columns yet
        self._keys = np.insert(self._keys, at, keys[order])  # one copy of each column
        self._file = np.insert(self._file, at, places[order, 0].astype(np.int32))
        self._line = np.insert(self._line, at, places[order, 1])

    def missing_from(self, other: FirstSeen) -> Iterator[tuple[Hashable, str, int]]:
        """(key, file, line) of each key added here but not to ``other``."""
        self.end_file()
        other.end_file()
        for at in np.flatnonzero(~np.isin(self._keys, other._keys)).tolist():
            yield int(self._keys[at]), self._files[self._file[at]], int(self._line[at])
        for key, (number, line) in self._other.items():
            if key not in other:
                yield key, self._files[number], line

    def __len__(self) -> int:
        return len(self._keys) + len(self._pending) + len(self._other)

    def _find(self, key: Hashable) -> tuple[int, int] | None:
        column = _column_key(key)
        if column is None:
            return self._other.get(key)
        pending = self._pending.get(column)
        if pending is not None:
            return pending
        at = int(np.searchsorted(self._keys, column))
        if at < len(self._keys) and self._keys[at] == column:
            return int(self._file[at]), int(self._line[at])
        return None


class Maxima:
    """The largest value given per key: the importer's maximum activation per feature."""

    def __init__(self) -> None:
        self._keys = np.empty(0, dtype=np.int64)  # [keys], sorted
        self._values = np.empty(0, dtype=np.float64)  # [keys]
        self._pending: dict[int, float] = {}
        self._other: dict[Hashable, float] = {}

    def update(self, key: Hashable, value: float) -> None:
        column = _column_key(key)
        if column is not None and type(value) is float:
            self._pending[column] = max(value, self._pending.get(column, value))
        else:  # kept exactly: an integer value may not fit a float
            self._other[key] = max(value, self._other.get(key, value))

    def get(self, key: Hashable) -> float | None:
        """The largest value given for ``key``; None when none was."""
        found = [self._other[key]] if key in self._other else []
        column = _column_key(key)
        if column is not None:
            if column in self._pending:
                found.append(self._pending[column])
            at = int(np.searchsorted(self._keys, column))
            if at < len(self._keys) and self._keys[at] == column:
                found.append(float(self._values[at]))
        return max(found) if found else None

    def end_file(self) -> None:
        """Merges the values given since the last call into the columns."""
        if not self._pending:
            return
        keys = np.concatenate([self._keys, np.fromiter(self._pending, dtype=np.int64)])
        values = np.concatenate(
            [self._values, np.fromiter(self._pending.values(), dtype=np.float64)]
        )
        self._pending = {}
        order = np.argsort(keys, kind="stable")
        keys, values = keys[order], values[order]
        starts = np.flatnonzero(np.r_[True, keys[1:] != keys[:-1]])
        self._keys, self._values = keys[starts], np.maximum.reduceat(values, starts)
