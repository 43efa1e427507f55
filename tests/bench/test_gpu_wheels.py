"""bench/gpu.sh on a lent device: what travels as wheels is what the export imports beyond the
device image, and without a .venv or those wheels the script says what to do."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

from bench.gpu_wheels import CARRIED_ANYWAY, LEFT_OUT, REPO, device_packages, runtime_closure


def test_the_carried_wheels_are_what_the_export_needs_beyond_the_device_image() -> None:
    on_device = device_packages()
    carried = runtime_closure(on_device)
    assert {"orjson", "msgspec", "sqlalchemy", "isal", "minio", "jsonschema"} <= set(carried)
    assert set(CARRIED_ANYWAY) <= set(carried)  # a version the generated code needs
    assert not (set(carried) & on_device) - set(CARRIED_ANYWAY)
    assert not set(carried) & set(LEFT_OUT)  # torch among them: the device's CUDA build
    assert {"numpy", "numba", "safetensors", "sentencepiece", "transformers"} <= on_device


def test_without_a_venv_or_wheels_gpu_sh_says_how_to_bring_them(tmp_path: Path) -> None:
    (tmp_path / "bench").mkdir()
    shutil.copy(REPO / "bench" / "gpu.sh", tmp_path / "bench" / "gpu.sh")
    done = subprocess.run(
        ["bash", str(tmp_path / "bench" / "gpu.sh")], capture_output=True, text=True
    )
    assert done.returncode == 2
    assert "bench/gpu_wheels.py" in done.stderr and "carry .whl" in done.stderr
