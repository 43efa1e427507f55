"""Request checks that need no database: each failure names the request field and a fix."""

from __future__ import annotations

import math
import re
from collections.abc import Iterable, Sequence

from mistudio_common.errors import InvalidArgument

from mistudio_store.records import Explanation, Feature, Sae

SAE_ID_PATTERN = re.compile(r"[a-z0-9][a-z0-9._-]{0,127}")
JOB_ID_PATTERN = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}")
HOOK_POINT_PATTERN = re.compile(r"\S{1,256}")

JOB_MUTABLE_FIELDS = frozenset(
    {
        "owner",
        "config",
        "state",
        "progress",
        "output_uri",
        "output_size_bytes",
        "feature_count",
        "error_message",
        "error_details",
        "resume",
        "outcome",
        "started_at",
        "finished_at",
        "requested_state",
    }
)
JOB_IMMUTABLE_FIELDS = frozenset(
    {
        "job_id",
        "sae_id",
        "sae_owner",
        "request_id",
        "created_at",
        "updated_at",
        "holder",
        "lease_expires_at",
    }
)
"""The lease fields change only through ClaimExportJob, which checks who holds the job."""


def sae_id(value: str, field: str = "sae_id") -> str:
    if not SAE_ID_PATTERN.fullmatch(value):
        raise InvalidArgument(
            f"sae_id {value!r} is not a valid SAE id",
            field=field,
            fix="use 1-128 lowercase letters, digits, '-', '_' or '.', starting with a letter "
            "or digit (e.g. 'stories260k-l2-res-512')",
        )
    return value


OWNER_CHARS = 128
"""An owner's name: the width of the owner columns."""


def owner(value: str, field: str = "owner") -> str:
    max_length(value, OWNER_CHARS, field)
    return value


def job_id(value: str, field: str = "job_id") -> str:
    if not JOB_ID_PATTERN.fullmatch(value):
        raise InvalidArgument(
            f"job_id {value!r} is not a valid job id",
            field=field,
            fix="use 1-64 letters, digits, '-', '_' or '.' (or leave it empty on create)",
        )
    return value


def sae(message: Sae, field: str = "sae") -> None:
    sae_id(message.sae_id, f"{field}.sae_id")
    if not message.model_id.strip():
        raise InvalidArgument(
            "model_id is empty", field=f"{field}.model_id", fix="name the model, e.g. 'gpt2-small'"
        )
    max_length(message.model_id, 512, f"{field}.model_id")
    max_length(message.neuronpedia_model_id, 256, f"{field}.neuronpedia_model_id")
    max_length(message.neuronpedia_source_set, 256, f"{field}.neuronpedia_source_set")
    owner(message.owner, f"{field}.owner")
    if not HOOK_POINT_PATTERN.fullmatch(message.hook_point):
        raise InvalidArgument(
            f"hook_point {message.hook_point!r} is empty or contains whitespace",
            field=f"{field}.hook_point",
            fix="use a TransformerLens hook name, e.g. 'blocks.2.hook_resid_post'",
        )
    for name in ("d_in", "d_sae"):
        if getattr(message, name) <= 0:
            raise InvalidArgument(
                f"{name} is {getattr(message, name)}",
                field=f"{field}.{name}",
                fix=f"give {name} > 0",
            )
    if not message.architecture:
        raise InvalidArgument(
            "architecture is unspecified or unknown",
            field=f"{field}.architecture",
            fix="set STANDARD, JUMPRELU, TOPK or GATED",
        )
    if message.n_training_tokens < 0:
        raise InvalidArgument(
            "n_training_tokens is negative", field=f"{field}.n_training_tokens", fix="give >= 0"
        )
    finite(message.l0, f"{field}.l0", minimum=0.0)
    finite(message.explained_variance, f"{field}.explained_variance")


def max_length(value: str, limit: int, field: str) -> None:
    """Column widths and NUL characters: PostgreSQL refuses both (with an error quoting the SQL),
    so the request is checked before it gets there."""
    if len(value) > limit:
        raise InvalidArgument(
            f"{field} is {len(value)} characters long", field=field, fix=f"keep it to {limit}"
        )
    if "\x00" in value:
        raise InvalidArgument(
            f"{field} holds a NUL character", field=field, fix="remove the NUL (\\0) characters"
        )


