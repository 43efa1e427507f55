"""The SAELens folder of an SAE as a stream of file chunks (ExportSaeLensFiles).

The folder's contents come from ``sae.saelens_writer``; this module only decides the metadata
written into ``cfg.json`` and cuts the files into messages small enough for gRPC.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence

from mistudio_compute.references import portable_model_name
from mistudio_compute.sae.loading import CONFIG_FILE, SPARSITY_FILE, WEIGHTS_FILE
from mistudio_compute.sae.saelens_writer import SaeLensMetadata, saelens_files
from mistudio_compute.sae_source import ResolvedSae

CHUNK_BYTES = 1 << 20
"""About 1 MiB per message: far below gRPC's limit, big enough to keep overhead low."""
FILE_ORDER = (CONFIG_FILE, WEIGHTS_FILE, SPARSITY_FILE)


def saelens_chunks(
    resolved: ResolvedSae,
    neuronpedia_id: str,
    feature_frequencies: Sequence[float],
    chunk_bytes: int = CHUNK_BYTES,
) -> Iterator[tuple[str, bytes, bool]]:
    """(file name, chunk, last chunk of that file) for cfg.json, weights and sparsity."""
    model = resolved.model_id or resolved.sae.cfg.model_name or ""
    meta = SaeLensMetadata(
        model_name=portable_model_name(model) or None,
        hook_name=resolved.hook_point or None,
        neuronpedia_id=neuronpedia_id or None,
    )
    files = saelens_files(resolved.sae, meta, feature_frequencies or None)
    for name in sorted(files, key=lambda n: FILE_ORDER.index(n) if n in FILE_ORDER else 99):
        data = files[name]
        starts = range(0, max(len(data), 1), chunk_bytes)
        for start in starts:
            yield name, data[start : start + chunk_bytes], start + chunk_bytes >= len(data)
