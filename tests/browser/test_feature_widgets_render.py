"""Render the front ends of FeatureCard and FeatureBrowser for real in headless Chromium.

A page imports each widget's bundled ES module (exactly the `_esm` anywidget ships), renders
the widget's state through a fake anywidget model (get/set/on/off/save_changes), then acts like
a reader: hovers tokens and histograms, clicks rows, headings, pager buttons and tokens, types
a query, presses arrow keys, and swaps in new markup as Python would. It writes what happened
as JSON into the DOM, which `chromium --dump-dom` hands back.
"""

from __future__ import annotations

import functools
import html
import http.server
import json
import re
import threading
from pathlib import Path

import pytest
from fake_widget_model import FAKE_MODEL
from test_feature_widgets import TEXT, SyntheticStats, tiny_card

from workbench.widgets import FeatureBrowser, FeatureCard

PAGE = """<!doctype html>
<html><head><meta charset="utf-8"><style>__CSS__</style></head>
<body style="width: 1100px">
<div id="card"></div><div id="browser"></div>
<pre id="result">pending</pre>
<script type="module">
import cardWidget, { binAt, histogramEdges } from "./card.js";
import browserWidget from "./browser.js";

const STATE = __STATE__;
const sleep = (ms) => new Promise((r) => setTimeout(r, ms));

__FAKE_MODEL__

const over = (node, type = "mouseover") => node.dispatchEvent(new MouseEvent(type, { bubbles: true }));
const out = { errors: [] };
try {
  // ---- FeatureCard ----
  const cardEl = document.getElementById("card");
  const card = fakeModel(structuredClone(STATE.card));
  const undoCard = cardWidget.render({ model: card, el: cardEl });
  const t = document.createElement("template");
  t.innerHTML = STATE.card.card_html;
  out.cardEqual = t.content.firstElementChild.isEqualNode(cardEl.firstElementChild);
  const tokens = [...cardEl.querySelectorAll(".wf-ex > span > span, .wf-logits code")];
  const script = tokens.find((n) => n.textContent === "<script>");
  over(script);
  out.highlighted = [...cardEl.querySelectorAll(".wf-hl")].map((n) => n.tagName.toLowerCase());
  over(script, "mouseout");
  out.afterOut = cardEl.querySelectorAll(".wf-hl").length;
  const svg = cardEl.querySelector(".wf-svg");
  const box = svg.getBoundingClientRect();
  svg.dispatchEvent(new MouseEvent("mousemove", { bubbles: true, clientX: box.left + box.width * 0.1, clientY: box.top + 5 }));
  out.tip = cardEl.querySelector(".wf-tip")?.textContent;
  svg.dispatchEvent(new MouseEvent("mouseout", { bubbles: true, relatedTarget: document.body }));
  out.tipAfter = cardEl.querySelectorAll(".wf-tip").length;
  out.bins = [binAt([1, 10, 100, 1000], true, 0.5), binAt([0, 1, 2, 4], false, 0.6), binAt([0, 1, 2], false, 1)];
  out.edges = histogramEdges({ lo: "1", hi: "100", log: "1" }, 2).map((e) => Math.round(e * 1000) / 1000);
  card.set("card_html", STATE.otherCard);
  out.swapped = [cardEl.querySelector(".wf-head b").textContent, cardEl.children.length];
  over(cardEl.querySelector(".wf-ex > span > span"));
  out.highlightAfterSwap = cardEl.querySelectorAll(".wf-hl").length > 0;
  const cardListeners = card.listeners();
  undoCard();
  out.cardListeners = [cardListeners, card.listeners()];

  // ---- FeatureBrowser ----
  const el = document.getElementById("browser");
  const model = fakeModel(structuredClone(STATE.browser));
  const undo = browserWidget.render({ model, el });
  const rowIds = () => [...el.querySelectorAll(".wf-rows .wf-row")].map((r) => Number(r.dataset.f));
  out.rows = rowIds();
  out.cardShown = el.querySelector(".wf-cardview .wf-head b")?.textContent;
  out.textTokens = el.querySelectorAll(".wf-ttoks > span").length;

  el.querySelector('.wf-rows .wf-row[data-f="5"] code').click();  // a click anywhere on the row
  out.selected = [model.get("selected"), model.saves, [...el.querySelectorAll(".wf-rows .wf-sel")].map((r) => r.dataset.f)];

  el.querySelector('.wf-rhead [data-sort="density"]').click();
  out.sort1 = [model.get("sort_by"), model.get("descending")];
  el.querySelector('.wf-rhead [data-sort="density"]').click();
  out.sort2 = [model.get("sort_by"), model.get("descending")];
  el.querySelector('.wf-rhead [data-sort="feature"]').click();
  out.sort3 = [model.get("sort_by"), model.get("descending")];

  el.querySelector('.wf-pager button[data-page="1"]').click();
  out.page = model.get("page");
  el.querySelector(".wf-pager button[disabled]")?.click();
  out.pageAfterDisabled = model.get("page");

  el.querySelector('.wf-ttoks > span[data-i="2"]').click();
  out.token1 = model.get("text_token");
  el.querySelector('.wf-ttoks > span[data-i="2"]').click();
  out.token2 = model.get("text_token");
  el.querySelector('.wf-tf[data-f="9"]').click();
  out.fromText = model.get("selected");

  model.set("selected", 5);
  const input = el.querySelector(".wf-find input");
  input.value = "th";
  input.dispatchEvent(new Event("input"));
  input.value = "the";
  input.dispatchEvent(new Event("input"));
  out.queryBefore = model.get("query");
  await sleep(300);
  out.query = model.get("query");

  el.querySelector('.wf-rows .wf-row[data-f="5"]').classList.add("wf-sel");
  input.dispatchEvent(new KeyboardEvent("keydown", { key: "ArrowDown", bubbles: true }));
  out.arrow = model.get("selected");

  const saves = model.saves;
  el.querySelector(".wf-cardview .wf-ex > span > span").click();
  out.cardClickSaves = model.saves - saves;

  model.set("table_html", STATE.otherTable);
  out.rowsAfter = rowIds();
  model.set("card_html", STATE.otherCard);
  out.cardAfter = el.querySelector(".wf-cardview .wf-head b").textContent;
  over(el.querySelector(".wf-cardview .wf-ex > span > span"));
  out.browserHighlight = el.querySelectorAll(".wf-cardview .wf-hl").length > 0;
  model.set("text_html", "");
  out.textAfter = el.querySelector(".wf-textview").children.length;
  model.set("n_matches", 3);
  out.count = el.querySelector(".wf-find span").textContent;
  const listeners = model.listeners();
  undo();
  out.listeners = [listeners, model.listeners()];
} catch (error) {
  out.errors.push(String(error.stack || error));
}
document.getElementById("result").textContent = JSON.stringify(out);
</script>
</body></html>
"""


