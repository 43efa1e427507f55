"""A small but realistic staging folder: nested folders, a multi-chunk weight file."""

from __future__ import annotations

import json
import random
from pathlib import Path

import pytest

FILES: dict[str, bytes] = {
    "README.md": b"# export\n",
    "prefill.json": b'{"model_id": "gpt2-small"}\n',
    "upload-payloads/upload-batch-0.json": json.dumps({"features": [{"index": 0}]}).encode(),
    "upload-payloads/upload-batch-1.json": json.dumps({"features": [{"index": 1}]}).encode(),
    "neuronpedia-json/features/0.json": b'{"feature_index": 0}',
    "neuronpedia-json/features/10.json": b'{"feature_index": 10}',
    "saelens/cfg.json": b'{"d_in": 64, "d_sae": 256}',
    # Larger than one 1 MiB chunk, so copying and hashing really stream.
    "saelens/sae_weights.safetensors": random.Random(0).randbytes(2 * 1024 * 1024 + 17),
}


def make_staging(root: Path, names: list[str] | None = None) -> Path:
    for name in names or list(FILES):
        path = root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(FILES[name])
    return root


@pytest.fixture
def staging(tmp_path: Path) -> Path:
    return make_staging(tmp_path / "staging")
