"""The archive's README.md and prefill.json, generated from a few facts about the export.

There is no self-serve form for full Neuronpedia dashboards, so the README has to be the
upload form's replacement: it walks through each route that works today (the upload API, the
maintainers' bulk import, HuggingFace + SAELens) with the exact commands and the limits that
make an upload fail. Output depends only on the facts passed in, so equal exports give equal
archives.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from mistudio_export.packaging.format_notes import (
    MAX_SOURCE_SET_DESCRIPTION,
    NOTES,
    FormatKind,
)
from mistudio_export.packaging.manifest import MANIFEST_NAME

README_NAME = "README.md"
PREFILL_NAME = "prefill.json"
PREFILL_FORMAT_VERSION = 1
NEURONPEDIA_API = "https://www.neuronpedia.org/api"


@dataclass(frozen=True)
class IncludedFormat:
    """One output format present in the archive and its folder; "/" is the archive root."""

    kind: FormatKind
    folder: str | None = None
    """None: the format's usual folder (``format_notes.NOTES[kind].default_folder``)."""

    @property
    def path(self) -> str:
        """The folder relative to the root, without slashes; "" for the root itself."""
        folder = NOTES[self.kind].default_folder if self.folder is None else self.folder
        return folder.strip("/")

    @property
    def label(self) -> str:
        """How the README names the folder: `path/` in code style, or the words "archive root"."""
        return f"`{self.path}/`" if self.path else "archive root"


@dataclass(frozen=True)
class ArchiveFacts:
    """Everything the README and prefill.json say; no clocks, no lookups."""

    # What was exported.
    title: str
    sae_ids: tuple[str, ...]
    model_id: str
    """Neuronpedia's model id, which is the TransformerLens name (e.g. ``gpt2-small``)."""
    hook_name: str
    layer: int
    source_set: str
    n_features: int
    d_sae: int
    formats: tuple[IncludedFormat, ...]
    validation_summary: tuple[str, ...] = ()
    n_explanations: int = 0
    pending_types: tuple[str, ...] = ()
    """Explanation types Neuronpedia lacks (their rows are in ``explanations-pending/``)."""
    pending_models: tuple[str, ...] = ()
    """Explainer models Neuronpedia lacks."""
    left_out: tuple[str, ...] = ()
    """One sentence per dashboard part left out (``format_notes.LEFT_OUT``) and why, if the plan
    decided it."""
    # How the dashboards were computed.
    dataset: str = ""
    n_prompts: int = 0
    n_tokens_in_prompt: int = 0
    # Publishing.
    source_suffix: str = ""
    source_set_description: str = ""
    creator_name: str = ""
    release_id: str = ""
    release_title: str = ""
    url: str = ""
    hf_repo: str = ""
    hf_path: str = ""
    """Folder inside the HF repo; by SAELens convention the hook name."""
    saelens_release: str = ""
    created_at: str = ""
    """Shown only when given (e.g. the SAE's creation time), never the clock."""

    @property
    def source_id(self) -> str:
        base = f"{self.layer}-{self.source_set}"
        return f"{base}__{self.source_suffix}" if self.source_suffix else base

    @property
    def neuronpedia_id(self) -> str:
        return f"{self.model_id}/{self.source_id}"

    @property
    def hook_type(self) -> str:
        return self.hook_name.rsplit(".", 1)[-1]

    @property
    def repo(self) -> str:
        return self.hf_repo or "<hf-user>/<repo-name>"

    @property
    def repo_path(self) -> str:
        return self.hf_path or self.hook_name

    @property
    def release(self) -> str:
        return self.saelens_release or self.release_id or f"{self.model_id}-{self.source_set}"

    def folder(self, kind: FormatKind) -> str | None:
        """Where ``kind`` lives ("" for the root), or None when it is not in the archive."""
        return next((f.path for f in self.formats if f.kind == kind), None)


