"""A service of the local stack run in a child process, so that its Python work does not wait
on this process's interpreter lock (issue #14: the store's request handling competed with
compute's tensor loop and the export's writers).

The parent and the child speak one JSON object per line. On the child's stdin: the settings
fields the parent fixes (the rest come from the environment, as in-process), later a stop
request. On its stdout: ``{"port": N}`` once it serves, or ``{"error": ..., "port_in_use": ...}``
when it cannot. The child serves until a stop request or the end of its stdin, which also comes
when the parent dies in any way, so no child outlives its stack. Its log goes to
``<data_dir>/<name>.log``; the part of it this start wrote is in the error raised when it fails.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import selectors
import subprocess
import sys
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

from mistudio_common.errors import Unavailable
from mistudio_common.server import PortInUse, RunningServer

log = logging.getLogger(__name__)

START_TIMEOUT_SECONDS = 120.0
"""Generous: on a loaded machine importing gRPC, SQLAlchemy and the protos takes seconds."""
STOP_MARGIN_SECONDS = 10.0
"""How long past its grace period a stopping child may take before it is killed."""
DEFAULT_GRACE_SECONDS = 2.0
"""The grace a child gives in-flight calls when its parent went away without asking."""
LOG_TAIL_CHARS = 4000


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

    settings_type, build = SERVICES[name]()
    try:
        settings = settings_type(**json.loads(sys.stdin.buffer.readline()))
        configure_logging(name, settings.log_level)
        running = build(settings)
    except PortInUse as error:
        _answer({"error": str(error), "port_in_use": True})
        return 1
    except BaseException as error:
        _answer({"error": f"{type(error).__name__}: {error}"})
        raise
    _answer({"port": running.port})
    stop = sys.stdin.buffer.readline()  # a stop request, or empty once the parent is gone
    running.stop(float(json.loads(stop)["stop_grace_seconds"]) if stop else DEFAULT_GRACE_SECONDS)
    return 0


def _answer(message: dict[str, Any]) -> None:
    sys.stdout.write(json.dumps(message) + "\n")
    sys.stdout.flush()


if __name__ == "__main__":
    sys.exit(child_main(sys.argv[1]))
