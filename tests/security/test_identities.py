"""Identity resolution and ownership rules, as plain functions (no server needed)."""

from __future__ import annotations

import pytest
from mistudio_common.auth import (
    LOCAL_IDENTITY,
    Credentials,
    Identity,
    PeerCredentials,
    Role,
    SecuritySettings,
    load_credentials,
    owner_for,
    resolve_identity,
)
from mistudio_common.errors import PermissionDenied, Unauthenticated

ALICE = Identity("alice", Role.USER)
ROOT = Identity("root", Role.ADMIN)
CREDENTIALS = load_credentials(
    SecuritySettings(auth_tokens="alice:user:tok-a, export:service:-, root:admin:t-r")
)


def test_a_user_owns_what_it_creates_and_may_repeat_its_name() -> None:
    assert owner_for("", ALICE) == owner_for("alice", ALICE) == "alice"


def test_a_user_may_not_name_another_owner() -> None:
    with pytest.raises(PermissionDenied) as caught:
        owner_for("bob", ALICE)
    assert caught.value.field == "owner"


def test_an_admin_may_act_for_another_owner() -> None:
    assert owner_for("bob", ROOT) == "bob"
    assert owner_for("", ROOT) == "root"


def test_a_bearer_token_names_its_identity() -> None:
    metadata = [("authorization", "Bearer t-r")]
    assert resolve_identity(CREDENTIALS, metadata, []) == ROOT


def test_a_certificate_only_identity_gets_its_role_but_dash_is_no_token() -> None:
    assert resolve_identity(CREDENTIALS, [], [b"export"]) == Identity("export", Role.SERVICE)
    assert resolve_identity(CREDENTIALS, [], [b"zoe"]) == Identity("zoe", Role.USER)
    with pytest.raises(Unauthenticated):
        resolve_identity(CREDENTIALS, [("authorization", "Bearer -")], [])


def test_a_non_bearer_scheme_is_unauthenticated() -> None:
    with pytest.raises(Unauthenticated):
        resolve_identity(CREDENTIALS, [("authorization", "Basic tok-a")], [])


def test_without_credentials_every_caller_is_the_local_identity() -> None:
    empty = Credentials(identities={}, tokens={}, tls=None, peer=PeerCredentials())
    assert resolve_identity(empty, [("authorization", "Bearer anything")], []) == LOCAL_IDENTITY