def prefill_json(facts: ArchiveFacts) -> dict[str, Any]:
    """The answers Neuronpedia's conversion script asks for, which the maintainers need."""
    return {
        "prefill_format_version": PREFILL_FORMAT_VERSION,
        "creator_name": facts.creator_name,
        "release_id": facts.release_id,
        "release_title": facts.release_title,
        "url": facts.url,
        "model_id": facts.model_id,
        "source_set_id": facts.source_set,
        "source_set_description": facts.source_set_description,
        "source_id": facts.source_id,
        "neuronpedia_id": facts.neuronpedia_id,
        "hook_point": facts.hook_name,
        "hook_type": facts.hook_type,
        "layer": facts.layer,
        "dataset": facts.dataset,
        "num_prompts": facts.n_prompts,
        "num_tokens_in_prompt": facts.n_tokens_in_prompt,
        "hf_repo_id": facts.hf_repo,
        "hf_folder": facts.repo_path,
        "num_features": facts.n_features,
        "d_sae": facts.d_sae,
        "created_at": facts.created_at,
    }


def pretrained_saes_entry(facts: ArchiveFacts) -> str:
    """A ``pretrained_saes.yaml`` release with this SAE, as SAELens parses it."""
    entry = {
        facts.release: {
            "repo_id": facts.repo,
            "model": facts.model_id,
            "conversion_func": None,
            "saes": [
                {
                    "id": facts.repo_path,
                    "path": facts.repo_path,
                    "neuronpedia": facts.neuronpedia_id,
                }
            ],
        }
    }
    return yaml.safe_dump(entry, sort_keys=False, default_flow_style=False)


def render_readme(facts: ArchiveFacts) -> str:
    """README.md for the archive root."""
    sections = [
        _summary(facts),
        _left_out(facts),
        _layout(facts),
        _checking(),
        _route_upload_api(facts),
        _route_bulk_import(facts),
        _route_huggingface(facts),
        _format_limits(facts),
    ]
    return "\n\n".join(s.strip("\n") for s in sections if s) + "\n"


def _summary(f: ArchiveFacts) -> str:
    rows = [
        ("SAE", ", ".join(f"`{s}`" for s in f.sae_ids)),
        ("Model", f"`{f.model_id}`"),
        ("Hook point", f"`{f.hook_name}` (layer {f.layer})"),
        ("Neuronpedia id", f"`{f.neuronpedia_id}`"),
        ("Features exported", f"{f.n_features:,} of {f.d_sae:,}"),
        ("Explanations", f"{f.n_explanations:,}"),
        ("Dashboard data", _dashboard_data(f)),
        ("Formats", ", ".join(NOTES[x.kind].title for x in f.formats) or "none"),
    ]
    if f.created_at:
        rows.append(("SAE created", f.created_at))
    table = "\n".join(f"| {k} | {v} |" for k, v in rows)
    checks = "\n".join(f"- {line}" for line in f.validation_summary) or "- (no report)"
    return f"""# {f.title}: miStudio export

This archive holds the dashboards and weights of one sparse autoencoder, ready to publish on
Neuronpedia and HuggingFace. Start with "Check the archive", then pick one of the three routes.

| | |
|---|---|
{table}

Validation:

{checks}"""


def _left_out(f: ArchiveFacts) -> str:
    if not f.left_out:
        return ""
    lines = "\n".join(f"- {line}" for line in f.left_out)
    return f"""## Parts left out

These dashboard parts were switched off for this export; every file still validates and loads.

{lines}"""


def _dashboard_data(f: ArchiveFacts) -> str:
    if not f.n_prompts:
        return "not recorded"
    dataset = f" from `{f.dataset}`" if f.dataset else ""
    return f"{f.n_prompts:,} prompts x {f.n_tokens_in_prompt} tokens{dataset}"


def _layout(f: ArchiveFacts) -> str:
    rows = [
        (README_NAME, "this file"),
        (MANIFEST_NAME, "path, size and SHA-256 of every other file, and the archive version"),
        (PREFILL_NAME, "the answers Neuronpedia's maintainers ask for (route 2)"),
    ]
    rows = [(f"`{path}`", what) for path, what in rows]
    rows += [(x.label, NOTES[x.kind].summary) for x in f.formats]
    table = "\n".join(f"| {path} | {what} |" for path, what in rows)
    return f"""## What is in this archive

| Path | What it holds |
|---|---|
{table}"""


