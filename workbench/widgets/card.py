"""Feature cards: `FeatureCard`, one feature's statistics, histograms, logit effects and examples.

A card is drawn from a CARD dict (`workbench.features.FeatureStats.card`, all plain JSON
types) by one renderer, `card_html`: the notebook widget, its static `text/html` fallback, the
`FeatureBrowser` and the static site (`workbench.site`) all show its markup. With
`inline=True` every element also carries its class's declarations (from `_STYLES`, the inline
twins of `widgets/feature_card.css`), so a notebook exported by plain nbconvert shows the card
with no CSS and no JavaScript; with `inline=False` the markup leans on that stylesheet.
`widgets/feature_card.js` draws nothing: it adds behaviour to the markup (hovering a token or a
logit highlights that token across the card; hovering a histogram names the bin).

Example values are shown rounded to three decimals (`heatmap._fmt_value`), and coloured by
that rounded value over the largest one in the card's examples.
"""

from __future__ import annotations

import html
import json
import math
import re
from collections.abc import Callable, Iterable
from typing import Any

import traitlets as t

from workbench.widgets._frontend import FRONTEND, StaticHTMLWidget
from workbench.widgets.heatmap import DEFAULT_COLOR, _alpha_percent, _background, _fmt_value, display_token

__all__ = ["FeatureCard", "card_html", "check_card"]

PROMOTED_RGB = (37, 99, 235)
"""Blue: logits a feature promotes."""
SUPPRESSED_RGB = (220, 38, 38)
"""Red: logits a feature suppresses."""

_MONO = "ui-monospace, SFMono-Regular, Menlo, Consolas, monospace"
_LINE = "rgba(128, 128, 128, 0.25)"

# Inline twins of the rules in widgets/feature_card.css, by selector (a test checks they agree).
# Only the containers carry classes; their parts are styled by structure (`.wf-stats b`), which
# keeps the markup lean enough for the static site of thousands of cards.
_STYLES = {
    ".wf-card": (
        "font-family: system-ui, -apple-system, 'Segoe UI', Roboto, sans-serif; font-size: 13px; "
        "line-height: 1.45; padding: 12px 16px; border: 1px solid rgba(128, 128, 128, 0.3); "
        "border-radius: 8px; box-sizing: border-box"
    ),
    ".wf-head": "display: flex; flex-wrap: wrap; align-items: baseline; column-gap: 12px",
    ".wf-head > b": "font-size: 17px; font-weight: 650",
    ".wf-head > span": "font-size: 12px; opacity: 0.6",
    ".wf-expl": "margin-top: 6px; padding-left: 8px; border-left: 3px solid #ff8c00; font-style: italic",
    ".wf-stats": (
        f"display: flex; flex-wrap: wrap; gap: 6px 22px; margin: 10px 0 6px; padding: 8px 0; "
        f"border-top: 1px solid {_LINE}; border-bottom: 1px solid {_LINE}"
    ),
    ".wf-stats > div": "display: flex; flex-direction: column",
    ".wf-stats b": "font-size: 15px; font-weight: 600; font-variant-numeric: tabular-nums",
    ".wf-stats span": "font-size: 11px; opacity: 0.6",
    ".wf-body": "display: flex; flex-wrap: wrap; align-items: flex-start; gap: 8px 24px",
    ".wf-side": "flex: 1 1 260px; max-width: 330px; min-width: 0",
    ".wf-main": "flex: 3 1 420px; min-width: 0",
    ".wf-sec": (
        "display: flex; justify-content: space-between; gap: 8px; margin: 10px 0 4px; font-size: 11px; "
        "font-weight: 600; letter-spacing: 0.05em; text-transform: uppercase; opacity: 0.7"
    ),
    ".wf-sec > span": "font-weight: 400; letter-spacing: 0; text-transform: none",
    ".wf-hist": "position: relative",
    ".wf-svg": "display: block; width: 100%; height: 56px; border-bottom: 1px solid rgba(128, 128, 128, 0.6)",
    ".wf-axis": "position: relative; height: 15px; font-size: 10px; opacity: 0.65; font-variant-numeric: tabular-nums",
    ".wf-axis > span": "position: absolute; top: 1px; transform: translateX(-50%); white-space: nowrap",
    ".wf-logits": "display: flex; gap: 12px; font-size: 12px; line-height: 1.7",
    ".wf-logits > div": (
        "flex: 1 1 0; min-width: 0; display: grid; grid-template-columns: minmax(0, 1fr) auto; "
        "align-items: center; column-gap: 6px"
    ),
    ".wf-logits > div > div": "grid-column: 1 / -1; font-size: 11px; opacity: 0.65",
    ".wf-logits code": (
        f"font-family: {_MONO}; font-size: 12px; white-space: pre; overflow: hidden; text-overflow: ellipsis; "
        "justify-self: start; max-width: 100%; box-sizing: border-box; padding: 0 4px; border-radius: 3px"
    ),
    ".wf-pos > code": "background-color: rgba(37, 99, 235, 0.16)",
    ".wf-neg > code": "background-color: rgba(220, 38, 38, 0.16)",
    ".wf-logits > div > span": "font-size: 11px; opacity: 0.75; font-variant-numeric: tabular-nums",
    ".wf-note": "margin-top: 6px; font-size: 11px; opacity: 0.55",
    ".wf-empty": "font-size: 12px; opacity: 0.6; font-style: italic",
    ".wf-group": "margin: 6px 0 10px",
    ".wf-group > summary": (
        f"cursor: pointer; padding: 2px 0; margin-bottom: 2px; border-bottom: 1px solid {_LINE}; "
        "font-size: 11px; font-weight: 600; letter-spacing: 0.04em; text-transform: uppercase; opacity: 0.75"
    ),
    ".wf-group > summary > span": (
        "margin-left: 6px; font-weight: 400; letter-spacing: 0; text-transform: none; opacity: 0.75"
    ),
    ".wf-exs": f"font-family: {_MONO}; font-size: 12px; line-height: 1.75",
    ".wf-ex": "display: flex; align-items: baseline; gap: 10px; border-bottom: 1px solid rgba(128, 128, 128, 0.1)",
    ".wf-ex > b": (
        "flex: none; width: 4.5em; text-align: right; font-size: 11px; font-weight: 400; opacity: 0.6; "
        "font-variant-numeric: tabular-nums"
    ),
    ".wf-ex > span": "flex: 1; min-width: 0; white-space: pre-wrap; overflow-wrap: anywhere",
    ".wf-ex > span > span": "border-radius: 2px; padding: 1px 0",
    ".wf-focus": "outline: 1.5px solid rgba(0, 0, 0, 0.8); outline-offset: -0.5px",
}


