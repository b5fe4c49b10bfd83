"""`AblationView`: the feature-ablation view of Towards Monosemanticity, drawn from
`workbench.ablation.feature_ablation(...).to_dict()`.

Per token of the text, for the selected feature:
- an orange background at opacity activation / the feature's largest activation on the text;
- an underline for delta, the change in log p(token | tokens before it) when the feature is
  ablated at every position: blue where delta < 0 (ablating lowers it: the feature helped
  predict the token), red where delta > 0 (the feature worked against it). Its thickness is
  `underline_px(delta, largest |delta|)`: 1 to 4 px in proportion to |delta|, none where
  |delta| is zero or under 2% of the largest (float noise of a batched re-forward stays
  invisible); the tooltip always gives the numbers, for both methods when both are given.

Give it one effects dict or a list (several features, or the same features by both methods,
"full" and "direct"): the reader picks a feature from the list and switches method. Python
draws the markup (`view_html`, and the same markup with inline styles is `to_html()`, the
static fallback); `widgets/ablation_view.js` swaps it in and turns clicks into trait changes.
"""

from __future__ import annotations

import html
import json
import math
from collections.abc import Callable, Iterable, Mapping
from typing import Any

import traitlets as t

from workbench.widgets._frontend import StaticHTMLWidget
from workbench.widgets.card import _attrs as _card_attrs
from workbench.widgets.card import bundle_js, card_html, stylesheet
from workbench.widgets.heatmap import DEFAULT_COLOR, _alpha_percent, _background, _fmt_value, display_token

__all__ = ["AblationView", "METHODS", "check_effects", "underline_px"]

METHODS = ("full", "direct")
METHOD_NAMES = {"full": "full re-forward", "direct": "direct path"}
METHOD_NOTES = {
    "full": "full re-forward: the layers above the hook point re-run with the feature ablated (the real effect)",
    "direct": "direct-path estimate: only the feature's own path through the unembedding (later layers ignored)",
}
HELPED_RGB = (37, 99, 235)
"""Blue underline: ablating lowers log p (delta < 0), the feature helped predict the token."""
HURT_RGB = (220, 38, 38)
"""Red underline: ablating raises log p (delta > 0), the feature worked against the token."""
MAX_PX = 4
"""Underline thickness of the largest |delta|."""
NOISE = 0.02
"""|delta| under this fraction of the largest draws no underline (still in the tooltip)."""

_MONO = "ui-monospace, SFMono-Regular, Menlo, Consolas, monospace"

# Inline twins of the rules in widgets/ablation_view.css (a test checks that they agree).
_STYLES = {
    ".wi-ablation": (
        "font-family: system-ui, -apple-system, 'Segoe UI', Roboto, sans-serif; font-size: 13px; line-height: 1.45"
    ),
    ".wi-head": "display: flex; flex-wrap: wrap; align-items: baseline; justify-content: space-between; gap: 4px 16px",
    ".wi-head > b": "font-size: 15px; font-weight: 650",
    ".wi-head > span": "font-size: 12px; opacity: 0.7",
    ".wi-switch": (
        "display: inline-flex; border: 1px solid rgba(128, 128, 128, 0.45); border-radius: 6px; overflow: hidden; "
        "font-size: 12px"
    ),
    ".wi-switch > button": "font: inherit; color: inherit; padding: 2px 10px; border: 0; background: transparent",
    ".wi-on": "background-color: rgba(37, 99, 235, 0.14); box-shadow: inset 0 0 0 1px rgba(37, 99, 235, 0.55)",
    ".wi-feats": "display: flex; flex-wrap: wrap; gap: 4px 6px; margin: 8px 0 4px",
    ".wi-feat": (
        "display: inline-flex; align-items: baseline; gap: 6px; max-width: 320px; padding: 1px 9px; "
        "border: 1px solid rgba(128, 128, 128, 0.35); border-radius: 12px; font-size: 12px; white-space: nowrap; "
        "overflow: hidden; text-overflow: ellipsis"
    ),
    ".wi-feat > span": "font-size: 11px; opacity: 0.65; font-variant-numeric: tabular-nums",
    ".wi-sum": "margin: 6px 0 2px; font-size: 12px; opacity: 0.8; font-variant-numeric: tabular-nums",
    ".wi-text": (
        f"font-family: {_MONO}; font-size: 13px; line-height: 2.1; white-space: pre-wrap; overflow-wrap: anywhere; "
        "padding: 6px 10px; border: 1px solid rgba(128, 128, 128, 0.3); border-radius: 8px"
    ),
    ".wi-text > span": "padding: 1px 0; border-radius: 2px 2px 0 0",
    ".wi-legend": "display: flex; flex-wrap: wrap; gap: 2px 18px; margin-top: 6px; font-size: 11px; opacity: 0.8",
    ".wi-legend > span": "display: inline-flex; align-items: center; gap: 6px",
    ".wi-legend i": "display: inline-block; width: 26px; height: 11px; border-radius: 2px 2px 0 0",
    ".wi-note": "margin-top: 4px; font-size: 11px; opacity: 0.6",
    ".wi-cardbox": "margin-top: 12px",
}


