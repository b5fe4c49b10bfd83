"""The quickstart as a reader gets it: the executed notebook exported with plain
`jupyter nbconvert --to html`, opened offline in headless Chromium.

The notebook runs once per session (the `quickstart` fixture, small parameters). A copy of
the export gets a script that measures, after the page has loaded, every chart, heatmap and
progress bar; the export itself is screenshotted whole into the test's tmp_path, and the
pixels inside each measured box must not all be background.
"""

from __future__ import annotations

import html
import json
import re
import subprocess
import sys
from pathlib import Path

import pytest

MEASURE = """
<pre id="wb-measure">pending</pre>
<script>
window.addEventListener("load", () => {
  const box = (el) => {
    const r = el.getBoundingClientRect();
    return [r.left + scrollX, r.top + scrollY, r.width, r.height].map(Math.round);
  };
  const seen = (el) => ({box: box(el), visible: el.checkVisibility({visibilityProperty: true})});
  const result = {
    charts: [...document.querySelectorAll(".jp-RenderedSVG img")].map((img) => ({
      ...seen(img), loaded: img.complete && img.naturalWidth > 0})),
    heatmaps: [...document.querySelectorAll(".wb-heatmap")].map((el) => ({
      ...seen(el), tokens: el.querySelectorAll(".wb-tok").length})),
    bars: [...document.querySelectorAll(".wb-progress")].map((el) => ({...seen(el), text: el.textContent})),
    page: [document.documentElement.scrollWidth, document.documentElement.scrollHeight],
  };
  document.getElementById("wb-measure").textContent = JSON.stringify(result);
});
</script>
"""

WIDTH = 1280


@pytest.fixture(scope="module")
def exported(quickstart, tmp_path_factory) -> Path:
    """The executed quickstart exported with plain `jupyter nbconvert --to html`."""
    folder = tmp_path_factory.mktemp("export")
    run = subprocess.run(
        [sys.executable, "-m", "jupyter", "nbconvert", "--to", "html", str(quickstart.path), "--output-dir", str(folder)],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert run.returncode == 0, run.stderr[-3000:]
    return folder / (quickstart.path.stem + ".html")


@pytest.fixture(scope="module")
def measured(exported, chromium, tmp_path_factory) -> dict:
    """What the page shows once loaded offline: boxes of its charts, heatmaps and bars."""
    folder = tmp_path_factory.mktemp("measure")
    page = folder / "measure.html"
    page.write_text(exported.read_text(encoding="utf-8").replace("</body>", MEASURE + "</body>"), encoding="utf-8")
    run = chromium.run(folder / "profile", f"--window-size={WIDTH},1000", "--virtual-time-budget=10000",
                       "--dump-dom", page.as_uri())
    found = re.search(r'<pre id="wb-measure">(.*?)</pre>', run.stdout, re.S)
    assert found and found.group(1) != "pending", f"the page did not finish loading; stderr:\n{run.stderr[-3000:]}"
    return json.loads(html.unescape(found.group(1)))


@pytest.mark.slow
def test_export_is_small(exported):
    size = exported.stat().st_size
    assert size < 2_000_000, f"{exported.name} is {size:,} bytes"


@pytest.mark.slow
def test_every_chart_heatmap_and_bar_is_visible(measured, quickstart):
    charts, heatmaps, bars = measured["charts"], measured["heatmaps"], measured["bars"]
    assert len(charts) == 4  # norms, training (once), ZF plot, density
    assert len(heatmaps) == 1 + len(quickstart.results["features"])
    for item in charts + heatmaps + bars:
        x, y, width, height = item["box"]
        assert item["visible"] and width > 100 and height > 10, item
    assert all(chart["loaded"] for chart in charts)
    assert all(heatmap["tokens"] > 0 for heatmap in heatmaps)
    texts = [bar["text"] for bar in bars]
    assert any(text.startswith("capture: 100%") for text in texts), texts
    assert any(text.startswith("train: 100%") for text in texts), texts


@pytest.mark.slow
def test_screenshot_shows_every_chart_and_heatmap(exported, measured, chromium, tmp_path):
    """The whole export as one screenshot (tmp_path/quickstart.png); inside the box of each
    chart and heatmap, some pixels are not the page background."""
    from PIL import Image

    height = min(measured["page"][1], 16_000)
    shot = tmp_path / "quickstart.png"
    run = chromium.run(tmp_path / "profile", f"--window-size={WIDTH},{height}", "--virtual-time-budget=10000",
                       f"--screenshot={shot}", exported.as_uri())
    assert shot.is_file(), run.stderr[-3000:]
    image = Image.open(shot).convert("L")
    assert image.size == (WIDTH, height)
    for item in measured["charts"] + measured["heatmaps"]:
        x, y, width, height = item["box"]
        assert y + height <= image.size[1], f"{item} lies below the screenshot"
        pixels = image.crop((x, y, x + width, y + height)).getdata()
        inked = sum(1 for p in pixels if p < 200)
        assert inked > 0.005 * width * height, f"{item}: only {inked} non-background pixels"