def _attrs(inline: bool, cls: str = "", rule: str = "", style: str = "", *, rules: dict[str, str] | None = None,
           **extra: str | None) -> str:
    """An element's attributes: `class` (if `cls`), `style` (when `inline`, the declarations of
    its classes' rules and of the structural `rule`, looked up in `rules`, default this module's;
    then `style`) and the `extra` attributes (escaped; `_` read as `-`; None left out)."""
    rules = _STYLES if rules is None else rules
    styles = []
    if inline:
        styles += [rules[f".{c}"] for c in cls.split() if f".{c}" in rules]
        if rule:
            styles.append(rules[rule])
    if style:
        styles.append(style)
    out = f' class="{cls}"' if cls else ""
    if styles:
        out += f' style="{"; ".join(styles)}"'
    for name, value in extra.items():
        if value is not None:
            out += f' {name.replace("_", "-")}="{html.escape(value)}"'
    return out


def _tag(name: str, content: str, inline: bool, cls: str = "", rule: str = "", style: str = "",
         **extra: str | None) -> str:
    return f"<{name}{_attrs(inline, cls, rule, style, **extra)}>{content}</{name}>"


# ---------------------------------------------------------------------------------------
# Numbers as the card shows them.


def _sig(v: float, digits: int = 3) -> str:
    """`v` to `digits` significant figures without an exponent (1234.5 -> "1,235",
    0.01234 -> "0.0123"); exponents only below 1e-4."""
    if v == 0:
        return "0"
    a = abs(v)
    if a >= 10 ** (digits - 1):
        return f"{v:,.0f}"
    if a < 1e-4:
        return f"{v:.{digits - 1}e}"
    decimals = digits - 1 - math.floor(math.log10(a))
    text = f"{v:.{decimals}f}"
    if abs(float(text)) >= 10 ** (digits - decimals):  # 9.996 rounded up to 10.00
        text = f"{v:.{max(decimals - 1, 0)}f}"
    return text


