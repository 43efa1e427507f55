"""What Neuronpedia's config holds for explanations, and how ours map onto it.

An explanation row names an ExplanationType and an ExplanationModelType (or NULL); Neuronpedia
loads its config from its own bucket (``v1/config/*.jsonl``, apps/webapp/lib/db/import.ts), so
the names here are those its code lists as valid. A row naming anything else fails the foreign
key and with it the whole importer file, and makes the upload route reject the whole call.
"""

from __future__ import annotations

from collections.abc import Iterable

from mistudio_export.records import HUMAN_METHODS, ExplanationRecord

KNOWN_EXPLANATION_TYPES = frozenset(
    {
        "oai_token-act-pair",
        "oai_attention-head",
        "np_max-act-logits",
        "np_max-act",
        "np_acts-logits-general",
        "python-code",
        "eleuther_acts_top20",
    }
)
"""ExplanationType names Neuronpedia's config holds (VALID_EXPLAINER_TYPE_NAMES of its
utils/neuronpedia-utils batch-autointerp.py, plus eleuther_acts_top20 of its explanation/generate
route); others break the foreign key."""
KNOWN_EXPLAINER_MODELS = frozenset(
    {
        "gpt-4o-mini",
        "gpt-4.1-nano",
        "gpt-5-nano-2025-08-07",
        "gpt-5-mini-2025-08-07",
        "gpt-5-nano",
        "gemini-2.0-flash",
        "gemini-2.0-flash-lite",
        "gemini-2.5-flash",
        "gemini-2.5-flash-lite",
        "openai/gpt-oss-120b",
        "google/gemini-2.5-flash-lite",
    }
)
"""ExplanationModelType names Neuronpedia's config holds (VALID_EXPLAINER_MODEL_NAMES of
batch-autointerp.py); others break the foreign key, NULL (no model) does not."""
PENDING_EXPLANATIONS = "explanations-pending"
"""Explanations Neuronpedia cannot take yet: its importer reads only ``explanations/``."""


def neuronpedia_type(method: str) -> str | None:
    """The ExplanationType a method is on Neuronpedia: None for a label or a human's explanation
    (Neuronpedia stores those with a NULL type), the lowercased name when Neuronpedia has it (its
    upload API lowercases too), else the method unchanged (not importable yet)."""
    lowered = method.strip().lower()
    if lowered in HUMAN_METHODS:
        return None
    return lowered if lowered in KNOWN_EXPLANATION_TYPES else method


def importable(r: ExplanationRecord) -> bool:
    """Whether Neuronpedia's foreign keys take the explanation as it is."""
    type_name = neuronpedia_type(r.method)
    return (type_name is None or type_name in KNOWN_EXPLANATION_TYPES) and (
        not r.explainer_model or r.explainer_model in KNOWN_EXPLAINER_MODELS
    )


def missing_on_neuronpedia(records: Iterable[ExplanationRecord]) -> tuple[list[str], list[str]]:
    """Explanation types and explainer models the maintainers would have to add, sorted."""
    types, models = set(), set()
    for r in records:
        type_name = neuronpedia_type(r.method)
        if type_name is not None and type_name not in KNOWN_EXPLANATION_TYPES:
            types.add(r.method)
        if r.explainer_model and r.explainer_model not in KNOWN_EXPLAINER_MODELS:
            models.add(r.explainer_model)
    return sorted(types), sorted(models)
