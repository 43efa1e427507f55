"""What each output format is for and the limits its consumer documents, for the archive README.

The limits are the ones read from Neuronpedia's and SAELens's code (see
``shared/reference``); they live here as prose because they tell a person what to expect
when uploading, while the format writers enforce the same numbers in code.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum

from mistudio_common.dashboard_options import Component

from mistudio_export.formats.neuronpedia_importer import CONVERTER_DIFFERENCES


class ExportFormat(StrEnum):
    """What a request asks an export to write (``config.formats``): each is a group of kinds."""

    NEURONPEDIA = "neuronpedia"
    """Every Neuronpedia kind: PRD layout, importer layout, SAEDashboard, upload payloads."""
    SAELENS = "saelens"


EVERY_FORMAT = frozenset(ExportFormat)
"""What a request that names no format gets."""


class FormatKind(StrEnum):
    NEURONPEDIA_UPLOAD = "neuronpedia-upload"
    NEURONPEDIA_IMPORT = "neuronpedia-import"
    SAEDASHBOARD = "saedashboard"
    PRD_JSON = "prd-json"
    SAELENS = "saelens"
    PREVIEW = "preview"


@dataclass(frozen=True)
class FormatNote:
    title: str
    default_folder: str
    """Relative to the archive root; "/" is the root itself."""
    summary: str
    limits: tuple[str, ...]


MAX_FEATURES_PER_CALL = 128
MAX_LOGITS = 20
MAX_TOKENS_PER_EXAMPLE = 1024
MAX_EXPLANATION_CHARS = 512
MAX_SOURCE_SET_DESCRIPTION = 128

NOTES: dict[FormatKind, FormatNote] = {
    FormatKind.NEURONPEDIA_UPLOAD: FormatNote(
        title="Neuronpedia upload-API payloads",
        default_folder="upload-payloads",
        summary="Request bodies for Neuronpedia's `POST /api/feature/upload-batch`, one file "
        "per call, each `{modelId, source, features}` (the keys of the route's schema in "
        "`apps/webapp/app/api/feature/upload-batch/route.tsx`).",
        limits=(
            f"at most {MAX_FEATURES_PER_CALL} features per call (one file = one call)",
            "feature `index`: an integer from 0 to 10,000,000",
            f"`topLogits` / `bottomLogits`: at most {MAX_LOGITS} entries each",
            "`activations`: at least one per feature; each example has 1 to "
            f"{MAX_TOKENS_PER_EXAMPLE} tokens and exactly as many values",
            "`density`: a fraction in [0, 1]",
            f"explanations: 1 to {MAX_EXPLANATION_CHARS} characters; their method must already "
            "exist on Neuronpedia, or the route rejects the whole call, so explanations of "
            "other types are left out (see manifest.json notes); no explainer model is sent "
            "(the route would store it under a key its database lacks and fail the call)",
            "not accepted by this API: activation histograms, logit histograms, neuron "
            "alignment, correlations, DFA, vectors (those come only through route 2)",
            "only the account that created the source set can upload into it",
        ),
    ),
    FormatKind.NEURONPEDIA_IMPORT: FormatNote(
        title="Neuronpedia importer layout",
        default_folder="neuronpedia-importer",
        summary="The layout Neuronpedia's own importer reads: `{modelId}/{layer}-{sourceSet}/` "
        "with `model.jsonl`, `sourceset.jsonl`, `source.jsonl`, `release.jsonl` and gzipped "
        "JSONL rows in `features/`, `activations/` and `explanations/` "
        "(`batch-N.jsonl.gz`). It carries the full dashboard: histograms and logit tables.",
        limits=(
            "keys are the database column names exactly (camelCase and snake_case mixed); "
            "every line of a file has the same keys",
            "the importer reads only Neuronpedia's own bucket, so only its maintainers can "
            "load this folder (route 2)",
            "`creatorId` / `authorId` must be existing Neuronpedia users; the maintainers may "
            "rewrite these ids",
            "an explanation's type and explainer model must exist in Neuronpedia's config (or "
            "be null), or the whole file fails; explanations whose type or model it lacks are "
            "in `explanations-pending/`, which its importer does not read (see route 2)",
            "ids are derived from the model, source, feature and content: importing again, or "
            "another SAE's export, never drops or overwrites a row",
            "the importer lists at most 1,000 batch files per folder",
            "compared with what Neuronpedia's converter makes of the `saedashboard/` batches, "
            "only these columns differ: "
            + "; ".join(
                f"`{column}` ({why})" for column, (_, why) in CONVERTER_DIFFERENCES.items()
            ),
        ),
    ),
    FormatKind.SAEDASHBOARD: FormatNote(
        title="SAEDashboard batches",
        default_folder="saedashboard",
        summary="`batch-N.json` files in the shape SAEDashboard's `neuronpedia-runner` writes, "
        "for Neuronpedia's `convert-saedashboard-to-neuronpedia-export.py`.",
        limits=(
            f"{MAX_FEATURES_PER_CALL} features per batch file, the runner's default",
            "one feature object can be pasted into `/manual-dashboard` on a Neuronpedia "
            "instance to preview its dashboard",
        ),
    ),
    FormatKind.PRD_JSON: FormatNote(
        title="miStudio JSON",
        default_folder="/",
        summary="`metadata.json`, `features/<index>.json` and `explanations/explanations.json`: "
        "one readable file per feature, for inspection and your own tools.",
        limits=(
            "Neuronpedia does not read this layout; use routes 1 or 2 to publish",
            "fields with no Neuronpedia column (statistics, top tokens) appear only here",
        ),
    ),
    FormatKind.SAELENS: FormatNote(
        title="SAELens checkpoint",
        default_folder="saelens",
        summary="`cfg.json` + `sae_weights.safetensors` (+ `sparsity.safetensors`), loadable "
        "with `SAE.load_from_disk` and, once on HuggingFace, `SAE.from_pretrained`.",
        limits=(
            "needs sae-lens 6.x, which requires transformer-lens < 4",
            "`from_pretrained` loads as float32 unless you pass `dtype=`; the cfg's dtype is "
            "overridden",
            "the Neuronpedia link is stored in `cfg.json` as `metadata.neuronpedia_id`; a "
            "`pretrained_saes.yaml` entry alone does not reach a v6 SAE's metadata",
        ),
    ),
    FormatKind.PREVIEW: FormatNote(
        title="Dashboard preview",
        default_folder="preview",
        summary="Open `preview/index.html` in a browser to look at every feature's dashboard "
        "before uploading: search, sorting, histograms, logits and highlighted examples.",
        limits=(
            "works offline and from `file://`; it reads `preview/data/`, a copy of the "
            "PRD-layout data as JavaScript files",
            "Neuronpedia does not read this folder",
        ),
    ),
}

LEFT_OUT: dict[Component, str] = {
    Component.TOP_EXAMPLES: "**Top examples** were not computed: `activations` is empty in "
    "`features/*.json`, the importer's `activations/` and the upload payloads' `activations` "
    "hold only quantile examples, and Neuronpedia's page shows no 'top activations' section.",
    Component.QUANTILE_EXAMPLES: "**Quantile examples** were not computed: `quantile_groups` is "
    "empty, the importer's `activations/` rows carry no `binMin`/`binMax`/`binContains` groups "
    "and Neuronpedia's page shows only the top activations.",
    Component.LOGIT_LENS: "**Logit lens** not computed: `logits` and `logit_histogram` are empty "
    "in `features/*.json`; the importer columns `pos_str`, "
    "`pos_values`, `neg_str`, `neg_values`, `logits_hist_data_bar_heights` and "
    "`logits_hist_data_bar_values` are empty arrays, the upload payloads' `topLogits`/"
    "`bottomLogits` are empty lists, and Neuronpedia's page shows no logit tables or logit "
    "histogram.",
    Component.ACTIVATION_HISTOGRAM: "**Activation histogram** not computed: "
    "`histogram` has no bins in `features/*.json` and the importer columns "
    "`freq_hist_data_bar_heights`/`freq_hist_data_bar_values` are empty arrays, so "
    "Neuronpedia's page shows the density (`frac_nonzero`, still computed) without its "
    "histogram.",
    Component.TOKEN_AGGREGATION: "**Token aggregation** not computed: `top_tokens` is empty in "
    "`features/*.json` (no Neuronpedia format carries it).",
    Component.EXPLANATIONS: "**Explanations** left out: `explanations/` files hold no "
    "explanation and the upload payloads carry none, so Neuronpedia's page shows no label.",
}
"""What each left-out part leaves empty in every format and what Neuronpedia then shows."""
