"""Inter-service calls wait for a peer that is starting: a call made before the store listens
is answered once it is up, and a peer that never comes is given up after the fault patience."""

from __future__ import annotations

import socket
import threading
from collections.abc import Callable
from pathlib import Path

import pytest
from mistudio_common.dashboard import DashboardParams
from mistudio_common.errors import NotFound, Unavailable
from mistudio_common.retry import PeerWait
from mistudio_compute.store_client import StoreClient as ComputeStoreClient
from mistudio_export.clients import ComputeClient
from mistudio_export.clients import StoreClient as ExportStoreClient
from mistudio_export.peers import ComputationRequest, SaeRecord
from mistudio_store.config import StoreSettings
from mistudio_store.server import build_store_server

PATIENT = PeerWait(patience_seconds=60.0, call_seconds=10.0)


def free_address() -> str:
    """A loopback port nothing listens on yet (the store is started on it later)."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return f"127.0.0.1:{probe.getsockname()[1]}"


def answer_when_the_store_starts(call: Callable[[], object], tmp_path: Path, port: int) -> object:
    """Makes ``call`` while nothing listens, starts the store, and returns what the call got."""
    outcome: list[object] = []
    finished = threading.Event()

    def run() -> None:
        try:
            outcome.append(call())
        except Exception as error:  # handed to the test, which asserts on it
            outcome.append(error)
        finished.set()

    caller = threading.Thread(target=run, daemon=True)
    caller.start()
    assert not finished.wait(1.0), "the call gave up before its peer started"
    server = build_store_server(StoreSettings(data_dir=tmp_path, port=port))
    try:
        assert finished.wait(PATIENT.call_timeout)
    finally:
        server.stop(0)
    return outcome[0]


def test_an_export_call_made_while_the_store_starts_succeeds_once_it_is_up(
    tmp_path: Path,
) -> None:
    address = free_address()
    client = ExportStoreClient(address, wait=PATIENT)
    try:
        page = answer_when_the_store_starts(client.list_jobs, tmp_path, int(address.split(":")[1]))
    finally:
        client.close()
    assert not isinstance(page, Exception), page
    assert list(page.jobs) == []  # type: ignore[attr-defined]


def test_a_compute_call_made_while_the_store_starts_reaches_it_once_it_is_up(
    tmp_path: Path,
) -> None:
    address = free_address()
    client = ComputeStoreClient(address, wait=PATIENT)
    try:
        answer = answer_when_the_store_starts(
            lambda: client.get_sae("not-registered"), tmp_path, int(address.split(":")[1])
        )
    finally:
        client.close()
    assert isinstance(answer, NotFound)  # the store's own answer, not UNAVAILABLE


def test_a_store_that_never_starts_is_given_up_after_the_patience() -> None:
    client = ExportStoreClient(
        free_address(), wait=PeerWait(patience_seconds=0.5, call_seconds=0.5)
    )
    try:
        with pytest.raises(Unavailable):
            client.list_jobs()
    finally:
        client.close()


def test_a_computation_is_not_opened_until_compute_is_reachable() -> None:
    client = ComputeClient(free_address(), wait=PeerWait(patience_seconds=0.5))
    try:
        with pytest.raises(Unavailable) as caught:
            request = ComputationRequest("r", SaeRecord(sae_id="s"), DashboardParams(), None)
            client.compute_dashboards(request)
    finally:
        client.close()
    assert "compute service stayed unreachable" in caught.value.message
