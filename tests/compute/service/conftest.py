"""Real servers on loopback: a store on a temporary SQLite file and a compute service that
serves the tiny 2-layer test model, plus a registered tiny SAE and a token file."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import grpc
import numpy as np
import pytest
from mistudio.common.v1 import dashboard_pb2 as dpb
from mistudio.common.v1 import tokens_pb2 as tpb
from mistudio.compute.v1 import compute_service_pb2 as cpb
from mistudio.compute.v1 import compute_service_pb2_grpc as cgrpc
from mistudio.store.v1 import store_service_pb2 as spb
from mistudio.store.v1 import store_service_pb2_grpc as sgrpc
from mistudio_common.server import RunningServer, insecure_channel
from mistudio_compute.config import ComputeSettings
from mistudio_compute.input_files import Opener
from mistudio_compute.model_access import LoadedModel, load_model
from mistudio_compute.planning import ModelLoader
from mistudio_compute.server import ComputeServer, build_compute_server
from mistudio_store.config import StoreSettings
from mistudio_store.server import build_store_server

from tests.compute.builders import TINY_VOCAB, tiny_model, write_sae_folder

TINY_MODEL = "tiny-model"
HOOK = "blocks.0.hook_resid_post"
SAE_ID = "tiny-sae"
D_SAE = 64
ROWS, CONTEXT = 48, 16


@pytest.fixture(scope="session")
def tiny() -> LoadedModel:
    return tiny_model()


@pytest.fixture(scope="session")
def model_loader(tiny: LoadedModel) -> ModelLoader:
    """Serves the tiny model under its name; any other reference loads for real."""

    def load(
        ref: str, device: str, open_input: Opener, *, transformer_lens_forward: bool
    ) -> LoadedModel:
        if ref == TINY_MODEL:
            return tiny
        return load_model(
            ref, device, open_input, transformer_lens_forward=transformer_lens_forward
        )

    return load


@pytest.fixture
def store(tmp_path: Path) -> Iterator[RunningServer]:
    server = build_store_server(StoreSettings(data_dir=tmp_path / "store", port=0))
    yield server
    server.stop(0)


@pytest.fixture
def store_stub(store: RunningServer) -> Iterator[sgrpc.StoreServiceStub]:
    with insecure_channel(store.address) as channel:
        yield sgrpc.StoreServiceStub(channel)


@dataclass
class ComputeHarness:
    """Builds (and rebuilds, for restart tests) the compute server on one data folder."""

    settings: ComputeSettings
    loader: ModelLoader
    server: ComputeServer | None = None
    channel: grpc.Channel | None = None

    def start(self) -> cgrpc.ComputeServiceStub:
        self.server = build_compute_server(self.settings, model_loader=self.loader)
        self.channel = insecure_channel(self.server.address)
        return cgrpc.ComputeServiceStub(self.channel)

    def stop(self) -> None:
        if self.channel is not None:
            self.channel.close()
        if self.server is not None:
            self.server.stop(0)
        self.server = self.channel = None


@pytest.fixture
def harness(
    tmp_path: Path, store: RunningServer, model_loader: ModelLoader
) -> Iterator[ComputeHarness]:
    settings = ComputeSettings(
        port=0,
        store_address=store.address,
        data_dir=tmp_path / "compute",
        input_roots=(tmp_path,),
        device="cpu",
        checkpoint_every_seconds=0.0,
    )
    harness = ComputeHarness(settings, model_loader)
    yield harness
    harness.stop()


@pytest.fixture
def compute(harness: ComputeHarness) -> cgrpc.ComputeServiceStub:
    return harness.start()


@pytest.fixture
def sae_folder(tmp_path: Path) -> Path:
    return write_sae_folder(tmp_path / "sae", "standard", d_in=32, d_sae=D_SAE, hook_name=HOOK)


@pytest.fixture
def registered_sae(store_stub: sgrpc.StoreServiceStub, sae_folder: Path) -> str:
    sae = spb.Sae(
        sae_id=SAE_ID,
        model_id=TINY_MODEL,
        hook_point=HOOK,
        d_in=32,
        d_sae=D_SAE,
        architecture=spb.ARCHITECTURE_STANDARD,
        weights_uri=str(sae_folder),
    )
    store_stub.CreateSae(spb.CreateSaeRequest(sae=sae))
    return SAE_ID


def write_tokens(path: Path, rows: int = ROWS, context: int = CONTEXT, seed: int = 0) -> Path:
    """Random ids with BOS (1) in column 0, like rows a tokenizer would build."""
    rng = np.random.default_rng(seed)
    tokens = rng.integers(3, TINY_VOCAB, size=(rows, context), dtype=np.int32)
    tokens[:, 0] = 1
    np.save(path, tokens)
    return path


@pytest.fixture
def token_file(tmp_path: Path) -> Path:
    return write_tokens(tmp_path / "tokens.npy")


def compute_request(
    sae_id: str, token_file: Path, request_id: str = "req-1", **overrides: object
) -> cpb.ComputeDashboardsRequest:
    request = cpb.ComputeDashboardsRequest(
        request_id=request_id,
        sae=cpb.SaeReference(sae_id=sae_id),
        tokens=tpb.TokenSource(token_file=str(token_file), dataset_name="tiny", prepend_bos=True),
        params=dpb.DashboardParams(n_top_examples=20, context_left=4, context_right=2),
        batch_size=8,
        device="cpu",
    )
    for name, value in overrides.items():
        field = getattr(request, name)
        if hasattr(field, "CopyFrom"):
            field.CopyFrom(value)
        elif hasattr(field, "extend"):
            field.extend(value)  # type: ignore[arg-type]
        else:
            setattr(request, name, value)
    return request
