"""Feature widgets: FeatureCard and FeatureBrowser state, validation and static HTML.

`SyntheticStats` stands in for workbench.features.FeatureStats (table, card, search,
n_features, meta) with CARD dicts shaped as the contract says, so these tests (and the
browser tests, which import it) need no model, store or dictionary. The front ends are
rendered in Chromium by tests/browser/test_feature_widgets_render.py and
tests/browser/test_feature_site.py.
"""

from __future__ import annotations

import bisect
import html
import math
import random
import re

import pytest
import traitlets

HOSTILE = ["<script>alert(1)</script>", "\n", "&amp;", "", ' "q"', "\t", "'", "</div>"]
"""Tokens that must come out escaped and visible."""


def _vocabulary(size: int, rng: random.Random) -> list[str]:
    """Token strings ranked by frequency: short ones first, as in a real vocabulary."""
    letters = "etaoinshrdlucmfwypvbgkjqxz"
    words = [" the", ",", ".", " of", " and", " to", " a", " in", "\n", " is", *HOSTILE]
    seen = set(words)
    while len(words) < size:
        n = 1 + min(8, int(math.log2(len(words) + 2) / 1.6))
        word = ("" if rng.random() < 0.35 else " ") + "".join(rng.choice(letters) for _ in range(n))
        if word not in seen:
            seen.add(word)
            words.append(word)
    return words


