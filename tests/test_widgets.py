"""Widgets: state, validation, the static HTML fallback, and a real notebook round trip.

The front end itself is rendered in Chromium by tests/browser/test_render.py.
"""

from __future__ import annotations

import html
import json
import re
from pathlib import Path

import numpy as np
import pytest
import traitlets

from workbench.widgets import FeatureContexts, TokenHeatmap, _frontend, heatmap

WIDGET_VIEW = "application/vnd.jupyter.widget-view+json"


def backgrounds(markup: str) -> list[str]:
    return re.findall(r"background-color: (rgba\([^)]*\))", markup)


def token_spans(markup: str) -> list[str]:
    """The displayed text of each token span, unescaped."""
    return [html.unescape(s) for s in re.findall(r'<span class="wb-tok"[^>]*>(.*?)</span>', markup)]


# --- TokenHeatmap state and validation ------------------------------------------------


def test_heatmap_holds_its_traits():
    w = TokenHeatmap(["The", " cat"], [0, 2.5], title="feature 7")
    assert w.tokens == ["The", " cat"]
    assert w.values == [0.0, 2.5] and all(type(v) is float for v in w.values)
    assert (w.max_value, w.color, w.title) == (0.0, "#ff8c00", "feature 7")
    assert repr(w) == "TokenHeatmap(2 tokens, max 2.500)"


def test_heatmap_traits_sync_and_are_documented():
    for name in ("tokens", "values", "max_value", "color", "title"):
        trait = TokenHeatmap.class_traits()[name]
        assert trait.metadata.get("sync") is True, name
        assert trait.help, name
    assert FeatureContexts.class_traits()["rows"].metadata.get("sync") is True


def test_heatmap_state_is_plain_json():
    w = TokenHeatmap(["a", "b"], np.array([1.0, 2.0], dtype=np.float32), max_value=4)
    state = w.get_state()
    assert json.loads(json.dumps(state["values"])) == [1.0, 2.0]
    assert state["tokens"] == ["a", "b"] and state["max_value"] == 4.0
    assert "export default" in state["_esm"] and ".wb-tok" in state["_css"]


def test_heatmap_takes_iterables_and_arrays():
    w = TokenHeatmap(("a", "b"), np.array([0.5, 1.5]))
    assert w.tokens == ["a", "b"] and w.values == [0.5, 1.5]
    w.set_data(iter(["x"]), (v for v in [2.0]))
    assert w.tokens == ["x"] and w.values == [2.0]


def test_heatmap_rejects_mismatched_lengths():
    with pytest.raises(traitlets.TraitError, match="same length; got 1 tokens and 2 values"):
        TokenHeatmap(["a"], [1.0, 2.0])
    w = TokenHeatmap(["a", "b"], [1.0, 2.0])
    with pytest.raises(traitlets.TraitError, match="same length"):
        w.tokens = ["a"]
    assert w.tokens == ["a", "b"]


@pytest.mark.parametrize("bad", [float("nan"), float("inf"), -float("inf")])
def test_heatmap_rejects_non_finite_values(bad):
    with pytest.raises(traitlets.TraitError, match=r"values\[1\] is .*finite"):
        TokenHeatmap(["a", "b"], [1.0, bad])


@pytest.mark.parametrize("bad", [-1.0, float("nan"), float("inf")])
def test_heatmap_rejects_bad_max_value(bad):
    with pytest.raises(traitlets.TraitError, match="max_value"):
        TokenHeatmap(["a"], [1.0], max_value=bad)


@pytest.mark.parametrize(
    "given, stored",
    [("#FF8C00", "#ff8c00"), ("#3a7", "#33aa77"), ("rgb(0, 128, 255)", "#0080ff"), (" #abcdef ", "#abcdef")],
)
def test_color_is_normalised(given, stored):
    assert TokenHeatmap(color=given).color == stored


