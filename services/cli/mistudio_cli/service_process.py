"""A service of the local stack run in a child process, so that its Python work does not wait
on this process's interpreter lock (issue #14: the store's request handling competed with
compute's tensor loop and the export's writers).

The parent and the child speak one JSON object per line. On the child's stdin: the settings
fields the parent fixes (the rest come from the environment, as in-process), later a stop
request. On its stdout: ``{"port": N}`` once it serves, or ``{"error": ..., "port_in_use": ...}``
when it cannot. The child serves until a stop request, the end of its stdin (which also comes
when the parent dies in any way, so no child outlives its stack) or a SIGTERM, and then stops
gracefully. Its log goes to ``<data_dir>/<name>.log``, moved to ``<name>.log.1`` at a start that
finds it past ``LOG_ROTATE_BYTES``; the part of it this start wrote is in the error raised when
it fails.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import selectors
import signal
import subprocess
import sys
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

from mistudio_common.errors import Unavailable
from mistudio_common.gc_pause import skip_final_collection, start_up_kept
from mistudio_common.server import PortInUse, RunningServer
from mistudio_common.stop_signal import StopWait

log = logging.getLogger(__name__)

START_TIMEOUT_SECONDS = 120.0
"""Generous: on a loaded machine importing gRPC, SQLAlchemy and the protos takes seconds."""
STOP_MARGIN_SECONDS = 10.0
"""How long past its grace period a stopping child may take before it is killed."""
DEFAULT_GRACE_SECONDS = 2.0
"""The grace a child gives in-flight calls when its parent went away without asking."""
LOG_TAIL_CHARS = 4000
LOG_ROTATE_BYTES = 1 << 20
"""A log past this size is moved aside (replacing the one moved before) when a child starts:
each start appends a few KB, so the data folder keeps at most about twice this."""


@dataclass
class ServiceProcess:
    """A started child service: its address once :meth:`wait_ready` returned."""

    name: str
    process: subprocess.Popen[bytes]
    log_path: Path
    log_offset: int
    """Where this start's part of the log begins (the file is appended to across starts)."""
    port: int = 0
    _stopping: threading.Event = field(default_factory=threading.Event, init=False, repr=False)

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    def wait_ready(self, timeout_seconds: float = START_TIMEOUT_SECONDS) -> None:
        """Blocks until the child serves; raises :class:`PortInUse` or :class:`Unavailable`
        (with its log) when it cannot, and stops it when it takes longer than the timeout."""
        assert self.process.stdout is not None
        answer = _read_line(self.process.stdout, timeout_seconds)
        if answer is None:
            self._kill()
            raise Unavailable(
                f"the {self.name} process did not start serving within {timeout_seconds:g} s",
                fix=f"see its log {self.log_path}; on a loaded machine, retry",
            )
        reply = json.loads(answer) if answer else {}
        if "port" in reply:
            self.port = int(reply["port"])
            threading.Thread(target=self._watch, name=f"{self.name}-watch", daemon=True).start()
            return
        self.process.wait(STOP_MARGIN_SECONDS)
        if reply.get("port_in_use"):
            raise PortInUse(reply["error"])
        raise Unavailable(
            f"the {self.name} process exited with code {self.process.returncode} before serving"
            f": {reply.get('error', 'no answer')}\n{self.log_tail()}",
            fix=f"see its log {self.log_path}",
        )

    def stop(self, grace_seconds: float = DEFAULT_GRACE_SECONDS) -> None:
        """Asks the child to stop (in-flight calls get ``grace_seconds``) and waits for it."""
        self._stopping.set()
        assert self.process.stdin is not None
        with contextlib.suppress(BrokenPipeError):  # it has already exited
            if self.process.poll() is None:
                _send(self.process, {"stop_grace_seconds": grace_seconds})
            self.process.stdin.close()
        try:
            self.process.wait(grace_seconds + STOP_MARGIN_SECONDS)
        except subprocess.TimeoutExpired:
            log.error(f"the {self.name} process did not stop; killing it")
            self._kill()
        if self.process.stdout is not None:
            self.process.stdout.close()

    def log_tail(self) -> str:
        """The end of what this start of the child wrote to its log."""
        with self.log_path.open("rb") as logged:
            logged.seek(self.log_offset)
            return logged.read().decode(errors="replace")[-LOG_TAIL_CHARS:]

    def _kill(self) -> None:
        self._stopping.set()
        self.process.kill()
        self.process.wait()

    def _watch(self) -> None:
        """Reports a child that exits while the stack still needs it (its peers then wait for
        it as for any store that is out of reach)."""
        code = self.process.wait()
        if not self._stopping.is_set():
            log.error(
                f"the {self.name} process exited with code {code} while serving; its log "
                f"{self.log_path} ends:\n{self.log_tail()}"
            )


