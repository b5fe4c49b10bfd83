"""Render the intervention widgets for real in headless Chromium.

The live page imports each widget's bundled ES module (exactly the `_esm` anywidget ships) with
its CSS, renders the widget's state through a fake anywidget model, then acts like a reader:
clicks features, the method switch, chips and their buttons, hovers tokens, presses Enter, and
swaps in new markup as Python would. It writes what happened, and the computed colours and
underline widths of the tokens, as JSON into the DOM, which `chromium --dump-dom` hands back.

The static test exports the widgets' display data with plain nbconvert (no widget state, none
of our CSS or JavaScript), as an executed notebook shows them, and checks the same numbers.
Both take a screenshot and check its pixels: blue and red underlines where the numbers say.
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
from test_feature_widgets import SyntheticStats
from test_intervention_widgets import ACTS, DELTA, TRAITS, Recorder, both

from workbench.widgets import AblationView, PromptHeatmap, SteeringPanel, Transcript

WIDTH = 1100

MEASURE = """
const px = (el) => { const r = el.getBoundingClientRect(); return [r.left, r.top + scrollY, r.width, r.height].map(Math.round); };
function tokenLooks(root, selector) {
  return [...root.querySelectorAll(selector)].map((t) => {
    const s = getComputedStyle(t);
    return { text: t.textContent, bg: s.backgroundColor, width: s.borderBottomWidth, style: s.borderBottomStyle,
             color: s.borderBottomColor, box: px(t) };
  });
}
"""

PAGE = """<!doctype html>
<html><head><meta charset="utf-8"><style>__CSS__</style></head>
<body style="width: __WIDTH__px; margin: 12px">
<div id="ablation"></div><div id="transcript"></div><div id="prompt"></div>
<pre id="result">pending</pre>
<script type="module">
import ablationWidget, { clickAction as ablationAction } from "./ablation.js";
import traitsWidget from "./traits.js";

