"""`FeatureBrowser`: search and sort a dictionary's features, read the selected one's card, and
see which features fire on a text.

Python draws everything (the list, the card, the text view) and syncs it as markup; the front
end (`widgets/feature_browser.js`) swaps that markup in and turns clicks and typing into trait
changes: a row click sets `selected`, a column heading sets `sort_by` (again: flips
`descending`), the search box sets `query`, a token of the text sets `text_token`. The static
`text/html` fallback is the current page of the list, the text view and the selected card.

The list rows are table rows as `workbench.features.FeatureStats.table()` returns them; the same
row markup (`row_html`) makes the list of the static site (`workbench.site`).
"""

from __future__ import annotations

import html
import json
import math
import re
from collections import OrderedDict
from collections.abc import Callable, Iterable
from typing import Any

import traitlets as t

from workbench.widgets._frontend import StaticHTMLWidget

from workbench.widgets.card import _STYLES as _CARD_STYLES
from workbench.widgets.card import _attrs as _card_attrs
from workbench.widgets.card import _percent, _sig, bundle_js, card_html, stylesheet
from workbench.widgets.heatmap import DEFAULT_COLOR, _alpha_percent, _background, _fmt_value, display_token

__all__ = ["FeatureBrowser", "SORT_KEYS", "check_rows", "row_html"]

SORT_KEYS = ("feature", "density", "max", "mean_firing", "skew", "kurtosis")
"""Columns the list sorts by."""
ROW_KEYS = ("feature", "density", "fire_count", "max", "mean_firing", "skew", "kurtosis", "top_tokens",
            "top_logits", "explanation")
_HEADINGS = {"feature": "#", "density": "density", "max": "max", "mean_firing": "mean", "skew": "skew",
             "kurtosis": "kurt."}
_TIPS = {"feature": "feature id", "density": "fraction of tokens it fires on", "max": "largest activation",
         "mean_firing": "mean activation when firing", "skew": "skewness of its activations",
         "kurtosis": "kurtosis of its activations"}

_MONO = "ui-monospace, SFMono-Regular, Menlo, Consolas, monospace"

# Inline twins of the rules in widgets/feature_browser.css, by selector (a test checks they agree).
_STYLES = {
    ".wf-browser": "font-family: system-ui, -apple-system, 'Segoe UI', Roboto, sans-serif; font-size: 13px; line-height: 1.45",
    ".wf-table": "border: 1px solid rgba(128, 128, 128, 0.3); border-radius: 8px; overflow: hidden; margin-bottom: 10px",
    ".wf-rows": "max-height: 360px; overflow-y: auto",
    ".wf-row": (
        "display: flex; align-items: baseline; gap: 10px; padding: 3px 10px; "
        "border-bottom: 1px solid rgba(128, 128, 128, 0.14); cursor: pointer"
    ),
    ".wf-row > b": "flex: none; width: 44px; font-weight: 600; font-variant-numeric: tabular-nums; white-space: nowrap",
    ".wf-row > span": (
        "flex: none; width: 64px; text-align: right; font-variant-numeric: tabular-nums; white-space: nowrap; "
        "opacity: 0.85"
    ),
    ".wf-row > div": "flex: 1; min-width: 0; overflow: hidden; white-space: nowrap; text-overflow: ellipsis",
    ".wf-row code": (
        f"font-family: {_MONO}; font-size: 12px; white-space: pre; margin-right: 4px; padding: 0 3px; "
        "border-radius: 3px; background-color: rgba(255, 140, 0, 0.22)"
    ),
    ".wf-row em": "margin-left: 4px; opacity: 0.65",
    ".wf-rhead": (
        "cursor: default; font-size: 11px; font-weight: 600; letter-spacing: 0.04em; text-transform: uppercase; "
        "background-color: rgba(128, 128, 128, 0.08)"
    ),
    ".wf-sel": "background-color: rgba(37, 99, 235, 0.12); box-shadow: inset 3px 0 0 #2563eb",
    ".wf-pager": (
        "display: flex; align-items: center; justify-content: space-between; gap: 8px; padding: 4px 10px; "
        "font-size: 12px; opacity: 0.85; background-color: rgba(128, 128, 128, 0.08)"
    ),
    ".wf-pager button": "font: inherit; padding: 0 8px; cursor: pointer",
    ".wf-text": "margin-bottom: 10px; padding: 8px 12px; border: 1px solid rgba(128, 128, 128, 0.3); border-radius: 8px",
    ".wf-ttoks": f"font-family: {_MONO}; font-size: 13px; line-height: 1.9; white-space: pre-wrap; overflow-wrap: anywhere",
    ".wf-ttoks > span": "border-radius: 2px; padding: 1px 0; cursor: pointer",
    ".wf-tsel": "outline: 2px solid #2563eb",
    ".wf-tfeats": "margin-top: 8px; display: grid; grid-template-columns: repeat(auto-fill, minmax(240px, 1fr)); gap: 2px 16px",
    ".wf-tfeats > div": "grid-column: 1 / -1; font-size: 12px; opacity: 0.7",
    ".wf-tf": "display: flex; align-items: center; gap: 8px; padding: 1px 4px; border-radius: 4px; cursor: pointer",
    ".wf-tf > b": "flex: none; width: 3.6em; font-variant-numeric: tabular-nums",
    ".wf-tf > span": "flex: none; width: 60px; height: 8px; border-radius: 2px; background-color: rgba(128, 128, 128, 0.18)",
    ".wf-tf > span > i": "display: block; height: 100%; border-radius: 2px; background-color: #ff8c00",
    ".wf-tf > em": "flex: none; font-style: normal; font-size: 12px; font-variant-numeric: tabular-nums; opacity: 0.8",
    ".wf-tf > div": "flex: 1; min-width: 0; overflow: hidden; white-space: nowrap; text-overflow: ellipsis",
    ".wf-tf code": f"font-family: {_MONO}; font-size: 11px; white-space: pre; margin-right: 3px; opacity: 0.75",
}
_RULES = {**_CARD_STYLES, **_STYLES}
"""The rules an element of the browser may name: the card's and the browser's own."""