def start_service_process(name: str, settings: dict[str, Any], data_dir: Path) -> ServiceProcess:
    """Starts service ``name`` with the ``settings`` fields (JSON-able values) fixed, without
    waiting for it: call :meth:`ServiceProcess.wait_ready` once the parent's own start-up work
    is done, so both go on at the same time."""
    if name not in SERVICES:
        raise ValueError(f"no service {name!r} runs in a child process; known: {sorted(SERVICES)}")
    log_path = data_dir / f"{name}.log"
    _rotate(log_path)
    with log_path.open("ab") as logged:
        offset = logged.tell()
        process = subprocess.Popen(
            [sys.executable, "-m", __name__, name],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=logged,
            env={**os.environ, "PYTHONPATH": os.pathsep.join(p for p in sys.path if p)},
            start_new_session=True,  # Ctrl-C reaches the parent, which stops it in order
        )
    child = ServiceProcess(name, process, log_path, offset)
    _send(process, settings)
    return child


def _rotate(log_path: Path) -> None:
    with contextlib.suppress(FileNotFoundError):
        if log_path.stat().st_size > LOG_ROTATE_BYTES:
            os.replace(log_path, log_path.with_name(log_path.name + ".1"))


def _send(process: subprocess.Popen[bytes], message: dict[str, Any]) -> None:
    assert process.stdin is not None
    process.stdin.write(json.dumps(message, default=str).encode() + b"\n")
    process.stdin.flush()


def _read_line(stream: IO[bytes], timeout_seconds: float) -> bytes | None:
    """One line (empty at end of file), or None when none came within the timeout."""
    with selectors.DefaultSelector() as selector:
        selector.register(stream, selectors.EVENT_READ)
        if not selector.select(timeout_seconds):
            return None
    return stream.readline()


# The child's side


def _store() -> tuple[type[Any], Callable[[Any], RunningServer]]:
    from mistudio_store.config import StoreSettings
    from mistudio_store.server import build_store_server

    return StoreSettings, build_store_server


SERVICES: dict[str, Callable[[], tuple[type[Any], Callable[[Any], RunningServer]]]] = {
    "store": _store,
}
"""The services that can run as a child: their settings type and server builder."""


def child_main(name: str) -> int:
    """Runs service ``name`` as the parent asks on stdin and answers on stdout."""
    from mistudio_common.logging_setup import configure_logging

    skip_final_collection()  # the parent's stop waits for this process's exit
    stop = _StopWait()  # before the port is answered: a SIGTERM may follow at once
    with start_up_kept():
        settings_type, build = SERVICES[name]()
    try:
        settings = settings_type(**json.loads(_stdin_line()))
        configure_logging(name, settings.log_level)
        running = build(settings)
    except PortInUse as error:
        _answer({"error": str(error), "port_in_use": True})
        return 1
    except BaseException as error:
        _answer({"error": f"{type(error).__name__}: {error}"})
        raise
    _answer({"port": running.port})
    running.stop(stop.grace_seconds())
    return 0


class _StopWait:
    """Waits for the child's stop: the parent's stop request, the end of stdin (the parent is
    gone) or a SIGTERM. Stdin is read in a thread of its own, which wakes the main thread."""

    def __init__(self) -> None:
        self._wait = StopWait([signal.SIGTERM])
        self._asked: list[float] = []

    def _read_stop(self) -> None:
        line = _stdin_line()  # a stop request, or empty once the parent is gone
        self._asked.append(
            float(json.loads(line)["stop_grace_seconds"]) if line else DEFAULT_GRACE_SECONDS
        )
        self._wait.wake()

    def grace_seconds(self) -> float:
        """Blocks until the child is to stop; the grace its in-flight calls get."""
        threading.Thread(target=self._read_stop, name="stop-request", daemon=True).start()
        if self._wait.wait() is not None:
            log.info("stopping on SIGTERM", extra={"grace_seconds": DEFAULT_GRACE_SECONDS})
            return DEFAULT_GRACE_SECONDS
        return self._asked[0]


def _stdin_line() -> bytes:
    """One line of stdin (empty at its end), read from the file descriptor byte by byte: a
    thread blocked in ``sys.stdin``'s buffered reader holds its lock, which stops the
    interpreter's exit with a fatal error, and a buffered read could take in a later line."""
    line = bytearray()
    while not line.endswith(b"\n"):
        byte = os.read(sys.stdin.fileno(), 1)
        if not byte:
            break
        line += byte
    return bytes(line)


def _answer(message: dict[str, Any]) -> None:
    sys.stdout.write(json.dumps(message) + "\n")
    sys.stdout.flush()


if __name__ == "__main__":
    sys.exit(child_main(sys.argv[1]))