def finite(value: float, field: str, minimum: float | None = None) -> None:
    if not math.isfinite(value) or (minimum is not None and value < minimum):
        bound = f" and >= {minimum}" if minimum is not None else ""
        raise InvalidArgument(f"{field} is {value}", field=field, fix=f"give a finite value{bound}")


def feature_indices(indices: Iterable[int], d_sae: int, field: str, *, unique: bool) -> None:
    """Every index lies in [0, d_sae); with ``unique``, none repeats (a batch writes each once)."""
    seen: set[int] = set()
    for i, index in enumerate(indices):
        if not 0 <= index < d_sae:
            raise InvalidArgument(
                f"feature index {index} is outside [0, {d_sae})",
                field=field.format(i=i),
                fix=f"this SAE has {d_sae} features: use 0..{d_sae - 1}",
            )
        if unique and index in seen:
            raise InvalidArgument(
                f"feature index {index} appears twice in one batch",
                field=field.format(i=i),
                fix="send each feature once per batch",
            )
        seen.add(index)


def features(items: Sequence[Feature], d_sae: int) -> None:
    feature_indices(
        (f.feature_index for f in items), d_sae, "features[{i}].feature_index", unique=True
    )
    for i, feature in enumerate(items):
        finite(feature.max_activation, f"features[{i}].max_activation")
        max_length(feature.category, 128, f"features[{i}].category")
        if not 0.0 <= feature.activation_frequency <= 1.0:
            raise InvalidArgument(
                f"activation_frequency {feature.activation_frequency} is outside [0, 1]",
                field=f"features[{i}].activation_frequency",
                fix="give the fraction of tokens on which the feature fires",
            )


def explanations(items: Sequence[Explanation], d_sae: int) -> None:
    indices = (e.feature_index for e in items)
    feature_indices(indices, d_sae, "explanations[{i}].feature_index", unique=False)
    for i, explanation in enumerate(items):
        if not explanation.description.strip():
            raise InvalidArgument(
                "description is empty",
                field=f"explanations[{i}].description",
                fix="give the explanation text",
            )
        if explanation.score is not None:
            finite(explanation.score, f"explanations[{i}].score")
        max_length(explanation.method, 128, f"explanations[{i}].method")
        max_length(explanation.explainer_model, 128, f"explanations[{i}].explainer_model")


FEATURE_FIELDS = ("label", "category", "activation_frequency", "max_activation")
"""The Feature fields UpsertFeatures writes; its update_mask names a subset."""


def feature_update_mask(paths: Sequence[str]) -> list[str]:
    """The columns an upsert overwrites on existing rows: all of them for an empty mask."""
    for path in paths:
        if path not in FEATURE_FIELDS:
            raise InvalidArgument(
                f"update_mask names unknown field {path!r}",
                field="update_mask",
                fix=f"use Feature field names from {list(FEATURE_FIELDS)}, or none for all",
            )
    return list(dict.fromkeys(paths)) or list(FEATURE_FIELDS)


def update_mask(paths: Sequence[str]) -> list[str]:
    if not paths:
        raise InvalidArgument(
            "update_mask is empty",
            field="update_mask",
            fix=f"name the fields to write, from {sorted(JOB_MUTABLE_FIELDS)}",
        )
    for path in paths:
        if path in JOB_IMMUTABLE_FIELDS:
            raise InvalidArgument(
                f"{path!r} cannot be changed after the job is created",
                field="update_mask",
                fix=f"write only {sorted(JOB_MUTABLE_FIELDS)}",
            )
        if path not in JOB_MUTABLE_FIELDS:
            raise InvalidArgument(
                f"update_mask names unknown field {path!r}",
                field="update_mask",
                fix=f"use ExportJob field names from {sorted(JOB_MUTABLE_FIELDS)}",
            )
    return list(dict.fromkeys(paths))
