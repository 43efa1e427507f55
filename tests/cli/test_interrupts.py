"""Ctrl-C while the CLI follows an export's progress stream cancels the job and ends the run with
KeyboardInterrupt, wherever in gRPC's wait for the next message the signal lands."""

from __future__ import annotations

import os
import signal
import threading
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import grpc
import pytest
from mistudio.common.v1 import progress_pb2 as ppb
from mistudio.export.v1 import export_service_pb2 as epb
from mistudio.export.v1 import export_service_pb2_grpc as egrpc
from mistudio_cli.commands import run_export
from mistudio_cli.connection import Services


class OneMessageThenWait(egrpc.ExportServiceServicer):
    """An export that reports its job id, then runs until its caller goes away."""

    def __init__(self) -> None:
        self.cancelled: list[str] = []

    def StartExport(self, request: Any, context: grpc.ServicerContext) -> Iterator[Any]:
        yield epb.ExportProgress(progress=ppb.Progress(job_id="job-1"))
        while context.is_active():
            threading.Event().wait(0.05)

    def CancelExport(self, request: Any, context: grpc.ServicerContext) -> Any:
        self.cancelled.append(request.job_id)
        return epb.CancelExportResponse()


class SignalInsideTheWait:
    """The real stream, whose wait for its second message lets go of a lock as gRPC's
    ``Condition.wait`` does, with a Ctrl-C landing before the lock is taken back."""

    def __init__(self, stream: Any) -> None:
        self.stream = stream
        self.lock = threading.RLock()  # gRPC's Condition's
        self.reads = 0

    def __iter__(self) -> SignalInsideTheWait:
        return self

    def __next__(self) -> Any:
        self.reads += 1
        if self.reads == 2:
            with self.lock:
                self.lock.release()
                os.kill(os.getpid(), signal.SIGINT)  # in the main thread, raised right here
                self.lock.acquire()
        return next(self.stream)

    def cancel(self) -> bool:
        return bool(self.stream.cancel())


class Stub:
    def __init__(self, stub: egrpc.ExportServiceStub) -> None:
        self.stub = stub
        self.CancelExport = stub.CancelExport

    def StartExport(self, request: Any) -> SignalInsideTheWait:
        return SignalInsideTheWait(self.stub.StartExport(request))


@pytest.fixture
def export_service() -> Iterator[tuple[OneMessageThenWait, egrpc.ExportServiceStub]]:
    servicer = OneMessageThenWait()
    server = grpc.server(ThreadPoolExecutor(4))
    egrpc.add_ExportServiceServicer_to_server(servicer, server)
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    channel = grpc.insecure_channel(f"127.0.0.1:{port}")
    try:
        yield servicer, egrpc.ExportServiceStub(channel)
    finally:
        channel.close()
        server.stop(None)


def test_ctrl_c_inside_the_streams_wait_cancels_the_export_and_interrupts(
    export_service: tuple[OneMessageThenWait, egrpc.ExportServiceStub],
) -> None:
    servicer, stub = export_service
    services = Services(export=Stub(stub), store=None, compute=None, stack=None)  # type: ignore[arg-type]
    before = signal.getsignal(signal.SIGINT)

    with pytest.raises(KeyboardInterrupt):
        run_export(services, epb.StartExportRequest(request_id="r", sae_id="sae"))

    assert servicer.cancelled == ["job-1"]
    assert signal.getsignal(signal.SIGINT) is before
