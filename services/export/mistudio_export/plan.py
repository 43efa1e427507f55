"""From an export request to a checked plan: every option validated, every default resolved.

A bad option is an ``InvalidArgument`` naming it as the request spells it
(``config.dashboard.logit_k``); an SAE that lacks what the export needs is a
``FailedPrecondition`` listing each missing piece and how to get it. Nothing here talks to a
peer service: the caller passes the SAE record (and, for a delta export, the base job).
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, replace
from pathlib import Path

from mistudio.common.v1 import progress_pb2 as ppb
from mistudio_common.dashboard import COMPUTATION_VERSION, DashboardParams
from mistudio_common.dashboard_options import (
    PARAM_BOUNDS,
    Component,
    check_bounds,
    computation_stages,
    logit_lens_defined,
)
from mistudio_common.errors import FailedPrecondition, InvalidArgument
from mistudio_common.stages import FILE_STAGES

from mistudio_export.options import DashboardRequest, ExportOptions, NamingRequest
from mistudio_export.packaging import EVERY_FORMAT, Compression, ExportFormat
from mistudio_export.peers import RECORDED_TOKENS_KEY, SaeRecord, TokenSource
from mistudio_export.presets import apply_preset, with_token_budget
from mistudio_export.records import DEFAULT_VISIBILITY, NeuronpediaNaming
from mistudio_export.selection import FeatureSelection

_DEVICE = re.compile(r"^(auto|cpu|cuda(:\d+)?)$")
_LAYER = re.compile(r"^blocks\.(\d+)\.")
_HOOK_KIND_SHORT = {"resid": "res", "mlp": "mlp", "attn": "att"}


@dataclass(frozen=True)
class ExportPlan:
    """What one export will do, with every default filled in."""

    sae: SaeRecord
    owner: str
    formats: frozenset[ExportFormat]
    selection: FeatureSelection
    params: DashboardParams
    """Dashboard parameters without the token-source fingerprint (compute fills that in)."""
    tokens: TokenSource | None
    gzip_json: bool
    """Gzip the JSON files of the PRD layout."""
    zip_compression: Compression
    delta_base_job_id: str
    merge_with_base: bool
    auto_fix: bool
    naming: NeuronpediaNaming
    device: str
    batch_size: int
    with_preview: bool = False
    """Write the static dashboard viewer (mistudio_export.preview) into the archive."""
    omitted: frozenset[Component] = frozenset()
    """Every part left out: the request's, and the logit lens where the hook has none."""
    notes: tuple[str, ...] = ()
    """What the plan decided on its own, e.g. leaving the logit lens out for attn.hook_q."""

    @property
    def neuronpedia(self) -> bool:
        return ExportFormat.NEURONPEDIA in self.formats

    @property
    def saelens(self) -> bool:
        return ExportFormat.SAELENS in self.formats

    @property
    def created_at(self) -> str:
        """The SAE's creation time, never the clock: equal input gives a byte-identical archive."""
        return self.sae.created_at or "1970-01-01T00:00:00Z"

    @property
    def stages(self) -> tuple[ppb.Stage.ValueType, ...]:
        """The stages this export runs, in order (PRD §7.2)."""
        compute = (*computation_stages(self.omitted), ppb.STAGE_CACHING) if self.neuronpedia else ()
        return (ppb.STAGE_VALIDATING, *compute, *FILE_STAGES)


OWNER_MAX_LENGTH = 128
"""The store's column width for owners."""


def _check_owner(owner: str) -> None:
    if len(owner) > OWNER_MAX_LENGTH or "\x00" in owner:
        raise InvalidArgument(
            "owner holds a NUL character or is longer than 128 characters",
            field="owner",
            fix="use a printable owner name of at most 128 characters",
        )