def _attrs(inline: bool, cls: str = "", rule: str = "", style: str = "", **extra: str | None) -> str:
    return _card_attrs(inline, cls, rule, style, rules=_STYLES, **extra)


def _tag(name: str, content: str, inline: bool, cls: str = "", rule: str = "", style: str = "", **extra: str | None) -> str:
    return f"<{name}{_attrs(inline, cls, rule, style, **extra)}>{content}</{name}>"


def _rgb(rgb: tuple[int, int, int]) -> str:
    return f"rgb({rgb[0]}, {rgb[1]}, {rgb[2]})"


# ---------------------------------------------------------------------------------------
# Numbers as the view shows them.


def signed(v: float) -> str:
    """A signed number: three decimals ("+0.532", "-1.204"), or two significant figures with an
    exponent below 0.001 ("-4.2e-05"); zero is "0"."""
    if v == 0:
        return "0"
    return f"{v:+.3f}" if abs(v) >= 0.0005 else f"{v:+.1e}"


def underline_px(delta: float, largest: float) -> int:
    """Underline thickness in whole px for `delta`, given `largest` = max |delta| on the text:
    round(MAX_PX * |delta| / largest), at least 1, and 0 where |delta| is 0 or under NOISE of
    `largest`."""
    if not largest > 0 or delta == 0:
        return 0
    ratio = min(abs(delta) / largest, 1.0)
    if ratio < NOISE:
        return 0
    return max(1, math.floor(MAX_PX * ratio + 0.5))


def underline_style(delta: float, largest: float) -> str:
    """The CSS of `delta`'s underline (a bottom border): blue below 0, red above; "" for none."""
    px = underline_px(delta, largest)
    if px == 0:
        return ""
    return f"border-bottom: {px}px solid {_rgb(HELPED_RGB if delta < 0 else HURT_RGB)}"


# ---------------------------------------------------------------------------------------
# Validation.


def _fail(where: str, message: str) -> None:
    raise ValueError(f"{where} {message} (an effects dict as workbench.ablation.feature_ablation(...).to_dict() returns)")


def _finite_table(value: Any, where: str, rows: int, cols: int) -> list[list[float]]:
    if hasattr(value, "tolist"):
        value = value.tolist()
    if not isinstance(value, (list, tuple)) or len(value) != rows:
        got = len(value) if isinstance(value, (list, tuple)) else type(value).__name__
        _fail(where, f"must hold one row per token ({rows}); got {got}")
    out = []
    for i, row in enumerate(value):
        if not isinstance(row, (list, tuple)) or len(row) != cols:
            _fail(f"{where}[{i}]", f"must hold one number per feature ({cols}); got {row!r}")
        for j, v in enumerate(row):
            if isinstance(v, bool) or not isinstance(v, (int, float)):
                _fail(f"{where}[{i}][{j}]", f"must be a number; got {v!r}")
            if not math.isfinite(v):
                _fail(f"{where}[{i}][{j}]", f"must be finite; got {v}")
        out.append([float(v) for v in row])
    return out


