"""notebooks/03_interventions.ipynb as a reader gets it: exported with plain `jupyter nbconvert --to html`
and opened offline in headless Chromium, the ablation views show their tokens with underlines, and the
steering comparison, the transcript and the prompt heatmap are drawn, all without a kernel."""

from __future__ import annotations

import pytest
from exported import measure_export

MEASURE = """
<pre id="wb-measure">pending</pre>
<script>
window.addEventListener("load", () => {
  const box = (el) => { const r = el.getBoundingClientRect(); return [r.width, r.height].map(Math.round); };
  const views = [...document.querySelectorAll(".wi-ablation")].map((view) => {
    const tokens = [...view.querySelectorAll(".wi-text span")];
    const underlined = tokens.filter((t) => parseFloat(getComputedStyle(t).borderBottomWidth) > 0);
    return {
      box: box(view), visible: view.checkVisibility({visibilityProperty: true}), tokens: tokens.length,
      underlined: underlined.length,
      colours: [...new Set(underlined.map((t) => getComputedStyle(t).borderBottomColor))],
    };
  });
  const seen = (selector) => [...document.querySelectorAll(selector)].map((el) => ({
    box: box(el), visible: el.checkVisibility({visibilityProperty: true}), text: el.textContent.slice(0, 200)}));
  document.getElementById("wb-measure").textContent = JSON.stringify({
    views, steering: seen(".wi-steer"), chips: document.querySelectorAll(".wi-chip").length,
    estimate: document.body.textContent.toLowerCase().includes("estimate"),
  });
});
</script>
"""


@pytest.mark.slow
def test_interventions_render_from_the_html_export(interventions_notebook, chromium, tmp_path):
    measured = measure_export(interventions_notebook.path, MEASURE, chromium, tmp_path)
    results = interventions_notebook.results
    assert len(measured["views"]) >= 1
    for view in measured["views"]:
        width, height = view["box"]
        assert view["visible"] and width > 400 and height > 40, view
        assert view["tokens"] >= results["ablation"]["tokens"], view
        assert set(view["colours"]) <= {"rgb(37, 99, 235)", "rgb(220, 38, 38)"} or view["underlined"] == 0, view
    assert any(view["underlined"] > 0 for view in measured["views"])  # some token's log p moves when ablated
    (steering,) = measured["steering"]
    assert steering["visible"] and steering["box"][1] > 40
    assert measured["chips"] >= 1 and measured["estimate"]
