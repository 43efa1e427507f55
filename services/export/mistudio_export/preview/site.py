"""Writing the viewer: the static assets, a compact index of every feature, and chunk files.

Browsers refuse fetch() of local files, so the data are JavaScript files that a ``<script>`` tag
loads, each calling the viewer's loader: ``data/index.js`` (one short row per feature, for the
list, search and sorting) and ``data/chunk-N.js`` (the full PRD documents of
``FEATURES_PER_CHUNK`` consecutive features, loaded when one of them is opened). A 16k-feature
export thus opens with one small file and reads one chunk per feature viewed. Output is
deterministic: equal exports give byte-identical viewers.
"""

from __future__ import annotations

import re
import shutil
from collections import defaultdict
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any

import orjson
from mistudio_common.errors import InvalidArgument

from mistudio_export.formats import jsonio, prd_json

PREVIEW_DIR = "preview"
"""Where an archive carries the viewer (``preview/index.html``)."""
DATA_DIR = "data"
FEATURES_PER_CHUNK = 64
"""Features per chunk file: a few MB at 100 examples each, one script load per feature opened."""
ASSETS = ("index.html", "viewer.js", "viewer.css")
INDEX_COLUMNS = ("index", "chunk", "frequency", "max_activation", "explanations", "top_tokens")
"""The fields of each row of ``data/index.js``, in order (the viewer reads them by position)."""
TOP_TOKENS_IN_INDEX = 3
_FEATURE_FILE = re.compile(r"^(\d+)\.json(\.gz)?$")


@dataclass(frozen=True)
class PreviewSite:
    root: Path
    n_features: int
    n_chunks: int

    @property
    def index_html(self) -> Path:
        return self.root / "index.html"


@dataclass(frozen=True)
class IndexRow:
    """What the feature list shows and searches, for one feature."""

    index: int
    chunk: int
    frequency: float
    max_activation: float
    explanations: tuple[str, ...]
    top_tokens: tuple[str, ...]

    def to_list(self) -> list[Any]:
        return [
            self.index,
            self.chunk,
            self.frequency,
            self.max_activation,
            list(self.explanations),
            list(self.top_tokens),
        ]


def feature_files(export_root: Path) -> list[tuple[int, Path]]:
    """The PRD feature files under ``export_root``, by feature index."""
    folder = export_root / prd_json.FEATURES_DIR
    if not folder.is_dir():
        raise InvalidArgument(
            f"{export_root} has no {prd_json.FEATURES_DIR}/ folder",
            field=prd_json.FEATURES_DIR,
            fix="give an export with the neuronpedia format (the PRD layout: features/{i}.json)",
        )
    found = []
    for path in folder.iterdir():
        match = _FEATURE_FILE.match(path.name)
        if match:
            found.append((int(match.group(1)), path))
    return sorted(found)


def _read(path: Path) -> Any:
    try:
        return orjson.loads(jsonio.read_bytes(path))
    except (OSError, orjson.JSONDecodeError) as error:
        raise InvalidArgument(
            f"cannot read {path.name}: {error}",
            field=path.name,
            fix="validate the export (`mistudio-export validate`) and repair it with --auto-fix",
        ) from None


def _explanations(export_root: Path) -> dict[int, list[dict[str, Any]]]:
    path = export_root / prd_json.EXPLANATIONS_FILE
    by_feature: dict[int, list[dict[str, Any]]] = defaultdict(list)
    if path.is_file():
        for entry in _read(path).get("features", []):
            by_feature[int(entry["feature_index"])].extend(entry.get("explanations", []))
    return by_feature


def _index_row(
    document: dict[str, Any], chunk: int, explanations: list[dict[str, Any]]
) -> IndexRow:
    statistics = document.get("statistics", {})
    tokens = [t["token"] for t in document.get("top_tokens", [])[:TOP_TOKENS_IN_INDEX]]
    return IndexRow(
        index=int(document["feature_index"]),
        chunk=chunk,
        frequency=float(statistics.get("activation_frequency", 0.0)),
        max_activation=float(statistics.get("max_activation", 0.0)),
        explanations=tuple(str(e.get("description", "")) for e in explanations),
        top_tokens=tuple(tokens),
    )