def check_effects(effects: Any, where: str = "effects") -> dict:
    """`effects` (an AblationEffects or its to_dict()) as a checked dict
    {tokens, features, acts [seq][F], delta [seq][F], method, titles [F]}; else a ValueError naming
    the bad field. Titles may be missing or None ("feature f"), a list or a {feature: title} dict."""
    if hasattr(effects, "to_dict"):
        effects = effects.to_dict()
    if not isinstance(effects, dict):
        _fail(where, f"must be a dict; got {type(effects).__name__}")
    missing = [k for k in ("tokens", "features", "acts", "delta", "method") if k not in effects]
    if missing:
        _fail(where, f"is missing {missing}")
    tokens = effects["tokens"]
    if not isinstance(tokens, (list, tuple)) or not all(isinstance(s, str) for s in tokens):
        _fail(f"{where}['tokens']", "must be a list of str")
    features = effects["features"]
    if hasattr(features, "tolist"):
        features = features.tolist()
    if isinstance(features, int) and not isinstance(features, bool):
        features = [features]
    if not isinstance(features, (list, tuple)) or not all(isinstance(f, int) and not isinstance(f, bool) for f in features):
        _fail(f"{where}['features']", f"must be a list of int feature ids; got {features!r}")
    if len(set(features)) != len(features):
        _fail(f"{where}['features']", f"must be distinct; got {list(features)}")
    if effects["method"] not in METHODS:
        _fail(f"{where}['method']", f"must be one of {METHODS}; got {effects['method']!r}")
    n, m = len(tokens), len(features)
    acts = _finite_table(effects["acts"], f"{where}['acts']", n, m)
    delta = _finite_table(effects["delta"], f"{where}['delta']", n, m)
    titles = effects.get("titles")
    if titles is None:
        titles = [f"feature {f}" for f in features]
    elif isinstance(titles, Mapping):
        titles = [str(titles.get(f, titles.get(str(f), f"feature {f}"))) for f in features]
    elif not isinstance(titles, (list, tuple)) or len(titles) != m or not all(isinstance(s, str) for s in titles):
        _fail(f"{where}['titles']", f"must be None, a {{feature: title}} dict or one str per feature ({m})")
    return {"tokens": list(tokens), "features": list(features), "acts": acts, "delta": delta,
            "method": effects["method"], "titles": list(titles)}


class _Table:
    """Every effects dict of one text, by feature: activations, titles, delta by method."""

    def __init__(self, effects: Any) -> None:
        if isinstance(effects, (dict, str, bytes)) or hasattr(effects, "to_dict") or not isinstance(effects, Iterable):
            effects = [effects]
        checked = [check_effects(e, f"effects[{i}]") for i, e in enumerate(effects)]
        if not checked:
            raise ValueError("AblationView needs at least one effects dict (workbench.ablation.feature_ablation)")
        self.tokens = checked[0]["tokens"]
        self.features: list[int] = []
        self.acts: dict[int, list[float]] = {}
        self.titles: dict[int, str] = {}
        self.delta: dict[tuple[int, str], list[float]] = {}
        for i, e in enumerate(checked):
            if e["tokens"] != self.tokens:
                _fail(f"effects[{i}]['tokens']", "differ from effects[0]'s: every effects dict must be of one text")
            for j, f in enumerate(e["features"]):
                if (f, e["method"]) in self.delta:
                    _fail(f"effects[{i}]", f"repeats feature {f} by method {e['method']!r}")
                if f not in self.acts:
                    self.features.append(f)
                    self.acts[f] = [row[j] for row in e["acts"]]
                    self.titles[f] = e["titles"][j]
                self.delta[(f, e["method"])] = [row[j] for row in e["delta"]]

    def methods(self, f: int) -> list[str]:
        return [m for m in METHODS if (f, m) in self.delta]

    @property
    def switchable(self) -> bool:
        return any(len(self.methods(f)) > 1 for f in self.features)


# ---------------------------------------------------------------------------------------
# Markup.


def _tooltip(table: _Table, f: int, i: int) -> str:
    token = table.tokens[i]
    parts = [f"{json.dumps(token, ensure_ascii=False)} (position {i})", f"activation {_fmt_value(table.acts[f][i])}"]
    if i == 0:
        parts.append("Δ log p: none (nothing predicts the first token)")
    else:
        for m in table.methods(f):
            parts.append(f"Δ log p {METHOD_NAMES[m]}: {signed(table.delta[(f, m)][i])}")
    return " · ".join(parts)