def _percent(fraction: float) -> str:
    """A fraction as a percentage to three significant figures: 0.0082 -> "0.82%"."""
    text = _sig(fraction * 100)
    if "." in text and "e" not in text:
        text = text.rstrip("0").rstrip(".")
    return text + "%"


def _one_in(density: float) -> str:
    if not density > 0:
        return "never fires"
    return f"1 in {max(1, round(1 / density)):,} tokens"


def _milli(v: float) -> int:
    """`v` in thousandths, rounded half-up as `_fmt_value` rounds it."""
    return math.floor(v * 1000 + 0.5)


# ---------------------------------------------------------------------------------------
# Validation.


class _Check:
    """Raise ValueError naming the offending place in the card, e.g. card['groups'][1]['label']."""

    @staticmethod
    def fail(where: str, message: str) -> None:
        raise ValueError(f"{where} {message} (a CARD dict as workbench.features.FeatureStats.card returns)")

    @classmethod
    def keys(cls, obj: Any, where: str, required: Iterable[str]) -> dict:
        if not isinstance(obj, dict):
            cls.fail(where, f"must be a dict; got {type(obj).__name__}")
        missing = [k for k in required if k not in obj]
        if missing:
            cls.fail(where, f"is missing {missing}")
        return obj

    @classmethod
    def number(cls, obj: dict, key: str, where: str, *, integer: bool = False) -> float:
        v = obj[key]
        ok = isinstance(v, int) if integer else isinstance(v, (int, float))
        if isinstance(v, bool) or not ok:
            cls.fail(f"{where}[{key!r}]", f"must be {'an int' if integer else 'a number'}; got {v!r}")
        if not math.isfinite(v):
            cls.fail(f"{where}[{key!r}]", f"must be finite; got {v}")
        return v

    @classmethod
    def text(cls, obj: dict, key: str, where: str) -> str:
        v = obj[key]
        if not isinstance(v, str):
            cls.fail(f"{where}[{key!r}]", f"must be a str; got {type(v).__name__}")
        return v

    @classmethod
    def numbers(cls, v: Any, where: str, *, integer: bool = False) -> list:
        if not isinstance(v, (list, tuple)):
            cls.fail(where, f"must be a list; got {type(v).__name__}")
        for i, x in enumerate(v):
            cls.number({i: x}, i, where, integer=integer)
        return list(v)

    @classmethod
    def histogram(cls, h: Any, where: str) -> dict:
        cls.keys(h, where, ("edges", "counts"))
        edges = cls.numbers(h["edges"], f"{where}['edges']")
        counts = cls.numbers(h["counts"], f"{where}['counts']", integer=True)
        if counts and len(edges) != len(counts) + 1:
            cls.fail(where, f"needs one more edge than counts; got {len(edges)} edges and {len(counts)} counts")
        if any(b <= a for a, b in zip(edges, edges[1:])):
            cls.fail(f"{where}['edges']", "must increase strictly")
        if any(c < 0 for c in counts):
            cls.fail(f"{where}['counts']", "must be >= 0")
        return h


CARD_KEYS = ("feature", "title", "dictionary", "explanation", "n_tokens", "fire_count", "density", "max",
             "mean_firing", "skew", "kurtosis", "histogram", "logits", "groups")
EXAMPLE_KEYS = ("tokens", "values", "focus")


