"""One torch thread for these tests: the tensors are tiny, and on a shared 2-core machine extra
threads only wait on each other (training steps ran 50x slower with two)."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
import torch


@pytest.fixture(autouse=True, scope="package")
def one_torch_thread() -> Iterator[None]:
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)
