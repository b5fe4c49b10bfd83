"""Intervention widgets: AblationView, SteeringPanel, TraitChips / Transcript, PromptHeatmap.

State, validation and static HTML, on synthetic dicts shaped as the issue-10 contract says
(`feature_ablation(...).to_dict()`, `compare_steering(...).to_dict()`, `reply_traits`,
`prompt_attribution(...).to_dict()`): no model. Their front ends are rendered in Chromium by
tests/browser/test_intervention_widgets_render.py, which imports the builders below.
"""

from __future__ import annotations

import html
import math
import re

import pytest
import traitlets
from test_feature_widgets import HOSTILE, SyntheticStats, _css_rules, tiny_card

TOKENS = ["<bos>", "The", " cat", "<script>", "\n", "", " sat", " &amp;"]
ACTS = [[0.0, 0.0], [0.5, 0.0], [4.0, 1.0], [1.0, 0.0], [0.0, 2.0], [0.0, 0.0], [2.0, 0.0], [0.0, 0.5]]
DELTA = [[0.0, 0.0], [0.01, 0.0], [-0.8, 0.3], [0.4, -0.6], [-0.1, 0.0], [0.0, 0.2], [-0.05, 0.0], [0.2, -0.004]]


def effects(method: str = "full", scale: float = 1.0, **overrides) -> dict:
    """An effects dict of features 7 and 12 on TOKENS (hostile tokens included)."""
    d = {"tokens": list(TOKENS), "features": [7, 12], "acts": [list(r) for r in ACTS],
         "delta": [[v * scale for v in r] for r in DELTA], "method": method, "titles": ["feature 7", "feature <12>"]}
    d.update(overrides)
    return d


def both() -> list[dict]:
    return [effects("full"), effects("direct", 0.5)]


def comparison(kl: float = 0.51, **overrides) -> dict:
    d = {"clean": {"prompt_ids": [0, 5], "reply_ids": [1, 2, 3], "prompt_tokens": ["Once", " <upon>"],
                   "reply_text": " The cat sat.", "reply_tokens": [" The", " cat", " sat", "."]},
         "steered": {"prompt_ids": [0, 5], "reply_ids": [1, 2, 9], "prompt_tokens": ["Once", " <upon>"],
                     "reply_text": " The cat <script>alert(1)</script>\n",
                     "reply_tokens": [" The", " cat", " <script>alert(1)</script>", "\n"]},
         "kl_next_token": kl, "steered_loglik_clean": -4.25, "clean_loglik": -1.5}
    d.update(overrides)
    return d


TRAITS = [{"feature": 3, "total": 12.5, "n_tokens": 4, "lift": 8.2}, {"feature": 5, "total": 3.25, "n_tokens": 1, "lift": None},
          {"feature": 6, "total": 6.25, "n_tokens": 3, "lift": 0.75}]


def token_styles(markup: str, cls: str = "wi-text", feature: int | None = None) -> list[tuple[str, str]]:
    """(text, style) of each token span (those with data-i) inside the first `cls` element (of
    the ablation view of `feature`, if given)."""
    if feature is not None:
        markup = re.search(rf'<div class="wi-ablation"[^>]*data-feature="{feature}".*', markup, re.S).group(0)
    inner = re.search(rf'<div class="{cls}"[^>]*>(.*?)</div>', markup, re.S).group(1)
    spans = re.findall(r'<span(?: class="[^"]*")?( style="[^"]*")? data-i="\d+"[^>]*>([^<]*)</span>', inner)
    return [(html.unescape(text), style[8:-1] if style else "") for style, text in spans]


# --- AblationView: colours and thickness follow the numbers -------------------------------


def expected_style(act: float, amax: float, delta: float, dmax: float, first: bool) -> str:
    """The token's CSS, worked out here from the rule in the docstring, not with the module's helpers."""
    parts = []
    alpha = math.floor(act / amax * 100 + 0.5) if amax > 0 else 0
    if alpha:
        parts.append(f"background-color: rgba(255, 140, 0, {'1' if alpha == 100 else alpha / 100})")
    ratio = abs(delta) / dmax if dmax > 0 else 0
    if not first and ratio >= 0.02:
        px = max(1, math.floor(4 * ratio + 0.5))
        parts.append(f"border-bottom: {px}px solid {'rgb(37, 99, 235)' if delta < 0 else 'rgb(220, 38, 38)'}")
    return "; ".join(parts)


