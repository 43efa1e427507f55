"""The main thread's wait for a stop hears a signal whichever thread the kernel delivered it to."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor

import pytest
from mistudio_common.stop_signal import StopWait

# The signal goes to a thread other than the main one, as the kernel may pick any thread of a
# process that has gRPC's: a main thread blocked in a read is not interrupted then, and a
# handler that only ran on it (what the store child had) never ran (its SIGTERM was ignored).
WAITER = """
import signal, sys, threading, time
from mistudio_common.stop_signal import StopWait
wait = StopWait([signal.SIGTERM])
def deliver():
    time.sleep(0.2)  # the main thread is in its read by then
    if sys.argv[1] == "signal":
        signal.pthread_kill(threading.get_ident(), signal.SIGTERM)
    else:
        wait.wake()
threading.Thread(target=deliver).start()
heard = wait.wait()
print(heard.name if heard else "woken")
"""


@pytest.mark.parametrize(("delivery", "heard"), [("signal", "SIGTERM"), ("wake", "woken")])
def test_the_wait_ends_on_a_signal_another_thread_took_or_on_a_wake(
    delivery: str, heard: str
) -> None:
    done = subprocess.run(
        [sys.executable, "-c", WAITER, delivery],
        capture_output=True,
        text=True,
        timeout=30,
        env={**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)},
    )
    assert (done.returncode, done.stdout.strip()) == (0, heard), done.stderr


def test_only_the_main_thread_can_wait() -> None:
    with ThreadPoolExecutor(1) as other, pytest.raises(RuntimeError, match="main thread"):
        other.submit(StopWait, [signal.SIGTERM]).result()