def check_card(card: Any) -> dict:
    """`card` if it is a well-formed CARD dict; else a ValueError that names the bad field.

    Checks what the renderer relies on: the keys, types, finite numbers, histograms with one
    more edge than counts, and examples with one value per token and a focus inside them.
    """
    c = _Check
    c.keys(card, "card", CARD_KEYS)
    c.number(card, "feature", "card", integer=True)
    for key in ("title", "dictionary", "explanation"):
        c.text(card, key, "card")
    for key in ("n_tokens", "fire_count"):
        c.number(card, key, "card", integer=True)
    for key in ("density", "max", "mean_firing", "skew", "kurtosis"):
        c.number(card, key, "card")
    c.histogram(card["histogram"], "card['histogram']")
    logits = card["logits"]
    if logits is not None:
        c.keys(logits, "card['logits']", ("top", "bottom", "histogram"))
        for side in ("top", "bottom"):
            where = f"card['logits'][{side!r}]"
            if not isinstance(logits[side], list):
                c.fail(where, "must be a list of {'token': str, 'value': float}")
            for i, entry in enumerate(logits[side]):
                c.keys(entry, f"{where}[{i}]", ("token", "value"))
                c.text(entry, "token", f"{where}[{i}]")
                c.number(entry, "value", f"{where}[{i}]")
        c.histogram(logits["histogram"], "card['logits']['histogram']")
    if not isinstance(card["groups"], list):
        c.fail("card['groups']", "must be a list of groups")
    for g, group in enumerate(card["groups"]):
        where = f"card['groups'][{g}]"
        c.keys(group, where, ("label", "examples"))
        c.text(group, "label", where)
        if not isinstance(group["examples"], list):
            c.fail(f"{where}['examples']", "must be a list")
        for e, example in enumerate(group["examples"]):
            at = f"{where}['examples'][{e}]"
            c.keys(example, at, EXAMPLE_KEYS)
            tokens = example["tokens"]
            if not isinstance(tokens, list) or not all(isinstance(s, str) for s in tokens):
                c.fail(f"{at}['tokens']", "must be a list of str")
            values = c.numbers(example["values"], f"{at}['values']")
            if len(values) != len(tokens):
                c.fail(at, f"has {len(tokens)} tokens but {len(values)} values; they must match")
            focus = c.number(example, "focus", at, integer=True)
            if not 0 <= focus < len(tokens):
                c.fail(f"{at}['focus']", f"is {focus}, outside its {len(tokens)} tokens")
            for key in ("context", "position"):
                if key in example:
                    c.number(example, key, at, integer=True)
    return card


# ---------------------------------------------------------------------------------------
# The renderer.

_HIST_W, _HIST_H = 1000, 100
"""The histogram's drawing box (SVG user units, integers); it is stretched to the card's width."""


def _ticks(lo: float, hi: float, log: bool) -> list[float]:
    """Axis labels: powers of ten (log) or lo, 0, hi (linear), else the ends."""
    if log:
        first, last = math.ceil(math.log10(lo) - 1e-9), math.floor(math.log10(hi) + 1e-9)
        powers = [10.0**k for k in range(first, last + 1)]
        if len(powers) >= 2:
            return powers
        ends = [v for v in (lo, hi) if not powers or abs(math.log10(v / powers[0])) > 0.3]
        return sorted(ends + powers)
    ticks = [lo, hi]
    if lo < 0 < hi and min(-lo, hi) > 0.12 * (hi - lo):
        ticks.insert(1, 0.0)
    return ticks


def _tick_label(v: float) -> str:
    if v != 0 and (abs(v) >= 1000 or abs(v) < 0.001) and math.log10(abs(v)).is_integer():
        return f"{'-' if v < 0 else ''}1e{int(math.log10(abs(v)))}"
    return _sig(v, 2) if abs(v) >= 0.01 else _sig(v, 1)


def _uniform(edges: list[float], log: bool) -> bool:
    """Whether the bins are equally wide on the axis (then edges need not be stored)."""
    n = len(edges) - 1
    lo, hi = edges[0], edges[-1]
    expect = [lo * (hi / lo) ** (i / n) if log else lo + (hi - lo) * i / n for i in range(n + 1)]
    # float32 edges (torch.linspace, logspace) are equal spacing to ~1e-7 of the axis's span
    span = abs(math.log(hi / lo)) if log else abs(hi - lo)
    at = (lambda v: math.log(v)) if log else (lambda v: v)
    return all(abs(at(a) - at(b)) <= 1e-5 * max(span, 1e-12) for a, b in zip(edges, expect))


