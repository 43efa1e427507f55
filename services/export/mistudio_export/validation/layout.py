"""Which export formats a folder holds, found from file names alone."""

from __future__ import annotations

import os
import re
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from mistudio_export.formats import prd_json
from mistudio_export.validation.importer_checks import is_importer_dir
from mistudio_export.validation.packaging_checks import is_packaging_dir
from mistudio_export.validation.saedashboard_checks import is_saedashboard_dir
from mistudio_export.validation.upload_checks import is_upload_dir

PRD = "prd"
IMPORTER = "neuronpedia-importer"
SAEDASHBOARD = "saedashboard"
UPLOAD = "upload-payloads"
PACKAGING = "packaging"

_PRD_FEATURE = re.compile(r"^\d+\.json(\.gz)?$")


@dataclass(frozen=True, slots=True)
class Component:
    kind: str
    path: Path


def is_prd_dir(directory: Path) -> bool:
    features = directory / prd_json.FEATURES_DIR
    return (
        (directory / prd_json.METADATA_FILE).is_file()
        or (directory / prd_json.EXPLANATIONS_FILE).is_file()
        or (features.is_dir() and any(_PRD_FEATURE.match(p.name) for p in features.iterdir()))
    )


_DETECTORS = (
    (PRD, is_prd_dir),
    (IMPORTER, is_importer_dir),
    (SAEDASHBOARD, is_saedashboard_dir),
    (UPLOAD, is_upload_dir),
    (PACKAGING, is_packaging_dir),
)


def discover(root: Path) -> list[Component]:
    """Every format component under ``root`` (including root itself), in path order."""
    return [
        Component(kind, directory)
        for directory in _folders(root)
        for kind, detect in _DETECTORS
        if detect(directory)
    ]


def _folders(folder: Path) -> Iterator[Path]:
    """``folder`` and the folders below it, depth first in name order, links not followed (as
    os.walk, which would also list every file name of features/ at once)."""
    yield folder
    try:
        with os.scandir(folder) as entries:
            below = sorted(e.name for e in entries if e.is_dir(follow_symlinks=False))
    except OSError:  # unreadable: os.walk too passes over it
        return
    for name in below:
        yield from _folders(folder / name)
