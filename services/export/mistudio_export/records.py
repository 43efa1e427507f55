"""What the export formats need besides feature dashboards: SAE facts, Neuronpedia names, labels.

Naming rules follow Neuronpedia's public API (``/api/model/new``, ``/api/source-set/new``), the
strictest of its entry points, so a name that passes here is accepted everywhere.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from datetime import datetime

from mistudio_common.errors import InvalidArgument

from mistudio_export.formats.jsonio import stable_id

EXPORT_FORMAT_VERSION = "1.0"

PUBLIC_BOT_USER_ID = "clkht01d40000jv08hvalcvly"
"""Neuronpedia's seeded bot user: the converters' default creator, listed as a public creator."""

PUBLIC_ACTIVATION_USER_IDS = frozenset({"cljj57d3c000076ei38vwnv35", PUBLIC_BOT_USER_ID})
"""Activations by other creators are hidden by Neuronpedia's default feature page."""

VISIBILITIES = ("PUBLIC", "UNLISTED", "PRIVATE")
DEFAULT_VISIBILITY = "UNLISTED"
"""Until someone has looked at the dashboards on Neuronpedia."""

_MODEL_ID = re.compile(r"^[a-z][a-z0-9.-]*[a-z0-9]$|^[a-z]$")
_SOURCE_SET = re.compile(r"^[a-z][a-z0-9-]*[a-z0-9]$|^[a-z0-9]$")
_RELEASE_ID = re.compile(r"^[A-Za-z0-9-]+$")
_SUFFIX = re.compile(r"^[A-Za-z0-9._-]+$")
_HF_REPO = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*/[A-Za-z0-9][A-Za-z0-9._-]*$")
_SOURCE_ID = re.compile(r"^(\d+)-([^_].*?)(?:__(.+))?$")


@dataclass(frozen=True, slots=True)
class NamingProblem:
    field: str
    message: str
    fix: str


@dataclass(frozen=True, slots=True)
class SaeInfo:
    """SAE-level facts written into every format's metadata (PRD FR-2.3 plus source fields)."""

    model_id: str
    sae_id: str
    hook_point: str
    layer: int
    d_sae: int
    d_in: int
    architecture: str
    training_dataset: str
    n_training_tokens: int
    l0: float
    explained_variance: float
    created_at: str
    """ISO-8601, supplied by the caller so that two exports of the same data are byte-identical."""
    mistudio_version: str
    n_prompts: int
    """Prompts the dashboards were computed over."""
    n_tokens_in_prompt: int
    prepend_bos: bool
    """Whether every prompt row begins with BOS, as the compute service read the token source."""
    dashboard_dataset: str = ""
    """Dataset the dashboard prompts came from; empty means the training dataset."""
    omitted_components: tuple[str, ...] = ()
    """Dashboard parts left out (``dashboard_options.Component`` values), sorted."""
    export_version: str = EXPORT_FORMAT_VERSION
    model_layers: int = 0
    """Blocks of the model (Neuronpedia's Model.layers); 0 when compute was not asked."""

    @property
    def prompts_dataset(self) -> str:
        return self.dashboard_dataset or self.training_dataset

    def validate(self) -> None:
        """Raise InvalidArgument naming the first field that no format could carry."""
        if self.d_sae <= 0 or self.d_in <= 0:
            raise InvalidArgument(
                f"d_sae={self.d_sae}, d_in={self.d_in}: both must be positive",
                field="sae_info.d_sae",
                fix="read d_sae and d_in from the SAE's W_dec shape [d_sae, d_in]",
            )
        if self.layer < 0:
            raise InvalidArgument(
                f"layer={self.layer} is negative", field="sae_info.layer", fix="use the block index"
            )
        prefix = f"blocks.{self.layer}."
        if self.hook_point.startswith("blocks.") and not self.hook_point.startswith(prefix):
            raise InvalidArgument(
                f"hook_point {self.hook_point!r} is not in layer {self.layer}",
                field="sae_info.hook_point",
                fix=f"use a TransformerLens hook name starting with {prefix!r}",
            )
        for name in ("l0", "explained_variance"):
            if not math.isfinite(getattr(self, name)):
                raise InvalidArgument(
                    f"{name} is {getattr(self, name)}",
                    field=f"sae_info.{name}",
                    fix="re-run the SAE evaluation; exports never carry NaN or Inf",
                )
        try:
            datetime.fromisoformat(self.created_at)
        except ValueError:
            raise InvalidArgument(
                f"created_at {self.created_at!r} is not ISO-8601",
                field="sae_info.created_at",
                fix="pass e.g. '2025-01-15T10:30:00Z'",
            ) from None