def view_html(table: _Table, feature: int, method: str, *, inline: bool, card: str = "", pick: bool = True) -> str:
    """The view of `feature` by `method`: heading and method switch, the feature list (if `pick`
    and there are several), a one-line summary, the tokens, the legend, and `card` (markup) if
    given. `inline`: styles inline and no controls (the static fallback)."""
    f = feature
    acts, delta = table.acts[f], table.delta[(f, method)]
    amax = max(acts, default=0.0)
    dmax = max((abs(d) for d in delta[1:]), default=0.0)

    # Heading: the feature's title, then the method (a switch where both are given).
    head = _tag("b", html.escape(table.titles[f]), inline, rule=".wi-head > b")
    if table.switchable and not inline:
        buttons = ""
        for m in METHODS:
            given = m in table.methods(f)
            tip = METHOD_NOTES[m] + ("" if given else f" (not given for feature {f})")
            attrs = _attrs(inline, "wi-on" if m == method else "", ".wi-switch > button", data_method=m, title=tip)
            buttons += f"<button{attrs}{'' if given else ' disabled'}>{METHOD_NAMES[m]}</button>"
        head += _tag("span", buttons, inline, "wi-switch", title="which estimate of Δ log p the underlines show")
    else:
        other = [m for m in table.methods(f) if m != method]
        also = f" (tooltips: {METHOD_NAMES[other[0]]} too)" if other else ""
        head += _tag("span", html.escape(f"Δ log p by {METHOD_NAMES[method]}{also}"), inline, rule=".wi-head > span")
    parts = [_tag("div", head, inline, "wi-head")]

    if pick and len(table.features) > 1:
        pills = []
        for g in table.features:
            d = table.delta.get((g, method)) or table.delta[(g, table.methods(g)[0])]
            info = f"max {_fmt_value(max(table.acts[g], default=0.0))} · ΣΔ {signed(sum(d))}"
            pills.append(_tag("span", html.escape(table.titles[g]) + _tag("span", info, inline, rule=".wi-feat > span"),
                              inline, "wi-feat wi-on" if g == f else "wi-feat", data_f=str(g),
                              title=f"feature {g}: largest activation on the text, and the sum of Δ log p over it"))
        parts.append(_tag("div", "".join(pills), inline, "wi-feats"))

    fired = sum(1 for a in acts if a > 0)
    worst = min(range(1, len(delta)), key=lambda i: delta[i], default=None)
    summary = (f"feature {f} fires on {fired} of {len(acts)} tokens · largest activation {_fmt_value(amax)} · "
               f"Σ Δ log p over the text {signed(sum(delta))}")
    if worst is not None and delta[worst] < 0:
        summary += f" · largest drop {signed(delta[worst])} at {json.dumps(table.tokens[worst], ensure_ascii=False)}"
    parts.append(_tag("div", html.escape(summary), inline, "wi-sum"))

    spans = []
    for i, token in enumerate(table.tokens):
        alpha = _alpha_percent(acts[i], amax)
        styles = [f"background-color: {_background(DEFAULT_COLOR, alpha)}" if alpha else "",
                  underline_style(delta[i], dmax) if i else ""]
        style = "; ".join(s for s in styles if s)
        spans.append(_tag("span", html.escape(display_token(token)), inline, rule=".wi-text > span" if style else "",
                          style=style, data_i=str(i), title=_tooltip(table, f, i)))
    parts.append(_tag("div", "".join(spans), inline, "wi-text"))

    def key(swatch: str, text: str) -> str:
        return _tag("span", _tag("i", "", inline, rule=".wi-legend i", style=swatch) + html.escape(text), inline,
                    rule=".wi-legend > span")

    orange = f"background: linear-gradient(to right, {_background(DEFAULT_COLOR, 0)}, {_background(DEFAULT_COLOR, 100)})"
    legend = (key(orange, f"activation, full colour at {_fmt_value(amax)}")
              + key(f"border-bottom: 3px solid {_rgb(HELPED_RGB)}", "ablating lowers log p: the feature helped")
              + key(f"border-bottom: 3px solid {_rgb(HURT_RGB)}", "ablating raises log p: it worked against")
              + key(f"border-bottom: {MAX_PX}px solid rgba(128, 128, 128, 0.7)",
                    f"thickness ∝ |Δ log p|, {MAX_PX} px at {_fmt_value(dmax)} nats"))
    parts.append(_tag("div", legend, inline, "wi-legend"))
    parts.append(_tag("div", html.escape(METHOD_NOTES[method] + "; hover a token for its numbers."), inline, "wi-note"))
    if card:
        parts.append(_tag("div", card, inline, "wi-cardbox"))
    return _tag("div", "".join(parts), inline, "wi-ablation", data_feature=str(f), data_method=method)


# ---------------------------------------------------------------------------------------
# The widget.


CardSource = Mapping[int, dict] | Callable[[int], dict]


