"""Pausing Python's cyclic garbage collector around allocation-heavy work, and skipping it at
a process's exit.

Generating and validating files allocate millions of short-lived, acyclic objects (token and
value lists, row dicts) that reference counting frees on its own; importing TransformerLens
allocates hundreds of thousands of long-lived ones. Each of them still counts towards the
collector's thresholds, and every full collection walks the whole heap, which in the service
process includes torch and the models: measured, that made writing the importer rows 25-60%
slower and the TransformerLens import a third slower. Cycles made meanwhile are collected once
the pause ends, except after a start-up's imports, whose objects stay for good.
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


@contextmanager
def start_up_kept() -> Iterator[None]:
    """For the block that imports most of a process's modules, which it keeps until it exits:
    the collector is paused, then what exists moves to the permanent generation, which no
    collection walks again. Measured: the local stack's imports otherwise ran full collections
    over their ~450,000 objects, 0.5 of 2.5 CPU-s. The few thousand objects that became cyclic
    garbage meanwhile are kept too. Only a process's first such block does this (a second
    start-up imports nothing new, and freezing then would keep the garbage made since)."""
    if gc.get_freeze_count():
        yield
        return
    was_enabled = gc.isenabled()
    gc.disable()
    try:
        yield
        gc.freeze()  # before the collector resumes, whose next young collection would walk all
    finally:
        if was_enabled:
            gc.enable()


def skip_final_collection() -> None:
    """Makes this process's exit skip the interpreter's last collections, which walk every
    object it made for memory the process gives back anyway: after a local export about a CPU
    second in the CLI's process; for the store's process and each export worker, whose exits
    their parent waits for, 0.25 and 0.1 CPU-s (measured). Atexit handlers still run."""
    atexit.register(gc.freeze)
