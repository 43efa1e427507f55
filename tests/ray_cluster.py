"""A local two-CPU Ray cluster for a test module; its workers import the tests package."""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
STARTS = 3
"""Tries at starting the cluster: Ray gives its raylet a fixed 30 s to register, which a loaded
two-core machine has overrun (``make test``: "The current node timed out during startup")."""


@contextmanager
def local_ray_cluster() -> Iterator[None]:
    import ray

    path = os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])
    for attempt in range(1, STARTS + 1):
        try:
            ray.init(
                num_cpus=2,
                include_dashboard=False,
                runtime_env={"env_vars": {"PYTHONPATH": path, "OMP_NUM_THREADS": "1"}},
                log_to_driver=False,
            )
            break
        except Exception as e:  # Ray raises a bare Exception for it
            ray.shutdown()
            if attempt == STARTS or "timed out during startup" not in str(e):
                raise
    try:
        yield
    finally:
        ray.shutdown()
