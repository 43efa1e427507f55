"""The compute memory budget: a fixed size by default, so memory does not grow with d_sae."""

from __future__ import annotations

import os

import pytest
from mistudio_compute import config
from mistudio_compute.config import DEFAULT_MEMORY_BUDGET, ComputeSettings


def test_the_default_budget_is_a_fixed_size_capped_at_80_percent_of_ram() -> None:
    physical = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    expected = min(DEFAULT_MEMORY_BUDGET, int(physical * 0.8))
    assert ComputeSettings().memory_budget() == expected


def test_a_small_machine_gets_80_percent_of_its_ram(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(config.os, "sysconf", {"SC_PAGE_SIZE": 4096, "SC_PHYS_PAGES": 1 << 17}.get)
    assert ComputeSettings().memory_budget() == int((1 << 29) * 0.8)  # 512 MiB of RAM


def test_a_set_budget_wins(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MISTUDIO_COMPUTE_MEMORY_BUDGET_BYTES", str(8 << 30))
    assert ComputeSettings().memory_budget() == 8 << 30
