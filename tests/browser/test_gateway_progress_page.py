"""The gateway's progress page in a real Chromium: EventSource follows an export to the end."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from google.protobuf import json_format
from selenium import webdriver
from selenium.webdriver.common.by import By
from selenium.webdriver.support.ui import WebDriverWait

from tests.export.service.stack import (
    Stack,
    register_sae,
    start_stack,
    token_source,
    write_sae_folder,
    write_tokens,
)
from tests.gateway.server import running_gateway

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    running = start_stack(tmp_path_factory.mktemp("progress-page") / "data")
    yield running
    running.stop()


@pytest.fixture(scope="module")
def gateway(stack: Stack) -> Iterator[str]:
    with running_gateway(stack.export.address) as url:
        yield url


def test_progress_page_shows_an_export_running_to_completion(
    chromium: webdriver.Chrome, screenshot, stack: Stack, gateway: str, tmp_path: Path
) -> None:
    sae_id = register_sae(stack, "page-sae", str(write_sae_folder(tmp_path / "sae"))).sae_id
    # Enough tokens that the export runs for seconds after the page has connected: on 256 rows
    # it ended within about a second, and the page sometimes first saw it SUCCEEDED (1 in 6).
    tokens = token_source(write_tokens(tmp_path / "tokens.npy", rows=16384, seed=3))
    started = httpx.post(
        f"{gateway}/api/v1/saes/{sae_id}/export/neuronpedia",
        json={"config": {"tokens": json_format.MessageToDict(tokens), "device": "cpu"}},
        timeout=60,
    )
    assert started.status_code == 202, started.text
    chromium.get(gateway + started.json()["links"]["page"])

    state = chromium.find_element(By.ID, "state")
    WebDriverWait(chromium, 60).until(
        lambda _: state.get_attribute("data-state") in ("QUEUED", "RUNNING")
    )
    screenshot("running")
    WebDriverWait(chromium, 180).until(
        lambda _: state.get_attribute("data-state") in ("SUCCEEDED", "FAILED", "CANCELLED")
    )
    screenshot("done")
    assert state.get_attribute("data-state") == "SUCCEEDED"
    assert chromium.find_element(By.ID, "percent").text == "100.0%"
    assert chromium.find_element(By.ID, "result").text.startswith("32 features")
    link = chromium.find_element(By.ID, "download").get_attribute("href")
    assert httpx.get(link, timeout=60).content.startswith(b"PK")  # the archive itself
    stage_rows = chromium.find_elements(By.CSS_SELECTOR, "#stages tr")
    assert stage_rows and all("succeeded" in row.text for row in stage_rows)
