"""``python -m mistudio_compute``: serves with health, and SIGTERM parks a running job."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
from pathlib import Path

import numpy as np
import pytest
from mistudio.common.v1 import progress_pb2 as ppb
from mistudio.common.v1 import tokens_pb2 as tpb
from mistudio.compute.v1 import compute_service_pb2 as cpb
from mistudio.compute.v1 import compute_service_pb2_grpc as cgrpc
from mistudio_common.healthcheck import check
from mistudio_common.server import RunningServer, insecure_channel
from mistudio_compute.job_records import JobRecords

from tests.compute.builders import STORIES_MODEL, STORIES_REF, STORIES_TOKENIZER, write_sae_folder
from tests.compute.service.test_compute_jobs import until_running

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(
        not (STORIES_MODEL.is_file() and STORIES_TOKENIZER.is_file()),
        reason=f"stories260K is not available at {STORIES_MODEL.parent}",
    ),
]


def start_service(store: RunningServer, data_dir: Path) -> tuple[subprocess.Popen[str], str]:
    """Runs the service on a free port and reads the port from its JSON log."""
    command = [sys.executable, "-m", "mistudio_compute", "--port", "0"]
    command += ["--store", store.address, "--data-dir", str(data_dir)]
    roots = json.dumps([str(data_dir.parent), str(STORIES_MODEL.parent)])
    env = {**os.environ, "MISTUDIO_COMPUTE_DEVICE": "cpu", "MISTUDIO_COMPUTE_INPUT_ROOTS": roots}
    process = subprocess.Popen(command, stderr=subprocess.PIPE, text=True, env=env)
    assert process.stderr is not None
    for line in process.stderr:
        entry = json.loads(line)
        if entry.get("msg") == "compute service ready":
            # Keep reading so that a chatty log can never fill the pipe and block the service.
            threading.Thread(target=process.stderr.read, daemon=True).start()
            return process, f"127.0.0.1:{entry['port']}"
    raise AssertionError(f"the service exited with {process.wait()} before it was ready")


def test_sigterm_parks_a_running_job_for_the_next_start(
    store: RunningServer, tmp_path: Path
) -> None:
    process, address = start_service(store, tmp_path / "compute")
    try:
        assert check(address, "mistudio.compute.v1.ComputeService")
        sae = write_sae_folder(
            tmp_path / "sae", "standard", 64, 128, hook_name="blocks.1.hook_resid_post"
        )
        tokens = np.random.default_rng(0).integers(3, 512, size=(400, 32), dtype=np.int32)
        np.save(tmp_path / "tokens.npy", tokens)
        request = cpb.ComputeDashboardsRequest(
            request_id="sigterm",
            tokens=tpb.TokenSource(token_file=str(tmp_path / "tokens.npy")),
            batch_size=1,
        )
        request.sae.files.path = str(sae)
        request.sae.files.model_id = STORIES_REF
        with insecure_channel(address) as channel:
            stream = cgrpc.ComputeServiceStub(channel).ComputeDashboards(request)
            seen = list(until_running(stream))
            job_id = seen[0].progress.job_id
            process.send_signal(signal.SIGTERM)
            assert process.wait(timeout=60) == 0  # a hang fails here
    finally:
        if process.poll() is None:
            process.kill()
    records = JobRecords(tmp_path / "compute" / "compute" / "jobs")
    parked = [record.job_id for record in records.unfinished()]
    assert parked == [job_id]  # still RUNNING on disk: the next start resumes it
    assert records.load(job_id).state == ppb.JOB_STATE_RUNNING
