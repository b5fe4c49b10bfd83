"""Token heatmaps: `TokenHeatmap` (one sequence) and `FeatureContexts` (several rows).

Each token is drawn on a background whose opacity is its value over the maximum. The
traits below sync to `widgets/token_heatmap.js` (styled by `widgets/token_heatmap.css`).
Its `_repr_mimebundle_` also carries a self-contained `text/html` rendering (`to_html()`:
inline styles, no JavaScript), so a notebook viewed without a kernel, and its HTML export,
still show the picture.
"""

from __future__ import annotations

import html
import json
import math
import re
from collections.abc import Iterable
from typing import Any

import traitlets as t

from workbench.widgets._frontend import FRONTEND, StaticHTMLWidget

__all__ = ["FeatureContexts", "TokenHeatmap"]

DEFAULT_COLOR = "#ff8c00"
"""Orange: rgba(255, 140, 0, value / max)."""

# Inline twins of the rules in widgets/token_heatmap.css (tests check that they agree).
_STYLES = {
    "wb-heatmap": (
        "font-family: ui-monospace, SFMono-Regular, Menlo, Consolas, monospace; "
        "font-size: 13px; line-height: 1.8"
    ),
    "wb-title": "font-family: system-ui, sans-serif; font-weight: 600; margin-bottom: 4px",
    "wb-row": "display: flex; align-items: baseline; gap: 12px",
    "wb-max": "flex: none; width: 7em; text-align: right; opacity: 0.7; white-space: nowrap",
    "wb-label": (
        "flex: none; width: 12em; opacity: 0.7; white-space: nowrap; overflow: hidden; "
        "text-overflow: ellipsis"
    ),
    "wb-tokens": "flex: 1; min-width: 0; white-space: pre-wrap; overflow-wrap: anywhere",
    "wb-tok": "border-radius: 2px; padding: 1px 0",
}


# ---------------------------------------------------------------------------------------
# Formatting shared by the static HTML and (as twins in token_heatmap.js) the front end.


def display_token(token: str) -> str:
    """How a token is shown: newline as ⏎, tab as ⇥, other control characters as their
    Unicode control pictures (␀...␟, ␡), the empty token as ∅; spaces are kept."""
    if token == "":
        return "∅"
    out = []
    for ch in token:
        code = ord(ch)
        if ch == "\n":
            out.append("⏎")
        elif ch == "\t":
            out.append("⇥")
        elif code < 0x20:
            out.append(chr(0x2400 + code))
        elif code == 0x7F:
            out.append("␡")
        else:
            out.append(ch)
    return "".join(out)


def _fmt_value(v: float) -> str:
    """`v` rounded half-up to three decimals (0.0625 -> "0.063"), as the front end does."""
    n = math.floor(v * 1000 + 0.5)
    sign = "-" if n < 0 else ""
    n = abs(n)
    return f"{sign}{n // 1000}.{n % 1000:03d}"


def _alpha_percent(v: float, vmax: float) -> int:
    """Background opacity in whole percent: `v / vmax` clipped to [0, 1]."""
    if not vmax > 0:
        return 0
    a = min(max(v / vmax, 0.0), 1.0)
    return math.floor(a * 100 + 0.5)


def _background(color: str, percent: int) -> str:
    """CSS background for one token; `color` is "#rrggbb"."""
    r, g, b = (int(color[i : i + 2], 16) for i in (1, 3, 5))
    alpha = "1" if percent >= 100 else "0" if percent <= 0 else str(percent / 100)
    return f"rgba({r}, {g}, {b}, {alpha})"


def _tooltip(token: str, value: float) -> str:
    return f"{json.dumps(token, ensure_ascii=False)}: {_fmt_value(value)}"


def _largest(values: list[float]) -> float:
    return max(values) if values else 0.0


def _render_html(
    rows: list[dict[str, Any]], *, headers: bool, max_value: float, color: str, title: str
) -> str:
    """The static rendering: the DOM `token_heatmap.js` builds, with inline styles."""

    def tag(name: str, cls: str, content: str, tip: str | None = None, style: str = "") -> str:
        """An element of class `cls` (with its inline style) around `content` (HTML)."""
        attrs = f'class="{cls}" style="{_STYLES[cls]}{style}"'
        if tip is not None:
            attrs += f' title="{html.escape(tip)}"'
        return f"<{name} {attrs}>{content}</{name}>"

    vmax = max_value if max_value > 0 else _largest([v for r in rows for v in r["values"]])
    parts = []
    if title:
        parts.append(tag("div", "wb-title", html.escape(title)))
    # Row headers: the row's largest value, then its label if any row has one.
    labels = headers and any(row["label"] for row in rows)
    for row in rows:
        cells = []
        if headers:
            row_max = f"max {_fmt_value(_largest(row['values']))}"
            cells.append(tag("span", "wb-max", html.escape(row_max), tip="largest value in this row"))
        if labels:
            cells.append(tag("span", "wb-label", html.escape(row["label"]), tip=row["label"]))
        spans = "".join(
            tag(
                "span",
                "wb-tok",
                html.escape(display_token(token)),
                tip=_tooltip(token, value),
                style=f"; background-color: {_background(color, _alpha_percent(value, vmax))}",
            )
            for token, value in zip(row["tokens"], row["values"])
        )
        cells.append(tag("span", "wb-tokens", spans))
        parts.append(tag("div", "wb-row", "".join(cells)))
    return tag("div", "wb-heatmap", "".join(parts))