@pytest.mark.parametrize("bad", ["orange", "#12345", "rgb(0, 0, 256)", "rgba(0, 0, 0, 0.5)", ""])
def test_color_rejects_other_forms(bad):
    with pytest.raises(traitlets.TraitError, match="color must be"):
        TokenHeatmap(color=bad)


def test_set_data_replaces_both_at_once():
    w = TokenHeatmap(["a"], [1.0])
    seen = []
    w.observe(lambda change: seen.append(change["name"]), names=["tokens", "values"])
    w.set_data(["x", "y", "z"], [0.0, 1.0, 2.0])
    assert (w.tokens, w.values) == (["x", "y", "z"], [0.0, 1.0, 2.0])
    assert sorted(seen) == ["tokens", "values"]
    with pytest.raises(traitlets.TraitError, match="same length"):
        w.set_data(["p"], [1.0, 2.0])
    assert (w.tokens, w.values) == (["x", "y", "z"], [0.0, 1.0, 2.0])  # rolled back


# --- FeatureContexts -------------------------------------------------------------------


def test_contexts_normalise_rows():
    w = FeatureContexts(rows=[{"tokens": ("a", "b"), "values": [1, 2]}, {"tokens": [], "values": []}])
    assert w.rows == [
        {"tokens": ["a", "b"], "values": [1.0, 2.0], "label": ""},
        {"tokens": [], "values": [], "label": ""},
    ]
    assert repr(w) == "FeatureContexts(2 rows)"


def test_contexts_from_lists():
    w = FeatureContexts.from_lists(
        [["a", "b"], ["c"]], [np.array([1.0, 2.0]), [3.0]], labels=["doc 1", "doc 2"], title="f"
    )
    assert [r["label"] for r in w.rows] == ["doc 1", "doc 2"]
    assert w.rows[0]["values"] == [1.0, 2.0] and w.title == "f"
    with pytest.raises(ValueError, match="2 token lists, 1 value lists and 2 labels"):
        FeatureContexts.from_lists([["a"], ["b"]], [[1.0]], labels=["x", "y"])


@pytest.mark.parametrize(
    "row, message",
    [
        ({"tokens": ["a"]}, r"rows\[0\] must have keys .*missing \['values'\]"),
        ({"tokens": ["a"], "vals": [1.0]}, r"missing \['values'\]; unexpected \['vals'\]"),
        ({"tokens": ["a"], "values": [1.0], "colour": "red"}, r"unexpected \['colour'\]"),
        ({"tokens": [1], "values": [1.0]}, r"rows\[0\]\['tokens'\] must be a list of str"),
        ({"tokens": "ab", "values": [1.0, 2.0]}, r"'tokens'\] must be a list of str"),
        ({"tokens": ["a"], "values": ["1"]}, r"'values'\] must be a list of floats"),
        ({"tokens": ["a", "b"], "values": [1.0]}, r"2 tokens but 1 values"),
        ({"tokens": ["a"], "values": [float("nan")]}, r"rows\[0\]\['values'\]\[0\] is nan"),
        ({"tokens": ["a"], "values": [1.0], "label": 3}, r"'label'\] must be a str"),
    ],
)
def test_contexts_reject_bad_rows(row, message):
    with pytest.raises(traitlets.TraitError, match=message):
        FeatureContexts(rows=[row])


# --- formatting shared with the front end ----------------------------------------------


def test_display_token_makes_whitespace_visible():
    assert heatmap.display_token(" the") == " the"
    assert heatmap.display_token("\n\n") == "⏎⏎"
    assert heatmap.display_token("\tx\r\x00\x7f") == "⇥x␍␀␡"
    assert heatmap.display_token("") == "∅"
    assert heatmap.display_token("héllo ✓") == "héllo ✓"


def test_value_format_rounds_half_up_like_the_front_end():
    assert heatmap._fmt_value(0.0625) == "0.063"
    assert heatmap._fmt_value(2.5) == "2.500"
    assert heatmap._fmt_value(-0.0004) == "0.000"
    assert heatmap._fmt_value(-1.25) == "-1.250"
    assert heatmap._fmt_value(1234.5678) == "1234.568"


