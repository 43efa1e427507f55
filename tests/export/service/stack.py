"""A real store, compute and export service on loopback, and a tiny SAE on stories260K.

The SAE is a hand-written SAELens folder (json + safetensors.numpy) on layer 2 of the real
stories260K model; the tokens are seeded random ids with BOS in column 0. Everything an export
reads is real: SQLite through the store service, the model through the compute service.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import grpc
import numpy as np
from google.protobuf import struct_pb2
from mistudio.common.v1 import progress_pb2 as ppb
from mistudio.common.v1 import tokens_pb2 as tpb
from mistudio.export.v1 import export_service_pb2 as epb
from mistudio.export.v1 import export_service_pb2_grpc as egrpc
from mistudio.store.v1 import store_service_pb2 as spb
from mistudio.store.v1 import store_service_pb2_grpc as sgrpc
from mistudio_common.server import RunningServer, insecure_channel
from mistudio_export.config import ExportSettings
from mistudio_export.server import ExportServer, build_export_server
from safetensors.numpy import save_file

STORIES_DIR = Path(
    os.environ.get(
        "MISTUDIO_DEMO_MODEL_DIR",
        Path(__file__).resolve().parents[4] / "shared" / "data" / "stories260k",
    )
)
STORIES_REF = f"llama2c:{STORIES_DIR / 'stories260K.bin'}?tokenizer={STORIES_DIR / 'tok512.bin'}"
D_IN = 64
D_SAE = 32
HOOK = "blocks.2.hook_resid_post"
DEAD_FEATURES = (5, 17)
"""Features whose encoder bias is so negative that they never fire."""
BYTE_PIECES = 259
"""Ids below this are <unk>, <s>, </s> and the 256 byte pieces, which text rarely yields alone."""
TERMINAL = (ppb.JOB_STATE_SUCCEEDED, ppb.JOB_STATE_FAILED, ppb.JOB_STATE_CANCELLED)


def sae_weights(seed: int = 0) -> dict[str, np.ndarray[Any, Any]]:
    rng = np.random.default_rng(seed)
    w_dec = rng.normal(size=(D_SAE, D_IN))
    w_dec /= np.linalg.norm(w_dec, axis=1, keepdims=True)
    b_enc = rng.normal(scale=0.1, size=D_SAE)
    b_enc[list(DEAD_FEATURES)] = -1e4
    weights = {
        "W_enc": w_dec.T * 2.0,
        "b_enc": b_enc,
        "W_dec": w_dec,
        "b_dec": rng.normal(scale=0.05, size=D_IN),
    }
    return {k: np.ascontiguousarray(v, dtype=np.float32) for k, v in weights.items()}


def write_sae_folder(folder: Path, seed: int = 0) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    save_file(sae_weights(seed), str(folder / "sae_weights.safetensors"))
    cfg = {
        "architecture": "standard",
        "d_in": D_IN,
        "d_sae": D_SAE,
        "dtype": "float32",
        "device": "cpu",
        "apply_b_dec_to_input": True,
        "normalize_activations": "none",
        "reshape_activations": "none",
        "metadata": {
            "sae_lens_version": "6.54.12",
            "model_name": "stories260k",
            "hook_name": HOOK,
            "hook_head_index": None,
            "context_size": 64,
            "prepend_bos": True,
            "dataset_path": "local/random",
        },
    }
    (folder / "cfg.json").write_text(json.dumps(cfg), encoding="utf-8")
    return folder


def write_tokens(path: Path, rows: int, context: int = 32, seed: int = 1) -> Path:
    rng = np.random.default_rng(seed)
    tokens = rng.integers(BYTE_PIECES, 512, size=(rows, context), dtype=np.int32)
    tokens[:, 0] = 1  # BOS
    np.save(path, tokens)
    return path


def token_source(path: Path, context: int = 32) -> tpb.TokenSource:
    return tpb.TokenSource(
        token_file=str(path), dataset_name="random-stories", context_size=context, prepend_bos=True
    )


@dataclass
class Stack:
    """Store, compute and export servers over one data folder, with stubs for tests."""

    data_dir: Path
    store: RunningServer
    compute: RunningServer
    export: ExportServer
    object_store_url: str = ""
    s3_keys: tuple[str, str] = ("", "")
    channels: list[grpc.Channel] = field(default_factory=list)
    fault_patience_seconds: float = 2.0
    """Short, so that tests of a peer that stays down fail fast."""

    def settings(self) -> ExportSettings:
        return ExportSettings(
            fault_patience_seconds=self.fault_patience_seconds,
            port=0,
            store_address=self.store.address,
            compute_address=self.compute.address,
            data_dir=self.data_dir,
            object_store_url=self.object_store_url,
            s3_access_key=self.s3_keys[0],
            s3_secret_key=self.s3_keys[1],
            features_per_batch=8,
            progress_persist_seconds=0.2,
        )

    def restart_export(self, fault_patience_seconds: float | None = None) -> None:
        """Stops the export service (jobs stay RUNNING in the store) and starts a new one."""
        if fault_patience_seconds is not None:
            self.fault_patience_seconds = fault_patience_seconds
        self.export.stop(grace_seconds=1.0)
        self.export = build_export_server(self.settings())

    @property
    def exports(self) -> egrpc.ExportServiceStub:
        channel = insecure_channel(self.export.address)
        self.channels.append(channel)
        return egrpc.ExportServiceStub(channel)

    @property
    def records(self) -> sgrpc.StoreServiceStub:
        channel = insecure_channel(self.store.address)
        self.channels.append(channel)
        return sgrpc.StoreServiceStub(channel)

    def stop(self) -> None:
        for channel in self.channels:
            channel.close()
        for server in (self.export, self.compute, self.store):
            server.stop(grace_seconds=1.0)


def start_stack(
    data_dir: Path,
    object_store_url: str = "",
    keys: tuple[str, str] = ("", ""),
    **compute_settings: Any,
) -> Stack:
    """Compute reads inputs under the test session's temp root (every test's ``tmp_path``, as
    ``data_dir`` is ``<root>/<module folder>/data``) and the stories260K folder, unless
    ``compute_settings`` says otherwise; with an S3 object store it reads uploads from it."""
    from mistudio_compute.config import ComputeSettings
    from mistudio_compute.server import build_compute_server
    from mistudio_store.config import StoreSettings
    from mistudio_store.server import build_store_server

    data_dir.mkdir(parents=True, exist_ok=True)
    store = build_store_server(StoreSettings(data_dir=data_dir, port=0))
    compute = build_compute_server(
        ComputeSettings(
            port=0,
            store_address=store.address,
            data_dir=data_dir,
            device="cpu",
            **{
                "input_roots": (data_dir.parents[1], STORIES_DIR),
                **_uploads_bucket(object_store_url, keys),
                **compute_settings,
            },
        )
    )
    stack = Stack(data_dir, store, compute, None, object_store_url, keys)  # type: ignore[arg-type]
    stack.export = build_export_server(stack.settings())
    return stack


def _uploads_bucket(object_store_url: str, keys: tuple[str, str]) -> dict[str, str]:
    """Compute's settings for reading uploads from the export service's bucket, as deployed."""
    if not object_store_url.startswith("s3://"):
        return {}
    access_key, secret_key = keys
    return {
        "object_store_url": object_store_url,
        "s3_access_key": access_key,
        "s3_secret_key": secret_key,
    }


def register_sae(stack: Stack, sae_id: str, weights_uri: str, **extra: Any) -> spb.Sae:
    fields: dict[str, Any] = dict(
        sae_id=sae_id,
        model_id=STORIES_REF,
        hook_point=HOOK,
        d_in=D_IN,
        d_sae=D_SAE,
        architecture=spb.ARCHITECTURE_STANDARD,
        weights_uri=weights_uri,
        training_dataset="local/random",
        n_training_tokens=1_000_000,
        l0=4.0,
        explained_variance=0.9,
        neuronpedia_model_id="stories260k",
        neuronpedia_source_set="mistudio-res-32",
    )
    sae = spb.Sae(**(fields | extra))
    return stack.records.CreateSae(spb.CreateSaeRequest(sae=sae)).sae


def label_features(stack: Stack, sae_id: str, labels: dict[int, tuple[str, str]]) -> None:
    """Gives features a (label, category) and one explanation each."""
    features = [
        spb.Feature(feature_index=i, label=label, category=category)
        for i, (label, category) in labels.items()
    ]
    stack.records.UpsertFeatures(spb.UpsertFeaturesRequest(sae_id=sae_id, features=features))
    explanations = [
        spb.Explanation(
            feature_index=i,
            description=f"fires on {label}",
            method="oai_token-act-pair",
            explainer_model="gpt-4o-mini",
        )
        for i, (label, _) in labels.items()
    ]
    stack.records.AddExplanations(
        spb.AddExplanationsRequest(sae_id=sae_id, explanations=explanations)
    )


def recorded_tokens(tokens: tpb.TokenSource) -> struct_pb2.Struct:
    from google.protobuf import json_format

    config = struct_pb2.Struct()
    config.update({"token_source": json_format.MessageToDict(tokens)})
    return config


def export_config(tokens: tpb.TokenSource | None = None, **fields: Any) -> epb.ExportConfig:
    """Auto-fix stays off unless asked for, so every export proves it validates as written."""
    config = epb.ExportConfig(**fields)
    if tokens is not None:
        config.tokens.CopyFrom(tokens)
    return config


def run_to_end(stream: Iterable[epb.ExportProgress]) -> list[epb.ExportProgress]:
    messages = []
    for message in stream:
        messages.append(message)
        if message.progress.state in TERMINAL:
            break
    return messages


def wait_for(stream: Iterator[epb.ExportProgress], predicate: Any) -> epb.ExportProgress:
    for message in stream:
        if predicate(message):
            return message
    raise AssertionError("stream ended before the awaited message")


def removed(path: Path, seconds: float = 60.0) -> bool:
    """Whether ``path`` is gone within ``seconds``: a finished job's staging is removed after
    its end is stored and its watchers told."""
    deadline = time.monotonic() + seconds
    while path.exists() and time.monotonic() < deadline:
        time.sleep(0.05)
    return not path.exists()
