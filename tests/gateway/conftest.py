"""A real store + compute + export stack with a tiny registered SAE, and the gateway in front."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from mistudio.common.v1 import tokens_pb2 as tpb

from tests.export.service.stack import (
    Stack,
    recorded_tokens,
    register_sae,
    start_stack,
    token_source,
    write_sae_folder,
    write_tokens,
)
from tests.gateway.server import running_gateway


@pytest.fixture(scope="module")
def workdir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("gateway")


@pytest.fixture(scope="module")
def stack(workdir: Path) -> Iterator[Stack]:
    running = start_stack(workdir / "data")
    yield running
    running.stop()


@pytest.fixture(scope="module")
def tokens(workdir: Path) -> tpb.TokenSource:
    return token_source(write_tokens(workdir / "tokens.npy", rows=32))


@pytest.fixture(scope="module")
def sae_id(stack: Stack, workdir: Path, tokens: tpb.TokenSource) -> str:
    """Its recorded token source is what a dashboard request without tokens is computed on."""
    folder = str(write_sae_folder(workdir / "sae"))
    return register_sae(stack, "tiny-sae", folder, config=recorded_tokens(tokens)).sae_id


@pytest.fixture(scope="module")
def gateway(stack: Stack) -> Iterator[str]:
    with running_gateway(stack.export.address) as url:
        yield url