def _attrs(inline: bool, cls: str = "", rule: str = "", style: str = "", **extra: str | None) -> str:
    """As card._attrs, over this module's rules and the card's (e.g. `.wf-sec`)."""
    return _card_attrs(inline, cls, rule, style, rules=_RULES, **extra)


def _tag(name: str, content: str, inline: bool, cls: str = "", rule: str = "", style: str = "",
         **extra: str | None) -> str:
    return f"<{name}{_attrs(inline, cls, rule, style, **extra)}>{content}</{name}>"


# ---------------------------------------------------------------------------------------
# Rows: checking, searching, sorting.


def check_rows(rows: Iterable[dict]) -> list[dict]:
    """`rows` as a list if each is a table row (FeatureStats.table()); else a ValueError
    naming the bad field. Feature ids must be distinct."""
    out, seen = [], set()
    for i, row in enumerate(rows):
        where = f"rows[{i}]"
        if not isinstance(row, dict):
            raise ValueError(f"{where} must be a dict (a row of FeatureStats.table()); got {type(row).__name__}")
        missing = [k for k in ROW_KEYS if k not in row]
        if missing:
            raise ValueError(f"{where} is missing {missing} (a row of FeatureStats.table())")
        feature = row["feature"]
        if isinstance(feature, bool) or not isinstance(feature, int):
            raise ValueError(f"{where}['feature'] must be an int; got {feature!r}")
        if feature in seen:
            raise ValueError(f"{where}['feature'] is {feature}, which an earlier row has too; ids must be distinct")
        seen.add(feature)
        for key in ("density", "fire_count", "max", "mean_firing", "skew", "kurtosis"):
            v = row[key]
            if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v):
                raise ValueError(f"{where}[{key!r}] must be a finite number; got {v!r}")
        for key in ("top_tokens", "top_logits"):
            if not isinstance(row[key], list) or not all(isinstance(s, str) for s in row[key]):
                raise ValueError(f"{where}[{key!r}] must be a list of str")
        if not isinstance(row["explanation"], str):
            raise ValueError(f"{where}['explanation'] must be a str")
        out.append(row)
    return out


def haystack(row: dict) -> str:
    """What a text query is matched against (lower case): top tokens, top logits, explanation."""
    return "\n".join([*row["top_tokens"], *row["top_logits"], row["explanation"]]).lower()


_ID = re.compile(r"#?(\d+)")