# ---------------------------------------------------------------------------------------
# Traits and validation.


class _Floats(t.List):
    """A list of finite floats; also takes other iterables and anything with `.tolist()`
    (numpy arrays, torch tensors)."""

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(trait=t.Float(), **kwargs)

    def validate(self, obj: Any, value: Any) -> list[float]:
        if hasattr(value, "tolist"):
            value = value.tolist()
        elif isinstance(value, Iterable) and not isinstance(value, (str, bytes, dict)):
            value = list(value)
        value = super().validate(obj, value)
        _check_finite(value, self.name)
        return [float(v) for v in value]


def _check_finite(values: list[float], what: str) -> None:
    for i, v in enumerate(values):
        if not math.isfinite(v):
            raise t.TraitError(f"{what}[{i}] is {v}; values must be finite (no NaN or inf)")


_HEX = re.compile(r"#([0-9a-fA-F]{3}|[0-9a-fA-F]{6})")
_RGB = re.compile(r"rgb\(\s*(\d{1,3})\s*,\s*(\d{1,3})\s*,\s*(\d{1,3})\s*\)")


def _normalise_color(color: str) -> str:
    """'#rgb', '#rrggbb' or 'rgb(r, g, b)' as lowercase '#rrggbb'."""
    text = color.strip()
    if m := _HEX.fullmatch(text):
        digits = m.group(1).lower()
        return "#" + (digits if len(digits) == 6 else "".join(d * 2 for d in digits))
    if (m := _RGB.fullmatch(text)) and all(int(c) <= 255 for c in m.groups()):
        return "#" + "".join(f"{int(c):02x}" for c in m.groups())
    raise t.TraitError(f"color must be '#rrggbb', '#rgb' or 'rgb(r, g, b)'; got {color!r}")


class _HeatmapView(StaticHTMLWidget):
    """What TokenHeatmap and FeatureContexts share: colour scale, title, static HTML."""

    _esm = FRONTEND / "token_heatmap.js"
    _css = FRONTEND / "token_heatmap.css"

    max_value = t.Float(
        0.0,
        help="Value drawn at full colour; 0 means the largest value shown. "
        "Values at or below 0 get no colour.",
    ).tag(sync=True)
    color = t.Unicode(
        DEFAULT_COLOR,
        help="Background colour as '#rrggbb', '#rgb' or 'rgb(r, g, b)'; stored as '#rrggbb'. "
        "Each token gets it at opacity value / max.",
    ).tag(sync=True)
    title = t.Unicode("", help="Heading above the tokens; empty for none.").tag(sync=True)

    @t.validate("max_value")
    def _valid_max_value(self, proposal: t.Bunch) -> float:
        value = proposal["value"]
        if not (math.isfinite(value) and value >= 0):
            raise t.TraitError(f"max_value must be finite and >= 0 (0 = automatic); got {value}")
        return value

    @t.validate("color")
    def _valid_color(self, proposal: t.Bunch) -> str:
        return _normalise_color(proposal["value"])

    def _rows(self) -> list[dict[str, Any]]:
        raise NotImplementedError

    _headers = False
    """Whether each row starts with its largest value and label (FeatureContexts) or not."""

    def to_html(self) -> str:
        """The widget as self-contained HTML (inline styles, escaped text, no JavaScript)."""
        return _render_html(
            self._rows(),
            headers=self._headers,
            max_value=self.max_value,
            color=self.color,
            title=self.title,
        )


