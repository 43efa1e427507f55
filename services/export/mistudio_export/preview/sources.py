"""Opening what the preview reads: an export folder, or a .zip archive unpacked to scratch."""

from __future__ import annotations

import re
import zipfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from tempfile import TemporaryDirectory

from mistudio_common.errors import InvalidArgument

from mistudio_export.formats import prd_json
from mistudio_export.packaging.safe_extract import safe_extract

_PRD_MEMBER = re.compile(
    r"^(metadata\.json|explanations/explanations\.json|features/\d+\.json(\.gz)?)$"
)
"""The archive members the viewer reads; nothing else is unpacked."""


@contextmanager
def prd_root(path: Path) -> Iterator[Path]:
    """The folder holding the PRD layout of ``path`` (an export folder or archive)."""
    if path.is_dir():
        yield path
        return
    if not zipfile.is_zipfile(path):
        raise InvalidArgument(
            f"{path} is neither an export folder nor a ZIP archive",
            field="ARCHIVE",
            fix="give an export .zip, an export folder, or a finished export's job id",
        )
    with zipfile.ZipFile(path) as zf:
        members = [name for name in zf.namelist() if _PRD_MEMBER.match(name)]
    if not any(name.startswith(prd_json.FEATURES_DIR + "/") for name in members):
        raise InvalidArgument(
            f"{path} holds no {prd_json.FEATURES_DIR}/{{i}}.json files",
            field="ARCHIVE",
            fix="export with the neuronpedia format (--format neuronpedia or both)",
        )
    with TemporaryDirectory(prefix="mistudio-preview-") as scratch:
        extraction = safe_extract(path, Path(scratch), wanted=_PRD_MEMBER.match)
        if not extraction.ok:
            raise InvalidArgument(
                f"{path}: {extraction.refused}",
                field="ARCHIVE",
                fix="check where the archive came from; nothing was unpacked",
            )
        yield Path(scratch)
