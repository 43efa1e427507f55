"""Sparse autoencoders: configs, architectures, loading, validation and SAELens export."""

from mistudio_compute.sae.architectures import (
    GatedSae,
    JumpReluSae,
    Sae,
    StandardSae,
    TopKSae,
    architecture_class,
    known_architectures,
    register_architecture,
)
from mistudio_compute.sae.config import SaeConfig, is_v6_layout, parse_sae_config
from mistudio_compute.sae.loading import build_sae, load_sae, read_sparsity
from mistudio_compute.sae.validation import SaeCheck, check_against_model, sae_warnings

__all__ = [
    "GatedSae",
    "JumpReluSae",
    "Sae",
    "SaeCheck",
    "SaeConfig",
    "StandardSae",
    "TopKSae",
    "architecture_class",
    "build_sae",
    "check_against_model",
    "is_v6_layout",
    "known_architectures",
    "load_sae",
    "parse_sae_config",
    "read_sparsity",
    "register_architecture",
    "sae_warnings",
]