def find(rows: list[dict], query: str, search: Callable[[str], Iterable[int]] | None = None,
         haystacks: list[str] | None = None) -> list[int]:
    """Indices into `rows` matching `query`: an id (`17` or `#17`) matches that feature; any
    text matches rows whose top tokens, top logits or explanation contain it (any case), and
    the features `search(text)` returns (e.g. FeatureStats.search: text in their examples).
    An empty query matches every row. In row order. `haystacks`: `haystack(row)` of each row,
    if already at hand."""
    query = query.strip()
    if not query:
        return list(range(len(rows)))
    wanted = set()
    if m := _ID.fullmatch(query):
        wanted.add(int(m.group(1)))
        if query.startswith("#"):
            return [i for i, r in enumerate(rows) if r["feature"] in wanted]
    if search is not None:
        wanted.update(int(f) for f in search(query))
    needle = query.lower()
    hay = haystacks if haystacks is not None else [haystack(r) for r in rows]
    return [i for i, r in enumerate(rows) if r["feature"] in wanted or needle in hay[i]]


def sort_rows(rows: list[dict], indices: list[int], sort_by: str, descending: bool) -> list[int]:
    """`indices` ordered by `rows[i][sort_by]`, ties by feature id (always ascending)."""
    if sort_by not in SORT_KEYS:
        raise ValueError(f"sort_by must be one of {SORT_KEYS}; got {sort_by!r}")
    sign = -1 if descending else 1
    return sorted(indices, key=lambda i: (sign * rows[i][sort_by], rows[i]["feature"]))


# ---------------------------------------------------------------------------------------
# Markup.


def _cells(row: dict) -> list[str]:
    return [_percent(row["density"]), _sig(row["max"]), _sig(row["mean_firing"]), _sig(row["skew"]),
            _sig(row["kurtosis"])]


def row_html(row: dict, *, selected: bool = False, inline: bool = False) -> str:
    """One row of the list: id, density, max, mean, skew, kurtosis, top tokens, explanation."""
    cells = "".join(_tag("span", c, inline, rule=".wf-row > span") for c in _cells(row))
    tokens = "".join(_tag("code", html.escape(display_token(s)), inline, rule=".wf-row code") for s in row["top_tokens"])
    expl = _tag("em", html.escape(row["explanation"]), inline, rule=".wf-row em") if row["explanation"] else ""
    tip = "top logits: " + ", ".join(json.dumps(s, ensure_ascii=False) for s in row["top_logits"]) if row["top_logits"] else None
    return _tag("div", _tag("b", str(row["feature"]), inline, rule=".wf-row > b") + cells
                + _tag("div", tokens + expl, inline, rule=".wf-row > div", title=tip),
                inline, "wf-row wf-sel" if selected else "wf-row", data_f=str(row["feature"]))


def heading_html(sort_by: str, descending: bool, *, inline: bool = False) -> str:
    """The list's heading row; each sortable heading carries `data-sort`, the current one an arrow."""
    def heading(key: str, tag: str, rule: str) -> str:
        arrow = (" ↓" if descending else " ↑") if key == sort_by else ""
        return _tag(tag, _HEADINGS[key] + arrow, inline, rule=rule, data_sort=key, title=f"sort by {_TIPS[key]}")

    cells = heading("feature", "b", ".wf-row > b") + "".join(heading(k, "span", ".wf-row > span") for k in SORT_KEYS[1:])
    return _tag("div", cells + _tag("div", "top tokens · explanation", inline, rule=".wf-row > div"), inline,
                "wf-row wf-rhead")


def table_html(rows: list[dict], order: list[int], *, sort_by: str, descending: bool, selected: int, page: int,
               page_size: int, n_total: int, inline: bool = False) -> str:
    """A page of the list (rows `order[page * page_size:]`), its heading and its pager."""
    n_pages = max(1, math.ceil(len(order) / page_size))
    shown = order[page * page_size:(page + 1) * page_size]
    body = "".join(row_html(rows[i], selected=rows[i]["feature"] == selected, inline=inline) for i in shown)
    if not shown:
        body = _tag("div", "no feature matches", inline, "wf-empty", style="padding: 6px 10px")
    first, last = page * page_size + 1, page * page_size + len(shown)
    where = f"{first:,}–{last:,} of {len(order):,}" if shown else f"0 of {len(order):,}"
    if len(order) != n_total:
        where += f" matching (of {n_total:,} features)"
    else:
        where += " features"

    def button(label: str, to: int, tip: str) -> str:
        disabled = not 0 <= to < n_pages
        return (f'<button{_attrs(inline, rule=".wf-pager button", data_page=str(to), title=tip)}'
                f'{" disabled" if disabled else ""}>{label}</button>')

    pager = _tag("div", button("‹", page - 1, "previous page") + f"<span>{where} · page {page + 1} of {n_pages}</span>"
                 + button("›", page + 1, "next page"), inline, "wf-pager")
    return _tag("div", heading_html(sort_by, descending, inline=inline) + _tag("div", body, inline, "wf-rows") + pager,
                inline, "wf-table")


