"""A static dashboard viewer for an export's PRD layout: HTML, JS and CSS that work from file://.

``site`` writes the viewer and its data files, ``sources`` opens an archive or folder, ``server``
serves a written viewer on loopback. The assets (``assets/``) are ours; nothing is fetched at
view time.
"""

from mistudio_export.preview.server import preview_server
from mistudio_export.preview.site import (
    FEATURES_PER_CHUNK,
    PREVIEW_DIR,
    PreviewSite,
    write_preview,
)
from mistudio_export.preview.sources import prd_root

__all__ = [
    "FEATURES_PER_CHUNK",
    "PREVIEW_DIR",
    "PreviewSite",
    "prd_root",
    "preview_server",
    "write_preview",
]