@pytest.mark.parametrize("feature, method", [(7, "full"), (12, "full"), (7, "direct"), (12, "direct")])
def test_ablation_colours_and_underlines_follow_the_numbers(feature, method):
    from workbench.widgets import AblationView

    w = AblationView(both(), feature=feature, method=method)
    j = [7, 12].index(feature)
    scale = 1.0 if method == "full" else 0.5
    acts = [r[j] for r in ACTS]
    delta = [r[j] * scale for r in DELTA]
    dmax = max(abs(d) for d in delta[1:])
    for markup in (w.view_html, w.to_html()):
        got = token_styles(markup, feature=feature)
        assert [t for t, _ in got] == ["<bos>", "The", " cat", "<script>", "⏎", "∅", " sat", " &amp;"]
        styles = [re.sub(r"^padding: 1px 0; border-radius: 2px 2px 0 0; ?", "", s) for _, s in got]
        assert styles == [expected_style(a, max(acts), d, dmax, i == 0) for i, (a, d) in enumerate(zip(acts, delta))]


def test_ablation_underline_rule():
    from workbench.widgets.ablation import underline_px, underline_style

    assert [underline_px(d, 0.8) for d in (0.0, 0.8, -0.8, 0.4, -0.2, 0.1, 0.015, 0.017, 2.0)] == [0, 4, 4, 2, 1, 1, 0, 1, 4]
    assert underline_px(0.5, 0.0) == 0
    assert underline_style(-0.8, 0.8) == "border-bottom: 4px solid rgb(37, 99, 235)"  # ablating lowers: blue
    assert underline_style(0.8, 0.8) == "border-bottom: 4px solid rgb(220, 38, 38)"  # raises: red
    assert underline_style(-1e-9, 1.0) == underline_style(0.0, 1.0) == ""
    # The sign alone picks the colour, at every size.
    for d in (0.3, 0.05, 1.0):
        assert "220, 38, 38" in underline_style(d, 1.0) and "37, 99, 235" in underline_style(-d, 1.0)


def test_ablation_tooltips_give_both_methods_and_escape_tokens():
    from workbench.widgets import AblationView

    w = AblationView(both())
    markup = w.view_html
    assert "<script" not in markup and "&lt;script&gt;" in markup
    tips = [html.unescape(t) for t in re.findall(r'data-i="\d+" title="([^"]*)"', markup)]
    assert tips[0] == '"<bos>" (position 0) · activation 0.000 · Δ log p: none (nothing predicts the first token)'
    assert tips[2] == '" cat" (position 2) · activation 4.000 · Δ log p full re-forward: -0.800 · Δ log p direct path: -0.400'
    assert tips[4].startswith('"\\n" (position 4)') and tips[5].startswith('"" (position 5)')
    assert tips[7].endswith("full re-forward: +0.200 · Δ log p direct path: +0.100")
    only_full = AblationView(effects())
    assert "direct path" not in re.search(r'data-i="2" title="([^"]*)"', only_full.view_html).group(1)


def test_ablation_summary_and_legend_state_the_scale():
    from workbench.widgets import AblationView

    markup = AblationView(effects()).view_html
    assert ("feature 7 fires on 4 of 8 tokens · largest activation 4.000 · Σ Δ log p over the text -0.340 · "
            "largest drop -0.800 at &quot; cat&quot;") in markup
    assert "activation, full colour at 4.000" in markup and "4 px at 0.800 nats" in markup
    assert "ablating lowers log p: the feature helped" in markup and "ablating raises log p" in markup
    assert '<i style="border-bottom: 3px solid rgb(37, 99, 235)">' in markup


def test_ablation_picks_features_and_switches_methods():
    from workbench.widgets import AblationView

    w = AblationView(both())
    assert (w.features, w.feature, w.method, w.methods()) == ([7, 12], 7, "full", ["full", "direct"])
    assert 'data-feature="7" data-method="full"' in w.view_html
    assert re.findall(r'<span class="wi-feat( wi-on)?" data-f="(\d+)"', w.view_html) == [(" wi-on", "7"), ("", "12")]
    assert re.findall(r'<button class="wi-on" data-method="(\w+)"', w.view_html) == ["full"]
    w.feature = 12
    assert 'data-feature="12"' in w.view_html and "<b>feature &lt;12&gt;</b>" in w.view_html
    w.method = "direct"
    assert 'data-method="direct"' in w.view_html.split(">")[0]
    with pytest.raises(traitlets.TraitError, match="feature must be one of \\[7, 12\\]"):
        w.feature = 99
    assert w.feature == 12
    assert repr(w) == "AblationView(8 tokens, 2 features, feature 12 by direct)"


def test_ablation_method_given_for_some_features_only():
    from workbench.widgets import AblationView

    direct12 = effects("direct", features=[12], acts=[[r[1]] for r in ACTS], delta=[[r[1]] for r in DELTA], titles=None)
    w = AblationView([effects("full"), direct12])
    assert w.methods(7) == ["full"] and w.methods(12) == ["full", "direct"]
    with pytest.raises(traitlets.TraitError, match="method 'direct' is not given for feature 7"):
        w.method = "direct"
    assert re.search(r'<button data-method="direct" title="[^"]*not given for feature 7\)" disabled>', w.view_html)
    w.feature = 12
    w.method = "direct"
    w.feature = 7  # falls back to the method it has
    assert w.method == "full"
    only_direct = AblationView(direct12)
    assert only_direct.method == "direct" and "wi-switch" not in only_direct.view_html
    assert "Δ log p by direct path" in only_direct.view_html and "wi-feats" not in only_direct.view_html


