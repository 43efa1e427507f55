"""What a format writer hands back: the files it wrote and what it had to leave out."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True, slots=True)
class FormatOutput:
    root: Path
    files: tuple[Path, ...]
    """Every file written, in write order."""
    n_features: int
    notes: tuple[str, ...] = ()
    """Deliberate losses (truncations, skipped features), one readable sentence each."""