class SyntheticStats:
    """A stand-in for FeatureStats: `n_features` features whose CARDs have `groups` example
    groups (a top group then intervals) of `per_group` examples, each a window of
    `before` + 1 + `after` tokens drawn Zipf-like from a `vocab`-token vocabulary."""

    def __init__(self, n_features: int = 24, *, per_group: int = 10, groups: int = 9, before: int = 12,
                 after: int = 4, vocab: int = 50_000, logits: bool = True, seed: int = 0) -> None:
        self.n_features, self.n_tokens = n_features, 150_000
        self.per_group, self.groups, self.before, self.after, self.logits = per_group, groups, before, after, logits
        self.seed = seed
        rng = random.Random(seed)
        self.vocab = _vocabulary(vocab, rng)
        self._cum = list(__import__("itertools").accumulate(1 / (r + 2.7) ** 1.07 for r in range(vocab)))
        self.meta = {"dictionary_label": f"topk SAE, blocks.15.hook_mlp_out, {n_features} features", "n_tokens": self.n_tokens}

    def _rng(self, feature: int) -> random.Random:
        return random.Random(self.seed * 1_000_003 + feature)

    def _scalars(self, feature: int) -> dict:
        rng = self._rng(feature)
        density = min(0.5, math.exp(rng.gauss(-5.5, 1.5)))
        fire = max(1, round(density * self.n_tokens))
        top = rng.lognormvariate(1.5, 0.6)
        preferred = [self.vocab[rng.randrange(40, 3000)] for _ in range(5)]
        if feature % 7 == 3:
            preferred[0] = HOSTILE[feature % len(HOSTILE)]
        return {"density": fire / self.n_tokens, "fire_count": fire, "max": top, "mean_firing": top * rng.uniform(0.15, 0.4),
                "skew": rng.uniform(0.5, 6), "kurtosis": rng.uniform(2, 40), "preferred": preferred,
                "explanation": f"mentions of {preferred[0].strip() or 'blank'}" if feature % 3 == 0 else ""}

    def table(self) -> list[dict]:
        rows = []
        for f in range(self.n_features):
            s = self._scalars(f)
            rows.append({"feature": f, **{k: s[k] for k in ("density", "fire_count", "max", "mean_firing", "skew", "kurtosis")},
                         "top_tokens": s["preferred"], "top_logits": s["preferred"][::-1] if self.logits else [],
                         "explanation": s["explanation"]})
        return rows

    def _tokens(self, rng: random.Random, n: int) -> list[str]:
        total = self._cum[-1]
        return [self.vocab[min(bisect.bisect(self._cum, rng.random() * total), len(self.vocab) - 1)] for _ in range(n)]

    def _example(self, rng: random.Random, s: dict, lo: float, hi: float) -> dict:
        tokens = self._tokens(rng, self.before + 1 + self.after)
        focus = self.before if rng.random() < 0.8 else rng.randrange(len(tokens))
        tokens[focus] = rng.choice(s["preferred"])
        values = [0.0] * len(tokens)
        for i in rng.sample(range(len(tokens)), k=min(len(tokens), rng.choice((0, 1, 1, 2, 3)))):
            values[i] = rng.uniform(0, hi * 0.6)
        values[focus] = rng.uniform(lo, hi)
        return {"tokens": tokens, "values": values, "focus": focus, "activation": values[focus],
                "row": rng.randrange(self.n_tokens), "context": rng.randrange(4000), "position": rng.randrange(20, 1024)}

    def card(self, feature: int) -> dict:
        if not 0 <= feature < self.n_features:
            raise IndexError(f"feature {feature} is outside 0..{self.n_features - 1}")
        s, rng = self._scalars(feature), self._rng(feature)
        top = s["max"]
        bins = 40
        lo = top / 10 ** rng.uniform(1.5, 3)
        edges = [lo * (top / lo) ** (i / bins) for i in range(bins + 1)]
        peak = rng.uniform(0.2, 0.6)
        counts = [max(0, round(s["fire_count"] * 0.08 * math.exp(-((i / bins - peak) ** 2) / 0.03) * rng.uniform(0.7, 1.3)))
                  for i in range(bins)]
        groups = [{"kind": "top", "label": "top activations",
                   "examples": sorted((self._example(rng, s, top * 0.7, top) for _ in range(self.per_group)),
                                      key=lambda e: -e["activation"])}]
        cuts = [top * (1 - k / (self.groups - 1)) for k in range(self.groups)]
        for hi, lo_ in zip(cuts, cuts[1:]):
            share = rng.uniform(0.01, 0.4)
            groups.append({"kind": "interval", "label": f"interval {lo_:.3f}-{hi:.3f} contains {100 * share:.1f}%",
                           "lo": lo_, "hi": hi, "fraction": share,
                           "examples": [self._example(rng, s, max(lo_, 1e-3), hi) for _ in range(self.per_group)]})
        logits = None
        if self.logits:
            def entries(sign: int) -> list[dict]:
                vals = sorted((rng.uniform(0.2, 1.2) for _ in range(10)), reverse=True)
                return [{"token": t, "value": sign * v} for t, v in zip(self._tokens(rng, 10), vals)]
            lb = 60
            logits = {"top": entries(1), "bottom": entries(-1),
                      "histogram": {"edges": [-1.3 + 2.6 * i / lb for i in range(lb + 1)],
                                    "counts": [round(5000 * math.exp(-((i - lb / 2 + 3) ** 2) / 40)) for i in range(lb)]},
                      "method": "direct path: W_U (gamma * d) through the final norm's weight, no norm scale"}
        return {"feature": feature, "title": f"feature {feature}", "dictionary": self.meta["dictionary_label"],
                "explanation": s["explanation"], "n_tokens": self.n_tokens, "fire_count": s["fire_count"],
                "density": s["density"], "max": top, "mean_firing": s["mean_firing"], "skew": s["skew"],
                "kurtosis": s["kurtosis"], "histogram": {"edges": edges, "counts": counts}, "logits": logits,
                "groups": groups}

    def search(self, text: str) -> list[int]:
        text = text.lower()
        return [f for f in range(self.n_features)
                if any(text in "".join(e["tokens"]).lower() for g in self.card(f)["groups"] for e in g["examples"])]


@pytest.fixture
def stats() -> SyntheticStats:
    return SyntheticStats()