def test_alpha_is_value_over_max_clipped():
    assert [heatmap._alpha_percent(v, 8.0) for v in (-1.0, 0.0, 1.0, 4.0, 8.0, 9.0)] == [0, 0, 13, 50, 100, 100]
    assert heatmap._alpha_percent(1.0, 0.0) == 0


# --- static HTML ------------------------------------------------------------------------


def test_html_has_one_span_per_token_with_its_colour():
    w = TokenHeatmap(["a", " b", "\n", "c"], [0.0, 1.0, 2.0, 4.0], title="feature 7")
    markup = w.to_html()
    assert token_spans(markup) == ["a", " b", "⏎", "c"]
    assert backgrounds(markup) == [
        "rgba(255, 140, 0, 0)",
        "rgba(255, 140, 0, 0.25)",
        "rgba(255, 140, 0, 0.5)",
        "rgba(255, 140, 0, 1)",
    ]
    assert ">feature 7</div>" in markup
    assert 'title="&quot;\\n&quot;: 2.000"' in markup  # hover: the token, quoted, and its value
    assert "<script" not in markup and "class=\"wb-max\"" not in markup


def test_html_fixed_max_clips_and_colour_applies():
    w = TokenHeatmap(["a", "b", "c"], [-1.0, 1.0, 5.0], max_value=2.0, color="#0000ff")
    assert backgrounds(w.to_html()) == ["rgba(0, 0, 255, 0)", "rgba(0, 0, 255, 0.5)", "rgba(0, 0, 255, 1)"]


def test_html_all_zero_values_get_no_colour():
    assert backgrounds(TokenHeatmap(["a", "b"], [0.0, 0.0]).to_html()) == ["rgba(255, 140, 0, 0)"] * 2


def test_html_escapes_tokens_title_and_labels():
    evil = '<script>alert("x")</script>'
    w = TokenHeatmap([evil, "&amp;", "'"], [1.0, 2.0, 3.0], title=evil)
    markup = w.to_html()
    assert "<script" not in markup
    assert token_spans(markup) == [evil, "&amp;", "'"]
    assert "&lt;script&gt;alert(&quot;x&quot;)&lt;/script&gt;</div>" in markup
    contexts = FeatureContexts.from_lists([["a"]], [[1.0]], labels=[evil]).to_html()
    assert "<script" not in contexts and "&lt;script&gt;" in contexts


def test_html_contexts_share_one_scale_and_show_row_max():
    w = FeatureContexts.from_lists([["a", "b"], ["c"]], [[1.0, 2.0], [4.0]], labels=["doc 1", ""])
    markup = w.to_html()
    assert backgrounds(markup) == ["rgba(255, 140, 0, 0.25)", "rgba(255, 140, 0, 0.5)", "rgba(255, 140, 0, 1)"]
    assert re.findall(r'class="wb-max"[^>]*>([^<]*)<', markup) == ["max 2.000", "max 4.000"]
    assert re.findall(r'class="wb-label"[^>]*>([^<]*)<', markup) == ["doc 1", ""]
    unlabelled = FeatureContexts.from_lists([["a"]], [[1.0]]).to_html()
    assert 'class="wb-label"' not in unlabelled


def test_mimebundle_carries_widget_view_and_static_html():
    w = TokenHeatmap(["a", "b"], [1.0, 2.0])
    data, metadata = w._repr_mimebundle_()
    assert data[WIDGET_VIEW]["model_id"] == w.model_id
    assert data["text/html"] == w.to_html()
    assert data["text/plain"] == repr(w)
    w.close()


def test_inline_styles_match_the_css_file():
    """The static fallback inlines, class by class, the rules of token_heatmap.css."""
    css = (_frontend.FRONTEND / "token_heatmap.css").read_text()
    css = re.sub(r"/\*.*?\*/", "", css, flags=re.S)
    rules = {
        name: sorted(" ".join(d.split()) for d in body.split(";") if d.strip())
        for name, body in re.findall(r"\.(wb-[\w-]+)\s*\{([^}]*)\}", css)
    }
    inline = {name: sorted(d.strip() for d in style.split(";")) for name, style in heatmap._STYLES.items()}
    assert rules == inline


