from __future__ import annotations

import numpy as np
import pytest
import torch

from tests.compute.dashboards import tiny

# The test machine's cores are shared; one thread avoids oversubscription stalls.
torch.set_num_threads(1)


@pytest.fixture(scope="session", autouse=True)
def single_threaded_torch():
    """One torch thread for every test here, whatever earlier tests of the session set:
    multi-threaded BLAS may round a logit-lens matmul differently for another chunk shape,
    which the sharding tests compare bit for bit."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="session")
def model():
    return tiny.tiny_model()


@pytest.fixture(scope="session")
def tokens() -> np.ndarray:
    return tiny.tiny_tokens()


@pytest.fixture(scope="session")
def relu_sae(model, tokens: np.ndarray) -> tiny.ReluSAE:
    return tiny.make_sae(model, tokens, "relu")


@pytest.fixture(scope="session")
def topk_sae(model, tokens: np.ndarray) -> tiny.ReluSAE:
    return tiny.make_sae(model, tokens, "topk")