def _histogram_html(hist: dict, *, log: bool, split: float | None, color: str, inline: bool) -> str:
    """A histogram as an SVG step area (one path per colour; with `split`, bins below it red
    and above it blue) with HTML axis labels below.

    The SVG carries its counts and bins (`data-c`, and `data-lo`/`data-hi` when the bins are
    equally wide on the axis, else `data-e`) for the hover read-out of feature_card.js."""
    edges, counts = hist["edges"], hist["counts"]
    if not counts or not any(counts):
        return _tag("div", "no values", inline, "wf-empty")
    log = log and edges[0] > 0
    lo, hi = edges[0], edges[-1]

    def scale(v: float) -> float:
        return math.log(v / lo) / math.log(hi / lo) if log else (v - lo) / (hi - lo)

    top = max(counts)
    xs = [round(scale(e) * _HIST_W) for e in edges]
    ys = [_HIST_H - (max(1, round(c / top * _HIST_H)) if c > 0 else 0) for c in counts]
    runs: list[tuple[str, list[int]]] = []  # (colour, bins) in order
    for i in range(len(counts)):
        c = color if split is None else (_rgb(SUPPRESSED_RGB) if edges[i] + edges[i + 1] < 2 * split else _rgb(PROMOTED_RGB))
        if not runs or runs[-1][0] != c:
            runs.append((c, []))
        runs[-1][1].append(i)
    paths = []
    for c, bins in runs:
        d, y = f"M{xs[bins[0]]} {_HIST_H}", _HIST_H
        for i in bins:
            if ys[i] != y:
                d += f"{f'H{xs[i]}' if i != bins[0] else ''}V{ys[i]}"
                y = ys[i]
        paths.append(f'<path fill="{c}" d="{d}H{xs[bins[-1] + 1]}V{_HIST_H}Z"/>')
    uniform = _uniform(edges, log)
    data = _attrs(inline, "wf-svg",
                  data_lo=f"{lo:.8g}" if uniform else None, data_hi=f"{hi:.8g}" if uniform else None,
                  data_e=None if uniform else " ".join(f"{e:.5g}" for e in edges),
                  data_c=" ".join(map(str, counts)), data_log="1" if log else None)
    svg = f'<svg{data} viewBox="0 0 {_HIST_W} {_HIST_H}" preserveAspectRatio="none">{"".join(paths)}</svg>'

    def tick(v: float) -> str:
        x = 100 * scale(v)
        edge = "; transform: none" if x < 3 else "; transform: translateX(-100%)" if x > 97 else ""
        return _tag("span", html.escape(_tick_label(v)), inline, rule=".wf-axis > span", style=f"left: {x:.1f}%{edge}")

    axis = _tag("div", "".join(tick(v) for v in _ticks(lo, hi, log)), inline, "wf-axis")
    return _tag("div", svg + axis, inline, "wf-hist")


def _rgb(rgb: tuple[int, int, int]) -> str:
    return "#" + "".join(f"{c:02x}" for c in rgb)


def _logits_html(logits: dict | None, inline: bool) -> str:
    if logits is None:
        return _tag("div", "none: this hook point does not write to the residual stream", inline, "wf-empty")

    def column(title: str, entries: list[dict], cls: str) -> str:
        cells = "".join(
            _tag("code", html.escape(display_token(e["token"])), inline, rule=".wf-logits code",
                 style=_STYLES[f".{cls} > code"] if inline else "")
            + _tag("span", f"{e['value']:+.3f}", inline, rule=".wf-logits > div > span")
            for e in entries
        ) or _tag("span", "none", inline, "wf-empty")
        return _tag("div", _tag("div", title, inline, rule=".wf-logits > div > div") + cells, inline, cls,
                    rule=".wf-logits > div")

    hist = _histogram_html(logits["histogram"], log=False, split=0.0, color="", inline=inline)
    tables = _tag("div", column("promoted", logits["top"], "wf-pos") + column("suppressed", logits["bottom"], "wf-neg"),
                  inline, "wf-logits")
    method = logits.get("method") or ""
    return hist + tables + (_tag("div", html.escape(method), inline, "wf-note") if method else "")


def example_html(example: dict, vmax_milli: int, color: str, inline: bool) -> str:
    """One example: its activation at the focus token, then its tokens coloured by value.

    `vmax_milli` (thousandths) is drawn at full colour. `exampleHtml` in
    widgets/feature_site.js is this function's twin for the static site, which stores
    examples packed; tests/browser/test_feature_site.py checks that the two agree."""
    vmax = vmax_milli / 1000
    focus = example["focus"]
    spans = []
    for i, (token, value) in enumerate(zip(example["tokens"], example["values"])):
        v = _milli(value) / 1000
        alpha = _alpha_percent(v, vmax)
        # Uncoloured tokens skip their rule's inline twin: rounding and padding show only on a background.
        spans.append(_tag(
            "span", html.escape(display_token(token)), inline, "wf-focus" if i == focus else "",
            rule=".wf-ex > span > span" if alpha else "",
            style=f"background-color: {_background(color, alpha)}" if alpha else "",
            title=f"{json.dumps(token, ensure_ascii=False)}: {_fmt_value(v)}",
        ))
    where = None
    if "context" in example and "position" in example:
        where = f"context {example['context']}, position {example['position']}"
    head = _tag("b", _fmt_value(_milli(example["values"][focus]) / 1000), inline, rule=".wf-ex > b", title=where)
    return _tag("div", head + _tag("span", "".join(spans), inline, rule=".wf-ex > span"), inline, "wf-ex")