def _script(call: str, *args: Any) -> bytes:
    """One loader call; orjson escapes nothing a script body needs escaped beyond JSON itself."""
    body = b",".join(orjson.dumps(a, option=orjson.OPT_SORT_KEYS) for a in args)
    return f"miStudioPreview.{call}(".encode() + body + b");\n"


def _chunks(files: list[tuple[int, Path]]) -> Iterator[list[tuple[int, Path]]]:
    for start in range(0, len(files), FEATURES_PER_CHUNK):
        yield files[start : start + FEATURES_PER_CHUNK]


def _check_replaceable(export_root: Path, out: Path) -> None:
    """``out`` is replaced whole: refuse a folder that holds the export or anything but a viewer."""
    source, target = export_root.resolve(), out.resolve()
    if source == target or source.is_relative_to(target):
        raise InvalidArgument(
            f"the preview folder {out} would replace the export it reads ({export_root})",
            field="output",
            fix="write the preview into a folder of its own, e.g. ./my-export-preview",
        )
    if target.is_dir() and any(target.iterdir()) and not (target / ASSETS[0]).is_file():
        raise InvalidArgument(
            f"{out} is a non-empty folder without a preview in it",
            field="output",
            fix="choose a new or empty folder (an earlier preview there is replaced)",
        )


def write_preview(
    export_root: Path,
    out: Path,
    *,
    progress: Callable[[int], None] | None = None,
) -> PreviewSite:
    """Writes the viewer of the PRD layout under ``export_root`` into ``out`` (replaced).

    ``progress`` is called with the number of features written so far, once per chunk.
    """
    files = feature_files(export_root)
    metadata_path = export_root / prd_json.METADATA_FILE
    metadata = _read(metadata_path) if metadata_path.is_file() else {}
    explanations = _explanations(export_root)
    _check_replaceable(export_root, out)
    if out.exists():
        shutil.rmtree(out)
    data = out / DATA_DIR
    data.mkdir(parents=True)
    assets = resources.files("mistudio_export.preview") / "assets"
    for name in ASSETS:
        (out / name).write_bytes((assets / name).read_bytes())
    rows = _write_chunks(files, explanations, data, progress)
    listing = {
        "metadata": metadata,
        "columns": list(INDEX_COLUMNS),
        "features": [row.to_list() for row in rows],
    }
    (data / "index.js").write_bytes(_script("loadIndex", listing))
    n_chunks = (len(files) + FEATURES_PER_CHUNK - 1) // FEATURES_PER_CHUNK
    return PreviewSite(root=out, n_features=len(files), n_chunks=n_chunks)


def _write_chunks(
    files: list[tuple[int, Path]],
    explanations: dict[int, list[dict[str, Any]]],
    data: Path,
    progress: Callable[[int], None] | None,
) -> list[IndexRow]:
    """Writes ``data/chunk-N.js`` files, one chunk in memory at a time; returns the index rows."""
    rows: list[IndexRow] = []
    for chunk, members in enumerate(_chunks(files)):
        documents = []
        for index, path in members:
            document = _read(path)
            if document.get("feature_index") != index:
                raise InvalidArgument(
                    f"{path.name} holds feature_index {document.get('feature_index')!r}",
                    field=f"{prd_json.FEATURES_DIR}/{path.name}",
                    fix="a feature file is named after its feature_index; repair with --auto-fix",
                )
            document["explanations"] = explanations.get(index, [])
            rows.append(_index_row(document, chunk, document["explanations"]))
            documents.append(document)
        (data / f"chunk-{chunk}.js").write_bytes(_script("loadChunk", chunk, documents))
        if progress is not None:
            progress(len(rows))
    return rows
