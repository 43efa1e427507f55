"""One real store + compute + export stack per test module, and a tiny registered SAE."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from mistudio.common.v1 import tokens_pb2 as tpb

from tests.export.service.stack import (
    Stack,
    register_sae,
    start_stack,
    token_source,
    write_sae_folder,
    write_tokens,
)


@pytest.fixture(scope="module")
def workdir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("export-service")


@pytest.fixture(scope="module")
def stack(workdir: Path) -> Iterator[Stack]:
    running = start_stack(workdir / "data")
    yield running
    running.stop()


@pytest.fixture(scope="module")
def sae_folder(workdir: Path) -> Path:
    return write_sae_folder(workdir / "sae")


@pytest.fixture(scope="module")
def tokens(workdir: Path) -> tpb.TokenSource:
    return token_source(write_tokens(workdir / "tokens.npy", rows=32))


@pytest.fixture(scope="module")
def sae_id(stack: Stack, sae_folder: Path) -> str:
    return register_sae(stack, "tiny-sae", str(sae_folder)).sae_id