def test_ablation_static_fallback_has_inline_styles_and_no_controls():
    from workbench.widgets import AblationView

    single = AblationView(effects(features=[7], acts=[r[:1] for r in ACTS], delta=[r[:1] for r in DELTA], titles=None))
    assert single.to_html().startswith('<div class="wi-ablation" style="font-family')
    w = AblationView(both())
    static = w.to_html()
    assert static.startswith('<div style="display: flex; flex-direction: column; gap: 18px">')
    assert "<button" not in static and "wi-feats" not in static  # no list to pick from: every feature shown
    assert re.findall(r'<div class="wi-ablation"[^>]*data-feature="(\d+)" data-method="(\w+)"', static) == [
        ("7", "full"), ("12", "full")]
    assert static.count("Δ log p by full re-forward (tooltips: direct path too)") == 2
    assert "<script" not in static and "<button" in w.view_html
    data, _ = w._repr_mimebundle_()
    assert data["text/html"] == static and data["application/vnd.jupyter.widget-view+json"]["model_id"] == w.model_id
    lean = re.findall(r'style="([^"]*)"', w.view_html)
    assert all(s.startswith(("background", "border-bottom")) for s in lean)
    w.close()


class _Effects:
    def __init__(self, d: dict) -> None:
        self.d = d

    def to_dict(self) -> dict:
        return self.d


def test_ablation_takes_objects_with_to_dict_and_array_likes():
    import numpy as np

    from workbench.widgets import AblationView

    w = AblationView(_Effects(effects(acts=np.array(ACTS), delta=np.array(DELTA), features=np.array([7, 12]))))
    assert w.features == [7, 12] and "activation 4.000" in w.view_html
    titled = AblationView(effects(titles={12: "wedding"}))
    assert "<b>feature 7</b>" in titled.view_html
    titled.feature = 12
    assert "<b>wedding</b>" in titled.view_html


@pytest.mark.parametrize(
    "change, message",
    [
        (lambda d: d.pop("delta"), r"effects\[0\] is missing \['delta'\]"),
        (lambda d: d.update(method="brute"), r"\['method'\] must be one of \('full', 'direct'\)"),
        (lambda d: d.update(features=[7, 7]), r"\['features'\] must be distinct"),
        (lambda d: d.update(features=["7", 12]), r"\['features'\] must be a list of int"),
        (lambda d: d["acts"].pop(), r"\['acts'\] must hold one row per token \(8\); got 7"),
        (lambda d: d["delta"][3].append(1.0), r"\['delta'\]\[3\] must hold one number per feature \(2\)"),
        (lambda d: d["delta"][2].__setitem__(0, float("nan")), r"\['delta'\]\[2\]\[0\] must be finite"),
        (lambda d: d["acts"][1].__setitem__(1, "x"), r"\['acts'\]\[1\]\[1\] must be a number"),
        (lambda d: d.update(tokens=["a", 3] + TOKENS[2:]), r"\['tokens'\] must be a list of str"),
        (lambda d: d.update(titles=["one"]), r"\['titles'\] must be None"),
    ],
)
def test_ablation_refuses_bad_effects_naming_the_field(change, message):
    from workbench.widgets import AblationView
    from workbench.widgets.ablation import check_effects

    d = effects()
    change(d)
    with pytest.raises(ValueError, match=message):
        AblationView(d)
    with pytest.raises(ValueError, match=message.replace(r"effects\[0\]", "effects")):
        check_effects(d)


def test_ablation_effects_must_share_one_text_and_not_repeat():
    from workbench.widgets import AblationView

    with pytest.raises(ValueError, match=r"effects\[1\]\['tokens'\] differ from effects\[0\]'s"):
        AblationView([effects(), effects("direct", tokens=TOKENS[:-1] + ["x"])])
    with pytest.raises(ValueError, match=r"effects\[1\] repeats feature 7 by method 'full'"):
        AblationView([effects(), effects()])
    with pytest.raises(ValueError, match="at least one effects dict"):
        AblationView([])