def _checking() -> str:
    return f"""## Check the archive

`{MANIFEST_NAME}` lists every file with its size in bytes and its SHA-256, plus
`archive_format_version`. It is written before the archive is zipped, so it describes exactly
what was packed. To check an unpacked copy with nothing but Python 3.11+:

```bash
python3 - <<'EOF'
import hashlib, json, pathlib
manifest = json.loads(pathlib.Path("{MANIFEST_NAME}").read_text())
bad = 0
for entry in manifest["files"]:
    path = pathlib.Path(entry["path"])
    with path.open("rb") as f:
        digest = hashlib.file_digest(f, "sha256").hexdigest()
    if digest != entry["sha256"] or path.stat().st_size != entry["size"]:
        bad += 1
        print("CHANGED", entry["path"])
print("all files match" if not bad else f"{{bad}} file(s) differ")
EOF
```"""


def _folder_or_note(f: ArchiveFacts, kind: FormatKind) -> tuple[str, str]:
    """The folder to show in commands, and a warning when the archive lacks the format."""
    folder = f.folder(kind)
    if folder is not None:
        return folder or ".", ""
    note = (
        f"> This archive has no {NOTES[kind].title}; export again with that format "
        "included to use this route.\n\n"
    )
    return IncludedFormat(kind).path or ".", note


def _route_upload_api(f: ArchiveFacts) -> str:
    folder, note = _folder_or_note(f, FormatKind.NEURONPEDIA_UPLOAD)
    return f"""## Route 1: Neuronpedia's upload API (self-serve, API key)

{note}Puts feature pages (top activations, top/bottom logits, density, explanations) on
Neuronpedia right away, without histograms. Everything it creates starts UNLISTED.

1. Sign in at neuronpedia.org and copy your API key from https://www.neuronpedia.org/account:
   `export NEURONPEDIA_API_KEY=...` (it travels in the `X-Api-Key` header).
2. If Neuronpedia has no model `{f.model_id}`, create it with `POST /api/model/new`
   (Python package `neuronpedia`: `Model.new(id, layers, display_name, url)`).
3. Create the source set `{f.source_set}` with `POST /api/source-set/new`
   (`SourceSet.new(name, model_id, description, url)`). It creates one source per layer,
   `0-{f.source_set}`, `1-{f.source_set}`, ...; this SAE goes to `{f.source_id}`.
4. Send every file in `{folder}/` (one file = one call):

   ```bash
   for f in {folder}/upload-batch-*.json; do
     curl --fail-with-body -sS -X POST {NEURONPEDIA_API}/feature/upload-batch \\
       -H "Content-Type: application/json" -H "X-Api-Key: $NEURONPEDIA_API_KEY" \\
       --data-binary @"$f" || {{ echo "stopped at $f"; break; }}
   done
   ```

   With miStudio installed, the same files can be sent by
   `python -m mistudio_export.formats.neuronpedia_upload {folder} --send`
   (without `--send` it only lists what it would send). The API is rate-limited per hour:
   on HTTP 429, wait and resend from the file that stopped.
5. Open https://www.neuronpedia.org/{f.neuronpedia_id}/0 to see the first feature.

Naming rules the API enforces:

- model id: lowercase letters, digits, `.` and `-`, 2 to 32 characters, starting with a
  letter, no `--` or `..`; use the TransformerLens name (`gpt2-small`, `gemma-2-2b`); a new
  model needs its layer count (1 to 127);
- source-set name: lowercase letters, digits and `-`, starting with a letter and ending with a
  letter or digit, no `--`, not `neurons`; keep it short (under 32 characters) and describe
  author, hook and width without the layer number (e.g. `mistudio-res-16k`);
- source-set description: at most {MAX_SOURCE_SET_DESCRIPTION} characters;
- the source id is `{{layer}}-{{source set}}` (here `{f.source_id}`), and a feature's page is
  `neuronpedia.org/{{model}}/{{source}}/{{index}}`."""