def examples_max_milli(card: dict) -> int:
    """The largest example value in the card, in thousandths (full colour); 0 if none is > 0."""
    return max((_milli(v) for g in card["groups"] for e in g["examples"] for v in e["values"]), default=0)


def card_html(card: dict, *, inline: bool = True, color: str = DEFAULT_COLOR, packed: bool = False) -> str:
    """The card's markup: escaped text, no script.

    `inline`: give every element its rule's declarations too, so the card renders without
    widgets/feature_card.css (notebook HTML exports). `packed`: leave each group's examples
    empty for widgets/feature_site.js to fill from packed data (the static site)."""
    check_card(card)

    def stat(value: str, key: str, tip: str | None = None) -> str:
        return _tag("div", _tag("b", html.escape(value), inline, rule=".wf-stats b")
                    + _tag("span", html.escape(key), inline, rule=".wf-stats span"), inline,
                    rule=".wf-stats > div", title=tip)

    def section(title: str, sub: str) -> str:
        return _tag("div", html.escape(title) + _tag("span", html.escape(sub), inline, rule=".wf-sec > span"),
                    inline, "wf-sec")

    head = _tag("div", _tag("b", html.escape(card["title"]), inline, rule=".wf-head > b")
                + _tag("span", html.escape(card["dictionary"]), inline, rule=".wf-head > span"), inline, "wf-head")
    expl = _tag("div", html.escape(card["explanation"]), inline, "wf-expl") if card["explanation"] else ""
    n_tokens = card["n_tokens"]
    stats = _tag("div", "".join((
        stat(_percent(card["density"]), f"density · {_one_in(card['density'])}"),
        stat(f"{card['fire_count']:,}", f"fires of {n_tokens:,} tokens"),
        stat(_sig(card["max"]), "max activation"),
        stat(_sig(card["mean_firing"]), "mean when firing"),
        stat(_sig(card["skew"]), "skew"),
        stat(_sig(card["kurtosis"]), "kurtosis"),
    )), inline, "wf-stats")
    side = (
        section("Activations", "when firing, log scale")
        + _histogram_html(card["histogram"], log=True, split=None, color=color, inline=inline)
        + section("Logit effects", "direct path")
        + _logits_html(card["logits"], inline)
    )
    vmax = examples_max_milli(card)
    groups = []
    for group in card["groups"]:
        n = len(group["examples"])
        label = _tag("summary", html.escape(group["label"]) + _tag(
            "span", f"{n} example{'' if n == 1 else 's'}", inline, rule=".wf-group > summary > span"),
            inline, rule=".wf-group > summary")
        rows = "" if packed else "".join(example_html(e, vmax, color, inline) for e in group["examples"])
        groups.append(f'<details{_attrs(inline, "wf-group")} open>{label}{_tag("div", rows, inline, "wf-exs")}</details>')
    main = "".join(groups) or _tag("div", "no examples: the feature never fired", inline, "wf-empty")
    body = _tag("div", _tag("div", side, inline, "wf-side") + _tag("div", main, inline, "wf-main"), inline, "wf-body")
    return _tag("div", head + expl + stats + body, inline, "wf-card", data_feature=str(card["feature"]))


# ---------------------------------------------------------------------------------------
# Front-end files: ES modules with relative imports, bundled into one script.

_IMPORT = re.compile(r'^import \{([^}]*)\} from "\./([\w.-]+)\.js";[ \t]*\n', re.M)
_EXPORT = re.compile(r"^export (?:async )?(?:function\*?|const|let|class) (\w+)", re.M)
_DEFAULT = re.compile(r"^export default .*;[ \t]*$", re.M)


