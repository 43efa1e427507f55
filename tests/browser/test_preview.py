"""The dashboard preview in a real headless Chromium, opened from file:// as a researcher would."""

from __future__ import annotations

import json
import time
import zipfile
from pathlib import Path
from typing import Any

import orjson
import pytest
from mistudio_cli.main import main
from mistudio_export.formats import jsonio
from mistudio_export.formats.columns import column_batches
from mistudio_export.formats.prd_json import (
    EXPLANATIONS_FILE,
    METADATA_FILE,
    feature_file_name,
    metadata_document,
    write_prd_export,
)
from mistudio_export.packaging import build_archive
from mistudio_export.preview import write_preview
from selenium import webdriver
from selenium.webdriver.common.action_chains import ActionChains
from selenium.webdriver.common.by import By
from selenium.webdriver.support.ui import Select, WebDriverWait

from tests.export.formats.builders import dashboard, explanation, naming, sae_info

N_FEATURES = 5
DEAD = 1
LARGE = 16_384


@pytest.fixture(scope="module")
def archive(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("preview-export") / "export"
    dashboards = [dashboard(i, dead=i == DEAD) for i in range(N_FEATURES)]
    explanations = [explanation(0, "words about speed"), explanation(2, "the letter q")]
    write_prd_export(folder, sae_info(), naming(), column_batches(dashboards), explanations)
    return build_archive(folder, folder.parent / "export.zip").path


@pytest.fixture(scope="module")
def viewer(archive: Path) -> Path:
    out = archive.parent / "preview"
    assert main(["preview", str(archive), "--output", str(out)]) == 0
    return out / "index.html"


def archived_feature(archive: Path, index: int) -> dict[str, Any]:
    with zipfile.ZipFile(archive) as zf:
        return dict(json.loads(zf.read(f"features/{index}.json")))


def open_viewer(browser: webdriver.Chrome, index_html: Path, feature: int | None = None) -> None:
    browser.get("about:blank")
    browser.get(index_html.as_uri() + (f"#feature={feature}" if feature is not None else ""))
    wait(browser).until(lambda b: b.find_element(By.TAG_NAME, "body").get_attribute("data-ready"))
    if feature is not None:
        wait_for_feature(browser, feature)


def wait(browser: webdriver.Chrome, seconds: float = 10) -> WebDriverWait[webdriver.Chrome]:
    return WebDriverWait(browser, seconds, poll_frequency=0.01)


def wait_for_feature(browser: webdriver.Chrome, index: int, seconds: float = 10) -> None:
    pane = browser.find_element(By.ID, "feature")
    wait(browser, seconds).until(lambda _: pane.get_attribute("data-feature-index") == str(index))


def listed(browser: webdriver.Chrome) -> list[int]:
    links = browser.find_elements(By.CSS_SELECTOR, "#feature-list a")
    return [int(link.get_attribute("data-feature") or -1) for link in links]


def search(browser: webdriver.Chrome, text: str) -> list[int]:
    box = browser.find_element(By.ID, "search")
    box.clear()
    box.send_keys(text)
    return listed(browser)


def test_preview_opens_from_file_with_every_feature_listed(
    chromium: webdriver.Chrome, viewer: Path, screenshot: Any
) -> None:
    open_viewer(chromium, viewer)
    assert chromium.current_url.startswith("file://")
    assert listed(chromium) == list(range(N_FEATURES))
    assert sae_info().sae_id in chromium.find_element(By.ID, "title").text
    wait_for_feature(chromium, 0)  # the first feature opens by itself
    assert "words about speed" in chromium.find_element(By.ID, "explanations").text
    screenshot()


@pytest.mark.parametrize(
    ("query", "found"),
    [
        ("letter Q", [2]),  # explanation, any case
        ("3", [3]),  # feature index
        ("quick", [0, 2, 3, 4]),  # top token; the dead feature has none
    ],
)
def test_search_finds_features_by_index_explanation_and_top_token(
    chromium: webdriver.Chrome, viewer: Path, query: str, found: list[int]
) -> None:
    open_viewer(chromium, viewer)
    assert search(chromium, query) == found


def test_a_found_feature_opens_on_click(chromium: webdriver.Chrome, viewer: Path) -> None:
    open_viewer(chromium, viewer)
    search(chromium, "letter q")
    chromium.find_element(By.CSS_SELECTOR, 'a[data-feature="2"]').click()
    wait_for_feature(chromium, 2)
    assert chromium.find_element(By.CSS_SELECTOR, "#feature h2").text == "Feature 2"


def test_sorting_by_max_activation_and_frequency(chromium: webdriver.Chrome, viewer: Path) -> None:
    open_viewer(chromium, viewer)
    order = Select(chromium.find_element(By.ID, "sort"))
    order.select_by_value("max-desc")
    assert listed(chromium) == [4, 3, 2, 0, 1]  # max activation 3.5 + index; dead is 0
    order.select_by_value("frequency-asc")
    assert listed(chromium)[0] == DEAD


def test_highlighted_tokens_carry_the_values_and_token_ids_of_the_archive(
    chromium: webdriver.Chrome, viewer: Path, archive: Path
) -> None:
    open_viewer(chromium, viewer, feature=3)
    data = archived_feature(archive, 3)
    groups = [("top", data["activations"])]
    groups += [(f"quantile-{n}", g["examples"]) for n, g in enumerate(data["quantile_groups"])]
    for group, examples in groups:
        shown = chromium.find_elements(By.CSS_SELECTOR, f'[data-group="{group}"] .example')
        assert len(shown) == len(examples)
        for element, example in zip(shown, examples, strict=True):
            spans = element.find_elements(By.CSS_SELECTOR, ".tok")
            assert [float(s.get_attribute("data-value") or "nan") for s in spans] == example[
                "values"
            ]
            assert [int(s.get_attribute("data-token-id") or -1) for s in spans] == example[
                "token_ids"
            ]
            assert [s.get_attribute("textContent") for s in spans] == example["tokens"]


def test_hovering_a_token_shows_its_value_and_token_id(
    chromium: webdriver.Chrome, viewer: Path, archive: Path, screenshot: Any
) -> None:
    open_viewer(chromium, viewer, feature=3)
    example = archived_feature(archive, 3)["activations"][0]
    peak = example["max_token_index"]
    token = chromium.find_element(
        By.CSS_SELECTOR, f'[data-group="top"] .tok[data-position="{peak}"]'
    )
    ActionChains(chromium).move_to_element(token).perform()
    tooltip = chromium.find_element(By.ID, "tooltip")
    wait(chromium).until(lambda _: tooltip.is_displayed())
    assert f"token id {example['token_ids'][peak]}" in tooltip.text
    assert f"activation {example['values'][peak]:.4f}" in tooltip.text
    screenshot()


def test_histograms_render_one_bar_per_bin(
    chromium: webdriver.Chrome, viewer: Path, archive: Path
) -> None:
    open_viewer(chromium, viewer, feature=3)
    data = archived_feature(archive, 3)
    for chart, histogram in (("activations", "histogram"), ("logits", "logit_histogram")):
        bars = chromium.find_elements(By.CSS_SELECTOR, f'svg[data-chart="{chart}"] rect.bar')
        counts = data[histogram]["counts"]
        assert [int(b.get_attribute("data-count") or -1) for b in bars] == counts
        heights = [float(b.get_attribute("height") or 0) for b in bars]
        assert heights.index(max(heights)) == counts.index(max(counts))


def test_logits_top_tokens_statistics_and_sources_are_shown(
    chromium: webdriver.Chrome, viewer: Path, archive: Path
) -> None:
    open_viewer(chromium, viewer, feature=3)
    data = archived_feature(archive, 3)
    pane = chromium.find_element(By.ID, "feature").text
    for entry in data["logits"]["top_positive"] + data["logits"]["top_negative"]:
        assert f"“{entry['token']}”" in pane
    assert f"{data['top_tokens'][0]['total_activation']:.2f}" in pane
    assert "Activation frequency" in pane and "p99" in pane
    source = data["activations"][1]["source"]
    assert f"{source['dataset']} · row {source['row']}, offset {source['offset']}" in pane
    headers = chromium.find_elements(By.CSS_SELECTOR, "#feature h3.quantile")
    assert len(headers) == len(data["quantile_groups"])


def test_a_dead_feature_shows_empty_charts_without_errors(
    chromium: webdriver.Chrome, viewer: Path
) -> None:
    open_viewer(chromium, viewer, feature=DEAD)
    assert chromium.find_elements(By.CSS_SELECTOR, 'svg[data-chart="activations"] rect.bar') == []
    assert "no non-zero values" in chromium.find_element(By.ID, "feature").text


@pytest.fixture(scope="module")
def large_viewer(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A 16k-feature PRD folder: one real feature document, written under every index."""
    root = tmp_path_factory.mktemp("preview-16k")
    info = sae_info(d_sae=LARGE)
    meta = metadata_document(info, naming(), n_features=LARGE, compressed=False)
    jsonio.write_document(root / "export" / METADATA_FILE, jsonio.dumps(meta))
    features = root / "export" / "features"
    features.mkdir()
    write_prd_export(root / "one", info, naming(), column_batches([dashboard(0, n_top=2)]))
    document = orjson.loads((root / "one" / feature_file_name(0)).read_bytes())
    for index in range(LARGE):
        document["feature_index"] = index
        (features / f"{index}.json").write_bytes(orjson.dumps(document))
    labels = {"export_version": "1", "features": []}
    jsonio.write_document(root / "export" / EXPLANATIONS_FILE, jsonio.dumps(labels))
    return write_preview(root / "export", root / "preview").index_html


@pytest.mark.slow
def test_a_16k_feature_viewer_opens_a_feature_in_under_a_second(
    chromium: webdriver.Chrome, large_viewer: Path, screenshot: Any
) -> None:
    open_viewer(chromium, large_viewer, feature=0)
    assert len(search(chromium, "16000")) == 1
    started = time.perf_counter()
    chromium.find_element(By.CSS_SELECTOR, 'a[data-feature="16000"]').click()
    wait_for_feature(chromium, 16000, seconds=5)
    elapsed = time.perf_counter() - started
    assert elapsed < 1.0, f"opening feature 16000 took {elapsed:.2f} s"
    loaded = chromium.find_elements(By.CSS_SELECTOR, 'script[src^="data/chunk-"]')
    assert sorted(str(s.get_attribute("src")).rsplit("/", 1)[1] for s in loaded) == [
        "chunk-0.js",
        "chunk-250.js",
    ]
    screenshot()


@pytest.mark.slow
def test_a_long_list_renders_a_page_at_a_time(
    chromium: webdriver.Chrome, large_viewer: Path
) -> None:
    open_viewer(chromium, large_viewer, feature=0)
    assert listed(chromium) == list(range(200))
    assert chromium.find_element(By.ID, "count").text == f"{LARGE} features"
    chromium.find_element(By.ID, "more").click()
    assert len(listed(chromium)) == 400


def test_keys_step_through_the_listed_features(chromium: webdriver.Chrome, viewer: Path) -> None:
    open_viewer(chromium, viewer, feature=0)
    Select(chromium.find_element(By.ID, "sort")).select_by_value("max-desc")  # 4, 3, 2, 0, 1
    body = chromium.find_element(By.TAG_NAME, "body")
    body.click()
    ActionChains(chromium).send_keys("j").perform()
    wait_for_feature(chromium, 1)
    ActionChains(chromium).send_keys("k").send_keys("k").perform()
    wait_for_feature(chromium, 2)
