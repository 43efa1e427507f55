"""Where finished archives are kept: a folder or an S3 bucket behind one small interface."""

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
from mistudio_export.object_store.s3 import S3ObjectStore

__all__ = [
    "ChunkStream",
    "LocalObjectStore",
    "ObjectInfo",
    "ObjectStore",
    "PresignedUrl",
    "ProgressCallback",
    "S3ObjectStore",
    "check_writable",
    "object_store_from_url",
]