const STATE = __STATE__;
__FAKE_MODEL__
__MEASURE__
const over = (node, type = "mouseover") => node.dispatchEvent(new MouseEvent(type, { bubbles: true }));
const out = { errors: [] };
try {
  // ---- AblationView ----
  const el = document.getElementById("ablation");
  const ab = fakeModel(structuredClone(STATE.ablation));
  const undoAb = ablationWidget.render({ model: ab, el });
  const t = document.createElement("template");
  t.innerHTML = STATE.ablation.view_html;
  const drawn = el.querySelector(".wi-ablation").cloneNode(true);
  drawn.querySelector(".wi-readout")?.remove();  // what the module adds: the read-out, keyboard access
  for (const pill of drawn.querySelectorAll(".wi-feat")) ["tabindex", "role", "aria-pressed"].forEach((a) => pill.removeAttribute(a));
  out.ablationEqual = t.content.firstElementChild.isEqualNode(drawn);
  out.tokens = tokenLooks(el, ".wi-text > span");
  out.readoutBefore = el.querySelector(".wi-readout").textContent;
  over(el.querySelector('.wi-text > [data-i="2"]'));
  out.readout = el.querySelector(".wi-readout").textContent;
  over(el.querySelector('.wi-text > [data-i="2"]'), "mouseout");
  out.readoutAfter = el.querySelector(".wi-readout").textContent;

  el.querySelector('.wi-feat[data-f="12"] span').click();  // a click anywhere on the pill
  out.pick = [ab.get("feature"), ab.saves, [...el.querySelectorAll(".wi-feat.wi-on")].map((n) => n.dataset.f)];
  el.querySelector('.wi-feat[data-f="12"]').click();  // already chosen: nothing to save
  out.pickAgain = ab.saves;
  el.querySelector('button[data-method="direct"]').click();
  out.method = [ab.get("method"), ab.saves];
  el.querySelector(".wi-text > span").click();
  el.querySelector(".wf-card .wf-ex > span > span").click();
  out.quietClicks = ab.saves;
  out.pure = ablationAction(document.body, ab);

  ab.set("view_html", STATE.ablationOther);
  out.swapped = [el.querySelector(".wi-ablation").dataset.feature, el.querySelector(".wi-ablation").dataset.method,
                 el.querySelectorAll(".wi-readout").length, el.querySelector(".wf-card").dataset.feature];
  out.disabled = el.querySelector('button[data-method="direct"]')?.disabled ?? null;
  out.tokensOther = tokenLooks(el, ".wi-text > span");
  const pill = el.querySelector('.wi-feat[data-f="7"]');
  pill.focus();
  pill.dispatchEvent(new KeyboardEvent("keydown", { key: "Enter", bubbles: true }));
  out.pillKeyboard = [ab.get("feature"), document.activeElement === pill, pill.getAttribute("role")];
  over(el.querySelector(".wf-card .wf-ex > span > span"));
  out.cardHighlight = el.querySelectorAll(".wf-card .wf-hl").length > 0;
  const abListeners = ab.listeners();
  undoAb();
  out.ablationListeners = [abListeners, ab.listeners()];

  // ---- Transcript ----
  const tel = document.getElementById("transcript");
  const tr = fakeModel(structuredClone(STATE.transcript));
  const undoTr = traitsWidget.render({ model: tr, el: tel });
  out.chips = [...tel.querySelectorAll(".wi-chip")].map((c) => [c.dataset.turn, c.dataset.f, c.tabIndex, c.getAttribute("role")]);
  tel.querySelector('.wi-chip[data-turn="0"][data-f="3"] b').click();
  out.open = [tr.get("selected"), tr.saves];
  tr.set("view_html", STATE.transcriptOpen);
  out.openDrawn = [tel.querySelectorAll(".wf-card").length, tel.querySelector(".wi-open")?.dataset.f,
                   tel.querySelector(".wi-open")?.getAttribute("aria-pressed")];
  const saves = tr.saves;
  tel.querySelector(".wf-card .wf-ex > span > span").click();
  out.cardClickSaves = tr.saves - saves;
  tel.querySelector('.wi-dhead > button[data-detail="examples"]').click();
  out.detail = tr.get("detail");
  tel.querySelector(".wi-dhead > button[data-close]").click();
  out.closed = tr.get("selected");
  tr.set("selected", [0, 3]);
  tel.querySelector('.wi-chip[data-turn="0"][data-f="3"]').click();
  out.toggled = tr.get("selected");
  const chip = tel.querySelector('.wi-chip[data-turn="1"][data-f="6"]');
  chip.focus();
  chip.dispatchEvent(new KeyboardEvent("keydown", { key: "Enter", bubbles: true }));
  out.keyboard = [tr.get("selected"), document.activeElement === chip];
  over(tel.querySelector(".wf-card .wf-ex > span > span"));
  out.transcriptHighlight = tel.querySelectorAll(".wf-card .wf-hl").length > 0;
  const trListeners = tr.listeners();
  undoTr();
  out.transcriptListeners = [trListeners, tr.listeners()];

  // ---- PromptHeatmap ----
  const pel = document.getElementById("prompt");
  const ph = fakeModel(structuredClone(STATE.prompt));
  traitsWidget.render({ model: ph, el: pel });
  out.prompt = tokenLooks(pel, ".wi-ptoks > span").map((t) => t.bg);
  out.badge = pel.querySelector(".wi-badge")?.textContent;
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


def expected_tokens(feature: int, method: str) -> list[dict]:
    """Per token, the computed background and underline the numbers call for (worked out here:
    orange at activation / max, whole-percent opacity; border 1-4 px by |delta| / max |delta|,
    none under 2% and on the first token; blue below 0, red above)."""
    j = [7, 12].index(feature)
    scale = 1.0 if method == "full" else 0.5
    acts = [r[j] for r in ACTS]
    delta = [r[j] * scale for r in DELTA]
    amax, dmax = max(acts), max(abs(d) for d in delta[1:])
    out = []
    for i, (a, d) in enumerate(zip(acts, delta)):
        alpha = int(a / amax * 100 + 0.5)
        bg = "rgba(0, 0, 0, 0)" if alpha == 0 else "rgb(255, 140, 0)" if alpha == 100 else f"rgba(255, 140, 0, {alpha / 100})"
        ratio = abs(d) / dmax
        width = 0 if i == 0 or ratio < 0.02 else max(1, int(4 * ratio + 0.5))
        color = "rgb(37, 99, 235)" if d < 0 else "rgb(220, 38, 38)"
        out.append({"bg": bg, "width": f"{width}px", "style": "solid" if width else "none", "color": color if width else None})
    return out


def looks(measured: list[dict]) -> list[dict]:
    return [{"bg": t["bg"], "width": t["width"], "style": t["style"], "color": t["color"] if t["width"] != "0px" else None}
            for t in measured]


def serve_and_dump(chromium, folder: Path, *args: str) -> str:
    handler = functools.partial(_QuietHandler, directory=str(folder))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        url = f"http://127.0.0.1:{server.server_address[1]}/index.html"
        run = chromium.run(folder / "profile", f"--window-size={WIDTH + 40},2400", "--virtual-time-budget=10000", *args, url)
    finally:
        server.shutdown()
        server.server_close()
    return run.stdout + "\n" + run.stderr


@pytest.fixture(scope="module")
def page(tmp_path_factory) -> Path:
    """The live page's folder: index.html, the bundled modules, state drawn by Python."""
    folder = tmp_path_factory.mktemp("intervention")
    stats = SyntheticStats(16, per_group=3, groups=2)
    ablation = AblationView(both(), feature_cards=stats.card)
    other = AblationView(both(), feature_cards=stats.card, feature=12, method="direct")
    turns = [{"prompt": "Tell me about <foxes>", "reply": "Foxes are small omnivores.\nThey live in woods.", "traits": TRAITS},
             {"prompt": "And dogs?", "reply": "Dogs are loyal.", "traits": TRAITS[::-1]}]
    transcript = Transcript(turns, cards=stats.card)
    opened = Transcript(turns, cards=stats.card, selected=(0, 3))
    prompt = PromptHeatmap.from_attribution({"tokens": ["<bos>", " Tell", " me", " about", " foxes"],
                                             "occlusion": [0.0, 1.0, -0.5, 0.25, 2.0],
                                             "gradient_x_input": [0.5, 0.2, -1.0, 0.0, 0.8], "feature": 3})
    state = {"ablation": _state(ablation), "ablationOther": other.view_html, "transcript": _state(transcript),
             "transcriptOpen": opened.view_html, "prompt": _state(prompt)}
    (folder / "ablation.js").write_text(ablation._esm, encoding="utf-8")
    (folder / "traits.js").write_text(transcript._esm, encoding="utf-8")
    css = ablation._css + "\n" + transcript._css
    text = (PAGE.replace("__CSS__", css).replace("__WIDTH__", str(WIDTH)).replace("__FAKE_MODEL__", FAKE_MODEL)
            .replace("__MEASURE__", MEASURE).replace("__STATE__", json.dumps(state).replace("</", "<\\/")))
    (folder / "index.html").write_text(text, encoding="utf-8")
    for w in (ablation, other, transcript, opened, prompt):
        w.close()
    return folder


@pytest.fixture(scope="module")
def rendered(chromium, page) -> dict:
    """Every step of the live page, in one Chromium run."""
    dumped = serve_and_dump(chromium, page, "--dump-dom")
    found = re.search(r'<pre id="result">(.*?)</pre>', dumped, re.S)
    assert found and found.group(1) != "pending", f"the page did not finish:\n{dumped[-3000:]}"
    result = json.loads(html.unescape(found.group(1)))
    assert result["errors"] == [], result["errors"]
    return result


def test_ablation_view_is_python_markup(rendered):
    assert rendered["ablationEqual"]
    assert [t["text"] for t in rendered["tokens"]] == ["<bos>", "The", " cat", "<script>", "⏎", "∅", " sat", " &amp;"]


def test_ablation_colours_and_underline_widths_follow_the_numbers(rendered):
    assert looks(rendered["tokens"]) == expected_tokens(7, "full")
    assert looks(rendered["tokensOther"]) == expected_tokens(12, "direct")


def test_ablation_hover_reads_the_numbers_out(rendered):
    assert rendered["readoutBefore"] == "" and rendered["readoutAfter"] == ""
    assert rendered["readout"] == ('" cat" (position 2) · activation 4.000 · Δ log p full re-forward: -0.800 · '
                                   "Δ log p direct path: -0.400")


def test_ablation_clicks_pick_a_feature_and_a_method(rendered):
    assert rendered["pick"] == [12, 1, ["12"]]
    assert rendered["pickAgain"] == 1
    assert rendered["method"] == ["direct", 2]
    assert rendered["quietClicks"] == 2 and rendered["pure"] is None  # tokens and the card change nothing


def test_ablation_swaps_python_markup_and_cleans_up(rendered):
    assert rendered["swapped"] == ["12", "direct", 1, "12"]
    assert rendered["disabled"] is False and rendered["cardHighlight"]
    assert rendered["pillKeyboard"] == [7, True, "button"]
    before, after = rendered["ablationListeners"]
    assert before > 0 and after == 0


def test_transcript_chips_open_switch_and_close(rendered):
    assert rendered["chips"] == [["0", "3", 0, "button"], ["0", "5", 0, "button"], ["0", "6", 0, "button"],
                                 ["1", "6", 0, "button"], ["1", "5", 0, "button"], ["1", "3", 0, "button"]]
    assert rendered["open"] == [[0, 3], 1]
    assert rendered["openDrawn"] == [1, "3", "true"]
    assert rendered["cardClickSaves"] == 0
    assert rendered["detail"] == "examples" and rendered["closed"] == [-1, -1]
    assert rendered["toggled"] == [-1, -1]  # the open chip again closes it
    assert rendered["keyboard"] == [[1, 6], True]
    assert rendered["transcriptHighlight"]
    before, after = rendered["transcriptListeners"]
    assert before > 0 and after == 0


def test_prompt_heatmap_diverges_in_the_browser(rendered):
    # occlusion [0, 1, -0.5, 0.25, 2] then gradient x input [0.5, 0.2, -1, 0, 0.8]: blue above 0, red below,
    # opacity 0.6 x |value| / the row's largest
    assert rendered["prompt"] == [
        "rgba(0, 0, 0, 0)", "rgba(37, 99, 235, 0.3)", "rgba(220, 38, 38, 0.15)", "rgba(37, 99, 235, 0.08)",
        "rgba(37, 99, 235, 0.6)",
        "rgba(37, 99, 235, 0.3)", "rgba(37, 99, 235, 0.12)", "rgba(220, 38, 38, 0.6)", "rgba(0, 0, 0, 0)",
        "rgba(37, 99, 235, 0.48)"]
    assert rendered["badge"] == "estimate"


def _underline_pixels(image, box: list[int], rgb: tuple[int, int, int]) -> int:
    """Pixels close to `rgb` in the 5 px band at the bottom edge of a token's box."""
    x, y, w, h = box
    band = image.crop((x, y + h - 1, x + w, y + h + 4)).getdata()
    return sum(1 for p in band if all(abs(a - b) < 40 for a, b in zip(p, rgb)))


def test_live_screenshot_shows_the_underlines(chromium, page, rendered, tmp_path):
    from PIL import Image

    shot = tmp_path / "live.png"
    serve_and_dump(chromium, page, f"--screenshot={shot}")
    image = Image.open(shot).convert("RGB")
    # The page ends drawn as Python's second markup: feature 12 by the direct path.
    tokens = {t["text"]: t for t in rendered["tokensOther"]}
    blue, red = (37, 99, 235), (220, 38, 38)
    assert _underline_pixels(image, tokens["<script>"]["box"], blue) > 20  # delta -0.3, the largest: 4 px blue
    assert _underline_pixels(image, tokens[" cat"]["box"], red) > 10  # +0.15: 2 px red
    assert _underline_pixels(image, tokens["The"]["box"], blue) == _underline_pixels(image, tokens["The"]["box"], red) == 0


# --- the static fallback in an nbconvert export ---------------------------------------------

STATIC_MEASURE = """
<pre id="wi-measure">pending</pre>
<script>
__MEASURE__
window.addEventListener("load", () => {
  const result = {
    tokens: tokenLooks(document, '.wi-ablation[data-feature="7"] .wi-text > span'),
    tokensOther: tokenLooks(document, '.wi-ablation[data-feature="12"] .wi-text > span'),
    blocks: [...document.querySelectorAll(".wi-ablation")].map((b) => b.dataset.feature),
    prompt: tokenLooks(document, ".wi-ptoks > span").map((t) => t.bg),
    chips: [...document.querySelectorAll(".wi-chip")].map(px),
    cols: [...document.querySelectorAll(".wi-scol")].map(px),
    figures: [...document.querySelectorAll(".wi-sfig > div")].map(px),
    cards: document.querySelectorAll(".wf-card").length,
    buttons: document.querySelectorAll(".wi-ablation button, .wi-transcript button").length,
    ours: [...document.styleSheets].some((s) => { try { return [...s.cssRules].some((r) => r.cssText.includes(".wi-")); } catch { return false; } }),
  };
  document.getElementById("wi-measure").textContent = JSON.stringify(result);
});
</script>
"""


@pytest.fixture(scope="module")
def exported(tmp_path_factory) -> Path:
    """An HTML export (plain nbconvert) of a notebook showing each widget's display data."""
    import nbformat
    from nbconvert import HTMLExporter

    folder = tmp_path_factory.mktemp("export")
    stats = SyntheticStats(8, per_group=2, groups=2)
    nb = nbformat.v4.new_notebook()
    widgets = [
        AblationView(both(), feature_cards=stats.card),
        Transcript([{"prompt": "Tell me about <foxes>", "reply": "Foxes are small.", "traits": TRAITS}], cards=stats.card,
                   selected=(0, 6)),
        PromptHeatmap.from_attribution({"tokens": ["a", " b"], "occlusion": [1.0, -1.0], "gradient_x_input": [0.5, 1.0]}),
        SteeringPanel(Recorder(), {12: "weddings"}, coefficients={12: 4.0}),
    ]
    for widget in widgets:
        bundle = widget._repr_mimebundle_()
        data, metadata = bundle if isinstance(bundle, tuple) else (bundle, {})
        cell = nbformat.v4.new_code_cell("widget")
        cell.outputs = [nbformat.v4.new_output("display_data", data=data, metadata=metadata)]
        nb.cells.append(cell)
        widget.close()
    text, _ = HTMLExporter().from_notebook_node(nb)
    assert "ablation_view.js" not in text and text.count('<div class="wi-ablation"') == 2  # one per feature
    path = folder / "export.html"
    path.write_text(text.replace("</body>", STATIC_MEASURE.replace("__MEASURE__", MEASURE) + "</body>"), encoding="utf-8")
    return path


@pytest.fixture(scope="module")
def static(chromium, exported) -> dict:
    run = chromium.run(exported.parent / "profile", f"--window-size={WIDTH + 100},1000", "--virtual-time-budget=10000",
                       "--dump-dom", exported.as_uri())
    found = re.search(r'<pre id="wi-measure">(.*?)</pre>', run.stdout, re.S)
    assert found and found.group(1) != "pending", run.stderr[-3000:]
    return json.loads(html.unescape(found.group(1)))


def test_static_fallback_draws_the_same_numbers_without_our_css(static):
    assert not static["ours"]  # nothing but inline styles
    assert static["blocks"] == ["7", "12"]  # every feature, one under the other
    assert looks(static["tokens"]) == expected_tokens(7, "full")
    assert looks(static["tokensOther"]) == expected_tokens(12, "full")
    assert static["prompt"] == ["rgba(37, 99, 235, 0.6)", "rgba(220, 38, 38, 0.6)", "rgba(37, 99, 235, 0.3)",
                                "rgba(37, 99, 235, 0.6)"]
    assert static["buttons"] == 0 and static["cards"] == 2  # the ablation's card and the open chip's


def test_static_fallback_lays_out_as_the_live_view(static):
    chips = static["chips"]
    assert len(chips) == 3 and len({top for _, top, _, _ in chips}) == 1  # one row of chips
    assert all(18 <= h <= 26 for *_, h in chips)
    (x1, y1, w1, h1), (x2, y2, w2, h2) = static["cols"]  # clean and steered side by side
    assert y1 == y2 and x2 > x1 + w1 and abs(w1 - w2) <= 1
    assert len(static["figures"]) == 4 and len({top for _, top, _, _ in static["figures"]}) == 1


def test_static_screenshot_shows_the_underlines(chromium, exported, static, tmp_path):
    from PIL import Image

    shot = tmp_path / "static.png"
    chromium.run(tmp_path / "profile", f"--window-size={WIDTH + 100},2600", "--virtual-time-budget=10000",
                 f"--screenshot={shot}", exported.as_uri())
    image = Image.open(shot).convert("RGB")
    tokens = {t["text"]: t for t in static["tokens"]}
    assert _underline_pixels(image, tokens[" cat"]["box"], (37, 99, 235)) > 20  # -0.8, the largest: 4 px blue
    assert _underline_pixels(image, tokens["<script>"]["box"], (220, 38, 38)) > 10  # +0.4: 2 px red
