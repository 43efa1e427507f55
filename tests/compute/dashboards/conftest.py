from __future__ import annotations

import numpy as np
import pytest
import torch

from tests.compute.dashboards import tiny

# The test machine's cores are shared; one thread avoids oversubscription stalls.
torch.set_num_threads(1)


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
