"""What `workbench report` leaves for a reader, opened offline in headless Chromium: a notebook's
HTML report (workbench.report.export_html of the quickstart, executed once per session by the
`quickstart` fixture as `workbench report` executes it) shows every chart, heatmap and progress
bar and asks the network for nothing; a 2 x 2 grid's index page shows its four runs side by side,
a table linked to each run's report and a chart of their headline figures."""

from __future__ import annotations

import html
import json
import re
import shutil
from pathlib import Path

import nbformat
import pytest

from workbench import report

WIDTH = 1280

MEASURE_REPORT = """
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
    external: [...document.querySelectorAll("script[src], link[href], img[src]")]
      .map((el) => el.src || el.href).filter((url) => /^https?:/.test(url)),
    fetched: performance.getEntriesByType("resource").map((r) => r.name).filter((url) => !url.startsWith("file:")),
    page: [document.documentElement.scrollWidth, document.documentElement.scrollHeight],
  };
  document.getElementById("wb-measure").textContent = JSON.stringify(result);
});
</script>
"""

MEASURE_INDEX = """
<pre id="wb-measure">pending</pre>
<script>
window.addEventListener("load", () => {
  const box = (el) => {
    const r = el.getBoundingClientRect();
    return [r.left + scrollX, r.top + scrollY, r.width, r.height].map(Math.round);
  };
  const rows = [...document.querySelectorAll("table.wb-grid tbody tr")].map((tr) => ({
    cells: [...tr.children].map((td) => td.textContent.trim()), link: tr.querySelector("a")?.getAttribute("href"),
    box: box(tr)}));
  const charts = [...document.querySelectorAll(".charts svg")].map((svg) => ({
    box: box(svg), visible: svg.checkVisibility({visibilityProperty: true}),
    lines: [...svg.querySelectorAll("g[id^=line2d] path[clip-path]")]  // data lines: clipped, not grid grey
      .filter((p) => !/#b0b0b0/.test(p.getAttribute("style"))).length}));
  const header = [...document.querySelectorAll("table.wb-grid thead th")].map((th) => th.textContent);
  document.getElementById("wb-measure").textContent = JSON.stringify({rows, charts, header,
    page: [document.documentElement.scrollWidth, document.documentElement.scrollHeight]});
});
</script>
"""


def measure(page: Path, script: str, chromium, folder: Path) -> dict:
    """Load a copy of ``page`` (next to it, so relative links hold) with ``script`` appended, offline."""
    copy = page.with_name("measure-" + page.name)
    copy.write_text(page.read_text(encoding="utf-8").replace("</body>", script + "</body>"), encoding="utf-8")
    shown = chromium.run(folder / "profile", f"--window-size={WIDTH},1000", "--virtual-time-budget=10000",
                         "--dump-dom", copy.as_uri())
    copy.unlink()
    found = re.search(r'<pre id="wb-measure">(.*?)</pre>', shown.stdout, re.S)
    assert found and found.group(1) != "pending", f"the page did not finish loading; stderr:\n{shown.stderr[-3000:]}"
    return json.loads(html.unescape(found.group(1)))


def inked(page: Path, boxes: list[list[int]], chromium, folder: Path, height: int) -> list[float]:
    """Screenshot ``page`` whole (``folder/NAME.png``); per box, the share of pixels that are not background."""
    from PIL import Image

    shot = folder / (page.stem + ".png")
    run = chromium.run(folder / "profile-shot", f"--window-size={WIDTH},{height}", "--virtual-time-budget=10000",
                       f"--screenshot={shot}", page.as_uri())
    assert shot.is_file(), run.stderr[-3000:]
    image = Image.open(shot).convert("L")
    shares = []
    for x, y, width, box_height in boxes:
        assert y + box_height <= image.size[1], f"{[x, y, width, box_height]} lies below the screenshot"
        pixels = image.crop((x, y, x + width, y + box_height)).getdata()
        shares.append(sum(1 for p in pixels if p < 200) / max(1, width * box_height))
    return shares


@pytest.mark.slow
def test_report_html_shows_every_chart_and_widget_offline(quickstart, chromium, tmp_path):
    executed = tmp_path / quickstart.path.name
    shutil.copy(quickstart.path, executed)
    page = report.export_html(executed)
    shown = measure(page, MEASURE_REPORT, chromium, tmp_path)
    charts, heatmaps, bars = shown["charts"], shown["heatmaps"], shown["bars"]
    assert len(charts) == 4  # norms, training, ZF plot, density
    assert len(heatmaps) == 1 + len(quickstart.results["features"])
    assert len(bars) >= 2
    for item in charts + heatmaps + bars:
        x, y, width, height = item["box"]
        assert item["visible"] and width > 100 and height > 10, item
    assert all(chart["loaded"] for chart in charts) and all(h["tokens"] > 0 for h in heatmaps)
    assert shown["external"] == [] and shown["fetched"] == []  # nothing from a CDN, nothing fetched

    height = min(shown["page"][1], 16_000)
    for item, share in zip(charts + heatmaps, inked(page, [i["box"] for i in charts + heatmaps], chromium,
                                                     tmp_path, height)):
        assert share > 0.005, f"{item}: only {share:.2%} of its pixels drawn"


def test_grid_index_shows_four_runs_side_by_side(chromium, tmp_path):
    notebook = nbformat.v4.new_notebook()
    cell = nbformat.v4.new_code_cell('k = 16\nd_sae = 2304\nout_dir = "o"\nresults_path = "r.json"')
    cell.metadata["tags"] = ["parameters"]
    notebook.cells = [cell, nbformat.v4.new_code_cell(
        "import json\nopen(results_path, 'w').write(json.dumps({'fvu': 1 / (k * d_sae) ** 0.5, 'l0': k}))")]
    notebook.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    path = tmp_path / "02_grid.ipynb"
    nbformat.write(notebook, path)

    out = tmp_path / "grid"
    runs = report.run_report(path, [("k", "16,32"), ("d_sae", "2304,4608")], out, log=lambda line: None)
    assert [r.status for r in runs] == ["done"] * 4
    shown = measure(out / "index.html", MEASURE_INDEX, chromium, tmp_path)
    assert shown["header"] == ["run", "k", "d_sae", "status", "fvu", "l0", "seconds"]
    assert [row["cells"][1:4] for row in shown["rows"]] == [
        ["16", "2,304", "done"], ["16", "4,608", "done"], ["32", "2,304", "done"], ["32", "4,608", "done"]]
    for row in shown["rows"]:
        assert (out / row["link"]).is_file(), row  # each row links to its run's HTML report
    (chart,) = shown["charts"]
    assert chart["visible"] and chart["box"][2] > 400 and chart["box"][3] > 100, chart
    assert chart["lines"] == 4  # fvu and l0 against k, one line per d_sae
    assert shown["page"][0] <= WIDTH  # side by side in a table, no sideways scrolling

    (share,) = inked(out / "index.html", [chart["box"]], chromium, tmp_path, min(shown["page"][1], 4000))
    assert share > 0.005, f"the chart: only {share:.2%} of its pixels drawn"
