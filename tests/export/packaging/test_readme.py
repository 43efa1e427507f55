"""README.md and prefill.json: every upload route, its commands and its limits."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import pytest
import yaml
from mistudio_export.packaging import (
    MANIFEST_NAME,
    ArchiveFacts,
    FormatKind,
    IncludedFormat,
    prefill_json,
    pretrained_saes_entry,
    render_readme,
    write_archive_docs,
)

FACTS = ArchiveFacts(
    title="gpt2-small layer 6 residual SAE",
    sae_ids=("sae-7f3a",),
    model_id="gpt2-small",
    hook_name="blocks.6.hook_resid_post",
    layer=6,
    source_set="mistudio-res-16k",
    n_features=16384,
    d_sae=16384,
    formats=(
        IncludedFormat(FormatKind.NEURONPEDIA_UPLOAD),
        IncludedFormat(FormatKind.NEURONPEDIA_IMPORT),
        IncludedFormat(FormatKind.SAELENS, folder="saelens"),
    ),
    validation_summary=("16384 features checked, 0 errors", "3 warnings: empty explanations"),
    n_explanations=12000,
    dataset="Skylion007/openwebtext",
    n_prompts=24576,
    n_tokens_in_prompt=128,
    source_set_description="miStudio residual SAE, 16k",
    creator_name="Ada Lovelace",
    release_id="mistudio-gpt2",
    release_title="miStudio GPT-2 SAEs",
    hf_repo="ada/gpt2-mistudio-saes",
)


@pytest.fixture(scope="module")
def readme() -> str:
    return render_readme(FACTS)


def test_the_same_facts_give_the_same_text() -> None:
    assert render_readme(FACTS) == render_readme(replace(FACTS))


def test_readme_walks_through_all_three_routes(readme: str) -> None:
    assert "Route 1: Neuronpedia's upload API" in readme
    assert "Route 2: bulk import by the Neuronpedia maintainers" in readme
    assert "Route 3: HuggingFace + SAELens" in readme


def test_upload_api_route_names_the_folder_the_endpoint_and_the_key(readme: str) -> None:
    assert "upload-payloads/upload-batch-*.json" in readme
    assert "https://www.neuronpedia.org/api/feature/upload-batch" in readme
    assert "X-Api-Key: $NEURONPEDIA_API_KEY" in readme
    assert "POST /api/source-set/new" in readme and "POST /api/model/new" in readme


def test_upload_api_limits_are_stated(readme: str) -> None:
    for limit in ["128 features per call", "20 entries each", "1024 tokens", "512 characters"]:
        assert limit in readme


def test_naming_rules_are_stated(readme: str) -> None:
    assert "2 to 32 characters" in readme  # model id
    assert "not `neurons`" in readme  # source-set name
    assert "at most 128 characters" in readme  # source-set description
    assert "`6-mistudio-res-16k`" in readme


def test_bulk_import_route_says_whom_to_contact_and_what_to_send(readme: str) -> None:
    assert "contact" in readme.lower()
    assert "`neuronpedia-importer/`" in readme
    assert "`prefill.json`" in readme
    assert '`creator_name`: "Ada Lovelace"' in readme


def test_huggingface_route_gives_the_exact_upload_command(readme: str) -> None:
    command = "hf upload ada/gpt2-mistudio-saes saelens blocks.6.hook_resid_post"
    assert command in readme
    assert "huggingface-cli upload ada/gpt2-mistudio-saes saelens blocks.6.hook_resid_post" in (
        readme
    )


def test_readme_embeds_a_pretrained_saes_entry_sae_lens_can_parse(readme: str) -> None:
    block = readme.split("```yaml\n", 1)[1].split("```", 1)[0]
    entry = yaml.safe_load("\n".join(line[3:] for line in block.splitlines()))

    release = entry["mistudio-gpt2"]
    assert release["repo_id"] == "ada/gpt2-mistudio-saes"
    assert release["model"] == "gpt2-small"
    assert release["saes"] == [
        {
            "id": "blocks.6.hook_resid_post",
            "path": "blocks.6.hook_resid_post",
            "neuronpedia": "gpt2-small/6-mistudio-res-16k",
        }
    ]
    assert yaml.safe_load(pretrained_saes_entry(FACTS)) == entry


def test_layout_and_manifest_are_explained(readme: str) -> None:
    assert f"| `{MANIFEST_NAME}` |" in readme
    assert "SHA-256" in readme and "archive_format_version" in readme
    for folder in ["upload-payloads/", "neuronpedia-importer/", "saelens/"]:
        assert f"| `{folder}` |" in readme


def test_each_included_format_lists_its_limits(readme: str) -> None:
    assert "### Neuronpedia importer layout (`neuronpedia-importer/`)" in readme
    assert "every line of a file has the same keys" in readme
    assert "### SAELens checkpoint (`saelens/`)" in readme
    assert "transformer-lens < 4" in readme


def test_facts_and_validation_lines_are_shown(readme: str) -> None:
    assert "`gpt2-small/6-mistudio-res-16k`" in readme
    assert "16,384 of 16,384" in readme
    assert "24,576 prompts x 128 tokens from `Skylion007/openwebtext`" in readme
    assert "- 3 warnings: empty explanations" in readme


def test_a_route_whose_data_is_absent_says_so() -> None:
    only_weights = replace(FACTS, formats=(IncludedFormat(FormatKind.SAELENS),))

    text = render_readme(only_weights)

    assert "This archive has no Neuronpedia upload-API payloads" in text
    assert "This archive has no Neuronpedia importer layout" in text


def test_a_format_at_the_archive_root_is_labelled_as_such() -> None:
    at_root = replace(FACTS, formats=(IncludedFormat(FormatKind.PRD_JSON, folder="/"),))

    text = render_readme(at_root)

    assert "| archive root | `metadata.json`" in text
    assert "### miStudio JSON (archive root)" in text


def test_no_clock_time_appears_unless_given() -> None:
    assert "SAE created" not in render_readme(FACTS)
    dated = render_readme(replace(FACTS, created_at="2025-01-15T10:30:00Z"))
    assert "| SAE created | 2025-01-15T10:30:00Z |" in dated


def test_prefill_holds_what_the_maintainers_ask_for() -> None:
    prefill = prefill_json(FACTS)

    assert prefill["creator_name"] == "Ada Lovelace"
    assert (prefill["release_id"], prefill["release_title"]) == (
        "mistudio-gpt2",
        "miStudio GPT-2 SAEs",
    )
    assert prefill["model_id"] == "gpt2-small"
    assert prefill["source_set_id"] == "mistudio-res-16k"
    assert prefill["source_set_description"] == "miStudio residual SAE, 16k"
    assert prefill["hook_point"] == "blocks.6.hook_resid_post"
    assert prefill["layer"] == 6
    assert prefill["dataset"] == "Skylion007/openwebtext"
    assert (prefill["num_prompts"], prefill["num_tokens_in_prompt"]) == (24576, 128)
    assert prefill["hf_repo_id"] == "ada/gpt2-mistudio-saes"
    assert prefill["neuronpedia_id"] == "gpt2-small/6-mistudio-res-16k"


def test_docs_are_written_deterministically(tmp_path: Path) -> None:
    for name in ["a", "b"]:
        (tmp_path / name).mkdir()
        write_archive_docs(tmp_path / name, FACTS)

    for name in ["README.md", "prefill.json"]:
        assert (tmp_path / "a" / name).read_bytes() == (tmp_path / "b" / name).read_bytes()
    assert json.loads((tmp_path / "a" / "prefill.json").read_text()) == prefill_json(FACTS)


def test_bulk_import_route_asks_for_the_explanation_types_neuronpedia_lacks() -> None:
    facts = replace(FACTS, pending_types=("mistudio_top-tokens",), pending_models=("claude-9",))
    text = render_readme(facts)
    assert "explanations-pending/" in text
    assert "explanation type `mistudio_top-tokens`" in text
    assert "explainer model `claude-9`" in text
    assert "Some explanations wait" not in render_readme(FACTS)  # nothing to ask for


def test_importer_limits_list_the_differences_from_neuronpedias_converter(readme: str) -> None:
    assert "only these columns differ" in readme and "`Activation.dataIndex`" in readme