def tiny_card(**overrides) -> dict:
    """A small valid CARD with hostile tokens everywhere text goes."""
    card = {
        "feature": 7, "title": "feature <7>", "dictionary": "topk SAE & friends", "explanation": "fires on <b>",
        "n_tokens": 150_000, "fire_count": 1230, "density": 0.0082, "max": 12.3, "mean_firing": 2.1,
        "skew": 3.2, "kurtosis": 14.0,
        "histogram": {"edges": [0.1, 1.0, 10.0, 100.0], "counts": [5, 0, 2]},
        "logits": {"top": [{"token": "<script>", "value": 0.81}, {"token": " the", "value": 0.5}],
                   "bottom": [{"token": "\n", "value": -0.77}],
                   "histogram": {"edges": [-1.0, 0.0, 1.0], "counts": [3, 4]}, "method": "direct path"},
        "groups": [
            {"kind": "top", "label": "top activations", "examples": [
                {"tokens": ["a", "<script>", "\n"], "values": [0.0, 4.0, 1.0], "focus": 1, "activation": 4.0,
                 "row": 3, "context": 12, "position": 30}]},
            {"kind": "interval", "label": "interval 0.000-1.230 contains 61.2%", "lo": 0.0, "hi": 1.23,
             "fraction": 0.612, "examples": [
                {"tokens": ["&amp;", ""], "values": [0.5, 2.0], "focus": 1, "activation": 2.0, "row": 4,
                 "context": 2, "position": 0}]},
        ],
    }
    card.update(overrides)
    return card


def spans_text(markup: str) -> list[str]:
    """The displayed text of each example token, unescaped."""
    rows = re.findall(r'<div class="wf-ex"[^>]*>.*?</span></div>', markup)
    return [html.unescape(t) for row in rows for t in re.findall(r"<span[^>]*title=[^>]*>([^<]*)</span>", row)]


# --- FeatureCard ------------------------------------------------------------------------


def test_card_holds_its_card_and_draws_it(stats):
    from workbench.widgets import FeatureCard

    w = FeatureCard.from_stats(stats, 3)
    assert w.card["feature"] == 3 and w.color == "#ff8c00"
    assert FeatureCard.class_traits()["card_html"].metadata.get("sync") is True
    assert "sync" not in FeatureCard.class_traits()["card"].metadata  # the markup travels, not the data
    markup = w.card_html
    assert markup.count('<svg class="wf-svg"') == 2
    assert markup.count("<code") == 20 and markup.count('<div class="wf-ex"') == 90
    assert markup.count("<details") == stats.groups and "<script" not in markup
    assert repr(w).startswith("FeatureCard(feature 3: density ")
    assert w.to_html().startswith('<div class="wf-card" style="font-family') and "wf-ex" in w.to_html()


def test_card_shows_statistics_readably():
    from workbench.widgets.card import card_html

    markup = card_html(tiny_card(), inline=False)
    assert "<b>0.82%</b><span>density · 1 in 122 tokens</span>" in markup
    assert "<b>1,230</b><span>fires of 150,000 tokens</span>" in markup
    for value, key in [("12.3", "max activation"), ("2.10", "mean when firing"), ("3.20", "skew"), ("14.0", "kurtosis")]:
        assert f"<b>{value}</b><span>{key}</span>" in markup
    assert '<div class="wf-expl">fires on &lt;b&gt;</div>' in markup
    assert "<b>feature &lt;7&gt;</b><span>topk SAE &amp; friends</span>" in markup
    assert "<summary>interval 0.000-1.230 contains 61.2%<span>1 example</span></summary>" in markup


def test_card_escapes_and_shows_hostile_tokens():
    from workbench.widgets.card import card_html

    for inline in (True, False):
        markup = card_html(tiny_card(), inline=inline)
        assert "<script" not in markup and "fires on &lt;b&gt;" in markup
        assert spans_text(markup) == ["a", "<script>", "⏎", "&amp;", "∅"]
        assert 'title="&quot;\\n&quot;: 1.000"' in markup  # hover: the token quoted, and its value
        assert 'title="&quot;&lt;script&gt;&quot;: 4.000"' in markup
        codes = [html.unescape(c) for c in re.findall(r"<code[^>]*>([^<]*)</code>", markup)]
        assert codes == ["<script>", " the", "⏎"]