def test_ablation_shows_the_selected_features_card():
    from workbench.widgets import AblationView

    stats = SyntheticStats(16, per_group=2, groups=2)
    w = AblationView(both(), feature_cards=stats.card)
    assert '<div class="wf-card" data-feature="7">' in w.view_html
    w.feature = 12
    assert '<div class="wf-card" data-feature="12">' in w.view_html
    static = w.to_html()
    assert static.count('class="wf-card" style="') == 1
    assert static.index('data-feature="7"') < static.index('class="wf-card"')  # under feature 12, the one shown
    assert static.index('<div class="wi-ablation" style="') < static.rindex('data-feature="12" data-method')
    assert re.search(r'data-feature="12" data-method="full">.*class="wf-card"', static, re.S)
    by_dict = AblationView(both(), feature_cards={12: tiny_card(feature=12)})
    assert "no card given for feature 7" in by_dict.view_html
    by_dict.feature = 12
    assert "<b>feature &lt;7&gt;</b>" in by_dict.view_html  # tiny_card's (hostile) title, escaped
    broken = AblationView(both(), feature_cards=lambda f: {"feature": f})
    assert "Could not draw feature 7&#x27;s card: ValueError: card is missing" in broken.view_html


# --- TraitChips / Transcript -------------------------------------------------------------------


def test_chips_show_title_total_and_lift():
    from workbench.widgets import TraitChips

    w = TraitChips("The cat <sat>\n", TRAITS, prompt="Tell me <b>", titles={6: "cats & dogs"})
    markup = w.view_html
    chips = re.findall(r'<span class="wi-chip"[^>]*data-f="(\d+)"[^>]*><b>([^<]*)</b><span>([^<]*)</span><span>([^<]*)</span>',
                       markup)
    assert chips == [("3", "feature 3", "Σ 12.5", "×8.2"), ("5", "feature 5", "Σ 3.25", "lift —"),
                     ("6", "cats &amp; dogs", "Σ 6.25", "×0.75")]
    meters = re.findall(r"rgba\(255, 140, 0, 0.28\) (\d+)%", markup)
    assert meters == ["100", "26", "50"]  # total / the largest total
    assert "The cat &lt;sat&gt;\n" in markup and "Tell me &lt;b&gt;" in markup and "<b>" not in markup.split("wi-chips")[0]
    tip = html.unescape(re.search(r'data-f="5" title="([^"]*)"', markup).group(1))
    assert tip == "feature 5 · total activation over the reply 3.250 · active on 1 token · lift: no usual density known"
    assert repr(w) == "TraitChips(3 traits)"


def test_chip_opens_card_or_top_examples_and_closes():
    from workbench.widgets import TraitChips

    stats = SyntheticStats(8, per_group=3, groups=3)
    w = TraitChips("reply", TRAITS, cards=stats.card)
    assert "wf-card" not in w.view_html and "wi-open" not in w.view_html
    w.selected = (0, 3)
    assert '<span class="wi-chip wi-open"' in w.view_html and '<div class="wf-card" data-feature="3">' in w.view_html
    assert 'data-detail="examples"' in w.view_html and 'data-close="1"' in w.view_html
    w.detail = "examples"
    assert "wf-card" not in w.view_html and w.view_html.count('<div class="wf-ex"') == 3  # the top group only
    assert "top activations of feature 3" in w.view_html
    static = w.to_html()
    assert "<button" not in static and static.count('<div class="wf-ex" style=') == 3
    w.selected = (-1, -1)
    assert "wf-ex" not in w.view_html
    with pytest.raises(traitlets.TraitError, match="turn 0 has no feature 4"):
        w.selected = (0, 4)
    with pytest.raises(traitlets.TraitError):
        w.selected = (1, 3)


def test_chip_card_sources():
    from workbench.widgets import TraitChips

    cards = {3: tiny_card(feature=3, title="wedding <bells>")}
    w = TraitChips("reply", TRAITS, cards=cards)
    assert "<b>wedding &lt;bells&gt;</b>" in w.view_html  # a dict's card titles the chip
    w.selected = (0, 5)
    assert "No card for feature 5" in w.view_html
    calls = []

    def failing(f: int) -> dict:
        calls.append(f)
        raise KeyError(f)

    w = TraitChips("reply", TRAITS, cards=failing)
    w.selected = (0, 6)
    w.detail = "examples"
    assert "Could not get feature 6&#x27;s card: KeyError: 6" in w.view_html and calls == [6]  # asked once
    bare = TraitChips("reply", TRAITS)
    bare.selected = (0, 3)
    assert "No card for feature 3: pass cards=" in bare.view_html


def test_transcript_turns_generations_and_append():
    from workbench.widgets import Transcript

    generation = {"prompt_ids": [0, 4], "reply_ids": [5, 6], "prompt_tokens": ["<bos>", "Hi"],
                  "reply_tokens": [" hello", " <there>"]}
    w = Transcript()
    assert "no turns yet" in w.view_html and repr(w) == "Transcript(0 turns)"
    w.append("", generation, TRAITS[:1])
    assert "&lt;bos&gt;Hi" not in w.view_html  # an explicit "" prompt: none shown
    w.append(None, generation, [])
    assert "&lt;bos&gt;Hi" in w.view_html and " hello &lt;there&gt;" in w.view_html and "no traits" in w.view_html
    w.append("second?", "reply two", TRAITS)
    assert len(w.turns) == 3 and w.view_html.count('class="wi-turn"') == 3
    w.selected = (2, 5)
    assert re.search(r'<div class="wi-turn" data-turn="2">.*wi-open.*No card for feature 5', w.view_html, re.S)
    assert repr(w) == "Transcript(3 turns)"


