"""The viewer's files: a compact index, chunked feature data, from a folder or an archive."""

from __future__ import annotations

import json
import threading
import urllib.request
import zipfile
from pathlib import Path
from typing import Any

import pytest
from mistudio_common.errors import InvalidArgument
from mistudio_export.formats import jsonio
from mistudio_export.formats.columns import column_batches
from mistudio_export.formats.prd_json import write_prd_export
from mistudio_export.packaging import build_archive
from mistudio_export.preview import (
    FEATURES_PER_CHUNK,
    prd_root,
    preview_server,
    write_preview,
)
from mistudio_export.preview.site import INDEX_COLUMNS

from tests.export.formats.builders import dashboard, explanation, naming, sae_info

N_FEATURES = FEATURES_PER_CHUNK + 3


def loader_argument(path: Path, call: str) -> list[Any]:
    """The JSON arguments of the one loader call a data file makes."""
    text = path.read_text()
    assert text.startswith(f"miStudioPreview.{call}(") and text.endswith(");\n")
    return list(json.loads("[" + text[len(call) + 17 : -3] + "]"))


@pytest.fixture(scope="module")
def export(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("export")
    explanations = [explanation(2, "words about speed"), explanation(2, "fast things")]
    dashboards = [dashboard(i, dead=i == 1) for i in range(N_FEATURES)]
    write_prd_export(
        root,
        sae_info(),
        naming(),
        column_batches(dashboards),
        explanations,
        compress_features=True,
    )
    return root


def test_index_has_one_row_per_feature_with_what_the_list_searches(
    export: Path, tmp_path: Path
) -> None:
    site = write_preview(export, tmp_path / "site")
    (listing,) = loader_argument(site.root / "data" / "index.js", "loadIndex")
    assert listing["columns"] == list(INDEX_COLUMNS)
    assert listing["metadata"]["sae_id"] == sae_info().sae_id
    rows = {row[0]: dict(zip(INDEX_COLUMNS, row, strict=True)) for row in listing["features"]}
    assert sorted(rows) == list(range(N_FEATURES))
    assert rows[2]["explanations"] == ["fast things", "words about speed"]  # the archive's order
    assert rows[2]["top_tokens"] == [" quick"] and rows[1]["top_tokens"] == []
    assert rows[3]["max_activation"] == 6.5 and rows[3]["frequency"] == 0.011


def test_features_are_split_into_chunks_loaded_on_demand(export: Path, tmp_path: Path) -> None:
    site = write_preview(export, tmp_path / "site")
    assert (site.n_features, site.n_chunks) == (N_FEATURES, 2)
    number, first = loader_argument(site.root / "data" / "chunk-0.js", "loadChunk")
    number_2, second = loader_argument(site.root / "data" / "chunk-1.js", "loadChunk")
    assert (number, number_2) == (0, 1)
    assert [f["feature_index"] for f in first] == list(range(FEATURES_PER_CHUNK))
    assert [f["feature_index"] for f in second] == list(range(FEATURES_PER_CHUNK, N_FEATURES))


def test_chunk_documents_are_the_feature_files_plus_their_explanations(
    export: Path, tmp_path: Path
) -> None:
    site = write_preview(export, tmp_path / "site")
    _, documents = loader_argument(site.root / "data" / "chunk-0.js", "loadChunk")
    written = json.loads(jsonio.read_bytes(export / "features" / "2.json.gz"))
    assert {k: v for k, v in documents[2].items() if k != "explanations"} == written
    explanations = json.loads((export / "explanations" / "explanations.json").read_bytes())
    assert documents[2]["explanations"] == explanations["features"][0]["explanations"]


def test_viewer_assets_are_written_and_need_no_network(export: Path, tmp_path: Path) -> None:
    site = write_preview(export, tmp_path / "site")
    html = site.index_html.read_text()
    for asset in ("viewer.js", "viewer.css", "data/index.js"):
        assert asset in html and (site.root / asset).is_file()
    for text in (html, (site.root / "viewer.js").read_text()):
        assert "http://" not in text.replace("http://www.w3.org/2000/svg", "")
        assert "https://" not in text and "fetch(" not in text


def test_equal_exports_give_byte_identical_viewers(export: Path, tmp_path: Path) -> None:
    first = write_preview(export, tmp_path / "a").root
    second = write_preview(export, tmp_path / "b").root
    files = sorted(p.relative_to(first) for p in first.rglob("*") if p.is_file())
    assert files == sorted(p.relative_to(second) for p in second.rglob("*") if p.is_file())
    assert all((first / f).read_bytes() == (second / f).read_bytes() for f in files)


def test_an_earlier_preview_is_replaced(export: Path, tmp_path: Path) -> None:
    out = tmp_path / "site"
    write_preview(export, out)
    (out / "data" / "chunk-99.js").write_text("stale")
    write_preview(export, out)
    assert not (out / "data" / "chunk-99.js").exists()


def test_a_folder_that_is_not_a_preview_is_never_replaced(export: Path, tmp_path: Path) -> None:
    (tmp_path / "notes.txt").write_text("mine")
    with pytest.raises(InvalidArgument) as raised:
        write_preview(export, tmp_path)
    assert raised.value.field == "output"
    assert (tmp_path / "notes.txt").read_text() == "mine"


def test_the_export_itself_is_never_replaced(export: Path) -> None:
    with pytest.raises(InvalidArgument, match="would replace the export"):
        write_preview(export, export.parent)
    assert (export / "metadata.json").is_file()


def test_a_folder_without_feature_files_is_refused(tmp_path: Path) -> None:
    with pytest.raises(InvalidArgument) as raised:
        write_preview(tmp_path, tmp_path / "site")
    assert raised.value.field == "features" and "neuronpedia format" in raised.value.fix


def test_an_archive_is_read_through_its_prd_members_only(export: Path, tmp_path: Path) -> None:
    archive = build_archive(export, tmp_path / "export.zip").path
    with zipfile.ZipFile(archive, "a") as zf:
        zf.writestr("../outside.txt", "never unpacked")
    with prd_root(archive) as root:
        names = sorted(p.relative_to(root).as_posix() for p in root.rglob("*") if p.is_file())
        site = write_preview(root, tmp_path / "site")
    assert "manifest.json" not in names and names[0] == "explanations/explanations.json"
    assert len(names) == N_FEATURES + 2
    assert site.n_features == N_FEATURES
    assert not (tmp_path.parent / "outside.txt").exists()


def test_a_file_that_is_not_an_archive_is_refused(tmp_path: Path) -> None:
    not_zip = tmp_path / "export.zip"
    not_zip.write_text("plain text")
    with (
        pytest.raises(InvalidArgument, match="neither an export folder nor a ZIP"),
        prd_root(not_zip),
    ):
        pass


def test_server_serves_the_viewer_on_loopback(export: Path, tmp_path: Path) -> None:
    site = write_preview(export, tmp_path / "site")
    server = preview_server(site.root)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        host, port = server.server_address[:2]
        assert host == "127.0.0.1"
        with urllib.request.urlopen(f"http://{host!s}:{port}/data/index.js", timeout=10) as r:
            assert r.read() == (site.root / "data" / "index.js").read_bytes()
    finally:
        server.shutdown()
        server.server_close()
        thread.join()