def build_plan(sae: SaeRecord, options: ExportOptions, owner: str) -> ExportPlan:
    """Checks every option against ``sae``; InvalidArgument names the first as the request
    spells it (``config.…``)."""
    _check_owner(owner)
    options = apply_preset(options)
    formats = frozenset(options.formats) or EVERY_FORMAT
    neuronpedia = ExportFormat.NEURONPEDIA in formats
    _check_selection(options.selection, sae.d_sae)
    params = dashboard_params(options.dashboard)
    omitted = options.dashboard.omitted
    notes: tuple[str, ...] = ()
    if not logit_lens_defined(sae.hook_point) and Component.LOGIT_LENS not in omitted:
        omitted |= {Component.LOGIT_LENS}
        params = replace(params, omitted=params.omitted | {Component.LOGIT_LENS})
        notes = (logit_lens_note(sae.hook_point),)
    if neuronpedia and {Component.TOP_EXAMPLES, Component.QUANTILE_EXAMPLES} <= omitted:
        raise InvalidArgument(
            "top and quantile examples are both left out, but Neuronpedia needs at least one "
            "example per live feature",
            field="config.dashboard.omitted_components",
            fix="keep top or quantile examples, or export only the SAELens format",
        )
    tokens = token_source(options.tokens, sae)
    if tokens is not None:
        tokens = replace(tokens, max_tokens=with_token_budget(tokens.max_tokens, options.preset))
    if options.merge_with_base and not options.delta_base_job_id:
        raise InvalidArgument(
            "merge_with_base needs a delta export",
            field="config.merge_with_base",
            fix="set config.delta_base_job_id to the earlier export to merge with",
        )
    if not _DEVICE.match(options.device or "auto"):
        raise InvalidArgument(
            f"device {options.device!r} is not one of auto, cpu, cuda, cuda:N",
            field="config.device",
            fix="use 'auto' (GPU when present), 'cpu' or 'cuda'",
        )
    if options.batch_size < 0:
        raise InvalidArgument(
            f"batch_size {options.batch_size} is negative",
            field="config.batch_size",
            fix="use 0 for the compute service's default, or a positive row count",
        )
    if options.with_preview and not neuronpedia:
        raise InvalidArgument(
            "with_preview needs the neuronpedia format: the viewer reads its dashboards",
            field="config.with_preview",
            fix="add EXPORT_FORMAT_NEURONPEDIA to config.formats, or leave with_preview unset",
        )
    naming = _naming(sae, options.naming, owner)
    if neuronpedia:
        problems = naming.problems()
        if problems:
            first = problems[0]
            raise InvalidArgument(first.message, field=f"config.{first.field}", fix=first.fix)
    return ExportPlan(
        sae=sae,
        owner=owner,
        formats=formats,
        selection=options.selection,
        params=params,
        tokens=tokens,
        gzip_json=options.gzip_json,
        zip_compression=options.zip_compression,
        delta_base_job_id=options.delta_base_job_id,
        merge_with_base=options.merge_with_base,
        auto_fix=options.auto_fix,
        naming=naming,
        device=options.device or "auto",
        batch_size=options.batch_size,
        with_preview=options.with_preview,
        omitted=omitted,
        notes=notes,
    )


def logit_lens_note(hook_point: str) -> str:
    return (
        f"the logit lens is left out: {hook_point} holds queries, keys or values, which are "
        "never written to the residual stream, so its decoder directions have no logits"
    )


def check_preconditions(plan: ExportPlan, compute_problems: list[tuple[str, str]]) -> None:
    """Raises FailedPrecondition listing everything the SAE lacks for this export."""
    missing: list[tuple[str, str]] = []
    if not plan.sae.weights_uri:
        missing.append(
            (
                "weights_uri",
                "the SAE record names no weights file: register the SAE again with weights_uri "
                "set to its SAELens folder or safetensors file",
            )
        )
    if plan.neuronpedia and plan.tokens is None:
        missing.append(
            (
                "tokens",
                "no token source was given and none is recorded for this SAE: pass "
                "config.tokens (a token_file or text files), or record one in the SAE's config "
                f"under '{RECORDED_TOKENS_KEY}'",
            )
        )
    if plan.sae.d_sae <= 0 or plan.sae.d_in <= 0:
        missing.append(
            ("d_sae", "the SAE record has no d_sae/d_in: register it with the W_dec shape")
        )
    missing += compute_problems
    if missing:
        names = ", ".join(subject for subject, _ in missing)
        raise FailedPrecondition(
            f"SAE {plan.sae.sae_id!r} cannot be exported: missing {names}",
            violations=missing,
            field=missing[0][0],
            fix=missing[0][1],
        )


def _check_selection(selection: FeatureSelection, d_sae: int) -> None:
    base = selection.base
    if isinstance(base, range):
        start, end = base.start, base.stop
        if not 0 <= start < end <= d_sae:
            raise InvalidArgument(
                f"feature range [{start}, {end}) is not inside [0, {d_sae})",
                field="config.selection.range",
                fix=f"use 0 <= start < end <= d_sae ({d_sae})",
            )
    elif base is not None:
        if not base:
            raise InvalidArgument(
                "the feature list is empty",
                field="config.selection.list.indices",
                fix="list at least one feature index, or select all",
            )
        bad = sorted(i for i in base if not 0 <= i < d_sae)
        if bad:
            raise InvalidArgument(
                f"feature indices {bad[:5]} are outside [0, {d_sae})",
                field="config.selection.list.indices",
                fix=f"use indices between 0 and {d_sae - 1}",
            )
    statistics = selection.statistics
    for name in ("min_frequency", "max_frequency"):
        value = getattr(statistics, name)
        if not (math.isfinite(value) and 0.0 <= value <= 1.0):
            raise InvalidArgument(
                f"{name} {value} is not a fraction in [0, 1]",
                field=f"config.selection.{name}",
                fix="give activation frequencies as fractions of tokens, e.g. 0.001",
            )
    if statistics.max_frequency and statistics.max_frequency < statistics.min_frequency:
        raise InvalidArgument(
            f"max_frequency {statistics.max_frequency} is below min_frequency "
            f"{statistics.min_frequency}",
            field="config.selection.max_frequency",
            fix="use max_frequency >= min_frequency, or 0 for no upper bound",
        )
    threshold = statistics.min_max_activation
    if not (math.isfinite(threshold) and threshold >= 0.0):
        raise InvalidArgument(
            f"min_max_activation {threshold} is not a non-negative number",
            field="config.selection.min_max_activation",
            fix="use 0 for no threshold, or the smallest max activation to keep",
        )


