"""InputPolicy on its own: what lies under a root is allowed, links are judged by their target,
each kind has its size limit, and a single file can be a root."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import pytest
from mistudio_common.errors import InvalidArgument
from mistudio_compute.config import ComputeSettings
from mistudio_compute.input_files import InputKind, InputPolicy
from mistudio_compute.model_access import load_model

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


SECRET = "outside-secret"


def swap_after_resolving(monkeypatch: pytest.MonkeyPatch, swap: Any) -> None:
    """The next path resolution is followed at once by ``swap``: the race between checking a
    name and opening it, made deterministic."""
    resolve = os.path.realpath

    def resolve_then_swap(path: Any, *args: Any, **kwargs: Any) -> str:
        resolved = resolve(path, *args, **kwargs)
        monkeypatch.setattr(os.path, "realpath", resolve)
        swap()
        return resolved

    monkeypatch.setattr(os.path, "realpath", resolve_then_swap)


def test_a_folder_swapped_for_a_symlink_after_the_check_is_not_followed(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    root, outside = tmp_path / "root", tmp_path / "outside"
    (root / "data").mkdir(parents=True)
    (root / "data" / "t.txt").write_text("inside")
    outside.mkdir()
    (outside / "t.txt").write_text(SECRET)
    policy = InputPolicy.create([root], LIMITS)

    def swap() -> None:
        (root / "data").rename(root / "kept")
        (root / "data").symlink_to(outside, target_is_directory=True)

    swap_after_resolving(monkeypatch, swap)
    with pytest.raises(InvalidArgument, match="cannot be opened") as caught:
        policy.open(root / "data" / "t.txt", InputKind.TEXT_FILE, "tokens.text.paths")
    assert SECRET not in str(caught.value)


def test_a_file_swapped_for_a_symlink_after_the_check_is_not_followed(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    (tmp_path / "root").mkdir()
    (tmp_path / "root" / "t.txt").write_text("inside")
    (tmp_path / "secret.txt").write_text(SECRET)
    policy = InputPolicy.create([tmp_path / "root"], LIMITS)

    def swap() -> None:
        (tmp_path / "root" / "t.txt").unlink()
        (tmp_path / "root" / "t.txt").symlink_to(tmp_path / "secret.txt")

    swap_after_resolving(monkeypatch, swap)
    with pytest.raises(InvalidArgument, match="cannot be opened"):
        policy.open(tmp_path / "root" / "t.txt", InputKind.TEXT_FILE, "tokens.text.paths")


def test_what_is_opened_is_checked_on_the_descriptor(tmp_path: Path) -> None:
    (tmp_path / "big.txt").write_text("x" * 101)
    (tmp_path / "ok.txt").write_text("fine")
    os.mkfifo(tmp_path / "pipe")
    policy = InputPolicy.create([tmp_path], LIMITS)
    with policy.open(tmp_path / "ok.txt", InputKind.TEXT_FILE) as handle:
        assert handle.read() == b"fine"
    with pytest.raises(InvalidArgument, match="the limit is 100"):
        policy.open(tmp_path / "big.txt", InputKind.TEXT_FILE)
    with pytest.raises(InvalidArgument, match="not a regular file"):
        policy.open(tmp_path / "pipe", InputKind.TEXT_FILE)  # refused, not waited on


def test_a_llama2c_model_swapped_for_a_symlink_after_the_check_is_not_followed(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    (tmp_path / "root").mkdir()
    model, tokenizer = tmp_path / "root" / "model.bin", tmp_path / "root" / "tok.bin"
    model.write_bytes(b"\0" * 28)
    tokenizer.write_bytes(b"\0" * 4)
    (tmp_path / "secret.bin").write_text(SECRET)
    policy = InputPolicy.create([tmp_path / "root"], LIMITS)

    def swap() -> None:
        model.unlink()
        model.symlink_to(tmp_path / "secret.bin")

    swap_after_resolving(monkeypatch, swap)
    with pytest.raises(InvalidArgument, match="cannot be opened") as caught:
        load_model(f"llama2c:{model}?tokenizer={tokenizer}", "cpu", policy.open)
    assert caught.value.field == "model_id"
    assert SECRET not in str(caught.value)


def test_a_llama2c_tokenizer_outside_the_roots_is_refused_when_loaded(tmp_path: Path) -> None:
    (tmp_path / "root").mkdir()
    (tmp_path / "secret.bin").write_text(SECRET)
    policy = InputPolicy.create([tmp_path / "root"], LIMITS)
    ref = f"llama2c:{tmp_path / 'secret.bin'}?tokenizer={tmp_path / 'secret.bin'}"
    with pytest.raises(InvalidArgument, match="outside") as caught:
        load_model(ref, "cpu", policy.open)
    assert SECRET not in str(caught.value)
