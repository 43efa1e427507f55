"""The export service's health reflects what it needs: store, compute and a writable bucket."""

from __future__ import annotations

import socket
from pathlib import Path

from mistudio_common.healthcheck import check
from mistudio_export.server import SERVICE_NAME, build_export_server
from mistudio_store.config import StoreSettings
from mistudio_store.server import build_store_server

from tests.export.service.stack import Stack


def free_address() -> str:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return f"127.0.0.1:{s.getsockname()[1]}"


def test_export_is_serving_when_everything_it_needs_is_up(stack: Stack) -> None:
    assert stack.export.monitor.check_once() == []
    assert check(stack.export.address) and check(stack.export.address, SERVICE_NAME)


def test_export_is_not_serving_while_compute_is_unreachable(stack: Stack) -> None:
    settings = stack.settings().model_copy(update={"compute_address": free_address()})
    export = build_export_server(settings)
    try:
        assert export.monitor.check_once() == ["compute"]
        assert not check(export.address, SERVICE_NAME)
    finally:
        export.stop(grace_seconds=0)


def test_export_is_not_serving_while_its_store_is_down_and_serving_once_it_is_back(
    stack: Stack, tmp_path: Path
) -> None:
    store = build_store_server(StoreSettings(data_dir=tmp_path / "store", port=0))
    address = store.address
    export = build_export_server(
        stack.settings().model_copy(
            update={"store_address": address, "data_dir": tmp_path / "export"}
        )
    )
    try:
        assert export.monitor.check_once() == []
        store.stop(grace_seconds=0)
        assert export.monitor.check_once() == ["store"]
        assert not check(export.address, SERVICE_NAME)
        port = int(address.rsplit(":", 1)[1])
        store = build_store_server(StoreSettings(data_dir=tmp_path / "store", port=port))
        assert export.monitor.check_once() == []
        assert check(export.address, SERVICE_NAME)
    finally:
        export.stop(grace_seconds=0)
        store.stop(grace_seconds=0)


def test_export_is_not_serving_while_the_bucket_takes_no_writes(
    stack: Stack, tmp_path: Path
) -> None:
    archives = tmp_path / "archives"
    archives.mkdir()
    (archives / "health").write_text("a file where the probe needs a folder")
    url = f"file://{archives}"
    export = build_export_server(stack.settings().model_copy(update={"object_store_url": url}))
    try:
        assert export.monitor.check_once() == ["object store"]
        assert not check(export.address)
    finally:
        export.stop(grace_seconds=0)