# --- packaging: where the front-end files are found -------------------------------------


def test_front_end_found_in_checkout_or_wheel(tmp_path, monkeypatch):
    assert _frontend.FRONTEND.name == "widgets" and (_frontend.FRONTEND / "token_heatmap.js").is_file()
    assert str(TokenHeatmap._esm) == (_frontend.FRONTEND / "token_heatmap.js").read_text()

    package = tmp_path / "workbench"
    (package / "_widgets").mkdir(parents=True)
    (package / "_widgets" / "token_heatmap.js").write_text("export default {}")
    (tmp_path / "widgets").mkdir()
    (tmp_path / "widgets" / "token_heatmap.js").write_text("export default {}")
    monkeypatch.setattr(_frontend, "__file__", str(package / "widgets" / "_frontend.py"))
    assert _frontend.frontend_dir() == package / "_widgets"  # the wheel layout wins

    (package / "_widgets" / "token_heatmap.js").unlink()
    assert _frontend.frontend_dir() == tmp_path / "widgets"

    (tmp_path / "widgets" / "token_heatmap.js").unlink()
    with pytest.raises(FileNotFoundError, match="cannot find its front-end files.*_widgets.*widgets"):
        _frontend.frontend_dir()


# --- a real notebook: papermill, then nbconvert to HTML ---------------------------------

NOTEBOOK_CELL = """\
from workbench.widgets import FeatureContexts, TokenHeatmap
display(TokenHeatmap(["<b>", " cat", "\\n", " sat"], [0.0, 1.0, 2.0, 4.0], title="feature 7"))
FeatureContexts.from_lists([["x", " y"]], [[3.0, 1.5]], labels=["doc 1"], color="#1f77b4")
"""


def test_executed_notebook_and_its_html_export_show_the_heatmap(tmp_path, monkeypatch):
    """Run a notebook with workbench.report and export it with nbconvert: the HTML shows the
    heatmap (spans and colours) with no kernel and no JavaScript.

    nbconvert draws the widget view (JavaScript from a CDN) for widgets whose state the
    notebook stores, which papermill does by default; execute_notebook stores none.
    """
    import nbformat
    from nbconvert import HTMLExporter

    from workbench.report import execute_notebook

    repo = Path(heatmap.__file__).resolve().parents[2]
    monkeypatch.setenv("PYTHONPATH", str(repo))  # the kernel imports this checkout
    nb = nbformat.v4.new_notebook()
    nb.cells = [nbformat.v4.new_code_cell(NOTEBOOK_CELL)]
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    nbformat.write(nb, tmp_path / "in.ipynb")

    execute_notebook(tmp_path / "in.ipynb", tmp_path / "out.ipynb", cwd=tmp_path)
    executed = nbformat.read(tmp_path / "out.ipynb", as_version=4)
    assert "widgets" not in executed.metadata
    outputs = executed.cells[0].outputs
    assert [sorted(o["data"]) for o in outputs] == [[WIDGET_VIEW, "text/html", "text/plain"]] * 2

    exported, _ = HTMLExporter().from_filename(str(tmp_path / "out.ipynb"))
    assert WIDGET_VIEW not in exported and "html-manager" not in exported  # no widget view, no CDN
    assert token_spans(exported) == ["<b>", " cat", "⏎", " sat", "x", " y"]
    assert "&lt;b&gt;" in exported and "<b></span>" not in exported
    assert backgrounds(exported) == [
        "rgba(255, 140, 0, 0)",
        "rgba(255, 140, 0, 0.25)",
        "rgba(255, 140, 0, 0.5)",
        "rgba(255, 140, 0, 1)",
        "rgba(31, 119, 180, 1)",
        "rgba(31, 119, 180, 0.5)",
    ]
    assert "max 3.000" in exported and "doc 1" in exported
