"""Every service's command line: flags override the environment, which overrides defaults."""

from __future__ import annotations

from pathlib import Path

import pytest
from mistudio_common.service_cli import Flag, parse_settings
from mistudio_compute.config import ComputeSettings
from mistudio_export.config import ExportSettings
from mistudio_store.config import StoreSettings

STORE_FLAGS = (Flag("--data-dir", "data_dir", "folder"),)


def test_a_flag_overrides_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MISTUDIO_EXPORT_PORT", "6000")
    settings = parse_settings(ExportSettings, prog="x", description=None, argv=["--port", "7000"])
    assert settings.port == 7000


def test_a_missing_flag_keeps_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MISTUDIO_COMPUTE_STORE_ADDRESS", "store:1")
    flags = (Flag("--store", "store_address", "store"),)
    settings = parse_settings(ComputeSettings, prog="x", description=None, flags=flags, argv=[])
    assert settings.store_address == "store:1"
    assert settings.port == ComputeSettings.model_fields["port"].default


def test_data_dir_flag_moves_the_derived_sqlite_url(tmp_path: Path) -> None:
    settings = parse_settings(
        StoreSettings,
        prog="x",
        description=None,
        flags=STORE_FLAGS,
        argv=["--data-dir", str(tmp_path)],
    )
    assert settings.database_url == f"sqlite:///{tmp_path / 'store.db'}"


def test_a_bad_port_is_refused_with_the_flag_named(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        parse_settings(StoreSettings, prog="mistudio-store", description=None, argv=["--port", "x"])
    assert "--port" in capsys.readouterr().err


def test_help_names_each_flags_variable_and_default(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        parse_settings(
            StoreSettings, prog="mistudio-store", description=None, flags=STORE_FLAGS, argv=["-h"]
        )
    text = " ".join(capsys.readouterr().out.split())
    assert "env MISTUDIO_STORE_PORT; default 50051" in text
    assert "env MISTUDIO_STORE_DATA_DIR; default data" in text