def bundle_js(entry: str, *, classic: bool = False) -> str:
    """`widgets/<entry>` and the modules it imports (`import { a } from "./x.js"`) as one script.

    anywidget loads one module per widget and a page opened from file:// cannot load modules
    at all, so each imported module becomes a scoped object (`const x_js = (() => {...})()`)
    and its imports read from those. `classic=False`: an ES module ending with the entry's
    `export default`; `classic=True`: a classic script (the entry's default export dropped)."""
    order: list[str] = []

    def visit(name: str, path: tuple[str, ...]) -> None:
        if name in path:
            raise ValueError(f"widgets/{name}.js imports itself through {' -> '.join(path)}")
        if name not in order:
            for _, dep in _IMPORT.findall((FRONTEND / f"{name}.js").read_text(encoding="utf-8")):
                visit(dep, (*path, name))
            order.append(name)

    root = entry.removesuffix(".js")
    visit(root, ())
    scope = lambda name: "_" + re.sub(r"\W", "_", name)  # noqa: E731
    parts = []
    for name in order:
        text = (FRONTEND / f"{name}.js").read_text(encoding="utf-8")
        text = _IMPORT.sub(lambda m: f"const {{{m[1]}}} = {scope(m[2])};\n", text)
        exported = _EXPORT.findall(text)
        if name == root:
            parts.append(re.sub(r"^export ", "", _DEFAULT.sub("", text), flags=re.M) if classic else text)
        else:
            text = re.sub(r"^export (?!default)", "", text, flags=re.M)
            body = _DEFAULT.sub("", text)
            parts.append(f"const {scope(name)} = (() => {{\n{body}\nreturn {{ {', '.join(exported)} }};\n}})();\n")
    script = "\n".join(parts)
    return f"(() => {{\n{script}\n}})();\n" if classic else script


def stylesheet(*names: str) -> str:
    """The named files of `widgets/` as one stylesheet."""
    return "\n".join((FRONTEND / name).read_text(encoding="utf-8") for name in names)


# ---------------------------------------------------------------------------------------
# The widget.


class FeatureCard(StaticHTMLWidget):
    """One feature at a glance: its statistics, activation histogram, logit effects and
    examples in groups (top activations, intervals, quantiles), tokens coloured by activation.

    Build it from a CARD dict (`FeatureCard(stats.card(7))`) or `FeatureCard.from_stats(stats, 7)`.
    Hovering a token (or a promoted or suppressed logit) highlights that token across the
    card; hovering a histogram reads out the bin. Each group folds open and shut.
    """

    _esm = bundle_js("feature_card.js")
    _css = stylesheet("feature_card.css")

    card = t.Dict(help="The CARD dict drawn (workbench.features.FeatureStats.card); checked on assignment.")
    color = t.Unicode(DEFAULT_COLOR, help="Token colour as '#rrggbb': each token at opacity value / largest value.")
    card_html = t.Unicode(help="The card's markup (card_html(card, inline=False)), set from `card`; the front "
                          "end shows it with widgets/feature_card.css.").tag(sync=True)

    def __init__(self, card: dict | None = None, **kwargs: Any) -> None:
        if card is None and "card" not in kwargs:
            raise TypeError("FeatureCard needs a card: FeatureCard(stats.card(i)) or FeatureCard.from_stats(stats, i)")
        super().__init__(card=card if card is not None else kwargs.pop("card"), **kwargs)

    @classmethod
    def from_stats(cls, stats: Any, feature: int, **kwargs: Any) -> FeatureCard:
        """The card of `feature` in `stats` (anything with `.card(feature)`, e.g. FeatureStats)."""
        return cls(stats.card(feature), **kwargs)

    @t.validate("card")
    def _valid_card(self, proposal: t.Bunch) -> dict:
        try:
            return check_card(proposal["value"])
        except ValueError as error:
            raise t.TraitError(str(error)) from None

    @t.validate("color")
    def _valid_color(self, proposal: t.Bunch) -> str:
        from workbench.widgets.heatmap import _normalise_color

        return _normalise_color(proposal["value"])

    @t.observe("card", "color")
    def _draw(self, change: t.Bunch | None = None) -> None:
        self.card_html = card_html(self.card, inline=False, color=self.color)

    def to_html(self) -> str:
        """The card as self-contained HTML (inline styles, escaped text, no JavaScript)."""
        return card_html(self.card, inline=True, color=self.color)

    def __repr__(self) -> str:
        c = self.card
        n = sum(len(g["examples"]) for g in c["groups"])
        return (f"FeatureCard({c['title']}: density {_percent(c['density'])}, max {_sig(c['max'])}, "
                f"{len(c['groups'])} groups, {n} examples)")
