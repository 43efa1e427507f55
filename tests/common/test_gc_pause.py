"""The collector's pause around allocation-heavy work, and its skip at a process's exit."""

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


def test_collector_is_paused_in_the_block_and_resumed_after() -> None:
    assert gc.isenabled()
    with collector_paused():
        assert not gc.isenabled()
    assert gc.isenabled()


def test_exit_freezes_the_heap_after_the_handlers_registered_later() -> None:
    done = subprocess.run(
        [sys.executable, "-c", EXIT_PROBE],
        capture_output=True,
        text=True,
        check=True,
        env={**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)},
    )
    # atexit runs handlers last-registered first: the later one sees every object still
    # collectable, the freeze comes next, then the earlier handler.
    assert done.stdout.splitlines() == ["registered after: False", "registered before: True"]