def check_text(text: Any) -> dict:
    """`text` (TextFeatures or its to_dict()) as a checked dict; else a ValueError."""
    if hasattr(text, "to_dict"):
        text = text.to_dict()
    if not isinstance(text, dict) or not {"tokens", "per_token", "ranking"} <= set(text):
        raise ValueError("show_text takes TextFeatures (or its to_dict()): {'tokens', 'per_token', 'ranking'}")
    tokens, per_token, ranking = text["tokens"], text["per_token"], text["ranking"]
    if not isinstance(tokens, list) or not all(isinstance(s, str) for s in tokens):
        raise ValueError("text['tokens'] must be a list of str")
    if not isinstance(per_token, list) or len(per_token) != len(tokens):
        raise ValueError(f"text['per_token'] must hold one list per token; got {len(per_token)} for {len(tokens)} tokens")
    clean = []
    for i, pairs in enumerate(per_token):
        try:
            clean.append([(int(f), float(a)) for f, a in pairs])
        except (TypeError, ValueError):
            raise ValueError(f"text['per_token'][{i}] must be a list of [feature, activation] pairs") from None
    try:
        ranked = [(int(f), float(total), int(n)) for f, total, n in ranking]
    except (TypeError, ValueError):
        raise ValueError("text['ranking'] must be a list of [feature, total_activation, n_tokens] triples") from None
    return {"tokens": list(tokens), "per_token": clean, "ranking": ranked}


def text_html(text: dict, *, selected: int, token: int, rows_by_feature: dict[int, dict], color: str = DEFAULT_COLOR,
              inline: bool = False) -> str:
    """The text's tokens, coloured by the selected feature's activation (or, if it does not
    fire here, by how many features fire), and the features active on `token` (or, with no
    token chosen, the features ranked over the text). Rows carry `data-f`, tokens `data-i`."""
    tokens, per_token = text["tokens"], text["per_token"]
    own = [dict(pairs).get(selected, 0.0) for pairs in per_token]
    by_selected = selected >= 0 and any(v > 0 for v in own)
    values = own if by_selected else [float(len(p)) for p in per_token]
    vmax = max(values, default=0.0)
    tint = color if by_selected else "#6b7280"
    spans = []
    for i, (tok, pairs) in enumerate(zip(tokens, per_token)):
        alpha = _alpha_percent(values[i], vmax)
        tip = f"{json.dumps(tok, ensure_ascii=False)}: {len(pairs)} feature{'' if len(pairs) == 1 else 's'}"
        if by_selected:
            tip += f"; feature {selected}: {_fmt_value(own[i])}"
        spans.append(_tag("span", html.escape(display_token(tok)), inline, "wf-tsel" if i == token else "",
                          rule=".wf-ttoks > span", style=f"background-color: {_background(tint, alpha)}" if alpha else "",
                          data_i=str(i), title=tip))
    how = f"coloured by feature {selected}" if by_selected else "coloured by how many features fire"
    head = _tag("div", "Which features fire here" + _tag("span", f"{how} · click a token", inline, rule=".wf-sec > span"),
                inline, "wf-sec")

    def feature_row(f: int, value: float, note: str, top: float) -> str:
        row = rows_by_feature.get(f)
        pills = "".join(_tag("code", html.escape(display_token(s)), inline, rule=".wf-tf code")
                        for s in (row["top_tokens"] if row else [])[:3])
        width = 0 if not top > 0 else max(2, round(100 * value / top))
        bar = _tag("span", _tag("i", "", inline, rule=".wf-tf > span > i", style=f"width: {width}%"), inline,
                   rule=".wf-tf > span")
        return _tag("div", _tag("b", f"#{f}", inline, rule=".wf-tf > b") + bar + _tag("em", note, inline, rule=".wf-tf > em")
                    + _tag("div", pills, inline, rule=".wf-tf > div"), inline,
                    "wf-tf wf-sel" if f == selected else "wf-tf", data_f=str(f))

    if 0 <= token < len(tokens):
        pairs = sorted(per_token[token], key=lambda p: -p[1])
        top = max((a for _, a in pairs), default=0.0)
        title = (f"token {json.dumps(tokens[token], ensure_ascii=False)} (position {token}): "
                 f"{len(pairs)} feature{'' if len(pairs) == 1 else 's'} fire")
        items = [feature_row(f, a, _fmt_value(a), top) for f, a in pairs]
    else:
        ranking = text["ranking"][:12]
        top = max((total for _, total, _ in ranking), default=0.0)
        title = "features over the whole text (total activation, tokens active)"
        items = [feature_row(f, total, f"{_fmt_value(total)} on {n}", top) for f, total, n in ranking]
    listing = _tag("div", _tag("div", html.escape(title), inline, rule=".wf-tfeats > div") + "".join(items), inline,
                   "wf-tfeats")
    return _tag("div", head + _tag("div", "".join(spans), inline, "wf-ttoks") + listing, inline, "wf-text")


