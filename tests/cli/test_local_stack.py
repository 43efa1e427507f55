"""The local stack's store runs in a child process that starts, fails and stops visibly."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
from mistudio.store.v1 import store_service_pb2 as spb
from mistudio.store.v1 import store_service_pb2_grpc as sgrpc
from mistudio_cli.local_stack import start_local_stack
from mistudio_cli.service_process import LOG_ROTATE_BYTES, start_service_process
from mistudio_common.errors import Unavailable
from mistudio_common.server import PortInUse, insecure_channel


def list_saes(address: str) -> spb.ListSaesResponse:
    with insecure_channel(address) as channel:
        return sgrpc.StoreServiceStub(channel).ListSaes(spb.ListSaesRequest(), timeout=30)


def gone(pid: int, within_seconds: float) -> bool:
    """Exited within the time (a zombie nobody has reaped yet counts as exited)."""
    deadline = time.monotonic() + within_seconds
    while time.monotonic() < deadline:
        try:
            state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
        except FileNotFoundError:
            return True
        if state == "Z":
            return True
        time.sleep(0.1)
    return False


def test_the_stack_serves_its_store_from_a_child_process_and_stops_it(tmp_path: Path) -> None:
    with start_local_stack(tmp_path, device="cpu") as stack:
        assert stack.store.process.pid != os.getpid()
        assert list_saes(stack.addresses["store"]).saes == []
    assert stack.store.process.returncode == 0  # stopped when asked, not killed
    assert (tmp_path / "store.db").is_file()


def test_a_store_port_in_use_is_port_in_use_naming_the_port(tmp_path: Path) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        with pytest.raises(PortInUse, match=f"127.0.0.1:{port}: the port is in use"):
            start_local_stack(tmp_path, store_port=port, device="cpu")


def test_a_store_that_cannot_start_is_reported_with_its_exit_code_and_log(tmp_path: Path) -> None:
    store = start_service_process(
        "store", {"data_dir": str(tmp_path), "port": 0, "database_url": "nodb://x"}, tmp_path
    )
    with pytest.raises(Unavailable, match=r"exited with code 1 before serving") as raised:
        store.wait_ready()
    assert "nodb" in str(raised.value)  # the database URL SQLAlchemy could not load
    assert "Traceback" in raised.value.message  # the log's part from this start
    assert str(tmp_path / "store.log") in raised.value.fix


def test_a_store_that_dies_while_serving_is_logged_with_its_exit_code(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    store = start_service_process("store", {"data_dir": str(tmp_path), "port": 0}, tmp_path)
    store.wait_ready()
    store.process.kill()
    deadline = time.monotonic() + 30
    while "exited with code -9 while serving" not in caplog.text:
        assert time.monotonic() < deadline, caplog.text
        time.sleep(0.1)
    assert str(tmp_path / "store.log") in caplog.text
    store.stop()


PARENT = """
import sys, time
from pathlib import Path
from mistudio_cli.service_process import LOG_ROTATE_BYTES, start_service_process
store = start_service_process("store", {"data_dir": sys.argv[1], "port": 0}, Path(sys.argv[1]))
store.wait_ready()
print(store.process.pid, flush=True)
time.sleep(600)
"""


def test_the_child_store_exits_when_its_parent_dies(tmp_path: Path) -> None:
    parent = subprocess.Popen(
        [sys.executable, "-c", PARENT, str(tmp_path)], stdout=subprocess.PIPE, text=True
    )
    assert parent.stdout is not None
    child_pid = int(parent.stdout.readline())
    assert not gone(child_pid, 0.5)
    parent.kill()
    parent.wait()
    assert gone(child_pid, 30)


def test_a_sigterm_stops_the_child_store_gracefully(tmp_path: Path) -> None:
    store = start_service_process("store", {"data_dir": str(tmp_path), "port": 0}, tmp_path)
    store.wait_ready()
    store.process.send_signal(signal.SIGTERM)
    assert store.process.wait(30) == 0  # stopped, not ended by the signal (-15)
    assert "stopping on SIGTERM" in store.log_tail()
    store.stop()


def test_a_store_log_past_its_bound_is_moved_aside_at_the_next_start(tmp_path: Path) -> None:
    log = tmp_path / "store.log"
    earlier = b"an earlier start\n" * (LOG_ROTATE_BYTES // 17 + 1)
    log.write_bytes(earlier)
    for _ in range(2):
        with start_local_stack(tmp_path, device="cpu"):
            pass
    assert (tmp_path / "store.log.1").read_bytes() == earlier
    assert 0 < log.stat().st_size < LOG_ROTATE_BYTES


STACK_MODULES = """
import sys
from pathlib import Path
from mistudio_cli.local_stack import start_local_stack
with start_local_stack(Path(sys.argv[1]), device="cpu"):
    print(sorted(m for m in sys.modules if m.split(".")[0] == "minio"))
"""


def test_a_stack_on_a_folder_starts_without_the_s3_sdk(tmp_path: Path) -> None:
    """minio costs 0.15 of the stack start's 1.85 CPU-s to import (its admin client parses C
    declarations for its ciphers); only a bucket needs it. In a process of its own: the tests
    before this one may have imported it here."""
    started = subprocess.run(
        [sys.executable, "-c", STACK_MODULES, str(tmp_path)],
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ, "PYTHONPATH": os.pathsep.join(p for p in sys.path if p)},
    )
    assert started.returncode == 0, started.stderr
    assert started.stdout.strip() == "[]"
