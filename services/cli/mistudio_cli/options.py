"""Command-line options of `mistudio-export run`, and their translation into an ExportConfig.

Every option of the StartExport RPC has a flag here; range checks stay in the service so the
CLI and the backend get the same errors, and FLAGS_BY_FIELD turns the field an error names back
into the flag a person typed. Paths are made absolute here: the services may run elsewhere.
"""

from __future__ import annotations

import argparse
import os

from mistudio.common.v1 import dashboard_pb2 as dpb
from mistudio.common.v1 import tokens_pb2 as tpb
from mistudio.export.v1 import export_service_pb2 as epb
from mistudio_common.dashboard import DashboardParams
from mistudio_common.dashboard_codec import COMPONENT_TO_PB
from mistudio_common.dashboard_options import Component
from mistudio_common.errors import InvalidArgument
from mistudio_common.uploaded_inputs import is_object_uri
from mistudio_export.messages import FORMAT_TO_PB
from mistudio_export.packaging import ExportFormat
from mistudio_export.presets import PRESETS
from mistudio_export.records import VISIBILITIES

FORMATS = {
    **{plain.value: [FORMAT_TO_PB[plain]] for plain in ExportFormat},
    "both": [FORMAT_TO_PB[plain] for plain in ExportFormat],
}
"""--format's words as the contract's ids, from the export's one format table: each format by
its own name, and both."""
SCALES = {"log": dpb.BIN_SCALE_LOG, "linear": dpb.BIN_SCALE_LINEAR}
METRICS = {
    "sum": dpb.TOKEN_RANK_METRIC_SUM,
    "count": dpb.TOKEN_RANK_METRIC_COUNT,
    "mean": dpb.TOKEN_RANK_METRIC_MEAN,
}
DEFAULTS = DashboardParams()
"""The service's dashboard defaults: --help shows them; an option left at 0 sends 0 (= this)."""
FLAGS_BY_FIELD = {
    "sae_id": "SAE",
    "request_id": "--request-id",
    "owner": "--owner",
    "config.formats": "--format",
    "config.selection": "--features",
    "config.selection.labeled_only": "--labeled-only",
    "config.selection.label_contains": "--label-contains",
    "config.selection.category": "--category",
    "config.selection.min_frequency": "--min-frequency",
    "config.selection.max_frequency": "--max-frequency",
    "config.selection.min_max_activation": "--min-max-activation",
    "config.dashboard.n_top_examples": "--examples",
    "config.dashboard.n_quantile_groups": "--quantile-groups",
    "config.dashboard.examples_per_quantile_group": "--examples-per-group",
    "config.dashboard.context_left": "--context-left",
    "config.dashboard.context_right": "--context-right",
    "config.dashboard.logit_k": "--logit-k",
    "config.dashboard.histogram_bins": "--bins",
    "config.dashboard.histogram_scale": "--bin-scale",
    "config.dashboard.token_rank_metric": "--token-metric",
    "config.dashboard.n_top_tokens": "--top-tokens",
    "config.dashboard.aggregate_all_tokens": "--aggregate-all-tokens",
    "config.tokens": "--tokens",
    "config.tokens.token_file": "--tokens",
    "config.tokens.text": "--text",
    "config.tokens.dataset_name": "--dataset-name",
    "config.tokens.context_size": "--context-size",
    "config.tokens.prepend_bos": "--no-bos",
    "config.tokens.max_tokens": "--max-tokens",
    "config.compression.gzip_json": "--gzip-json",
    "config.compression.zip_deflate": "--no-deflate",
    "config.delta_base_job_id": "--delta-from",
    "config.merge_with_base": "--merge",
    "config.auto_fix": "--auto-fix",
    "config.preset": "--preset",
    "config.dashboard.omitted_components": "--no-COMPONENT",
    "config.with_preview": "--with-preview",
    "config.naming.model_id": "--np-model-id",
    "config.naming.source_set": "--source-set",
    "config.naming.creator_name": "--creator",
    "config.naming.release_id": "--release-id",
    "config.naming.release_title": "--release-title",
    "config.naming.hf_repo_id": "--hf-repo",
    "config.device": "--device",
    "config.batch_size": "--batch-size",
    "expiry_seconds": "--expiry",
}
"""StartExportRequest field paths (as errors name them) → the `run` flag that sets them."""


def flag_for(field: str) -> str:
    """The flag behind a field an error names (its longest known prefix), else the field."""
    for candidate in (field, f"config.{field}"):
        parts = candidate.split(".")
        for end in range(len(parts), 0, -1):
            flag = FLAGS_BY_FIELD.get(".".join(parts[:end]))
            if flag:
                return flag
    return field