@pytest.mark.parametrize(
    "turn, message",
    [
        ({"prompt": "p"}, r"turns\[0\] must be a dict with 'reply'"),
        ({"reply": 3}, r"turns\[0\]\['reply'\] must be a str or a Generation dict"),
        ({"reply": "r", "traits": [{"feature": "3", "total": 1.0}]}, r"\['traits'\]\[0\]\['feature'\] must be an int"),
        ({"reply": "r", "traits": [{"feature": 3}]}, r"\['traits'\]\[0\] is missing \['total'\]"),
        ({"reply": "r", "traits": [{"feature": 3, "total": float("inf")}]}, r"\['total'\] must be finite"),
        ({"reply": "r", "traits": [{"feature": 3, "total": 1.0, "lift": "high"}]}, r"\['lift'\] must be a number"),
        ({"reply": "r", "traits": [{"feature": 3, "total": 1.0}, {"feature": 3, "total": 2.0}]}, "an earlier trait"),
        ({"reply": "r", "when": 1}, r"unexpected keys \['when'\]"),
    ],
)
def test_transcript_refuses_bad_turns(turn, message):
    from workbench.widgets import Transcript

    with pytest.raises(traitlets.TraitError, match=message):
        Transcript([turn])


# --- PromptHeatmap --------------------------------------------------------------------------------


def test_prompt_heatmap_diverges_by_sign():
    from workbench.widgets import PromptHeatmap

    w = PromptHeatmap(["a", "<b>", "\n", "d", "e"], [2.0, -1.0, 0.0, 0.5, -2.0], label="occlusion")
    got = token_styles(w.view_html, "wi-ptoks")
    assert [t for t, _ in got] == ["a", "<b>", "⏎", "d", "e"]
    assert [s for _, s in got] == ["background-color: rgba(37, 99, 235, 0.6)", "background-color: rgba(220, 38, 38, 0.3)",
                                   "", "background-color: rgba(37, 99, 235, 0.15)",
                                   "background-color: rgba(220, 38, 38, 0.6)"]
    assert "full colour at ±2.000" in w.view_html and "estimate" not in w.view_html.split("wi-pkey")[0]
    tips = [html.unescape(t) for t in re.findall(r'data-i="\d+" title="([^"]*)"', w.view_html)]
    assert tips[:3] == ['"a" (position 0): +2.000', '"<b>" (position 1): -1.000', '"\\n" (position 2): 0.000']


def test_prompt_heatmap_from_attribution_marks_the_estimate():
    from workbench.widgets import PromptHeatmap

    attribution = {"tokens": ["<bos>", " Tell", " me"], "occlusion": [0.0, 1.5, -0.5], "gradient_x_input": [0.1, 0.9, 0.2],
                   "feature": 12}
    w = PromptHeatmap.from_attribution(attribution)
    rows = re.findall(r'<div class="wi-plabel">(.*?)</div>', w.view_html)
    assert rows[0].startswith("occlusion: drop in feature 12&#x27;s total activation") and "wi-badge" not in rows[0]
    assert rows[1].startswith("gradient × input<span class=\"wi-badge\"") and ">estimate</span>" in rows[1]
    assert "Which prompt tokens drive feature 12" in w.view_html and "(estimate)" in w.view_html
    assert w.to_html().count('class="wi-badge" style="') == 1
    occlusion_only = PromptHeatmap.from_attribution(_Effects({"tokens": ["a"], "occlusion": [1.0]}), title="")
    assert len(occlusion_only.rows) == 1 and "wi-ptitle" not in occlusion_only.view_html
    assert repr(w) == "PromptHeatmap(3 tokens, 2 rows)"


def test_prompt_heatmap_validates_and_replaces_data():
    from workbench.widgets import PromptHeatmap

    with pytest.raises(traitlets.TraitError, match=r"rows\[0\] has 2 values for 3 tokens"):
        PromptHeatmap(["a", "b", "c"], [1.0, 2.0])
    with pytest.raises(traitlets.TraitError, match=r"rows\[0\]\['values'\]\[1\] must be finite"):
        PromptHeatmap(["a", "b"], [1.0, float("nan")])
    with pytest.raises(ValueError, match="from_attribution takes"):
        PromptHeatmap.from_attribution({"tokens": ["a"]})
    w = PromptHeatmap(["a", "b"], [1.0, -1.0])
    with pytest.raises(traitlets.TraitError, match="use set_data"):
        w.tokens = ["a", "b", "c"]
    w.set_data(["x", "y", "z"], [{"values": [0.0, 1.0, -3.0], "label": "new"}])
    assert [t for t, _ in token_styles(w.view_html, "wi-ptoks")] == ["x", "y", "z"] and "new" in w.view_html


