"""One rule names SAE architectures: the store's enum value name is ARCHITECTURE_ + SAELens's."""

from __future__ import annotations

import pytest
from mistudio.store.v1 import store_service_pb2 as spb
from mistudio_cli.commands import architecture_of
from mistudio_common.architectures import enum_name, saelens_name
from mistudio_compute.sae.architectures import known_architectures

KNOWN = [n for n in spb.Architecture.DESCRIPTOR.values_by_name if n != "ARCHITECTURE_UNSPECIFIED"]


def test_the_contracts_architectures_are_the_ones_compute_can_load() -> None:
    assert sorted(saelens_name(name) for name in KNOWN) == known_architectures()


@pytest.mark.parametrize("name", KNOWN)
def test_a_name_goes_to_saelens_and_back(name: str) -> None:
    assert enum_name(saelens_name(name)) == name
    value = spb.Architecture.Value(name)
    assert architecture_of(saelens_name(spb.Architecture.Name(value))) == value


def test_unspecified_and_unknown_names_are_unspecified() -> None:
    assert saelens_name("ARCHITECTURE_UNSPECIFIED") == "" and enum_name("") == (
        "ARCHITECTURE_UNSPECIFIED"
    )
    assert architecture_of("mystery") == spb.ARCHITECTURE_UNSPECIFIED
    assert architecture_of("") == spb.ARCHITECTURE_UNSPECIFIED
