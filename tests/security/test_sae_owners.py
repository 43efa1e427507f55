"""An SAE's id is unique per owner, not across the store: two owners who each register
``my-sae`` get their own, export their own, and never see the other's (NOT_FOUND, worded as for
an id nobody holds). On the token-authenticated stack."""

from __future__ import annotations

import gzip
import io
import zipfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import grpc
import pytest
from mistudio.export.v1 import export_service_pb2 as epb
from mistudio.store.v1 import store_service_pb2 as spb

from tests.export.service.stack import (
    export_config,
    run_to_end,
    token_source,
    write_sae_folder,
    write_tokens,
)
from tests.security.conftest import SecureStack, sae_message

SAE_ID = "my-sae"
OWNERS = ("alice", "mallory")


def rpc_error(call: Callable[[], Any]) -> grpc.RpcError:
    with pytest.raises(grpc.RpcError) as caught:
        call()
    return caught.value


def words_of(owner: str) -> str:
    return f"{owner} wrote this explanation"


@pytest.fixture(scope="module")
def same_id_registered(
    secure_stack: SecureStack, tmp_path_factory: pytest.TempPathFactory
) -> dict[str, Path]:
    """Each owner registers an SAE called my-sae (weights of its own) and explains feature 0."""
    folders = {}
    for owner in OWNERS:
        folder = write_sae_folder(tmp_path_factory.mktemp(owner) / "sae")
        sae = sae_message(SAE_ID, str(folder), training_dataset=f"{owner}-data")
        secure_stack.records(owner).CreateSae(spb.CreateSaeRequest(sae=sae))
        explanation = spb.Explanation(
            feature_index=0, description=words_of(owner), method="manual", explainer_model="-"
        )
        secure_stack.records(owner).AddExplanations(
            spb.AddExplanationsRequest(sae_id=SAE_ID, explanations=[explanation])
        )
        folders[owner] = folder
    return folders


def archive_text(stack: SecureStack, owner: str, job_id: str) -> bytes:
    chunks = stack.exports(owner).DownloadExport(epb.DownloadExportRequest(job_id=job_id))
    archive = zipfile.ZipFile(io.BytesIO(b"".join(c.chunk for c in chunks)))
    members = [(name, archive.read(name)) for name in archive.namelist()]
    return b"".join(gzip.decompress(d) if n.endswith(".gz") else d for n, d in members)


@pytest.mark.parametrize("owner", OWNERS)
def test_each_owner_gets_its_own_sae_under_the_shared_id(
    secure_stack: SecureStack, same_id_registered: dict[str, Path], owner: str
) -> None:
    sae = secure_stack.records(owner).GetSae(spb.GetSaeRequest(sae_id=SAE_ID)).sae
    assert (sae.owner, sae.training_dataset) == (owner, f"{owner}-data")
    listed = secure_stack.records(owner).ListSaes(spb.ListSaesRequest()).saes
    assert [(s.sae_id, s.owner) for s in listed if s.sae_id == SAE_ID] == [(SAE_ID, owner)]
    explanations = secure_stack.records(owner).ListExplanations(
        spb.ListExplanationsRequest(sae_id=SAE_ID)
    )
    assert [e.description for e in explanations.explanations] == [words_of(owner)]


def test_registering_the_id_again_collides_only_with_your_own(
    secure_stack: SecureStack, same_id_registered: dict[str, Path]
) -> None:
    again = sae_message(SAE_ID, str(same_id_registered["alice"]))
    error = rpc_error(
        lambda: secure_stack.records("alice").CreateSae(spb.CreateSaeRequest(sae=again))
    )
    assert error.code() == grpc.StatusCode.ALREADY_EXISTS
    assert "mallory" not in error.details()


@pytest.mark.parametrize("owner", OWNERS)
def test_each_owner_exports_its_own_sae_and_nothing_of_the_other(
    secure_stack: SecureStack,
    same_id_registered: dict[str, Path],
    tmp_path: Path,
    owner: str,
) -> None:
    tokens = token_source(write_tokens(tmp_path / "tokens.npy", rows=8))
    request = epb.StartExportRequest(
        sae_id=SAE_ID,
        request_id=f"{owner}-same-id",
        config=export_config(tokens, device="cpu", batch_size=4),
    )
    exports = secure_stack.exports(owner)
    last = run_to_end(exports.StartExport(request))[-1]
    job_id = last.progress.job_id
    try:
        assert last.HasField("result"), last.progress.error
        assert exports.GetExport(epb.GetExportRequest(job_id=job_id)).job.owner == owner
        text = archive_text(secure_stack, owner, job_id)
        other = next(o for o in OWNERS if o != owner)
        assert words_of(owner).encode() in text
        assert words_of(other).encode() not in text
    finally:  # the stack is shared: other suites count each owner's jobs
        exports.DeleteExport(epb.DeleteExportRequest(job_id=job_id))


def test_an_admin_names_the_owner_when_owners_share_an_id(
    secure_stack: SecureStack, same_id_registered: dict[str, Path]
) -> None:
    root = secure_stack.records("root")
    for owner in OWNERS:
        sae = root.GetSae(spb.GetSaeRequest(sae_id=SAE_ID, owner=owner)).sae
        assert sae.training_dataset == f"{owner}-data"
    error = rpc_error(lambda: root.GetSae(spb.GetSaeRequest(sae_id=SAE_ID)))
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
    listed = root.ListSaes(spb.ListSaesRequest()).saes
    assert sorted(s.owner for s in listed if s.sae_id == SAE_ID) == sorted(OWNERS)


def test_a_user_naming_another_owner_is_refused(
    secure_stack: SecureStack, same_id_registered: dict[str, Path]
) -> None:
    error = rpc_error(
        lambda: secure_stack.records("mallory").GetSae(
            spb.GetSaeRequest(sae_id=SAE_ID, owner="alice")
        )
    )
    assert error.code() == grpc.StatusCode.PERMISSION_DENIED


def test_an_admin_names_the_owner_when_estimating_or_listing_presets_for_a_shared_id(
    secure_stack: SecureStack, same_id_registered: dict[str, Path], tmp_path: Path
) -> None:
    config = export_config(token_source(write_tokens(tmp_path / "tokens.npy", rows=8)))
    root = secure_stack.exports("root")
    for owner in OWNERS:
        request = epb.ValidateExportRequest(sae_id=SAE_ID, owner=owner, config=config)
        assert root.ValidateExport(request).estimate.feature_count > 0
        presets = epb.ListPresetsRequest(sae_id=SAE_ID, owner=owner, config=config)
        assert root.ListPresets(presets).presets
    unnamed = epb.ValidateExportRequest(sae_id=SAE_ID, config=config)
    error = rpc_error(lambda: root.ValidateExport(unnamed))
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT  # which owner's my-sae?
    dashboard = epb.GetFeatureDashboardRequest(sae_id=SAE_ID, feature_index=0)
    error = rpc_error(lambda: root.GetFeatureDashboard(dashboard))
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
    named = epb.ValidateExportRequest(sae_id=SAE_ID, owner="alice", config=config)
    refused = rpc_error(lambda: secure_stack.exports("mallory").ValidateExport(named))
    assert refused.code() == grpc.StatusCode.PERMISSION_DENIED
