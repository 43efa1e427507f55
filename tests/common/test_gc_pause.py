"""The collector's pause around allocation-heavy work and start-up imports, and its skip at a
process's exit."""

from __future__ import annotations

import gc
import os
import subprocess
import sys

from mistudio_common.gc_pause import collector_paused

EXIT_PROBE = """
import atexit, gc
atexit.register(lambda: print("registered before:", gc.get_freeze_count() > 0))
from mistudio_common.gc_pause import skip_final_collection
skip_final_collection()
atexit.register(lambda: print("registered after:", gc.get_freeze_count() > 0))
"""

START_UP_PROBE = """
import gc
from mistudio_common.gc_pause import start_up_kept
with start_up_kept():
    print("collecting in the block:", gc.isenabled())
    modules = [[n] for n in range(10_000)]
print("collecting after:", gc.isenabled())
print("kept:", gc.get_freeze_count() >= 10_000)
kept = gc.get_freeze_count()
with start_up_kept():
    later = [[n] for n in range(10_000)]
print("the second block kept more:", gc.get_freeze_count() > kept)
"""


def _probe(code: str) -> list[str]:
    """``code``'s printed lines, run in a new interpreter (the probes change its collector)."""
    done = subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        check=True,
        env={**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)},
    )
    return done.stdout.splitlines()


def test_collector_is_paused_in_the_block_and_resumed_after() -> None:
    assert gc.isenabled()
    with collector_paused():
        assert not gc.isenabled()
    assert gc.isenabled()


def test_exit_freezes_the_heap_after_the_handlers_registered_later() -> None:
    # atexit runs handlers last-registered first: the later one sees every object still
    # collectable, the freeze comes next, then the earlier handler.
    assert _probe(EXIT_PROBE) == ["registered after: False", "registered before: True"]


def test_a_start_up_block_runs_without_collections_and_keeps_what_it_made_for_good() -> None:
    assert _probe(START_UP_PROBE) == [
        "collecting in the block: False",
        "collecting after: True",
        "kept: True",
        "the second block kept more: False",
    ]
