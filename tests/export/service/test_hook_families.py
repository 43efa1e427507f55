"""An SAE on each hook family of the demo model exports end to end; for queries, keys and values
the plan leaves the logit lens out (and says so) before the pass instead of failing after it."""

from __future__ import annotations

import io
import json
import zipfile
from pathlib import Path

import pytest
from mistudio.common.v1 import progress_pb2 as ppb
from mistudio.common.v1 import tokens_pb2 as tpb
from mistudio.export.v1 import export_service_pb2 as epb
from mistudio.store.v1 import store_service_pb2 as spb
from mistudio_export.plan import logit_lens_note

from tests.compute.builders import write_sae_folder
from tests.export.service.stack import STORIES_REF, Stack, export_config, run_to_end

WIDTHS = {
    "blocks.0.hook_resid_pre": 64,
    "blocks.1.hook_resid_mid": 64,
    "blocks.1.hook_resid_post": 64,
    "blocks.1.attn.hook_z": 64,  # 8 heads x 8
    "blocks.1.attn.hook_q": 64,
    "blocks.1.attn.hook_k": 32,  # 4 key/value heads x 8
    "blocks.1.attn.hook_v": 32,
    "blocks.1.hook_mlp_out": 64,
    "blocks.1.mlp.hook_post": 172,
}
NO_LENS = {"blocks.1.attn.hook_q", "blocks.1.attn.hook_k", "blocks.1.attn.hook_v"}
D_SAE = 8


def register(stack: Stack, folder: Path, hook: str) -> str:
    sae_id = f"sae-{hook.replace('.', '-')}"
    path = write_sae_folder(
        folder / sae_id, "standard", d_in=WIDTHS[hook], d_sae=D_SAE, hook_name=hook
    )
    sae = spb.Sae(
        sae_id=sae_id,
        model_id=STORIES_REF,
        hook_point=hook,
        d_in=WIDTHS[hook],
        d_sae=D_SAE,
        architecture=spb.ARCHITECTURE_STANDARD,
        weights_uri=str(path),
        neuronpedia_model_id="stories260k",
    )
    return stack.records.CreateSae(spb.CreateSaeRequest(sae=sae)).sae.sae_id


@pytest.mark.parametrize("hook", list(WIDTHS))
def test_sae_on_each_hook_family_exports_end_to_end(
    stack: Stack, workdir: Path, tokens: tpb.TokenSource, hook: str
) -> None:
    sae_id = register(stack, workdir, hook)
    check = epb.ValidateExportRequest(sae_id=sae_id, config=export_config(tokens))
    warned = logit_lens_note(hook) in stack.exports.ValidateExport(check).warnings
    assert warned == (hook in NO_LENS)
    request = epb.StartExportRequest(request_id=hook, sae_id=sae_id, config=export_config(tokens))
    last = run_to_end(stack.exports.StartExport(request))[-1]
    assert last.progress.state == ppb.JOB_STATE_SUCCEEDED, last.progress.error
    assert last.result.validation.valid and last.result.feature_count == D_SAE
    stream = stack.exports.DownloadExport(epb.DownloadExportRequest(job_id=last.progress.job_id))
    files = zipfile.ZipFile(io.BytesIO(b"".join(m.chunk for m in stream)))
    features = [json.loads(files.read(f"features/{i}.json")) for i in range(D_SAE)]
    live = [f for f in features if not f["statistics"]["dead_feature"]]
    assert live and all(f["activations"] for f in live)
    stages = [s.stage for s in last.progress.stages]
    if hook in NO_LENS:
        assert ppb.STAGE_LOGIT_LENS not in stages
        assert all(f["logits"] == {"top_positive": [], "top_negative": []} for f in features)
        assert logit_lens_note(hook) in files.read("README.md").decode()
        assert "logit-lens" in json.loads(files.read("metadata.json"))["omitted_components"]
    else:
        assert ppb.STAGE_LOGIT_LENS in stages
        assert all(len(f["logits"]["top_positive"]) == 10 for f in features)