class TokenHeatmap(_HeatmapView):
    """One sequence of tokens, each on a background as strong as its value.

    Hovering a token shows it (quoted, escapes visible) and its value. To change tokens
    and values together, use `set_data` (setting one alone must keep the lengths equal).
    """

    tokens = t.List(t.Unicode(), help="The tokens, as decoded strings.").tag(sync=True)
    values = _Floats(help="One finite value per token, e.g. a feature's activation.").tag(
        sync=True
    )

    def __init__(
        self, tokens: Iterable[str] = (), values: Iterable[float] = (), **kwargs: Any
    ) -> None:
        super().__init__(tokens=list(tokens), values=values, **kwargs)

    @t.validate("tokens", "values")
    def _same_length(self, proposal: t.Bunch) -> list:
        name = proposal["trait"].name
        tokens = proposal["value"] if name == "tokens" else self.tokens
        values = proposal["value"] if name == "values" else self.values
        if len(tokens) != len(values):
            raise t.TraitError(
                f"tokens and values must have the same length; got {len(tokens)} tokens and "
                f"{len(values)} values (to change both, use set_data)"
            )
        return proposal["value"]

    def set_data(self, tokens: Iterable[str], values: Iterable[float]) -> None:
        """Replace tokens and values at once (one validation, one front-end update)."""
        with self.hold_sync(), self.hold_trait_notifications():
            self.tokens = list(tokens)
            self.values = values

    def _rows(self) -> list[dict[str, Any]]:
        return [{"tokens": self.tokens, "values": self.values, "label": ""}]

    def __repr__(self) -> str:
        return f"TokenHeatmap({len(self.tokens)} tokens, max {_fmt_value(_largest(self.values))})"


class FeatureContexts(_HeatmapView):
    """Several token sequences on one colour scale, e.g. a feature's top-activating contexts.

    Each row starts with its own largest value and, if any row has one, its label.
    `max_value` (0 = the largest over all rows) sets full colour for every row, so rows
    compare at a glance.
    """

    rows = t.List(
        t.Dict(),
        help="One dict per row: 'tokens' (list of str), 'values' (one finite float per "
        "token) and optionally 'label' (str).",
    ).tag(sync=True)

    _headers = True

    @classmethod
    def from_lists(
        cls,
        tokens: Iterable[Iterable[str]],
        values: Iterable[Iterable[float]],
        labels: Iterable[str] | None = None,
        **kwargs: Any,
    ) -> FeatureContexts:
        """Rows from parallel lists: token lists, value lists and (optionally) labels."""
        tokens, values = list(tokens), list(values)
        labels = [""] * len(tokens) if labels is None else list(labels)
        if not len(tokens) == len(values) == len(labels):
            raise ValueError(
                f"need one value list and label per token list; got {len(tokens)} token "
                f"lists, {len(values)} value lists and {len(labels)} labels"
            )
        rows = [
            {"tokens": list(tk), "values": vs, "label": lb}
            for tk, vs, lb in zip(tokens, values, labels)
        ]
        return cls(rows=rows, **kwargs)

    @t.validate("rows")
    def _valid_rows(self, proposal: t.Bunch) -> list[dict[str, Any]]:
        return [_valid_row(i, row) for i, row in enumerate(proposal["value"])]

    def _rows(self) -> list[dict[str, Any]]:
        return self.rows

    def __repr__(self) -> str:
        return f"FeatureContexts({len(self.rows)} rows)"


def _valid_row(i: int, row: dict[str, Any]) -> dict[str, Any]:
    """Row `i` checked and normalised to {'tokens': [str], 'values': [float], 'label': str}."""
    where = f"rows[{i}]"
    unknown = set(row) - {"tokens", "values", "label"}
    missing = {"tokens", "values"} - set(row)
    if unknown or missing:
        raise t.TraitError(
            f"{where} must have keys 'tokens', 'values' and optionally 'label'; "
            + "; ".join(
                f"{what} {sorted(keys)}"
                for what, keys in (("missing", missing), ("unexpected", unknown))
                if keys
            )
        )
    tokens, values, label = row["tokens"], row["values"], row.get("label", "")
    if hasattr(values, "tolist"):
        values = values.tolist()
    if not isinstance(tokens, (list, tuple)) or not all(isinstance(s, str) for s in tokens):
        raise t.TraitError(f"{where}['tokens'] must be a list of str")
    if not isinstance(values, (list, tuple)) or not all(
        isinstance(v, (int, float)) and not isinstance(v, bool) for v in values
    ):
        raise t.TraitError(f"{where}['values'] must be a list of floats")
    if len(tokens) != len(values):
        raise t.TraitError(
            f"{where} has {len(tokens)} tokens but {len(values)} values; they must match"
        )
    _check_finite(values, f"{where}['values']")
    if not isinstance(label, str):
        raise t.TraitError(f"{where}['label'] must be a str; got {type(label).__name__}")
    return {"tokens": list(tokens), "values": [float(v) for v in values], "label": label}
