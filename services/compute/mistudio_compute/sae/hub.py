"""SAEs that live on the HuggingFace hub: `hf://<owner>/<repo>/<folder>` and SAELens releases.

`saelens://<release>/<sae_id>` is looked up in SAELens's `pretrained_saes.yaml` (the sae-lens
package must be installed) and, like `hf://`, downloaded into the HuggingFace cache, so a
machine without network access loads what its cache already holds and says plainly otherwise.
Anything else is a local path.
"""

from __future__ import annotations

from pathlib import Path

from mistudio_common.errors import FailedPrecondition, InvalidArgument

HF_PREFIX = "hf://"
SAELENS_PREFIX = "saelens://"


def local_path(location: str | Path) -> Path:
    """The local folder or file behind an SAE location, downloading hub folders first."""
    text = str(location)
    if text.startswith(HF_PREFIX):
        return _download(*_split_hf(text.removeprefix(HF_PREFIX)))
    if text.startswith(SAELENS_PREFIX):
        return _download(*_lookup_release(text.removeprefix(SAELENS_PREFIX)))
    return Path(location)


def _split_hf(rest: str) -> tuple[str, str]:
    parts = [part for part in rest.split("/") if part]
    if len(parts) < 2:
        raise InvalidArgument(
            f"{HF_PREFIX}{rest} does not name a repository",
            field="sae",
            fix="write hf://<owner>/<repo>/<folder holding cfg.json>",
        )
    return "/".join(parts[:2]), "/".join(parts[2:])


def _lookup_release(rest: str) -> tuple[str, str]:
    release, _, sae_id = rest.partition("/")
    try:
        from sae_lens.loading.pretrained_saes_directory import get_pretrained_saes_directory
    except ImportError:
        raise FailedPrecondition(
            "SAELens release names need the sae-lens package",
            violations=[("sae-lens", "not installed in the compute service's environment")],
            fix="pip install sae-lens, or give hf://<owner>/<repo>/<folder> instead",
        ) from None
    directory = get_pretrained_saes_directory()
    if release not in directory:
        raise InvalidArgument(
            f"{release!r} is not a SAELens release",
            field="sae",
            fix="use a release from sae_lens's pretrained_saes.yaml, e.g. gpt2-small-res-jb",
        )
    lookup = directory[release]
    if sae_id not in lookup.saes_map:
        known = ", ".join(list(lookup.saes_map)[:5])
        raise InvalidArgument(
            f"release {release!r} has no SAE {sae_id!r}",
            field="sae",
            fix=f"write saelens://{release}/<sae_id> with an id such as {known}",
        )
    return lookup.repo_id, lookup.saes_map[sae_id]


def _download(repo_id: str, folder: str) -> Path:
    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import HfHubHTTPError, LocalEntryNotFoundError

    patterns = [f"{folder}/*"] if folder else None
    try:
        root = snapshot_download(repo_id, allow_patterns=patterns)
    except (LocalEntryNotFoundError, HfHubHTTPError, OSError) as error:
        raise FailedPrecondition(
            f"SAE {repo_id}/{folder} is not in the HuggingFace cache and could not be downloaded "
            f"({type(error).__name__})",
            violations=[(f"{HF_PREFIX}{repo_id}/{folder}", "download it on a connected machine")],
            fix="allow access to the HuggingFace hub, fill HF_HOME's cache beforehand, or pass "
            "the downloaded folder's local path",
        ) from None
    return Path(root) / folder
