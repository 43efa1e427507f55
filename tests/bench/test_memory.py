"""The bench's memory readings: the export's process alone, and with the processes it starts."""

from __future__ import annotations

import subprocess
import sys
import time

from bench.ours_job import _rss_mb, _tree_mb
from bench.run import memory_size

CHILD_MB = 200
TOUCH = f"b = bytearray({CHILD_MB} << 20); b[::4096] = b'x' * len(b[::4096]); print(flush=True)"


def test_memory_with_children_adds_each_child_s_private_memory() -> None:
    child = subprocess.Popen(
        [sys.executable, "-c", f"{TOUCH}; import time; time.sleep(60)"],
        stdout=subprocess.PIPE,
    )
    try:
        assert child.stdout is not None
        child.stdout.readline()  # its pages are touched
        time.sleep(0.1)
        assert _tree_mb() - _rss_mb() >= 0.9 * CHILD_MB
    finally:
        child.kill()
        child.wait()
    assert _tree_mb() - _rss_mb() < 0.1 * CHILD_MB


def test_memory_sizes_read_as_powers_of_1024() -> None:
    assert memory_size("512M") == 512 << 20
    assert memory_size("1G") == 1 << 30
    assert memory_size("1.5G") == 3 << 29
    assert memory_size("1000") == 1000
