"""Render widgets/token_heatmap.js for real in headless Chromium.

A page imports the ES module, renders each widget's state through a fake anywidget
model (get/on/off) and, next to it, the widget's static `to_html()` inside a shadow
root (so the widget CSS cannot reach it). The page then writes what it sees as JSON
into the DOM, which `chromium --dump-dom` hands back: per element its class, text,
tooltip, computed styles and box relative to the widget root.
"""

from __future__ import annotations

import functools
import html
import http.server
import json
import re
import shutil
import subprocess
import threading
from pathlib import Path

import pytest
from fake_widget_model import FAKE_MODEL

from workbench.widgets import FeatureContexts, TokenHeatmap
from workbench.widgets._frontend import FRONTEND

PAGE = """<!doctype html>
<html><head><meta charset="utf-8"><link rel="stylesheet" href="token_heatmap.css"></head>
<body>
<div id="views"></div>
<pre id="result">pending</pre>
<script type="module">
import widget from "./token_heatmap.js";

const CASES = __CASES__;
const STYLE_KEYS = [
  "background-color", "color", "font-family", "font-size", "font-weight", "line-height",
  "display", "white-space", "opacity", "padding-top", "padding-left", "margin-bottom",
  "width", "border-top-left-radius", "column-gap", "flex-grow", "text-overflow", "text-align",
  "overflow-x",
];

__FAKE_MODEL__

function describe(root) {
  const origin = root.getBoundingClientRect();
  return [root, ...root.querySelectorAll("*")].map((node) => {
    const style = getComputedStyle(node);
    const box = node.getBoundingClientRect();
    return {
      tag: node.tagName.toLowerCase(),
      cls: node.className,
      text: node.children.length ? null : node.textContent,
      tip: node.title,
      style: Object.fromEntries(STYLE_KEYS.map((k) => [k, style.getPropertyValue(k)])),
      box: [box.x - origin.x, box.y - origin.y, box.width, box.height].map(Math.round),
    };
  });
}

const results = [];
for (const { state, staticHtml, update } of CASES) {
  const el = document.createElement("div");
  const host = document.createElement("div");
  document.getElementById("views").append(el, host);
  const model = fakeModel(structuredClone(state));
  const cleanup = widget.render({ model, el });
  const shadow = host.attachShadow({ mode: "open" });
  shadow.innerHTML = staticHtml;
  const result = {
    js: describe(el.firstElementChild),
    static: describe(shadow.firstElementChild),
    rootCount: el.children.length,
  };
  if (update) {
    model.set(update.key, update.value);
    result.updated = describe(el.firstElementChild);
    result.rootCountAfterUpdate = el.children.length;
  }
  const before = model.listeners();
  cleanup();
  result.listeners = [before, model.listeners()];
  results.push(result);
}
document.getElementById("result").textContent = JSON.stringify(results);
</script>
</body></html>
"""


class _QuietHandler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, format: str, *args: object) -> None:
        pass


def _serve_and_dump(chromium, folder: Path) -> subprocess.CompletedProcess:
    """Serve `folder` on a throwaway 127.0.0.1 port and dump its index.html's DOM."""
    handler = functools.partial(_QuietHandler, directory=str(folder))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        url = f"http://127.0.0.1:{server.server_address[1]}/index.html"
        return chromium.run(folder / "profile", "--dump-dom", url)
    finally:
        server.shutdown()
        server.server_close()


def _case(widget, update: dict | None = None) -> dict:
    """What the page needs for one widget: the state the front end would receive, the
    static HTML, and optionally one trait change to apply after the first render."""
    state = {k: v for k, v in widget.get_state().items() if k not in ("_esm", "_css")}
    return {"state": state, "staticHtml": widget.to_html(), "update": update}


