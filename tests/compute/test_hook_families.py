"""SAEs on every hook family TransformerLens names: each computes its dashboards, the logit lens
follows the block's own write into the residual stream, and queries/keys/values leave it out
before the pass instead of failing after it."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from mistudio_common.dashboard import DashboardParams
from mistudio_common.dashboard_codec import dashboard_from_pb
from mistudio_common.dashboard_options import Component, logit_lens_defined
from mistudio_common.errors import InvalidArgument
from mistudio_compute.adapters import dashboard_inputs
from mistudio_compute.dashboards import ArrayTokenSource, compute_dashboards
from mistudio_compute.dashboards.inputs import Stage
from mistudio_compute.model_access import LoadedModel, unembed_directions
from mistudio_compute.planning import with_hook_limits

from tests.compute.builders import tiny_model, tiny_sae

HOOKS = [
    "blocks.0.hook_resid_pre",
    "blocks.0.hook_resid_mid",
    "blocks.1.hook_resid_post",
    "blocks.0.attn.hook_z",
    "blocks.1.attn.hook_q",
    "blocks.1.attn.hook_k",
    "blocks.1.attn.hook_v",
    "blocks.0.hook_mlp_out",
    "blocks.1.hook_attn_out",
    "blocks.1.mlp.hook_post",
]
QKV = {"blocks.1.attn.hook_q", "blocks.1.attn.hook_k", "blocks.1.attn.hook_v"}
PARAMS = DashboardParams(n_quantile_groups=2, examples_per_quantile_group=2, context_left=3,
                         context_right=1, n_top_tokens=5)  # fmt: skip


@pytest.fixture(scope="module")
def model() -> LoadedModel:
    return tiny_model()


@pytest.fixture(scope="module")
def tokens() -> np.ndarray:
    return np.random.default_rng(0).integers(3, 64, size=(8, 16))


@pytest.mark.parametrize("hook", HOOKS)
def test_sae_on_each_hook_family_gets_dashboards(model, tokens, hook) -> None:
    sae = tiny_sae(d_in=model.hook_width(hook), d_sae=16, hook_name=hook)
    params = with_hook_limits(PARAMS, hook)
    inputs = dashboard_inputs(model, sae, hook, ArrayTokenSource(tokens, "rows"))
    stages: set[Stage] = set()
    chunks = compute_dashboards(inputs, params, batch_size=4,
                                progress=lambda stage, *_: stages.add(stage))  # fmt: skip
    dashboards = [dashboard_from_pb(d) for chunk in chunks for d in chunk]
    assert len(dashboards) == 16 and any(d.top_examples for d in dashboards)
    if hook in QKV:
        assert Component.LOGIT_LENS in params.omitted and Stage.LOGIT_LENS not in stages
        assert all(d.top_positive_logits == [] for d in dashboards)
    else:
        assert not params.omitted and Stage.LOGIT_LENS in stages
        assert all(len(d.top_positive_logits) == PARAMS.logit_k for d in dashboards)


def test_only_queries_keys_and_values_have_no_logit_lens() -> None:
    assert {h for h in HOOKS if not logit_lens_defined(h)} == QKV


def test_logit_lens_refused_for_values_names_the_switch(model) -> None:
    with pytest.raises(InvalidArgument) as err:
        unembed_directions(model, "blocks.1.attn.hook_v", torch.zeros(2, 32))
    assert "--no-logit-lens" in err.value.fix


def _patched_difference(
    model: LoadedModel, hook: str, out_hook: str, d: torch.Tensor
) -> torch.Tensor:
    """What adding ``d`` at ``hook`` changes in ``out_hook`` (the block's write into the residual
    stream), measured with the model's own forward: the dense reference for one direction."""
    tokens = torch.tensor([[5, 9, 12, 20]])

    def run(delta: torch.Tensor) -> torch.Tensor:
        out: dict[str, torch.Tensor] = {}

        def add(act: torch.Tensor, hook: object) -> torch.Tensor:
            return act + delta.view(act.shape[2:])

        def save(act: torch.Tensor, hook: object) -> None:
            out["x"] = act

        model.model.run_with_hooks(tokens, fwd_hooks=[(hook, add), (out_hook, save)])
        return out["x"][0, -1]

    with torch.no_grad():
        return run(d) - run(torch.zeros_like(d))  # biases and the rest of the input cancel


@pytest.mark.parametrize(
    ("hook", "out_hook"),
    [
        ("blocks.0.attn.hook_z", "blocks.0.hook_attn_out"),
        ("blocks.1.mlp.hook_post", "blocks.1.hook_mlp_out"),
    ],
)
def test_logit_lens_matches_dense_reference(model, hook, out_hook) -> None:
    width = model.hook_width(hook)
    rows = torch.randn(3, width, generator=torch.Generator().manual_seed(0))
    ours = unembed_directions(model, hook, rows) @ model.model.W_U  # [3, d_vocab]
    dense = (
        torch.stack([_patched_difference(model, hook, out_hook, r) for r in rows]) @ model.model.W_U
    )
    torch.testing.assert_close(ours, dense, rtol=1e-4, atol=1e-4)