# --- SteeringPanel ---------------------------------------------------------------------------


class Recorder:
    """A run() callback that records its calls and answers `comparison()`."""

    def __init__(self, answer=None) -> None:
        self.calls: list[tuple] = []
        self.answer = answer

    def __call__(self, coefficients, temperature=0.0, seed=0):
        self.calls.append((coefficients, temperature, seed))
        if isinstance(self.answer, Exception):
            raise self.answer
        return self.answer if self.answer is not None else comparison(kl=sum(coefficients.values()) / 10)


def test_steering_panel_runs_with_the_sliders_settings():
    from workbench.widgets import SteeringPanel

    run = Recorder()
    p = SteeringPanel(run, {12: "weddings", 3: "feature 3"}, coefficients={12: 6.0}, seed=4)
    assert run.calls == [({12: 6.0, 3: 0.0}, 0.0, 4)]
    assert [s.description for s in p.sliders.values()] == ["weddings", "feature 3"]
    assert p.temperature in p.children and p.seed in p.children and p.output in p.children
    p.sliders[3].value = -2.5
    p.temperature.value = 0.7
    p.button.click()
    assert run.calls[-1] == ({12: 6.0, 3: -2.5}, 0.7, 4)
    assert p.comparison["kl_next_token"] == pytest.approx(0.35) and p.ran_with["temperature"] == 0.7
    p.set_coefficients({3: 1.0})
    assert run.calls[-1][0] == {12: 6.0, 3: 1.0} and p.coefficients == {12: 6.0, 3: 1.0}
    assert repr(p) == "SteeringPanel(2 features, KL 0.700)"
    with pytest.raises(ValueError, match="no slider for features \\[9\\]"):
        p.set_coefficients({9: 1.0})


def test_steering_panel_draws_clean_and_steered_side_by_side():
    from workbench.widgets import SteeringPanel

    p = SteeringPanel(Recorder(), {12: "wedding <bells>"}, coefficients={12: 8.0})
    static = p.to_html()
    assert p.output.value == static and "<script" not in static
    assert "steering wedding &lt;bells&gt; +8.00 · greedy (temperature 0)" in static
    assert ">Once &lt;upon&gt;</div>" in static  # the prompt, from the generation's prompt tokens
    cols = re.findall(r'<div class="wi-scol"[^>]*><b[^>]*>(\w+)</b><div[^>]*>(.*?)</div></div>', static, re.S)
    assert [c[0] for c in cols] == ["clean", "steered"]
    assert cols[0][1].startswith(" The cat<span class=\"wi-diff\"") and "> sat.</span>" in cols[0][1]
    assert "&lt;script&gt;alert(1)&lt;/script&gt;\n</span>" in cols[1][1]
    figures = re.findall(r"<b[^>]*>([^<]*)</b><span[^>]*>([^<]*)</span>", static.split('class="wi-sfig"')[1])
    assert figures == [("0.800", "KL(clean ‖ steered), nats per next token"),
                       ("-4.250", "log p of the steered reply under the clean model, per token"),
                       ("-1.500", "log p of the clean reply, per token"), ("-2.750", "difference (steered − clean)")]
    assert "shaded: where the replies differ (from reply token 2)" in static


def test_steering_panel_without_tokens_nan_figures_and_identical_replies():
    from workbench.widgets import SteeringPanel

    same = comparison(steered=comparison()["clean"], kl_next_token=0.0)
    assert "the replies are identical" in SteeringPanel(Recorder(same), [1]).to_html()
    text_only = comparison(clean={"reply_text": "a"}, steered={"reply_text": ""}, steered_loglik_clean=float("nan"))
    static = SteeringPanel(Recorder(text_only), [1]).to_html()
    assert "(empty reply)" in static and ">—</b>" in static and "not marked" in static


def test_steering_panel_controls_follow_the_callbacks_signature():
    from workbench.widgets import SteeringPanel

    seen = []
    p = SteeringPanel(lambda coefficients: seen.append(coefficients) or comparison(), [4, 5])
    assert seen == [{4: 0.0, 5: 0.0}] and p.temperature not in p.children and p.seed not in p.children
    assert "steering off (every coefficient 0)" in p.to_html() and "temperature" not in p.to_html()
    q = SteeringPanel(lambda coefficients, *, seed: comparison(), [4], temperature=0.5, run_now=False)
    assert q.seed in q.children and q.temperature not in q.children
    assert "Nothing generated yet: press Regenerate." in q.to_html() and q.comparison is None
    with pytest.raises(TypeError, match="run must be callable"):
        SteeringPanel("run", [1])
    with pytest.raises(ValueError, match="at least one feature"):
        SteeringPanel(Recorder(), [])
    with pytest.raises(ValueError, match="not in features"):
        SteeringPanel(Recorder(), [1], coefficients={2: 1.0})


