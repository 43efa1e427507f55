"""What the repository takes and returns: SAEs, features, explanations and hashes as plain values.

The servicer translates the store's messages into these and back (``messages``); the repository,
its checks and the rows never see a request. Export jobs stay the export's typed messages and
dashboards compute's wire bytes: the store keeps them as documents and bytes it does not read.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from typing import Any


@dataclass(frozen=True)
class Sae:
    """A registered SAE. ``architecture`` is its SAELens name ("topk"); "" is unspecified."""

    sae_id: str
    model_id: str = ""
    hook_point: str = ""
    d_in: int = 0
    d_sae: int = 0
    architecture: str = ""
    weights_uri: str = ""
    training_dataset: str = ""
    n_training_tokens: int = 0
    l0: float = 0.0
    explained_variance: float = 0.0
    neuronpedia_model_id: str = ""
    neuronpedia_source_set: str = ""
    config: dict[str, Any] = field(default_factory=dict)
    """The SAE's configuration as a JSON object (the token source recorded with it included)."""
    owner: str = ""
    created_at: datetime | None = None
    updated_at: datetime | None = None


@dataclass(frozen=True)
class Feature:
    feature_index: int
    label: str = ""
    category: str = ""
    activation_frequency: float = 0.0
    max_activation: float = 0.0
    updated_at: datetime | None = None


@dataclass(frozen=True)
class FeatureFilter:
    """Which features a listing returns; each field left at its zero value matches all."""

    index_start: int = 0
    index_end: int = 0
    """Exclusive; 0: no upper bound."""
    labeled_only: bool = False
    label_contains: str = ""
    category: str = ""


@dataclass(frozen=True)
class Explanation:
    feature_index: int
    description: str
    method: str = ""
    explainer_model: str = ""
    score: float | None = None
    created_at: datetime | None = None
    """None on an explanation being added: the time it is stored."""
    explanation_id: str = ""
    """Assigned by the store."""


@dataclass(frozen=True)
class FeatureHash:
    """The content hash (hex SHA-256) of one feature's files in an export's archive, or of one
    cached dashboard."""

    feature_index: int
    content_hash: str


@dataclass(frozen=True)
class SerializedDashboard:
    """A cached dashboard as the bytes the store keeps, hashes and returns without parsing: a
    ``FeatureDashboard``'s deterministic serialisation (``dashboard_codec.dashboard_bytes``)."""

    feature_index: int
    data: bytes
