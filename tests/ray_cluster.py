"""A local two-CPU Ray cluster for a test module; its workers import the tests package."""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


@contextmanager
def local_ray_cluster() -> Iterator[None]:
    import ray

    path = os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])
    ray.init(
        num_cpus=2,
        include_dashboard=False,
        runtime_env={"env_vars": {"PYTHONPATH": path, "OMP_NUM_THREADS": "1"}},
        log_to_driver=False,
    )
    try:
        yield
    finally:
        ray.shutdown()