CASES = {
    "colours": _case(
        TokenHeatmap(
            ["<script>", " cat", "\n", "", "&amp;", "  two"],
            [0.0, 1.0, 2.0, 4.0, 8.0, -1.0],
            title="feature <7>",
        )
    ),
    "heatmap": _case(
        TokenHeatmap(
            ["The", " quick", "\t", "<b>", " fox", "\n", "jumps"],
            [0.0, 0.0625, 1.5, 3.0, 0.3, 2.2, 0.7],
            max_value=2.0,
            color="#3a7",
            title="one sequence",
        )
    ),
    "contexts": _case(
        FeatureContexts.from_lists(
            [["a", " b", " c"], [" long"] * 40, ["x"]],
            [[0.1, 0.2, 0.9], [0.5] * 40, [0.0]],
            labels=["doc 12, pos 3", "a very long label that does not fit in the header", ""],
            title="top contexts",
        )
    ),
    "unlabelled": _case(
        FeatureContexts(
            rows=[{"tokens": ["a", "\n", "b"], "values": [2.0, 1.0, 0.0]}, {"tokens": [], "values": []}],
            color="rgb(0, 0, 255)",
        )
    ),
    "update": _case(
        FeatureContexts.from_lists([["a", "b"]], [[1.0, 2.0]], labels=["first"]),
        update={
            "key": "rows",
            "value": [
                {"tokens": ["x", "y", "z"], "values": [3.0, 0.0, 1.5], "label": "second"},
                {"tokens": ["w"], "values": [0.75], "label": ""},
            ],
        },
    ),
}


@pytest.fixture(scope="module")
def rendered(chromium, tmp_path_factory) -> dict[str, dict]:
    """Every case rendered in one Chromium run, by name."""
    folder = tmp_path_factory.mktemp("page")
    for name in ("token_heatmap.js", "token_heatmap.css"):
        shutil.copy(FRONTEND / name, folder / name)
    cases = json.dumps(list(CASES.values())).replace("</", "<\\/")
    (folder / "index.html").write_text(PAGE.replace("__FAKE_MODEL__", FAKE_MODEL).replace("__CASES__", cases), encoding="utf-8")
    run = _serve_and_dump(chromium, folder)
    found = re.search(r'<pre id="result">(.*?)</pre>', run.stdout, re.S)
    assert found, f"no result in the dumped DOM; chromium stderr:\n{run.stderr[-3000:]}"
    text = html.unescape(found.group(1))
    assert text != "pending", f"the page script did not finish; stderr:\n{run.stderr[-3000:]}"
    return dict(zip(CASES, json.loads(text)))


def test_js_renders_one_span_per_token_with_its_colour(rendered):
    result = rendered["colours"]
    spans = [e for e in result["js"] if e["cls"] == "wb-tok"]
    assert [s["text"] for s in spans] == ["<script>", " cat", "⏎", "∅", "&amp;", "  two"]
    assert [s["style"]["background-color"] for s in spans] == [
        "rgba(255, 140, 0, 0)",
        "rgba(255, 140, 0, 0.13)",  # 1/8 = 0.125 rounds half-up, as in the static HTML
        "rgba(255, 140, 0, 0.25)",
        "rgba(255, 140, 0, 0.5)",
        "rgb(255, 140, 0)",
        "rgba(255, 140, 0, 0)",
    ]
    assert spans[0]["tip"] == '"<script>": 0.000'
    assert spans[2]["tip"] == '"\\n": 2.000'
    assert [e["text"] for e in result["js"] if e["cls"] == "wb-title"] == ["feature <7>"]
    assert result["rootCount"] == 1


@pytest.mark.parametrize("name", ["colours", "heatmap", "contexts", "unlabelled"])
def test_js_and_static_html_look_the_same(rendered, name):
    """Same elements, text, tooltips, computed styles and boxes (to the pixel)."""
    result = rendered[name]
    assert len(result["js"]) == len(result["static"]) > 1
    for js, static in zip(result["js"], result["static"]):
        assert js == static


def test_js_leaves_out_the_label_column_when_no_row_has_a_label(rendered):
    classes = [e["cls"] for e in rendered["unlabelled"]["js"]]
    assert "wb-label" not in classes
    assert classes.count("wb-max") == 2 and classes.count("wb-tok") == 3


def test_js_rerenders_on_change_and_cleans_up(rendered):
    result = rendered["update"]
    heads = [e["text"] for e in result["updated"] if e["cls"] in ("wb-max", "wb-label")]
    assert heads == ["max 3.000", "second", "max 0.750", ""]
    spans = [e for e in result["updated"] if e["cls"] == "wb-tok"]
    assert [s["text"] for s in spans] == ["x", "y", "z", "w"]
    assert spans[2]["style"]["background-color"] == "rgba(255, 140, 0, 0.5)"
    assert result["rootCountAfterUpdate"] == 1
    before, after = result["listeners"]
    assert before > 0 and after == 0
