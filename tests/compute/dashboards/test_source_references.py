"""Every example's source reference names the document and offset its tokens came from, on
rows that pack several documents separated by BOS (as text files and the demo corpus are)."""

from __future__ import annotations

import numpy as np
import pytest
from mistudio_common.dashboard import DashboardParams
from mistudio_compute.adapters import DatasetTokens
from mistudio_compute.dashboards import compute_dashboards
from mistudio_compute.tokens import TokenDataset
from mistudio_compute.training.corpus import pack_rows

from tests.compute.dashboards import tiny


@pytest.mark.slow
def test_packed_examples_point_at_their_document_and_offset(model) -> None:
    rng = np.random.default_rng(3)
    lengths = rng.integers(5, 40, size=120)
    stories = [rng.integers(2, tiny.D_VOCAB, size=n).tolist() for n in lengths]
    tokens, story, offset, breaks = pack_rows(stories, tiny.ROWS, tiny.N_CTX, tiny.BOS)
    dataset = TokenDataset(tokens, "stories", True, ("stories",), np.zeros(tiny.ROWS, np.int32),
                           story, offset, breaks)  # fmt: skip
    sae = tiny.make_sae(model, tokens, "relu")
    inputs = tiny.make_inputs(model, sae, tokens)
    inputs = type(inputs)(inputs.reader, inputs.encoder, inputs.logit_lens, inputs.token_text,
                          DatasetTokens(dataset))  # fmt: skip
    params = DashboardParams(context_left=6, context_right=3)
    checked = crossed = 0
    for chunk in compute_dashboards(inputs, params, batch_size=16, chunk_size=48):
        for d in chunk:
            for e in [*d.top_examples, *(x for g in d.quantile_groups for x in g.examples)]:
                document = stories[e.source.row]
                q = e.qualifying_token_index
                assert 0 <= e.source.offset + q < len(document)
                assert document[e.source.offset + q] == e.token_ids[q]
                for i, token in enumerate(e.token_ids):
                    if token != tiny.BOS and 0 <= e.source.offset + i < len(document):
                        assert document[e.source.offset + i] == token
                        checked += 1
                crossed += tiny.BOS in e.token_ids[1:]
    assert checked > 1000 and crossed > 10  # many windows span a mid-row BOS