def test_card_colours_by_the_largest_example_value_and_outlines_the_focus():
    from workbench.widgets.card import card_html

    markup = card_html(tiny_card(), inline=False)
    assert re.findall(r"background-color: (rgba\([^)]*\))", markup) == [
        "rgba(255, 140, 0, 1)", "rgba(255, 140, 0, 0.25)", "rgba(255, 140, 0, 0.13)", "rgba(255, 140, 0, 0.5)"]
    assert re.findall(r'<span class="wf-focus"[^>]*>([^<]*)<', markup) == ["&lt;script&gt;", "∅"]
    assert '<b title="context 12, position 30">4.000</b>' in markup


def test_card_histograms_store_their_bins_for_the_read_out():
    from workbench.widgets.card import card_html

    markup = card_html(tiny_card(), inline=False)
    act, logit = re.findall(r"<svg [^>]*>.*?</svg>", markup)
    assert 'data-lo="0.1" data-hi="100" data-c="5 0 2" data-log="1"' in act  # equal bins on a log axis
    assert act.count("<path") == 1 and logit.count("<path") == 2  # logits: red below 0, blue above
    assert 'fill="#dc2626"' in logit and 'fill="#2563eb"' in logit
    ragged = card_html(tiny_card(histogram={"edges": [0.1, 0.2, 10.0], "counts": [1, 2]}), inline=False)
    assert 'data-e="0.1 0.2 10"' in ragged and 'data-lo="' not in ragged.split("Logit effects")[0]
    ticks = re.findall(r'<span style="left: ([\d.]+)%[^"]*">([^<]*)</span>', markup)
    assert ticks[:4] == [("0.0", "0.10"), ("33.3", "1.0"), ("66.7", "10"), ("100.0", "100")]


def test_card_without_logits_or_examples_says_so():
    from workbench.widgets.card import card_html

    markup = card_html(tiny_card(logits=None, groups=[]), inline=False)
    assert "none: this hook point does not write to the residual stream" in markup
    assert "no examples: the feature never fired" in markup and markup.count("<svg") == 1


def test_card_of_a_feature_that_never_fires():
    from workbench.widgets.card import card_html

    silent = tiny_card(fire_count=0, density=0.0, max=0.0, mean_firing=0.0, skew=0.0, kurtosis=0.0,
                       histogram={"edges": [], "counts": []}, groups=[])
    markup = card_html(silent, inline=False)
    assert "<b>0%</b><span>density · never fires</span>" in markup
    assert "no values" in markup and "no examples: the feature never fired" in markup


def test_card_static_markup_leans_on_the_stylesheet_unless_inline():
    from workbench.widgets.card import card_html

    lean = card_html(tiny_card(), inline=False)
    styles = re.findall(r'style="([^"]*)"', lean)
    assert styles and all(s.startswith(("background-color:", "left:")) for s in styles)
    assert len(card_html(tiny_card(), inline=True)) > 3 * len(lean)


