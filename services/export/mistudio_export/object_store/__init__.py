"""Where finished archives are kept: a folder or an S3 bucket behind one small interface.

``S3ObjectStore`` is imported from ``object_store.s3``: the minio SDK costs 0.15 CPU-s to import
(its admin client parses C declarations for its ciphers), which a service on a folder skips.
"""

from mistudio_export.object_store.base import (
    ChunkStream,
    ObjectInfo,
    ObjectStore,
    PresignedUrl,
    ProgressCallback,
    check_writable,
)
from mistudio_export.object_store.factory import object_store_from_url
from mistudio_export.object_store.local import LocalObjectStore

__all__ = [
    "ChunkStream",
    "LocalObjectStore",
    "ObjectInfo",
    "ObjectStore",
    "PresignedUrl",
    "ProgressCallback",
    "check_writable",
    "object_store_from_url",
]
