"""notebooks/02_features.ipynb as a reader gets it: exported with plain `jupyter nbconvert --to html`
and opened offline in headless Chromium, every feature card shows its histogram, logit table and
examples without a kernel."""

from __future__ import annotations

import pytest
from exported import measure_export

MEASURE = """
<pre id="wb-measure">pending</pre>
<script>
window.addEventListener("load", () => {
  const cards = [...document.querySelectorAll(".wf-card")].map((card) => {
    const r = card.getBoundingClientRect();
    return {
      box: [r.left, r.top + scrollY, r.width, r.height].map(Math.round),
      visible: card.checkVisibility({visibilityProperty: true}),
      title: card.querySelector(".wf-head b, .wf-head > *")?.textContent ?? "",
      svgs: card.querySelectorAll("svg").length,
      logits: card.textContent.includes("promoted") && card.textContent.includes("suppressed"),
      groups: card.querySelectorAll("details").length,
      tokens: card.querySelectorAll(".wf-exs span").length,
    };
  });
  document.getElementById("wb-measure").textContent = JSON.stringify({cards});
});
</script>
"""


@pytest.mark.slow
def test_cards_render_from_the_html_export(features_notebook, chromium, tmp_path):
    cards = measure_export(features_notebook.path, MEASURE, chromium, tmp_path)["cards"]
    assert len(cards) == 2 + 1 + 3
    for card in cards:
        x, y, width, height = card["box"]
        assert card["visible"] and width > 400 and height > 150, card
        assert card["svgs"] >= 2, card  # activation and logit-effect histograms
        assert card["logits"], card
        assert card["groups"] >= 1 and card["tokens"] > 0, card
