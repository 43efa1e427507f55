"""One real store + compute + export stack for the package, whose input root is ``root/`` (and
the stories260K model), a tiny registered SAE inside it, and an ``outside/`` folder next to it."""

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

MEMORY_BUDGET = 1 << 30
"""The compute service's budget here: the largest parameters over all 32 features exceed it."""


@pytest.fixture(scope="package")
def workdir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("security")


@pytest.fixture(scope="package")
def root(workdir: Path) -> Path:
    """The compute service's input root (the test stack allows ``data_dir``'s parent)."""
    return workdir / "root"


@pytest.fixture(scope="package")
def outside(workdir: Path) -> Path:
    folder = workdir / "outside"
    folder.mkdir()
    return folder


@pytest.fixture(scope="package")
def stack(root: Path) -> Iterator[Stack]:
    running = start_stack(root / "data", memory_budget_bytes=MEMORY_BUDGET)
    yield running
    running.stop()


@pytest.fixture(scope="package")
def sae_id(stack: Stack, root: Path) -> str:
    return register_sae(stack, "tiny-sae", str(write_sae_folder(root / "sae"))).sae_id


@pytest.fixture(scope="package")
def tokens(root: Path) -> tpb.TokenSource:
    return token_source(write_tokens(root / "tokens.npy", rows=32))