def _route_bulk_import(f: ArchiveFacts) -> str:
    folder, note = _folder_or_note(f, FormatKind.NEURONPEDIA_IMPORT)
    prefill = "\n".join(f"     - `{k}`: {json.dumps(v)}" for k, v in prefill_json(f).items())
    return f"""## Route 2: bulk import by the Neuronpedia maintainers (full dashboards)

{note}The only way to get the complete dashboard (activation and logit histograms included).
Neuronpedia has no upload form or endpoint for it: its importer reads only Neuronpedia's own
storage bucket, and the maintainers put data there on request (their README: "currently you
need to contact us"; GitHub issue hijohnnylin/neuronpedia#46 tracks making this simpler).

1. Publish the weights first (route 3), so the dashboards point at loadable weights.
2. Contact the Neuronpedia maintainers (the contact details on neuronpedia.org, or an issue on
   github.com/hijohnnylin/neuronpedia) and say you have an export in their importer layout.
3. Send them:
   - the folder `{folder}/` (it already has `{f.model_id}/{f.source_id}/` inside), or a
     shareable link to this whole archive;
   - `{PREFILL_NAME}`, which answers every question their conversion script asks:
{prefill}
   - `{MANIFEST_NAME}`, so they can check nothing changed in transit.
4. They copy the folder to their bucket and import it from their admin page; the source then
   appears at https://www.neuronpedia.org/{f.neuronpedia_id}.{_pending(f)}"""


def _pending(f: ArchiveFacts) -> str:
    if not (f.pending_types or f.pending_models):
        return ""
    asks = [f"explanation type `{name}`" for name in f.pending_types]
    asks += [f"explainer model `{name}`" for name in f.pending_models]
    return f"""
5. Some explanations wait in `explanations-pending/`: Neuronpedia has no {", no ".join(asks)}.
   Ask the maintainers to add them to their config (`explanation_type.jsonl`,
   `explanation_model_type.jsonl`); then they move the files into `explanations/` and import
   again (rows already there are skipped)."""


def _route_huggingface(f: ArchiveFacts) -> str:
    folder, note = _folder_or_note(f, FormatKind.SAELENS)
    entry = pretrained_saes_entry(f).rstrip("\n")
    return f"""## Route 3: HuggingFace + SAELens (weights)

{note}Makes the SAE loadable by anyone with `SAE.from_pretrained`, and is step one of route 2.

1. Log in once: `hf auth login` (a write token from https://huggingface.co/settings/tokens).
2. Upload the SAELens folder; the repo is created if it does not exist:

   ```bash
   hf upload {f.repo} {folder} {f.repo_path}
   ```

   With huggingface_hub older than 1.0 the command is
   `huggingface-cli upload {f.repo} {folder} {f.repo_path}`.
3. Check it loads:
   `python -c "from sae_lens import SAE; SAE.from_pretrained('{f.repo}', '{f.repo_path}')"`.
4. To make it loadable by release name, open a pull request on SAELens
   (github.com/decoderesearch/SAELens) adding this entry to `sae_lens/pretrained_saes.yaml`:

   ```yaml
{_indent(entry, 3)}
   ```

   `neuronpedia:` must be `<neuronpedia model id>/<layer>-<source set>`; it only matters once
   the dashboards are on Neuronpedia (route 1 or 2)."""


def _format_limits(f: ArchiveFacts) -> str:
    parts = ["## Format limits"]
    for included in f.formats:
        note = NOTES[included.kind]
        limits = "\n".join(f"- {line}" for line in note.limits)
        parts.append(f"### {note.title} ({included.label})\n\n{note.summary}\n\n{limits}")
    if len(parts) == 1:
        parts.append("No output formats are included in this archive.")
    return "\n\n".join(parts)


def _indent(text: str, spaces: int) -> str:
    pad = " " * spaces
    return "\n".join(pad + line if line else line for line in text.splitlines())


def write_archive_docs(staging_dir: Path, facts: ArchiveFacts) -> None:
    """Writes README.md and prefill.json at the staging root, ready for ``build_archive``."""
    root = Path(staging_dir)
    (root / README_NAME).write_text(render_readme(facts), encoding="utf-8")
    prefill = json.dumps(prefill_json(facts), indent=2, ensure_ascii=False) + "\n"
    (root / PREFILL_NAME).write_text(prefill, encoding="utf-8")