class _QuietHandler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, format: str, *args: object) -> None:
        pass


def _state(widget) -> dict:
    return {k: v for k, v in widget.get_state().items() if k not in ("_esm", "_css")}


@pytest.fixture(scope="module")
def rendered(chromium, tmp_path_factory) -> dict:
    """Every step of the page, in one Chromium run."""
    folder = tmp_path_factory.mktemp("widgets")
    stats = SyntheticStats(24)
    card = FeatureCard(tiny_card())
    browser = FeatureBrowser(stats, page_size=10, selected=2)
    browser.show_text(TEXT)
    other = FeatureBrowser(stats, page_size=3, sort_by="density", descending=True)
    state = {
        "card": _state(card),
        "otherCard": FeatureCard(stats.card(4)).card_html,
        "browser": _state(browser),
        "otherTable": other.table_html,
    }
    (folder / "card.js").write_text(card._esm, encoding="utf-8")
    (folder / "browser.js").write_text(browser._esm, encoding="utf-8")
    page = PAGE.replace("__FAKE_MODEL__", FAKE_MODEL).replace("__CSS__", browser._css).replace("__STATE__", json.dumps(state).replace("</", "<\\/"))
    (folder / "index.html").write_text(page, encoding="utf-8")
    handler = functools.partial(_QuietHandler, directory=str(folder))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        url = f"http://127.0.0.1:{server.server_address[1]}/index.html"
        run = chromium.run(folder / "profile", "--virtual-time-budget=10000", "--dump-dom", url)
    finally:
        server.shutdown()
        server.server_close()
    found = re.search(r'<pre id="result">(.*?)</pre>', run.stdout, re.S)
    assert found and found.group(1) != "pending", f"the page did not finish; stderr:\n{run.stderr[-3000:]}"
    result = json.loads(html.unescape(found.group(1)))
    assert result["errors"] == [], result["errors"]
    result["other_rows"] = [int(f) for f in re.findall(r'data-f="(\d+)"', other.table_html)]
    return result


def test_card_view_is_python_markup(rendered):
    assert rendered["cardEqual"]


def test_card_hover_highlights_the_token_everywhere(rendered):
    # "<script>" is an example token and a promoted logit in tiny_card
    assert sorted(rendered["highlighted"]) == ["code", "span"]
    assert rendered["afterOut"] == 0


def test_card_histogram_reads_out_the_bin(rendered):
    # 10% across the activation histogram of tiny_card (edges 0.1, 1, 10, 100; counts 5, 0, 2)
    assert rendered["tip"] == "0.1 – 1: 5 tokens"
    assert rendered["tipAfter"] == 0
    assert rendered["bins"] == [1, 2, 1] and rendered["edges"] == [1, 10, 100]


def test_card_swaps_markup_and_cleans_up(rendered):
    assert rendered["swapped"] == ["feature 4", 1]
    assert rendered["highlightAfterSwap"]
    before, after = rendered["cardListeners"]
    assert before > 0 and after == 0


def test_browser_draws_python_markup(rendered):
    assert rendered["rows"] == list(range(10))
    assert rendered["cardShown"] == "feature 2" and rendered["textTokens"] == 4


def test_browser_row_click_selects(rendered):
    selected, saves, marked = rendered["selected"]
    assert selected == 5 and saves == 1 and marked == ["5"]