@pytest.mark.parametrize(
    "change, message",
    [
        (lambda c: c.pop("groups"), r"card is missing \['groups'\]"),
        (lambda c: c.update(density=float("nan")), r"card\['density'\] must be finite"),
        (lambda c: c.update(fire_count=1.5), r"card\['fire_count'\] must be an int"),
        (lambda c: c.update(title=3), r"card\['title'\] must be a str"),
        (lambda c: c["histogram"].update(counts=[1, 2]), r"card\['histogram'\] needs one more edge than counts"),
        (lambda c: c["histogram"].update(edges=[1.0, 0.5, 2.0, 3.0]), r"\['edges'\] must increase strictly"),
        (lambda c: c["logits"]["top"].append({"token": 3, "value": 1.0}), r"\['top'\]\[2\]\['token'\] must be a str"),
        (lambda c: c["groups"][0]["examples"][0].update(values=[1.0]), r"has 3 tokens but 1 values"),
        (lambda c: c["groups"][1]["examples"][0].update(focus=2), r"\['groups'\]\[1\]\['examples'\]\[0\]\['focus'\] is 2"),
        (lambda c: c["groups"][0]["examples"][0].update(tokens=["a", 2, "c"]), r"\['tokens'\] must be a list of str"),
        (lambda c: c["groups"][0].pop("label"), r"card\['groups'\]\[0\] is missing \['label'\]"),
    ],
)
def test_bad_cards_are_refused_with_the_field_named(change, message):
    from workbench.widgets import FeatureCard
    from workbench.widgets.card import check_card

    card = tiny_card()
    change(card)
    with pytest.raises(ValueError, match=message):
        check_card(card)
    with pytest.raises(traitlets.TraitError, match=message):
        FeatureCard(card)


def test_card_needs_a_card_and_keeps_the_last_good_one():
    from workbench.widgets import FeatureCard

    with pytest.raises(TypeError, match="FeatureCard needs a card"):
        FeatureCard()
    w = FeatureCard(tiny_card())
    with pytest.raises(traitlets.TraitError):
        w.card = tiny_card(max=float("inf"))
    assert w.card["max"] == 12.3 and "12.3" in w.card_html
    w.card = tiny_card(title="feature 8")
    assert "<b>feature 8</b>" in w.card_html


def test_card_mimebundle_carries_widget_view_and_static_html():
    from workbench.widgets import FeatureCard

    w = FeatureCard(tiny_card())
    data, _ = w._repr_mimebundle_()
    assert data["application/vnd.jupyter.widget-view+json"]["model_id"] == w.model_id
    assert data["text/html"] == w.to_html() and 'style="' in data["text/html"]
    assert "<script" not in data["text/html"]
    w.close()


@pytest.mark.parametrize("v, text", [(0.0082, "0.82%"), (0.5, "50%"), (1e-5, "0.001%"), (0.000123, "0.0123%"), (1.0, "100%")])
def test_percentages(v, text):
    from workbench.widgets.card import _percent

    assert _percent(v) == text


@pytest.mark.parametrize("v, text", [(12.3, "12.3"), (2.1, "2.10"), (1234.5, "1,234"), (0.01234, "0.0123"),
                                     (9.9996, "10.0"), (-3.2, "-3.20"), (0, "0"), (1e-6, "1.00e-06")])
def test_significant_figures(v, text):
    from workbench.widgets.card import _sig

    assert _sig(v) == text


# --- styles and front-end files ----------------------------------------------------------


def _css_rules(name: str) -> dict[str, list[str]]:
    """Selector -> sorted declarations of a widgets/ CSS file, above its behaviour line."""
    from workbench.widgets._frontend import FRONTEND

    css = (FRONTEND / name).read_text().split("/* ---- behaviour")[0]
    css = re.sub(r"/\*.*?\*/", "", css, flags=re.S)
    return {sel.strip(): sorted(" ".join(d.split()) for d in body.split(";") if d.strip())
            for sel, body in re.findall(r"([^{}]+)\{([^}]*)\}", css)}


@pytest.mark.parametrize("module, css", [("card", "feature_card.css"), ("browser", "feature_browser.css")])
def test_inline_styles_match_the_css_files(module, css):
    """The static fallback inlines, rule by rule, the CSS the live widget and the site load."""
    import importlib

    styles = importlib.import_module(f"workbench.widgets.{module}")._STYLES
    inline = {sel: sorted(d.strip() for d in body.split(";")) for sel, body in styles.items()}
    assert _css_rules(css) == inline


