"""The browser fixture renders a real page and runs its script."""

from pathlib import Path


def test_chromium_runs_a_file_page_script(chromium, screenshot, tmp_path: Path) -> None:
    page = tmp_path / "page.html"
    page.write_text(
        "<html><body><p id='out'>waiting</p>"
        "<script>document.getElementById('out').textContent = String(6 * 7);</script>"
        "</body></html>"
    )
    chromium.get(page.as_uri())
    assert chromium.find_element("id", "out").text == "42"
    assert screenshot().stat().st_size > 0
