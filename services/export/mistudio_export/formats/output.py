"""What a format writer hands back: how many features it wrote and what it had to leave out."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True, slots=True)
class FormatOutput:
    root: Path
    n_features: int
    notes: tuple[str, ...] = ()
    """Deliberate losses (truncations, skipped features), one readable sentence each."""