def test_bundles_are_one_module_or_one_classic_script():
    from workbench.widgets.card import bundle_js

    es = bundle_js("feature_browser.js")
    assert not re.search(r"^import ", es, re.M) and es.rstrip().endswith("export default { render };")
    assert "const _feature_card = (() => {" in es and "const { enhanceCard } = _feature_card;" in es
    assert re.findall(r"^export (?:default|function (\w+))", es, re.M) == ["clickAction", ""]  # and the default
    classic = bundle_js("feature_site.js", classic=True)
    assert not re.search(r"^\s*(import|export) ", classic, re.M)
    assert "const _token_heatmap = (() => {" in classic and "window.wfSite" in classic


# --- FeatureBrowser ---------------------------------------------------------------------


def row_ids(markup: str) -> list[int]:
    return [int(f) for f in re.findall(r'<div class="wf-row(?: wf-sel)?"[^>]* data-f="(\d+)"', markup)]


def test_browser_lists_sorts_and_pages(stats):
    from workbench.widgets import FeatureBrowser

    b = FeatureBrowser(stats, page_size=10)
    assert (b.n_matches, b.page, b.selected) == (24, 0, -1) and row_ids(b.table_html) == list(range(10))
    assert "1–10 of 24 features · page 1 of 3" in b.table_html
    b.page = 2
    assert row_ids(b.table_html) == list(range(20, 24))
    b.page = 99
    assert b.page == 2  # clamped
    b.sort_by, b.descending = "density", True
    densities = [r["density"] for r in stats.table()]
    assert b.page == 0 and b.matches() == sorted(range(24), key=lambda f: (-densities[f], f))
    assert 'data-sort="density" title="sort by fraction of tokens it fires on">density ↓' in b.table_html
    with pytest.raises(traitlets.TraitError):
        b.sort_by = "colour"


def test_browser_searches_ids_text_and_examples(stats):
    from workbench.widgets import FeatureBrowser

    b = FeatureBrowser(stats)
    b.query = "#5"
    assert b.matches() == [5]
    token = stats.table()[8]["top_tokens"][1].strip()
    b.query = token.upper()  # any case
    assert 8 in b.matches() and f"matching (of 24 features)" in b.table_html
    b.query = "mentions of"
    assert b.matches() == [r["feature"] for r in stats.table() if r["explanation"]]
    word = stats.card(11)["groups"][2]["examples"][0]["tokens"][0].strip()
    b.query = word
    assert 11 in b.matches()  # through stats.search: the text is in its examples
    b.query = "no such thing anywhere"
    assert b.matches() == [] and "no feature matches" in b.table_html
    b.query = ""
    assert b.n_matches == 24


def test_browser_selection_draws_the_card_and_marks_the_row(stats):
    from workbench.widgets import FeatureBrowser

    b = FeatureBrowser(stats)
    assert "Select a feature" in b.card_html
    b.selected = 4
    assert "<b>feature 4</b>" in b.card_html and '<div class="wf-row wf-sel" data-f="4">' in b.table_html
    with pytest.raises(traitlets.TraitError, match="no feature 99"):
        b.selected = 99
    assert b.selected == 4
    assert "FeatureBrowser(24 features, feature 4 selected)" == repr(b)


def test_browser_from_rows_and_a_card_function(stats):
    from workbench.widgets import FeatureBrowser

    rows = stats.table()[:5]
    b = FeatureBrowser(rows, card=stats.card, selected=2)
    assert "<b>feature 2</b>" in b.card_html and b.n_matches == 5
    bare = FeatureBrowser(rows, selected=1)
    assert "No card source" in bare.card_html

    def broken(f):
        raise KeyError(f)

    assert "Could not draw feature 3&#x27;s card: KeyError: 3" in FeatureBrowser(rows, card=broken, selected=3).card_html
    with pytest.raises(TypeError, match="FeatureBrowser takes FeatureStats"):
        FeatureBrowser("features")