class AblationView(StaticHTMLWidget):
    """What ablating a feature does to each token's log-likelihood, on one text.

    `AblationView(effects)` takes `feature_ablation(...)` results (AblationEffects or their
    `to_dict()`): one, or a list of them on the same text (more features; the same features by
    "full" and "direct"). Click a feature in the list to show it, the method switch to change
    estimate; `feature_cards` ({feature: CARD dict}, or a function such as `stats.card`) adds
    the selected feature's card underneath.
    """

    _esm = bundle_js("ablation_view.js")
    _css = stylesheet("feature_card.css", "ablation_view.css")

    feature = t.Int(help="The feature shown (one of `features`).").tag(sync=True)
    method = t.Enum(METHODS, "full", help="Which Δ log p the underlines show: 'full' (re-forward) or 'direct' "
                    "(direct-path estimate); only a method given for the feature.").tag(sync=True)
    view_html = t.Unicode(help="The view as markup (set by Python; widgets/ablation_view.css styles it).").tag(sync=True)

    def __init__(self, effects: Any, feature_cards: CardSource | None = None, **kwargs: Any) -> None:
        self._table = _Table(effects)
        self._cards = feature_cards
        first = self._table.features[0]
        kwargs.setdefault("feature", first)
        kwargs.setdefault("method", self._table.methods(kwargs["feature"] if kwargs["feature"] in self._table.acts
                                                        else first)[0])
        super().__init__(**kwargs)
        self._draw()

    @property
    def features(self) -> list[int]:
        """The features to pick from, in the order given."""
        return list(self._table.features)

    @property
    def tokens(self) -> list[str]:
        return list(self._table.tokens)

    def methods(self, feature: int | None = None) -> list[str]:
        """The methods given for `feature` (default: the one shown)."""
        return self._table.methods(self.feature if feature is None else feature)

    @t.validate("feature")
    def _valid_feature(self, proposal: t.Bunch) -> int:
        f = proposal["value"]
        if f not in self._table.acts:
            raise t.TraitError(f"feature must be one of {self._table.features}; got {f}")
        return f

    @t.validate("method")
    def _valid_method(self, proposal: t.Bunch) -> str:
        m = proposal["value"]
        f = self.feature if self.feature in self._table.acts else self._table.features[0]
        if m not in self._table.methods(f):
            raise t.TraitError(f"method {m!r} is not given for feature {f}; given: {self._table.methods(f)}")
        return m

    @t.observe("feature")
    def _on_feature(self, change: t.Bunch) -> None:
        if self.method not in self._table.methods(self.feature):
            self.method = self._table.methods(self.feature)[0]  # its observer draws
        else:
            self._draw()

    @t.observe("method")
    def _on_method(self, change: t.Bunch) -> None:
        self._draw()

    def _card(self, inline: bool) -> str:
        if self._cards is None:
            return ""
        f = self.feature
        try:
            if isinstance(self._cards, Mapping):
                card = self._cards.get(f, self._cards.get(str(f)))
                if card is None:
                    return _tag("div", f"no card given for feature {f}", inline, "wi-note")
            else:
                card = self._cards(f)
            return card_html(card, inline=inline)
        except Exception as error:  # shown where the card would be, not lost in a callback log
            return _tag("div", html.escape(f"Could not draw feature {f}'s card: {type(error).__name__}: {error}"),
                        inline, "wi-note")

    def _draw(self) -> None:
        if hasattr(self, "_table") and self.feature in self._table.acts:
            self.view_html = view_html(self._table, self.feature, self.method, inline=False, card=self._card(False))

    def to_html(self) -> str:
        """The view as self-contained HTML (inline styles, escaped text, no JavaScript), what a
        notebook shows without a kernel: every feature one under the other (there is no list to
        pick from), each by the shown method where it has it, the other method's numbers in the
        tooltips; the shown feature's card under it."""
        table, blocks = self._table, []
        for f in table.features:
            method = self.method if self.method in table.methods(f) else table.methods(f)[0]
            card = self._card(True) if f == self.feature else ""
            blocks.append(view_html(table, f, method, inline=True, card=card, pick=False))
        if len(blocks) == 1:
            return blocks[0]
        return _tag("div", "".join(blocks), True, style="display: flex; flex-direction: column; gap: 18px")

    def __repr__(self) -> str:
        return (f"AblationView({len(self._table.tokens)} tokens, {len(self._table.features)} feature"
                f"{'' if len(self._table.features) == 1 else 's'}, feature {self.feature} by {self.method})")