def test_browser_headings_sort_and_flip(rendered):
    assert rendered["sort1"] == ["density", True]
    assert rendered["sort2"] == ["density", False]
    assert rendered["sort3"] == ["feature", False]


def test_browser_pager_and_text_tokens(rendered):
    assert rendered["page"] == 1 and rendered["pageAfterDisabled"] == 1
    assert (rendered["token1"], rendered["token2"]) == (2, -1)
    assert rendered["fromText"] == 9


def test_browser_search_box_sets_the_query_once_typing_pauses(rendered):
    assert rendered["queryBefore"] == "" and rendered["query"] == "the"


def test_browser_arrow_keys_move_the_selection(rendered):
    assert rendered["arrow"] == 6


def test_browser_clicks_in_the_card_change_nothing(rendered):
    assert rendered["cardClickSaves"] == 0


def test_browser_swaps_markup_and_cleans_up(rendered):
    assert rendered["rowsAfter"] == rendered["other_rows"] == [2, 23, 1]
    assert rendered["cardAfter"] == "feature 4" and rendered["browserHighlight"]
    assert rendered["textAfter"] == 0 and rendered["count"] == "3 match"
    before, after = rendered["listeners"]
    assert before > 0 and after == 0


# --- the static fallback in an nbconvert export ---------------------------------------------

MEASURE = """
<pre id="wf-measure">pending</pre>
<script>
window.addEventListener("load", () => {
  const box = (el) => { const r = el.getBoundingClientRect(); return [r.left, r.top + scrollY, r.width, r.height].map(Math.round); };
  const cards = [...document.querySelectorAll(".wf-card")].map((card) => ({
    box: box(card),
    body: getComputedStyle(card.querySelector(".wf-body")).display,
    side: box(card.querySelector(".wf-side")),
    main: box(card.querySelector(".wf-main")),
    svgs: [...card.querySelectorAll("svg")].map(box),
    focus: getComputedStyle(card.querySelector(".wf-focus")).outlineStyle,
    hot: getComputedStyle(card.querySelector(".wf-focus")).backgroundColor,
  }));
  const rows = [...document.querySelectorAll(".wf-rows .wf-row")].map((r) => box(r)[3]);
  document.getElementById("wf-measure").textContent = JSON.stringify({ cards, rows,
    ours: [...document.styleSheets].some((s) => { try { return [...s.cssRules].some((r) => r.cssText.includes(".wf-")); } catch { return false; } }) });
});
</script>
"""


def test_static_fallback_renders_in_an_nbconvert_export(chromium, tmp_path):
    """The text/html of FeatureCard and FeatureBrowser, exported by plain nbconvert (no widget
    state, none of our CSS or JavaScript), lays out as the live widget does: two columns,
    histograms drawn, the focus token outlined and coloured, list rows one line each."""
    import nbformat
    from nbconvert import HTMLExporter
    from PIL import Image

    stats = SyntheticStats(8)
    nb = nbformat.v4.new_notebook()
    for widget in (FeatureCard(stats.card(3)), FeatureBrowser(stats, selected=5, page_size=5)):
        data, metadata = widget._repr_mimebundle_()
        cell = nbformat.v4.new_code_cell("widget")
        cell.outputs = [nbformat.v4.new_output("display_data", data=data, metadata=metadata)]
        nb.cells.append(cell)
        widget.close()
    exported, _ = HTMLExporter().from_notebook_node(nb)
    assert exported.count('<div class="wf-card"') == 2 and "feature_card.js" not in exported
    page = tmp_path / "export.html"
    page.write_text(exported.replace("</body>", MEASURE + "</body>"), encoding="utf-8")
    run = chromium.run(tmp_path / "profile", "--window-size=1200,1000", "--virtual-time-budget=10000",
                       "--dump-dom", page.as_uri())
    found = re.search(r'<pre id="wf-measure">(.*?)</pre>', run.stdout, re.S)
    assert found and found.group(1) != "pending", run.stderr[-3000:]
    measured = json.loads(html.unescape(found.group(1)))
    assert not measured["ours"]  # nothing but inline styles
    assert len(measured["cards"]) == 2 and measured["rows"] == [measured["rows"][0]] * 5
    assert 20 < measured["rows"][0] < 32
    for card in measured["cards"]:
        assert card["body"] == "flex" and card["box"][2] > 800
        assert card["main"][0] > card["side"][0] + 250  # side by side
        assert len(card["svgs"]) == 2 and all(w > 200 and 56 <= h <= 58 for _, _, w, h in card["svgs"])
        assert card["focus"] == "solid" and card["hot"].startswith("rgb")

    shot = tmp_path / "export.png"
    chromium.run(tmp_path / "profile", "--window-size=1200,3000", "--virtual-time-budget=10000",
                 f"--screenshot={shot}", page.as_uri())
    x, y, w, h = measured["cards"][0]["svgs"][0]
    pixels = Image.open(shot).convert("RGB").crop((x, y, x + w, y + h)).getdata()
    assert sum(1 for r, g, b in pixels if r > 200 and 100 < g < 180 and b < 60) > 0.1 * w * h  # orange bars