@dataclass(frozen=True, slots=True)
class NeuronpediaNaming:
    """Where the SAE lives on Neuronpedia: model, source set, layer and release."""

    model_id: str
    source_set: str
    layer: int
    creator_name: str
    release_id: str
    release_title: str
    hf_repo: str = ""
    hf_folder: str = ""
    source_set_description: str = ""
    source_suffix: str = ""
    """Optional ``__{suffix}`` of the source id, e.g. ``l0-143`` for several SAEs per layer."""
    creator_id: str = PUBLIC_BOT_USER_ID
    url: str = ""
    model_owner: str = ""
    visibility: str = DEFAULT_VISIBILITY

    @property
    def source_id(self) -> str:
        base = f"{self.layer}-{self.source_set}"
        return f"{base}__{self.source_suffix}" if self.source_suffix else base

    @property
    def neuronpedia_id(self) -> str:
        return f"{self.model_id}/{self.source_id}"

    def problems(self) -> list[NamingProblem]:
        """Every rule this naming breaks, each with the field and a fix."""
        found = model_id_problems(self.model_id) + source_set_problems(self.source_set)
        if not 0 <= self.layer <= 126:
            found.append(
                NamingProblem("naming.layer", f"layer {self.layer} is outside 0..126", _LAYER_FIX)
            )
        if self.source_suffix and not _SUFFIX.match(self.source_suffix):
            found.append(
                NamingProblem(
                    "naming.source_suffix",
                    f"source suffix {self.source_suffix!r} has characters other than "
                    "letters, digits, '.', '_' and '-'",
                    "shorten it to something like 'l0-143'",
                )
            )
        if not _RELEASE_ID.match(self.release_id):
            found.append(
                NamingProblem(
                    "naming.release_id",
                    f"release id {self.release_id!r} is not alphanumeric with dashes",
                    "use letters, digits and '-', e.g. 'mistudio-gpt2-res'",
                )
            )
        found += self._text_problems()
        return found

    def _text_problems(self) -> list[NamingProblem]:
        found: list[NamingProblem] = []
        if not self.creator_name.strip():
            found.append(
                NamingProblem("naming.creator_name", "creator name is empty", "name the author")
            )
        if not self.release_title.strip():
            found.append(
                NamingProblem("naming.release_title", "release title is empty", "give a title")
            )
        if len(self.source_set_description) > 128:
            found.append(
                NamingProblem(
                    "naming.source_set_description",
                    f"description has {len(self.source_set_description)} characters, over 128",
                    "shorten it, e.g. 'Residual stream - 16k'",
                )
            )
        if self.hf_repo and not _HF_REPO.match(self.hf_repo):
            found.append(
                NamingProblem(
                    "naming.hf_repo",
                    f"Hugging Face repo {self.hf_repo!r} is not 'owner/name'",
                    "use the repo id as shown on huggingface.co",
                )
            )
        if self.visibility not in VISIBILITIES:
            found.append(
                NamingProblem(
                    "naming.visibility",
                    f"visibility {self.visibility!r} is not one of {', '.join(VISIBILITIES)}",
                    "use UNLISTED until the dashboards were checked",
                )
            )
        if not self.creator_id:
            found.append(
                NamingProblem(
                    "naming.creator_id",
                    "creator id is empty",
                    f"use a Neuronpedia user id, by default the bot {PUBLIC_BOT_USER_ID}",
                )
            )
        return found

    def validate(self) -> None:
        """Raise InvalidArgument for the first broken rule."""
        found = self.problems()
        if found:
            first = found[0]
            more = f" (and {len(found) - 1} more)" if len(found) > 1 else ""
            raise InvalidArgument(first.message + more, field=first.field, fix=first.fix)