def test_steering_panel_shows_failures_above_the_last_good_result():
    from workbench.widgets import SteeringPanel

    run = Recorder()
    p = SteeringPanel(run, [1], coefficients={1: 2.0})
    good = p.comparison
    run.answer = RuntimeError("out of <memory>")
    assert p.regenerate() is None and p.comparison is good and not p.button.disabled
    assert "run failed: RuntimeError: out of &lt;memory&gt;" in p.output.value and "0.200" in p.output.value
    assert p.status.value == "failed: see below"
    run.answer = {"clean": {"reply_text": "a"}, "steered": {"reply_text": "b"}, "kl_next_token": 1.0}
    p.regenerate()
    assert "run failed: ValueError: comparison is missing [&#x27;steered_loglik_clean&#x27;, &#x27;clean_loglik&#x27;]" \
        in p.output.value
    run.answer = None
    p.regenerate()
    assert "run failed" not in p.output.value and p.status.value == ""


@pytest.mark.parametrize(
    "change, message",
    [
        (lambda d: d.pop("clean"), r"comparison is missing \['clean'\]"),
        (lambda d: d.update(kl_next_token="big"), r"comparison\['kl_next_token'\] must be a number"),
        (lambda d: d["steered"].pop("reply_text") and d["steered"].pop("reply_tokens"), r"needs 'reply_text' or 'reply_tokens'"),
        (lambda d: d["clean"].update(reply_tokens=[1, 2]), r"\['clean'\]\['reply_tokens'\] must be a list of str"),
        (lambda d: d.update(steered="text"), r"comparison\['steered'\] must be a Generation dict"),
    ],
)
def test_bad_comparisons_are_named(change, message):
    from workbench.widgets.steering import check_comparison

    d = comparison()
    change(d)
    with pytest.raises(ValueError, match=message):
        check_comparison(d)


def test_steering_panel_display_carries_static_html_and_updates_in_place(monkeypatch):
    import IPython.display

    from workbench.widgets import SteeringPanel

    shown, updated = [], []
    monkeypatch.setattr(IPython.display, "display", lambda data, raw, display_id: shown.append((data, display_id)))
    monkeypatch.setattr(IPython.display, "update_display", lambda data, raw, display_id: updated.append((data, display_id)))
    p = SteeringPanel(Recorder(), [1], coefficients={1: 3.0})
    data = p._repr_mimebundle_()
    assert data["text/html"] == p.to_html() and data["application/vnd.jupyter.widget-view+json"]["model_id"] == p.model_id
    p._ipython_display_()
    (bundle, display_id), = shown
    assert "0.300" in bundle["text/html"] and not updated
    p.set_coefficients({1: 7.0})
    (bundle, again), = updated
    assert again == display_id and "0.700" in bundle["text/html"] and "+7.00" in bundle["text/html"]


def test_steering_panel_in_an_executed_notebook_keeps_the_last_result(tmp_path):
    """Run by a kernel as papermill would: the panel's output carries the static HTML, and a later
    cell that regenerates updates that output in place (what nbconvert and a kernel-less viewer show)."""
    import nbformat
    from nbclient import NotebookClient

    nb = nbformat.v4.new_notebook()
    nb.cells = [
        nbformat.v4.new_code_cell(
            "from workbench.widgets import SteeringPanel\n"
            "def run(coefficients, temperature=0.0, seed=0):\n"
            "    c = coefficients[12]\n"
            "    clean = {'reply_text': ' plain'}\n"
            "    steered = {'reply_text': f' steered by {c:g}'}\n"
            "    return {'clean': clean, 'steered': steered, 'kl_next_token': c / 10,\n"
            "            'steered_loglik_clean': -c, 'clean_loglik': -1.0}\n"
            "panel = SteeringPanel(run, {12: 'weddings'}, coefficients={12: 2.0})\n"
            "panel"),
        nbformat.v4.new_code_cell("panel.set_coefficients({12: 9.0})"),
    ]
    NotebookClient(nb, timeout=60, kernel_name="python3", resources={"metadata": {"path": str(tmp_path)}}).execute()
    outputs = nb.cells[0].outputs
    assert [o.output_type for o in outputs] == ["display_data"]
    static = outputs[0].data["text/html"]
    assert "steered by 9" in static and "weddings +9.00" in static and "steered by 2" not in static
    assert "application/vnd.jupyter.widget-view+json" in outputs[0].data


# --- the real results, on a tiny model ---------------------------------------------------------------