def dashboard_params(given: DashboardRequest, field: str = "config.dashboard") -> DashboardParams:
    """The computation's parameters with defaults filled in, after checking the shared bounds;
    explanations, which are not computed, are not among its left-out components."""
    check_bounds(((name, getattr(given, name)) for name in PARAM_BOUNDS), field, True)
    defaults = DashboardParams()
    return replace(
        defaults,
        **{name: getattr(given, name) or getattr(defaults, name) for name in PARAM_BOUNDS},
        histogram_scale=given.histogram_scale or defaults.histogram_scale,
        token_rank_metric=given.token_rank_metric or defaults.token_rank_metric,
        aggregate_all_tokens=given.aggregate_all_tokens,
        token_source_fingerprint="",
        computation_version=COMPUTATION_VERSION,
        omitted=frozenset(c for c in given.omitted if c.computed),
    )


def token_source(
    given: TokenSource, sae: SaeRecord, field: str = "config.tokens"
) -> TokenSource | None:
    """The token source given, else the one recorded with the SAE, else None."""
    tokens = given
    if not tokens.given:
        if sae.recorded_tokens is None:
            return None
        tokens = sae.recorded_tokens
        field = f"sae.config.{RECORDED_TOKENS_KEY}"
    if tokens.text_paths is not None and not tokens.text_paths:
        raise InvalidArgument(
            "the text token source lists no files",
            field=f"{field}.text.paths",
            fix="list at least one plain-text file",
        )
    if tokens.context_size < 0 or tokens.max_tokens < 0:
        raise InvalidArgument(
            "context_size and max_tokens must not be negative",
            field=f"{field}.{'context_size' if tokens.context_size < 0 else 'max_tokens'}",
            fix="use 0 for the default, or a positive number",
        )
    return tokens


def layer_of(hook_point: str) -> int:
    match = _LAYER.match(hook_point)
    return int(match.group(1)) if match else 0


def _width_name(d_sae: int) -> str:
    return f"{d_sae // 1024}k" if d_sae >= 1024 and d_sae % 1024 == 0 else str(d_sae)


def _default_source_set(sae: SaeRecord) -> str:
    hook = sae.hook_point.rsplit(".", 1)[-1].removeprefix("hook_")
    kind = next((short for key, short in _HOOK_KIND_SHORT.items() if hook.startswith(key)), "")
    if not kind:
        kind = "att" if hook in ("z", "q", "k", "v") else "res"
    return f"mistudio-{kind}-{_width_name(sae.d_sae)}"


def _default_model_id(model_ref: str) -> str:
    """A Neuronpedia model id from a model reference: local files give their stem."""
    name = model_ref.split("?", 1)[0]
    if ":" in name:
        name = Path(name.split(":", 1)[1]).stem
    slug = re.sub(r"[^a-z0-9.-]+", "-", name.lower()).strip("-.")
    return slug[:32].rstrip("-.") or "model"


def _slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9]+", "-", text).strip("-") or "export"


def _naming(sae: SaeRecord, given: NamingRequest, owner: str) -> NeuronpediaNaming:
    return NeuronpediaNaming(
        model_id=given.model_id or sae.neuronpedia_model_id or _default_model_id(sae.model_id),
        source_set=given.source_set or sae.neuronpedia_source_set or _default_source_set(sae),
        layer=layer_of(sae.hook_point),
        creator_name=given.creator_name or owner or "miStudio",
        release_id=given.release_id or _slug(f"mistudio-{sae.sae_id}"),
        release_title=given.release_title or f"miStudio export of {sae.sae_id}",
        hf_repo=given.hf_repo_id,
        hf_folder=sae.hook_point,
        visibility=given.visibility or DEFAULT_VISIBILITY,
    )
