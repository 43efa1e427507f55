"""Page sizes and page tokens, without a database."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest
from mistudio_common.errors import InvalidArgument
from mistudio_store.config import StoreSettings
from mistudio_store.pagination import decode_token, encode_token, resolve_page_size


def test_default_limits_are_100_and_1000() -> None:
    settings = StoreSettings()
    assert (settings.default_page_size, settings.max_page_size) == (100, 1000)
    assert resolve_page_size(0, default=100, maximum=1000) == 100
    assert resolve_page_size(1000, default=100, maximum=1000) == 1000


def test_page_size_above_the_maximum_is_rejected_not_clamped() -> None:
    with pytest.raises(InvalidArgument) as caught:
        resolve_page_size(1001, default=100, maximum=1000)
    assert caught.value.field == "page_size"


def test_token_round_trips_a_typed_key() -> None:
    key = (datetime(2026, 1, 2, 3, 4, 5, 678901, tzinfo=UTC), "job-1")
    token = encode_token("scope", key)
    assert decode_token(token, "scope", (datetime, str)) == key


@pytest.mark.parametrize(
    "token",
    [
        "!!",
        encode_token("other-scope", [1]),
        encode_token("scope", ["1"]),
        encode_token("scope", [1, 2]),
        encode_token("scope", [True]),
    ],
)
def test_foreign_or_malformed_tokens_are_invalid_argument(token: str) -> None:
    with pytest.raises(InvalidArgument) as caught:
        decode_token(token, "scope", (int,))
    assert caught.value.field == "page_token"


def test_default_database_is_sqlite_under_the_data_dir(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("MISTUDIO_STORE_DATABASE_URL", raising=False)
    monkeypatch.delenv("MISTUDIO_STORE_DATA_DIR", raising=False)
    monkeypatch.setenv("MISTUDIO_DATA_DIR", "/srv/mistudio")
    assert StoreSettings().database_url == "sqlite:////srv/mistudio/store.db"
    monkeypatch.setenv("MISTUDIO_STORE_DATABASE_URL", "postgresql+psycopg://u@db/store")
    assert StoreSettings().database_url == "postgresql+psycopg://u@db/store"
