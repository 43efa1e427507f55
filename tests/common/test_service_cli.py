"""Every service's command line: flags override the environment, which overrides defaults, and a
variable under a service's prefix that no setting reads is refused."""

from __future__ import annotations

from pathlib import Path

import pytest
from mistudio_cli.local_stack import start_local_stack
from mistudio_common.errors import InvalidArgument
from mistudio_common.service_cli import Flag, parse_settings
from mistudio_common.settings_env import check_environment
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


def test_a_variable_under_the_prefix_naming_no_setting_is_refused_with_the_closest_named(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """The renamed checkpoint setting, set under its old name, no longer goes unnoticed."""
    monkeypatch.setenv("MISTUDIO_COMPUTE_CHECKPOINT_EVERY_BATCHES", "50")
    with pytest.raises(SystemExit) as stopped:
        parse_settings(ComputeSettings, prog="mistudio-compute", description=None, argv=[])
    assert stopped.value.code == 2
    err = capsys.readouterr().err
    assert "MISTUDIO_COMPUTE_CHECKPOINT_EVERY_BATCHES names no setting" in err
    assert "did you mean MISTUDIO_COMPUTE_CHECKPOINT_EVERY_SECONDS?" in err


@pytest.mark.parametrize(
    "name",
    [
        "MISTUDIO_STORE_ADDRESS",  # the command-line client's, under the same prefix
        "MISTUDIO_STORE_DATA_DIR",  # a setting's alias
        "mistudio_store_port",  # settings are read case-insensitively
        "MISTUDIO_DATA_DIR",  # another prefix
    ],
)
def test_variables_the_settings_or_the_client_read_are_accepted(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, name: str
) -> None:
    monkeypatch.setenv(name, "50061" if name.endswith("PORT") or name.endswith("port") else
                       str(tmp_path))  # fmt: skip
    check_environment(StoreSettings)


def test_the_local_stack_refuses_a_misspelt_variable(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setenv("MISTUDIO_EXPORT_MAX_CONCURENT_JOBS", "2")
    with pytest.raises(InvalidArgument, match="did you mean MISTUDIO_EXPORT_MAX_CONCURRENT_JOBS"):
        start_local_stack(tmp_path)
