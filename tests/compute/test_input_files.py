"""InputPolicy on its own: what lies under a root is allowed, links are judged by their target,
each kind has its size limit, and a single file can be a root."""

from __future__ import annotations

from pathlib import Path

import pytest
from mistudio_common.errors import InvalidArgument
from mistudio_compute.config import ComputeSettings
from mistudio_compute.input_files import InputKind, InputPolicy

LIMITS = {kind: 100 for kind in InputKind}


def test_a_file_under_a_root_is_allowed_by_its_real_path(tmp_path: Path) -> None:
    (tmp_path / "a").mkdir()
    (tmp_path / "a" / "t.txt").write_text("hello")
    policy = InputPolicy.create([tmp_path], LIMITS)
    found = policy.file(tmp_path / "a" / ".." / "a" / "t.txt", InputKind.TEXT_FILE, "f")
    assert found == (tmp_path / "a" / "t.txt").resolve()


def test_a_link_inside_a_root_to_a_file_inside_is_allowed(tmp_path: Path) -> None:
    (tmp_path / "real.txt").write_text("x")
    (tmp_path / "link.txt").symlink_to(tmp_path / "real.txt")
    policy = InputPolicy.create([tmp_path], LIMITS)
    assert policy.file(tmp_path / "link.txt", InputKind.TEXT_FILE, "f").name == "real.txt"


def test_each_kind_has_its_own_size_limit(tmp_path: Path) -> None:
    (tmp_path / "cfg.json").write_text("{}" + " " * 200)
    policy = InputPolicy.create([tmp_path], {**LIMITS, InputKind.SAE_WEIGHTS: 1000})
    assert policy.file(tmp_path / "cfg.json", InputKind.SAE_WEIGHTS, "f")
    with pytest.raises(InvalidArgument, match="MAX_SAE_CONFIG_BYTES"):
        policy.file(tmp_path / "cfg.json", InputKind.SAE_CONFIG, "sae.files.path")


def test_a_single_file_root_allows_that_file_only(tmp_path: Path) -> None:
    (tmp_path / "mine.npy").write_bytes(b"1")
    (tmp_path / "other.npy").write_bytes(b"2")
    policy = InputPolicy.create([tmp_path / "mine.npy"], LIMITS)
    assert policy.allows(tmp_path / "mine.npy")
    with pytest.raises(InvalidArgument, match="outside"):
        policy.file(tmp_path / "other.npy", InputKind.TOKEN_FILE, "tokens.token_file")


def test_a_missing_file_outside_the_roots_reads_as_outside_not_missing(tmp_path: Path) -> None:
    policy = InputPolicy.create([tmp_path / "root"], LIMITS)
    with pytest.raises(InvalidArgument, match="outside"):
        policy.file(tmp_path / "nowhere.txt", InputKind.TEXT_FILE, "f")


def test_the_default_root_is_the_data_folder(tmp_path: Path) -> None:
    policy = ComputeSettings(data_dir=tmp_path).input_policy()
    assert policy.roots == (tmp_path.resolve(),)