# ---------------------------------------------------------------------------------------
# The widget.


class FeatureBrowser(StaticHTMLWidget):
    """Browse a dictionary's features: a searchable, sortable list and the selected feature's card.

    `FeatureBrowser(stats)` takes anything with `.table()` and `.card(i)` (and, if it has one,
    `.search(text)`), e.g. a FeatureStats; `FeatureBrowser(rows, card=fn)` takes table rows and
    a function from feature id to CARD dict. `show_text(text_features)` adds "which features
    fire here": the text coloured by the selected feature; click a token to list the features
    active on it, click one of those to open its card.
    """

    _esm = bundle_js("feature_browser.js")
    _css = stylesheet("feature_card.css", "feature_browser.css")

    query = t.Unicode("", help="Search: a feature id ('17' or '#17'), or text matched against top tokens, top "
                      "logits and explanations (and the examples, through the source's search()).").tag(sync=True)
    sort_by = t.Enum(SORT_KEYS, "feature", help=f"Column the list is sorted by: one of {SORT_KEYS}.").tag(sync=True)
    descending = t.Bool(False, help="Sort from the largest value down.").tag(sync=True)
    selected = t.Int(-1, help="The feature whose card is shown; -1 for none.").tag(sync=True)
    page = t.Int(0, help="Page of the list shown, from 0 (clamped to the last page).").tag(sync=True)
    page_size = t.Int(50, help="Rows per page of the list.").tag(sync=True)
    text_token = t.Int(-1, help="Token of the shown text whose features are listed; -1 for the ranking over the text.").tag(
        sync=True)
    n_matches = t.Int(0, help="How many features match the query (read only).").tag(sync=True)
    table_html = t.Unicode(help="The list's current page as markup (set by Python).").tag(sync=True)
    card_html = t.Unicode(help="The selected feature's card as markup (set by Python).").tag(sync=True)
    text_html = t.Unicode(help="The text view as markup, empty until show_text (set by Python).").tag(sync=True)

    def __init__(self, source: Any, *, card: Callable[[int], dict] | None = None,
                 search: Callable[[str], Iterable[int]] | None = None, **kwargs: Any) -> None:
        if hasattr(source, "table") and callable(source.table):
            rows = source.table()
            card = card or getattr(source, "card", None)
            search = search or getattr(source, "search", None)
        elif isinstance(source, (str, bytes, dict)) or not isinstance(source, Iterable):
            raise TypeError("FeatureBrowser takes FeatureStats (anything with .table() and .card(i)) or a list of "
                            f"table rows with card=fn; got {type(source).__name__}")
        else:
            rows = source
        self._rows = check_rows(rows)
        self._index = {r["feature"]: i for i, r in enumerate(self._rows)}
        self._haystacks = [haystack(r) for r in self._rows]
        self._card_of, self._search = card, search
        self._cards: OrderedDict[tuple[int, bool], str] = OrderedDict()
        self._text: dict | None = None
        self._order: list[int] = []
        super().__init__(**kwargs)
        self._refind()
        self._draw_card()

    # --- validation ------------------------------------------------------------------

    @t.validate("selected")
    def _valid_selected(self, proposal: t.Bunch) -> int:
        f = proposal["value"]
        if f != -1 and f not in self._index:
            raise t.TraitError(f"selected must be -1 or a feature in the list; there is no feature {f}")
        return f

    @t.validate("page")
    def _valid_page(self, proposal: t.Bunch) -> int:
        n_pages = max(1, math.ceil(len(self._order) / self.page_size))
        return min(max(proposal["value"], 0), n_pages - 1)

    @t.validate("page_size")
    def _valid_page_size(self, proposal: t.Bunch) -> int:
        if proposal["value"] < 1:
            raise t.TraitError(f"page_size must be >= 1; got {proposal['value']}")
        return proposal["value"]

    # --- reactions -------------------------------------------------------------------

    @t.observe("query", "sort_by", "descending")
    def _on_find(self, change: t.Bunch) -> None:
        self._refind()

    def _refind(self) -> None:
        found = find(self._rows, self.query, self._search, self._haystacks)
        self._order = sort_rows(self._rows, found, self.sort_by, self.descending)
        self.n_matches = len(self._order)
        if self.page != 0:
            self.page = 0  # its observer draws the table
        else:
            self._draw_table()

    @t.observe("page", "page_size")
    def _on_page(self, change: t.Bunch) -> None:
        if change["name"] == "page_size":
            self.page = self.page  # clamp again
        self._draw_table()

    @t.observe("selected")
    def _on_selected(self, change: t.Bunch) -> None:
        self._draw_table()
        self._draw_card()
        self._draw_text()

    @t.observe("text_token")
    def _on_text_token(self, change: t.Bunch) -> None:
        self._draw_text()

    def _table(self, inline: bool) -> str:
        return table_html(self._rows, self._order, sort_by=self.sort_by, descending=self.descending,
                          selected=self.selected, page=self.page, page_size=self.page_size,
                          n_total=len(self._rows), inline=inline)

    def _draw_table(self) -> None:
        self.table_html = self._table(inline=False)

    def _card(self, inline: bool) -> str:
        f = self.selected
        if f < 0:
            return _tag("div", "Select a feature to see its card.", inline, "wf-empty", style="padding: 8px 2px")
        if self._card_of is None:
            return _tag("div", f"No card source: pass card=fn (feature -> CARD dict) to show feature {f}.", inline,
                        "wf-empty")
        key = (f, inline)
        if key not in self._cards:
            try:
                self._cards[key] = card_html(self._card_of(f), inline=inline)
            except Exception as error:  # shown where the card would be, not lost in a callback log
                return _tag("div", html.escape(f"Could not draw feature {f}'s card: {type(error).__name__}: {error}"),
                            inline, "wf-empty")
            while len(self._cards) > 16:
                self._cards.popitem(last=False)
        self._cards.move_to_end(key)
        return self._cards[key]

    def _draw_card(self) -> None:
        self.card_html = self._card(inline=False)

    def _textview(self, inline: bool) -> str:
        if self._text is None:
            return ""
        rows = {f: self._rows[i] for f, i in self._index.items()}
        return text_html(self._text, selected=self.selected, token=self.text_token, rows_by_feature=rows, inline=inline)

    def _draw_text(self) -> None:
        self.text_html = self._textview(inline=False)

    # --- API -------------------------------------------------------------------------

    @property
    def rows(self) -> list[dict]:
        """The table rows, as given."""
        return self._rows

    def matches(self) -> list[int]:
        """Feature ids matching the query, in the list's order (every page)."""
        return [self._rows[i]["feature"] for i in self._order]

    def show_text(self, text: Any) -> None:
        """Show which features fire on a text: `text` is TextFeatures or its to_dict()
        ({'tokens', 'per_token', 'ranking'}, workbench.features.text_features)."""
        self._text = check_text(text)
        with self.hold_trait_notifications():
            self.text_token = -1
        self._draw_text()

    def to_html(self) -> str:
        """Self-contained HTML (inline styles, no JavaScript): the list's current page, the
        text view (if any) and the selected card."""
        return _tag("div", self._table(True) + self._textview(True) + self._card(True), True, "wf-browser")

    def __repr__(self) -> str:
        chosen = f", feature {self.selected} selected" if self.selected >= 0 else ""
        query = f", query {self.query!r} matches {self.n_matches:,}" if self.query else ""
        return f"FeatureBrowser({len(self._rows):,} features{query}{chosen})"