@pytest.mark.parametrize(
    "rows, message",
    [
        ([{"feature": 1}], r"rows\[0\] is missing"),
        ([{**SyntheticStats(2).table()[0], "density": float("nan")}], r"rows\[0\]\['density'\] must be a finite"),
        (SyntheticStats(2).table() + SyntheticStats(2).table()[:1], r"rows\[2\]\['feature'\] is 0, which an earlier"),
        ([{**SyntheticStats(2).table()[0], "top_tokens": "abc"}], r"'top_tokens'\] must be a list of str"),
    ],
)
def test_browser_refuses_bad_rows(rows, message):
    from workbench.widgets import FeatureBrowser

    with pytest.raises(ValueError, match=message):
        FeatureBrowser(rows)


def test_browser_escapes_rows(stats):
    from workbench.widgets.browser import row_html

    row = {**stats.table()[0], "top_tokens": ["<script>", "\n"], "explanation": "<img src=x onerror=alert(1)>"}
    markup = row_html(row)
    assert "<script" not in markup and "<img" not in markup
    assert "<code>&lt;script&gt;</code><code>⏎</code>" in markup and "&lt;img src=x" in markup


TEXT = {"tokens": ["The", " cat", "\n", "<b>"], "per_token": [[[3, 1.5], [7, 0.25]], [], [[3, 3.0]], [[9, 2.0]]],
        "ranking": [[3, 4.5, 2], [9, 2.0, 1], [7, 0.25, 1]]}


def test_browser_shows_which_features_fire_on_a_text(stats):
    from workbench.widgets import FeatureBrowser

    b = FeatureBrowser(stats)
    assert b.text_html == ""
    b.show_text(TEXT)
    shown = [html.unescape(t) for t in re.findall(r'<span[^>]*data-i="\d+"[^>]*>([^<]*)</span>', b.text_html)]
    assert shown == ["The", " cat", "⏎", "<b>"] and "<b>" not in b.text_html.replace("<b>#", "")
    assert "coloured by how many features fire" in b.text_html
    assert re.findall(r'class="wf-tf" data-f="(\d+)"', b.text_html) == ["3", "9", "7"]  # the ranking
    b.text_token = 0
    assert "token &quot;The&quot; (position 0): 2 features fire" in b.text_html
    assert re.findall(r'class="wf-tf" data-f="(\d+)"><b>#\d+</b>.*?<em>([^<]*)</em>', b.text_html) == [("3", "1.500"), ("7", "0.250")]
    b.selected = 3  # the text is coloured by the selected feature
    assert "coloured by feature 3" in b.text_html and 'class="wf-tf wf-sel" data-f="3"' in b.text_html
    assert re.findall(r"background-color: (rgba\([^)]*\))", b.text_html)[:2] == ["rgba(255, 140, 0, 0.5)", "rgba(255, 140, 0, 1)"]
    with pytest.raises(ValueError, match="one list per token"):
        b.show_text({**TEXT, "per_token": []})


def test_browser_static_html_is_the_page_the_text_and_the_card(stats):
    from workbench.widgets import FeatureBrowser

    b = FeatureBrowser(stats, selected=2, page_size=5)
    b.show_text(TEXT)
    data, _ = b._repr_mimebundle_()
    static = data["text/html"]
    assert static == b.to_html() and row_ids(static) == [0, 1, 2, 3, 4]
    assert "<b style=" in static and "feature 2</b>" in static and "wf-ttoks" in static
    assert "<script" not in static
    b.close()


def test_browser_traits_sync_and_are_documented():
    from workbench.widgets import FeatureBrowser

    for name in ("query", "sort_by", "descending", "selected", "page", "page_size", "text_token", "n_matches",
                 "table_html", "card_html", "text_html"):
        trait = FeatureBrowser.class_traits()[name]
        assert trait.metadata.get("sync") is True and trait.help, name