def service_default(name: str) -> str:
    return f"(default: {getattr(DEFAULTS, name)})"


def add_export_options(parser: argparse.ArgumentParser) -> None:
    what = parser.add_argument_group("what to export")
    what.add_argument("--format", choices=sorted(FORMATS), default="both")
    what.add_argument(
        "--features",
        default="all",
        metavar="SPEC",
        help="'all', a half-open range START:END, or a list 3,17,42",
    )
    what.add_argument("--labeled-only", action="store_true", help="only features with a label")
    what.add_argument("--label-contains", default="", metavar="TEXT")
    what.add_argument("--category", default="")
    what.add_argument("--min-frequency", type=float, default=0.0, metavar="F")
    what.add_argument("--max-frequency", type=float, default=0.0, metavar="F", help="0: no limit")
    what.add_argument("--min-max-activation", type=float, default=0.0, metavar="A")

    data = parser.add_argument_group("dashboard data (unset options take the preset's or defaults)")
    data.add_argument(
        "--preset",
        choices=sorted(PRESETS),
        default="",
        help="a named set of these options; `mistudio-export presets` lists them",
    )
    for component in Component:
        data.add_argument(
            f"--no-{component.value}",
            dest="omit",
            action="append_const",
            const=component,
            default=[],
            help=f"leave the {component.value.replace('-', ' ')} out",
        )
    data.add_argument(
        "--examples",
        type=int,
        default=0,
        help=f"top examples per feature, 20-100 (default: {DEFAULTS.n_top_examples})",
    )
    data.add_argument(
        "--quantile-groups", type=int, default=0, help=service_default("n_quantile_groups")
    )
    data.add_argument(
        "--examples-per-group",
        type=int,
        default=0,
        help=service_default("examples_per_quantile_group"),
    )
    data.add_argument("--context-left", type=int, default=0, help=service_default("context_left"))
    data.add_argument("--context-right", type=int, default=0, help=service_default("context_right"))
    data.add_argument(
        "--logit-k",
        type=int,
        default=0,
        help=f"top/bottom logits, 10-50 (default: {DEFAULTS.logit_k})",
    )
    data.add_argument(
        "--bins",
        type=int,
        default=0,
        help=f"histogram bins, 20-100 (default: {DEFAULTS.histogram_bins})",
    )
    data.add_argument("--bin-scale", choices=sorted(SCALES), default="", help="default: log")
    data.add_argument("--token-metric", choices=sorted(METRICS), default="", help="default: sum")
    data.add_argument("--top-tokens", type=int, default=0, help=service_default("n_top_tokens"))
    data.add_argument(
        "--aggregate-all-tokens",
        action="store_true",
        help="rank tokens over every activating token, not only the examples",
    )

    add_token_options(parser)

    output = parser.add_argument_group("output")
    output.add_argument("--gzip-json", action="store_true", help="gzip the PRD feature files")
    output.add_argument("--no-deflate", action="store_true", help="store files uncompressed")
    output.add_argument("--delta-from", default="", metavar="JOB_ID", help="earlier export job")
    output.add_argument("--merge", action="store_true", help="with --delta-from: full set")
    output.add_argument("--auto-fix", action="store_true", help="repair common problems")
    output.add_argument(
        "--with-preview",
        action="store_true",
        help="put the dashboard viewer into the archive (preview/index.html)",
    )
    output.add_argument("--np-model-id", default="", help="Neuronpedia model id")
    output.add_argument("--source-set", default="", help="Neuronpedia source-set name")
    output.add_argument("--creator", default="")
    output.add_argument("--release-id", default="")
    output.add_argument("--release-title", default="")
    output.add_argument("--hf-repo", default="", help="HuggingFace repo for the SAELens folder")
    output.add_argument(
        "--visibility",
        default="",
        choices=("", *VISIBILITIES),
        help="Neuronpedia visibility of the model, source set, source and release (UNLISTED)",
    )

    run = parser.add_argument_group("running")
    run.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:N")
    run.add_argument("--batch-size", type=int, default=0, help="token rows per forward pass")


