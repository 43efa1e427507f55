"""The demo's model-side assets: a sampled corpus, a trained SAE and heuristic explanations.

``ensure_demo_assets`` is the entry point; ``python -m mistudio_compute.training`` runs it.
"""

from mistudio_compute.training.demo_assets import DEFAULT_HOOK, DemoAssets, ensure_demo_assets

__all__ = ["DEFAULT_HOOK", "DemoAssets", "ensure_demo_assets"]