def test_widgets_draw_the_real_results(llama_tiny):
    """feature_ablation, compare_steering, reply_traits and prompt_attribution on a tiny random model
    and SAE, drawn by the widgets: the dicts they return are the shapes the widgets take."""
    import torch

    from workbench.ablation import feature_ablation
    from workbench.attribute import prompt_attribution
    from workbench.intervene import Splice, Steer
    from workbench.sae import SAE, SAEConfig
    from workbench.steer import compare_steering, generate, reply_traits
    from workbench.widgets import AblationView, PromptHeatmap, SteeringPanel, TraitChips
    from workbench.widgets.ablation import underline_px

    model, hookpoint = llama_tiny, "blocks.1.hook_mlp_out"
    sae = SAE.from_config(SAEConfig("relu", d_in=32, d_sae=16, hook_name=hookpoint))
    with torch.no_grad():
        sae.W_enc.mul_(30)
    ids = torch.tensor([0, *torch.randint(3, 60, (9,)).tolist()])
    full = feature_ablation(model, sae, ids, [0, 1, 2])
    direct = feature_ablation(model, sae, ids, [0, 1, 2], method="direct")
    view = AblationView([full, direct])
    assert view.features == [0, 1, 2] and view.methods() == ["full", "direct"]
    got = token_styles(view.view_html, feature=0)
    delta = full.delta[:, 0].tolist()
    largest = max(abs(d) for d in delta[1:])
    for i, (_, style) in enumerate(got):
        px = underline_px(delta[i], largest) if i else 0
        assert (f"border-bottom: {px}px solid rgb({'37, 99, 235' if delta[i] < 0 else '220, 38, 38'})" in style) == (px > 0)
        assert ("border-bottom" in style) == (px > 0)

    prompt = "w5 w6 w7"
    panel = SteeringPanel(lambda coefficients, temperature, seed: compare_steering(
        model, prompt, [Splice(sae, [Steer(f, c) for f, c in coefficients.items()])], max_new_tokens=4,
        temperature=temperature, seed=seed), [3], coefficients={3: 10.0})
    assert panel.error == "" and panel.comparison["kl_next_token"] >= 0 and "steering feature 3 +10.00" in panel.to_html()

    generation = generate(model, prompt, max_new_tokens=4)
    traits = reply_traits(model, sae, generation, top=3)
    chips = TraitChips(generation, traits, prompt=prompt)
    assert chips.view_html.count('class="wi-chip"') == len(traits) > 0
    attribution = prompt_attribution(model, sae, generation.prompt_ids, generation.reply_ids, traits[0].feature)
    heatmap = PromptHeatmap.from_attribution(attribution)
    assert len(heatmap.rows) == 2 and heatmap.rows[1]["estimate"] and f"drive feature {traits[0].feature}" in heatmap.view_html
    for w in (view, panel, chips, heatmap):
        w.close()


# --- styles and front-end files ----------------------------------------------------------------


@pytest.mark.parametrize("module, css", [("ablation", "ablation_view.css"), ("traits", "traits.css")])
def test_inline_styles_match_the_css_files(module, css):
    import importlib

    styles = importlib.import_module(f"workbench.widgets.{module}")._STYLES
    inline = {sel: sorted(d.strip() for d in body.split(";")) for sel, body in styles.items()}
    assert _css_rules(css) == inline


def test_bundles_are_single_modules_with_the_card_behaviour():
    from workbench.widgets import AblationView, PromptHeatmap, Transcript

    for widget in (AblationView, Transcript, PromptHeatmap):
        es = widget._esm
        assert not re.search(r"^import ", es, re.M) and es.rstrip().endswith("export default { render };")
        assert "const { enhanceCard } = _feature_card;" in es
    assert ".wf-card" in AblationView._css and ".wi-text" in AblationView._css and ".wi-chip" in Transcript._css


def test_every_hostile_token_is_escaped_everywhere():
    from workbench.widgets import AblationView, PromptHeatmap, SteeringPanel, TraitChips

    d = effects(tokens=HOSTILE, acts=[[1.0, 0.0]] * len(HOSTILE), delta=[[0.5, -0.5]] * len(HOSTILE))
    texts = "".join(HOSTILE)
    widgets = [AblationView(d), PromptHeatmap(HOSTILE, [1.0] * len(HOSTILE)),
               TraitChips(texts, [{"feature": 1, "total": 1.0, "title": HOSTILE[0]}], prompt=texts),
               SteeringPanel(Recorder(comparison(steered={"reply_tokens": HOSTILE})), [1])]
    for w in widgets[:3]:
        for markup in (w.view_html, w.to_html()):
            assert "<script" not in markup and "&lt;script&gt;alert(1)&lt;/script&gt;" in markup
            assert "&lt;/div&gt;" in markup and "&amp;amp;" in markup
    assert "<script" not in widgets[3].to_html() and "&lt;script&gt;alert(1)&lt;/script&gt;" in widgets[3].to_html()
    for w in widgets:
        w.close()