def add_token_options(parser: argparse.ArgumentParser) -> None:
    tokens = parser.add_argument_group("tokens the dashboards are computed on")
    tokens.add_argument(
        "--tokens",
        default="",
        metavar="FILE",
        help=".npy/.safetensors [rows, ctx], or the s3:// URI upload-input printed",
    )
    tokens.add_argument("--text", nargs="+", default=[], metavar="FILE", help="plain-text files")
    tokens.add_argument("--dataset-name", default="")
    tokens.add_argument("--context-size", type=int, default=0)
    tokens.add_argument(
        "--no-bos",
        action="store_true",
        help="rows do not start with BOS (default: they do, as for every client)",
    )
    tokens.add_argument("--max-tokens", type=int, default=0, help="0: all")


def parse_selection(spec: str) -> epb.FeatureSelection:
    spec = spec.strip()
    if spec in ("", "all"):
        return epb.FeatureSelection(all=True)
    try:
        if ":" in spec:
            start, end = (int(part) for part in spec.split(":", 1))
            return epb.FeatureSelection(range=epb.IndexRange(start=start, end=end))
        indices = [int(part) for part in spec.split(",") if part.strip()]
    except ValueError:
        raise InvalidArgument(
            f"--features {spec!r} is neither 'all', START:END nor a comma-separated list",
            field="--features",
            fix="e.g. --features 0:1000 or --features 3,17,42",
        ) from None
    return epb.FeatureSelection(list=epb.FeatureList(indices=indices))


def absolute(path: str) -> str:
    """Against this shell's working directory; links stay as the user named them."""
    return os.path.abspath(os.path.expanduser(path))


def model_reference(model: str) -> str:
    """A llama2c reference's checkpoint and tokenizer paths made absolute; others unchanged."""
    if not model.startswith("llama2c:"):
        return model
    checkpoint, _, query = model.removeprefix("llama2c:").partition("?")
    tokenizer = query.removeprefix("tokenizer=") if query.startswith("tokenizer=") else ""
    if not tokenizer:
        return f"llama2c:{absolute(checkpoint)}" + (f"?{query}" if query else "")
    return f"llama2c:{absolute(checkpoint)}?tokenizer={absolute(tokenizer)}"


def token_source(args: argparse.Namespace) -> tpb.TokenSource:
    if args.tokens and args.text:
        raise InvalidArgument(
            "--text and --tokens both give the tokens to compute on",
            field="--text",
            fix="give either --tokens FILE (token ids) or --text FILE… (plain text), not both",
        )
    source = tpb.TokenSource(
        dataset_name=args.dataset_name, context_size=args.context_size, max_tokens=args.max_tokens
    )
    if args.no_bos:  # unset otherwise: the one default (dashboard_options.DEFAULT_PREPEND_BOS)
        source.prepend_bos = False
    if args.tokens:
        source.token_file = args.tokens if is_object_uri(args.tokens) else absolute(args.tokens)
    elif args.text:
        source.text.paths.extend(absolute(path) for path in args.text)
    return source


def export_config(args: argparse.Namespace) -> epb.ExportConfig:
    selection = parse_selection(args.features)
    selection.labeled_only = args.labeled_only
    selection.label_contains = args.label_contains
    selection.category = args.category
    selection.min_frequency = args.min_frequency
    selection.max_frequency = args.max_frequency
    selection.min_max_activation = args.min_max_activation
    return epb.ExportConfig(
        formats=FORMATS[args.format],
        selection=selection,
        dashboard=dpb.DashboardParams(
            n_top_examples=args.examples,
            n_quantile_groups=args.quantile_groups,
            examples_per_quantile_group=args.examples_per_group,
            context_left=args.context_left,
            context_right=args.context_right,
            logit_k=args.logit_k,
            histogram_bins=args.bins,
            histogram_scale=SCALES.get(args.bin_scale, dpb.BIN_SCALE_UNSPECIFIED),
            token_rank_metric=METRICS.get(args.token_metric, dpb.TOKEN_RANK_METRIC_UNSPECIFIED),
            n_top_tokens=args.top_tokens,
            aggregate_all_tokens=args.aggregate_all_tokens,
            omitted_components=sorted({COMPONENT_TO_PB[c] for c in args.omit}),
        ),
        preset=args.preset,
        tokens=token_source(args),
        compression=epb.Compression(gzip_json=args.gzip_json, zip_deflate=not args.no_deflate),
        delta_base_job_id=args.delta_from,
        merge_with_base=args.merge,
        auto_fix=args.auto_fix,
        with_preview=args.with_preview,
        naming=epb.NeuronpediaNaming(
            model_id=args.np_model_id,
            source_set=args.source_set,
            creator_name=args.creator,
            release_id=args.release_id,
            release_title=args.release_title,
            hf_repo_id=args.hf_repo,
            visibility=args.visibility,
        ),
        device=args.device,
        batch_size=args.batch_size,
    )
