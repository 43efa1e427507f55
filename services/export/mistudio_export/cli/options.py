"""Command-line options of `mistudio-export run`, and their translation into an ExportConfig.

Every option of the StartExport RPC has a flag here; range checks stay in the service so the
CLI and the backend get the same errors.
"""

from __future__ import annotations

import argparse

from mistudio.common.v1 import dashboard_pb2 as dpb
from mistudio.common.v1 import tokens_pb2 as tpb
from mistudio.export.v1 import export_service_pb2 as epb
from mistudio_common.dashboard_codec import COMPONENT_TO_PB
from mistudio_common.dashboard_options import Component
from mistudio_common.errors import InvalidArgument

from mistudio_export.presets import PRESETS
from mistudio_export.records import VISIBILITIES

FORMATS = {
    "neuronpedia": [epb.EXPORT_FORMAT_NEURONPEDIA],
    "saelens": [epb.EXPORT_FORMAT_SAELENS],
    "both": [epb.EXPORT_FORMAT_NEURONPEDIA, epb.EXPORT_FORMAT_SAELENS],
}
SCALES = {"log": dpb.BIN_SCALE_LOG, "linear": dpb.BIN_SCALE_LINEAR}
METRICS = {
    "sum": dpb.TOKEN_RANK_METRIC_SUM,
    "count": dpb.TOKEN_RANK_METRIC_COUNT,
    "mean": dpb.TOKEN_RANK_METRIC_MEAN,
}


def add_export_options(parser: argparse.ArgumentParser) -> None:
    what = parser.add_argument_group("what to export")
    what.add_argument("--format", choices=sorted(FORMATS), default="both", help="default: both")
    what.add_argument(
        "--features",
        default="all",
        metavar="SPEC",
        help="'all', a half-open range START:END, or a list 3,17,42 (default: all)",
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
    data.add_argument("--examples", type=int, default=0, help="top examples per feature, 20-100")
    data.add_argument("--quantile-groups", type=int, default=0)
    data.add_argument("--examples-per-group", type=int, default=0)
    data.add_argument("--context-left", type=int, default=0)
    data.add_argument("--context-right", type=int, default=0)
    data.add_argument("--logit-k", type=int, default=0, help="top/bottom logits, 10-50")
    data.add_argument("--bins", type=int, default=0, help="histogram bins, 20-100")
    data.add_argument("--bin-scale", choices=sorted(SCALES), default="", help="default: log")
    data.add_argument("--token-metric", choices=sorted(METRICS), default="", help="default: sum")
    data.add_argument("--top-tokens", type=int, default=0)
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
        "--tokens", default="", metavar="FILE", help=".npy/.safetensors [rows, ctx]"
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


def token_source(args: argparse.Namespace) -> tpb.TokenSource:
    source = tpb.TokenSource(
        dataset_name=args.dataset_name, context_size=args.context_size, max_tokens=args.max_tokens
    )
    if args.no_bos:  # unset otherwise: the one default (dashboard_options.DEFAULT_PREPEND_BOS)
        source.prepend_bos = False
    if args.tokens:
        source.token_file = args.tokens
    elif args.text:
        source.text.paths.extend(args.text)
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