_LAYER_FIX = "Neuronpedia models have 1..127 layers; use the 0-based block index"


def model_id_problems(model_id: str, field: str = "naming.model_id") -> list[NamingProblem]:
    """Neuronpedia's public rule: lowercase TransformerLens-style ids such as 'gemma-2-2b'."""
    fix = "use the TransformerLens name, lowercase, e.g. 'gpt2-small' or 'gemma-2-2b'"
    found = []
    if not 2 <= len(model_id) <= 32:
        found.append(NamingProblem(field, f"model id {model_id!r} is not 2..32 characters", fix))
    if not _MODEL_ID.match(model_id) or "--" in model_id or ".." in model_id:
        found.append(
            NamingProblem(
                field,
                f"model id {model_id!r} must be lowercase letters, digits, '.' and '-', "
                "start with a letter, end with a letter or digit, without '--' or '..'",
                fix,
            )
        )
    return found


def source_set_problems(name: str, field: str = "naming.source_set") -> list[NamingProblem]:
    """Neuronpedia's public rule for source-set names, e.g. 'mistudio-res-16k'."""
    fix = "use lowercase letters, digits and single dashes, no layer, e.g. 'mistudio-res-16k'"
    if name == "neurons":
        return [NamingProblem(field, "'neurons' is reserved for model neurons", fix)]
    if not _SOURCE_SET.match(name) or "--" in name:
        return [
            NamingProblem(
                field,
                f"source set {name!r} must be lowercase letters, digits and '-', start with a "
                "letter and end with a letter or digit, without '--'",
                fix,
            )
        ]
    return []


def parse_source_id(source_id: str) -> tuple[int, str, str] | None:
    """Split '12-res-16k__l0-40' into (12, 'res-16k', 'l0-40'); None if it is not a source id."""
    m = _SOURCE_ID.match(source_id)
    if m is None:
        return None
    return int(m.group(1)), m.group(2), m.group(3) or ""


@dataclass(frozen=True, slots=True)
class ExplanationRecord:
    """One label of one feature, as miStudio stores it (PRD FR-5.1)."""

    feature_index: int
    description: str
    method: str
    """How it was produced, e.g. 'np_max-act-logits'; Neuronpedia calls this the type."""
    explainer_model: str
    """The model that wrote it; empty for a human or heuristic label (Neuronpedia's NULL)."""
    score: float | None
    """None when the label was never scored (not 0.0)."""
    created_at: str
    explanation_id: str = ""
    """The store's id of it (part of the feature's content hash); empty for a label."""

    def export_id(self, neuronpedia_id: str) -> str:
        """Cuid-shaped id from the feature's Neuronpedia id and the label's content.

        Equal in every format and every export, so a re-export is idempotent under Neuronpedia's
        ``ON CONFLICT DO NOTHING``; distinct across SAEs and stores (never a store's row number,
        which two stores both start at 1).
        """
        return stable_id(
            neuronpedia_id,
            "explanation",
            self.feature_index,
            self.method,
            self.explainer_model,
            self.description,
        )


LABEL_METHOD = "mistudio_label"
"""The method of a feature's label exported as an explanation (PRD FR-5.1)."""
HUMAN_METHODS = frozenset({"", "human", LABEL_METHOD})
"""Methods of explanations no model wrote: Neuronpedia stores them with a NULL type."""


@dataclass(frozen=True, slots=True)
class FeatureLabel:
    """A feature's label and category as the store keeps them."""

    feature_index: int
    label: str
    category: str
    updated_at: str
    """ISO-8601; when the label was last written."""

    def as_explanation(self) -> ExplanationRecord:
        """PRD FR-5.1 exports labels as explanations: no model, no score."""
        return ExplanationRecord(
            feature_index=self.feature_index,
            description=self.label,
            method=LABEL_METHOD,
            explainer_model="",
            score=None,
            created_at=self.updated_at,
        )
