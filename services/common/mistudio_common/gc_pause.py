"""Pausing Python's cyclic garbage collector around allocation-heavy work, and skipping it at
a process's exit.

Generating and validating files allocate millions of short-lived, acyclic objects (token and
value lists, row dicts) that reference counting frees on its own; importing TransformerLens
allocates hundreds of thousands of long-lived ones. Each of them still counts towards the
collector's thresholds, and every full collection walks the whole heap, which in the service
process includes torch and the models: measured, that made writing the importer rows 25-60%
slower and the TransformerLens import a third slower. Cycles made meanwhile are collected once
the pause ends.
"""

from __future__ import annotations

import atexit
import gc
from collections.abc import Iterator
from contextlib import contextmanager


@contextmanager
def collector_paused() -> Iterator[None]:
    """Disables the collector for the block, unless something else already had."""
    was_enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if was_enabled:
            gc.enable()


def skip_final_collection() -> None:
    """Makes this process's exit skip the interpreter's last collections, which walk every
    object it made for memory the process gives back anyway: after a local export about a CPU
    second in the CLI's process; for the store's process and each export worker, whose exits
    their parent waits for, 0.25 and 0.1 CPU-s (measured). Atexit handlers still run."""
    atexit.register(gc.freeze)
