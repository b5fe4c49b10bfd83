"""Traits with every response, and what in a prompt drives a feature.

- `Transcript`: turns of (prompt, reply, traits), each reply with its traits as chips under it:
  the feature's title, its total activation over the reply and its lift (density over the reply
  / usual density), as `workbench.steer.reply_traits` returns them. Clicking a chip opens the
  feature's card (or only its top examples) under that turn. `append` adds a turn, so it can
  follow a chat loop.
- `TraitChips`: one reply and its traits (a Transcript of one turn).
- `PromptHeatmap`: signed values over prompt tokens on a diverging scale, blue above 0 and red
  below, e.g. `workbench.attribute.prompt_attribution(...).to_dict()` (occlusion, and gradient x
  input marked as an estimate).

Python draws the markup (`view_html`; with inline styles it is `to_html()`, the static
fallback); `widgets/traits.js` swaps it in and turns chip clicks into trait changes.
"""

from __future__ import annotations

import html
import json
import math
from collections.abc import Callable, Iterable, Mapping
from typing import Any

import traitlets as t

from workbench.widgets._frontend import StaticHTMLWidget
from workbench.widgets.card import _STYLES as _CARD_STYLES
from workbench.widgets.card import _attrs as _card_attrs
from workbench.widgets.card import _sig, bundle_js, card_html, check_card, example_html, examples_max_milli, stylesheet
from workbench.widgets.heatmap import DEFAULT_COLOR, _alpha_percent, _background, _fmt_value, display_token

__all__ = ["PromptHeatmap", "TraitChips", "Transcript", "check_traits", "diverging_background"]

POSITIVE_RGB = (37, 99, 235)
"""Blue: values above 0 (as the card's promoted logits)."""
NEGATIVE_RGB = (220, 38, 38)
"""Red: values below 0."""
FULL_OPACITY = 0.6
"""Opacity of the largest |value| in PromptHeatmap: black text stays readable on blue and red."""
DETAILS = ("card", "examples")

_MONO = "ui-monospace, SFMono-Regular, Menlo, Consolas, monospace"
_SANS = "system-ui, -apple-system, 'Segoe UI', Roboto, sans-serif"

# Inline twins of the rules in widgets/traits.css (a test checks that they agree).
_STYLES = {
    ".wi-transcript": f"font-family: {_SANS}; font-size: 13px; line-height: 1.45",
    ".wi-turn": "padding: 8px 0 10px; border-bottom: 1px solid rgba(128, 128, 128, 0.2)",
    ".wi-prompt": (
        "margin: 0 0 6px 15%; padding: 5px 10px; border-radius: 10px 10px 2px 10px; "
        "background-color: rgba(128, 128, 128, 0.12); white-space: pre-wrap; overflow-wrap: anywhere"
    ),
    ".wi-reply": "padding: 2px 2px 4px; white-space: pre-wrap; overflow-wrap: anywhere",
    ".wi-who": (
        "display: block; font-size: 10px; font-weight: 600; letter-spacing: 0.05em; text-transform: uppercase; "
        "opacity: 0.55"
    ),
    ".wi-chips": "display: flex; flex-wrap: wrap; align-items: center; gap: 4px 6px; margin-top: 4px",
    ".wi-chips > em": "font-size: 11px; font-style: normal; opacity: 0.6; margin-right: 2px",
    ".wi-chip": (
        "display: inline-flex; align-items: baseline; gap: 6px; padding: 1px 9px; font-size: 12px; "
        "border: 1px solid rgba(255, 140, 0, 0.55); border-radius: 12px; white-space: nowrap"
    ),
    ".wi-chip > b": "font-weight: 600; max-width: 260px; overflow: hidden; text-overflow: ellipsis",
    ".wi-chip > span": "font-size: 11px; opacity: 0.75; font-variant-numeric: tabular-nums",
    ".wi-open": "box-shadow: 0 0 0 2px #2563eb",
    ".wi-detail": "margin-top: 8px",
    ".wi-dhead": "display: flex; align-items: baseline; gap: 10px; margin-bottom: 4px; font-size: 12px",
    ".wi-dhead > b": "font-weight: 600",
    ".wi-dhead > button": "font: inherit; font-size: 11px; padding: 0 8px; cursor: pointer",
    ".wi-empty": "font-size: 12px; opacity: 0.6; font-style: italic",
    ".wi-pheat": f"font-family: {_SANS}; font-size: 13px; line-height: 1.45",
    ".wi-ptitle": "font-weight: 600; margin-bottom: 4px",
    ".wi-prow": "margin-bottom: 8px",
    ".wi-plabel": "display: flex; flex-wrap: wrap; align-items: baseline; gap: 2px 10px; font-size: 12px",
    ".wi-plabel > span": "font-size: 11px; opacity: 0.65; font-variant-numeric: tabular-nums",
    ".wi-badge": (
        "padding: 0 6px; border: 1px solid rgba(180, 120, 0, 0.7); border-radius: 8px; font-size: 10px; "
        "font-weight: 600; letter-spacing: 0.04em; text-transform: uppercase; color: #a16207"
    ),
    ".wi-ptoks": (
        f"font-family: {_MONO}; font-size: 13px; line-height: 1.9; white-space: pre-wrap; overflow-wrap: anywhere; "
        "padding: 4px 8px; border: 1px solid rgba(128, 128, 128, 0.3); border-radius: 6px"
    ),
    ".wi-ptoks > span": "border-radius: 2px; padding: 1px 0",
    ".wi-pkey": "font-size: 11px; opacity: 0.7; margin-top: 2px",
}
_RULES = {**_CARD_STYLES, **_STYLES}
"""The rules an element may name: the card's (its examples, `.wf-sec`) and these."""


def _attrs(inline: bool, cls: str = "", rule: str = "", style: str = "", **extra: str | None) -> str:
    return _card_attrs(inline, cls, rule, style, rules=_RULES, **extra)


def _tag(name: str, content: str, inline: bool, cls: str = "", rule: str = "", style: str = "", **extra: str | None) -> str:
    return f"<{name}{_attrs(inline, cls, rule, style, **extra)}>{content}</{name}>"


def _number(v: Any, where: str) -> float:
    if isinstance(v, bool) or not isinstance(v, (int, float)):
        raise ValueError(f"{where} must be a number; got {v!r}")
    if not math.isfinite(v):
        raise ValueError(f"{where} must be finite; got {v}")
    return float(v)


def _plain(obj: Any) -> Any:
    return obj.to_dict() if hasattr(obj, "to_dict") else obj


# ---------------------------------------------------------------------------------------
# Validation of turns and traits.


def check_traits(traits: Any, where: str = "traits") -> list[dict]:
    """`traits` (Trait objects or their to_dict(): feature, total, n_tokens, lift) as checked
    dicts; else a ValueError naming the bad one. `lift` may be None (no usual density known);
    a `title` (str) is kept if present."""
    if isinstance(traits, (dict, str, bytes)) or not isinstance(traits, Iterable):
        raise ValueError(f"{where} must be a list of traits (workbench.steer.reply_traits); got {type(traits).__name__}")
    out, seen = [], set()
    for i, trait in enumerate(traits):
        trait, at = _plain(trait), f"{where}[{i}]"
        if not isinstance(trait, dict):
            raise ValueError(f"{at} must be a dict with feature, total, n_tokens, lift; got {type(trait).__name__}")
        missing = [k for k in ("feature", "total") if k not in trait]
        if missing:
            raise ValueError(f"{at} is missing {missing} (a trait: feature, total, n_tokens, lift)")
        f = trait["feature"]
        if isinstance(f, bool) or not isinstance(f, int):
            raise ValueError(f"{at}['feature'] must be an int; got {f!r}")
        if f in seen:
            raise ValueError(f"{at}['feature'] is {f}, which an earlier trait has too")
        seen.add(f)
        n = trait.get("n_tokens")
        if n is not None and (isinstance(n, bool) or not isinstance(n, int) or n < 0):
            raise ValueError(f"{at}['n_tokens'] must be an int >= 0 or None; got {n!r}")
        lift = trait.get("lift")
        title = trait.get("title")
        if title is not None and not isinstance(title, str):
            raise ValueError(f"{at}['title'] must be a str; got {type(title).__name__}")
        out.append({"feature": f, "total": _number(trait["total"], f"{at}['total']"), "n_tokens": n,
                    "lift": None if lift is None else _number(lift, f"{at}['lift']"), "title": title})
    return out


def _text_of(value: Any, where: str, key: str) -> str:
    """A prompt or reply: a str, or a Generation (dict) whose `{key}_text` or `{key}_tokens` it is."""
    value = _plain(value)
    if value is None:
        return ""
    if isinstance(value, str):
        return value
    if isinstance(value, dict):
        if isinstance(value.get(f"{key}_text"), str):
            return value[f"{key}_text"]
        tokens = value.get(f"{key}_tokens")
        if isinstance(tokens, list) and all(isinstance(s, str) for s in tokens):
            return "".join(tokens)
    raise ValueError(f"{where} must be a str or a Generation dict with '{key}_text' or '{key}_tokens'; got {value!r:.80}")


def check_turn(turn: Any, where: str = "turn") -> dict:
    """A turn {prompt, reply, traits} checked: prompt and reply are str (or a Generation dict,
    whose prompt_tokens / reply_text are used), traits as `check_traits`."""
    turn = _plain(turn)
    if not isinstance(turn, dict) or "reply" not in turn:
        raise ValueError(f"{where} must be a dict with 'reply' and optionally 'prompt' and 'traits'; got {turn!r:.80}")
    unknown = set(turn) - {"prompt", "reply", "traits"}
    if unknown:
        raise ValueError(f"{where} has unexpected keys {sorted(unknown)} (a turn: prompt, reply, traits)")
    reply = _plain(turn["reply"])
    prompt = turn.get("prompt")
    if prompt is None and isinstance(reply, dict) and "prompt_tokens" in reply:
        prompt = {"prompt_tokens": reply["prompt_tokens"]}
    return {"prompt": _text_of(prompt, f"{where}['prompt']", "prompt"),
            "reply": _text_of(reply, f"{where}['reply']", "reply"),
            "traits": check_traits(turn.get("traits") or [], f"{where}['traits']")}


# ---------------------------------------------------------------------------------------
# Markup of a transcript.

CardSource = Mapping[int, dict] | Callable[[int], dict]


def _lift(lift: float | None) -> str:
    if lift is None:
        return "lift —"
    return f"×{_sig(lift, 2) if lift < 100 else f'{lift:,.0f}'}"


def chip_html(trait: dict, turn: int, title: str, top: float, *, open_: bool, inline: bool) -> str:
    """One trait as a chip: title, Σ total activation, ×lift; an orange meter of total / `top`."""
    share = 0 if not top > 0 else max(0, min(100, math.floor(100 * trait["total"] / top + 0.5)))
    meter = f"background: linear-gradient(to right, {_background(DEFAULT_COLOR, 28)} {share}%, transparent {share}%)"
    n = trait["n_tokens"]
    tip = [f"feature {trait['feature']}", f"total activation over the reply {_fmt_value(trait['total'])}"]
    if n is not None:
        tip.append(f"active on {n} token{'' if n == 1 else 's'}")
    tip.append("lift: no usual density known" if trait["lift"] is None
               else f"lift {_sig(trait['lift'])}: its density over the reply / its usual density")
    body = (_tag("b", html.escape(title), inline, rule=".wi-chip > b")
            + _tag("span", f"Σ {_sig(trait['total'])}", inline, rule=".wi-chip > span")
            + _tag("span", _lift(trait["lift"]), inline, rule=".wi-chip > span"))
    return _tag("span", body, inline, "wi-chip wi-open" if open_ else "wi-chip", style=meter,
                data_turn=str(turn), data_f=str(trait["feature"]), title=" · ".join(tip))


def _top_examples_html(card: dict, inline: bool) -> str:
    group = next((g for g in card["groups"] if g.get("kind") == "top"), card["groups"][0] if card["groups"] else None)
    if group is None or not group["examples"]:
        return _tag("div", "no examples: the feature never fired", inline, "wi-empty")
    vmax = examples_max_milli(card)
    rows = "".join(example_html(e, vmax, DEFAULT_COLOR, inline) for e in group["examples"])
    return _tag("div", rows, inline, "wf-exs")


def detail_html(card: Any, feature: int, title: str, detail: str, *, inline: bool) -> str:
    """Under a turn: the chip's feature as its card or its top examples. `card`: a CARD dict,
    None (none given) or an exception (could not get one)."""
    head = _tag("b", html.escape(title), inline, rule=".wi-dhead > b")
    if not inline:
        for d, label in (("card", "card"), ("examples", "top examples")):
            if d != detail:
                head += f'<button{_attrs(inline, rule=".wi-dhead > button", data_detail=d)}>show {label}</button>'
        head += f'<button{_attrs(inline, rule=".wi-dhead > button", data_close="1", title="close")}>×</button>'
    if isinstance(card, Exception):
        body = _tag("div", html.escape(f"Could not get feature {feature}'s card: {type(card).__name__}: {card}"), inline,
                    "wi-empty")
    elif card is None:
        body = _tag("div", f"No card for feature {feature}: pass cards={{feature: stats.card(feature)}} or "
                    "cards=stats.card.",
                    inline, "wi-empty")
    elif detail == "examples":
        body = _tag("div", html.escape(f"top activations of feature {feature}"), inline, "wf-sec") + _top_examples_html(
            card, inline)
    else:
        body = card_html(card, inline=inline)
    return _tag("div", _tag("div", head, inline, "wi-dhead") + body, inline, "wi-detail")


# ---------------------------------------------------------------------------------------
# The widgets.


class Transcript(StaticHTMLWidget):
    """A conversation, each reply with the features most active over it as chips.

    `Transcript(turns)` takes turns {'prompt', 'reply', 'traits'} (a reply may be a Generation
    or its dict; traits as `workbench.steer.reply_traits` returns them); `append(prompt, reply,
    traits)` adds one. Click a chip to open the feature's card under its turn (`detail`:
    'card' or only its 'examples'); `cards` is {feature: CARD dict} or a function such as
    `stats.card`; `titles` ({feature: str}) names the chips (else the card's title, if `cards`
    is a dict, else "feature f").
    """

    _esm = bundle_js("traits.js")
    _css = stylesheet("feature_card.css", "traits.css")

    turns = t.List(t.Dict(), help="The turns drawn: {'prompt': str, 'reply': str, 'traits': [trait dicts]}, checked "
                   "on assignment.")
    selected = t.Tuple(t.Int(), t.Int(), default_value=(-1, -1),
                       help="(turn, feature) of the open chip; (-1, -1) for none.").tag(sync=True)
    detail = t.Enum(DETAILS, "card", help="What an open chip shows: the feature's 'card' or its top 'examples'.").tag(
        sync=True)
    view_html = t.Unicode(help="The transcript as markup (set by Python).").tag(sync=True)

    def __init__(self, turns: Iterable[Any] = (), *, cards: CardSource | None = None,
                 titles: Mapping[int, str] | None = None, **kwargs: Any) -> None:
        self._cards, self._titles = cards, dict(titles or {})
        self._card_cache: dict[int, Any] = {}
        super().__init__(turns=list(turns), **kwargs)
        self._draw()

    @t.validate("turns")
    def _valid_turns(self, proposal: t.Bunch) -> list[dict]:
        try:
            return [check_turn(turn, f"turns[{i}]") for i, turn in enumerate(proposal["value"])]
        except ValueError as error:
            raise t.TraitError(str(error)) from None

    @t.validate("selected")
    def _valid_selected(self, proposal: t.Bunch) -> tuple[int, int]:
        turn, f = proposal["value"]
        if (turn, f) == (-1, -1):
            return (turn, f)
        if not 0 <= turn < len(self.turns) or f not in {tr["feature"] for tr in self.turns[turn]["traits"]}:
            raise t.TraitError(f"selected must be (-1, -1) or (turn, feature) of a chip; turn {turn} has no feature {f}")
        return (turn, f)

    @t.observe("turns", "selected", "detail")
    def _on_change(self, change: t.Bunch) -> None:
        self._draw()

    def append(self, prompt: Any, reply: Any, traits: Any = ()) -> None:
        """Add a turn: `prompt` (str, or "" for none), `reply` (str or a Generation) and its traits."""
        self.turns = [*self.turns, {"prompt": prompt, "reply": reply, "traits": list(traits)}]

    def title_of(self, feature: int, trait: dict | None = None) -> str:
        if feature in self._titles:
            return str(self._titles[feature])
        if trait and trait.get("title"):
            return trait["title"]
        if isinstance(self._cards, Mapping):
            card = self._cards.get(feature)
            if isinstance(card, dict) and isinstance(card.get("title"), str):
                return card["title"]
        return f"feature {feature}"

    def _card(self, feature: int) -> Any:
        """The CARD dict of `feature`, None if none was given, or the exception raised getting it."""
        if self._cards is None:
            return None
        if feature not in self._card_cache:
            try:
                card = self._cards.get(feature) if isinstance(self._cards, Mapping) else self._cards(feature)
                self._card_cache[feature] = None if card is None else check_card(card)
            except Exception as error:  # shown where the card would be
                self._card_cache[feature] = error
        return self._card_cache[feature]

    def _html(self, inline: bool) -> str:
        turns = []
        sel_turn, sel_f = self.selected
        for i, turn in enumerate(self.turns):
            parts = []
            if turn["prompt"]:
                parts.append(_tag("div", _tag("span", "prompt", inline, "wi-who") + html.escape(turn["prompt"]), inline,
                                  "wi-prompt"))
            parts.append(_tag("div", _tag("span", "reply", inline, "wi-who") + html.escape(turn["reply"]), inline,
                              "wi-reply"))
            traits = turn["traits"]
            if traits:
                top = max(tr["total"] for tr in traits)
                chips = "".join(chip_html(tr, i, self.title_of(tr["feature"], tr), top,
                                          open_=(i, tr["feature"]) == (sel_turn, sel_f), inline=inline) for tr in traits)
                hint = "traits: Σ total activation, × lift over its usual density" + ("" if inline else " · click one")
                parts.append(_tag("div", _tag("em", hint, inline, rule=".wi-chips > em") + chips, inline, "wi-chips"))
            else:
                parts.append(_tag("div", "no traits", inline, "wi-empty"))
            if i == sel_turn:
                trait = next(tr for tr in traits if tr["feature"] == sel_f)
                parts.append(detail_html(self._card(sel_f), sel_f, self.title_of(sel_f, trait), self.detail, inline=inline))
            turns.append(_tag("div", "".join(parts), inline, "wi-turn", data_turn=str(i)))
        body = "".join(turns) or _tag("div", "no turns yet", inline, "wi-empty")
        return _tag("div", body, inline, "wi-transcript")

    def _draw(self) -> None:
        if hasattr(self, "_card_cache"):
            self.view_html = self._html(inline=False)

    def to_html(self) -> str:
        """Self-contained HTML (inline styles, no JavaScript): every turn, and the open chip's card."""
        return self._html(inline=True)

    def __repr__(self) -> str:
        return f"Transcript({len(self.turns)} turn{'' if len(self.turns) == 1 else 's'})"


class TraitChips(Transcript):
    """One reply with its traits as chips under it: `TraitChips(reply, traits, prompt=..., cards=...)`.
    A Transcript of one turn; clicking a chip opens the feature's card."""

    def __init__(self, reply: Any, traits: Any = (), *, prompt: Any = "", cards: CardSource | None = None,
                 titles: Mapping[int, str] | None = None, **kwargs: Any) -> None:
        super().__init__([{"prompt": prompt, "reply": reply, "traits": list(traits)}], cards=cards, titles=titles,
                         **kwargs)

    def __repr__(self) -> str:
        traits = self.turns[0]["traits"] if self.turns else []
        return f"TraitChips({len(traits)} trait{'' if len(traits) == 1 else 's'})"


# ---------------------------------------------------------------------------------------
# PromptHeatmap.


def diverging_background(v: float, vmax: float) -> str:
    """CSS background of `v` on a scale of ±`vmax`: blue above 0, red below, at opacity
    FULL_OPACITY x |v| / vmax in whole percent (so text stays readable); "" for none (0, or vmax 0)."""
    percent = math.floor(FULL_OPACITY * _alpha_percent(abs(v), vmax) + 0.5)
    if not percent:
        return ""
    r, g, b = POSITIVE_RGB if v > 0 else NEGATIVE_RGB
    return f"background-color: {_background(f'#{r:02x}{g:02x}{b:02x}', percent)}"


def _signed3(v: float) -> str:
    return ("+" if v > 0 else "") + _fmt_value(v)


def check_rows(tokens: Any, rows: Any) -> tuple[list[str], list[dict]]:
    if hasattr(tokens, "tolist"):
        tokens = tokens.tolist()
    if not isinstance(tokens, (list, tuple)) or not all(isinstance(s, str) for s in tokens):
        raise ValueError("tokens must be a list of str")
    out = []
    for i, row in enumerate(rows):
        where = f"rows[{i}]"
        if not isinstance(row, dict) or "values" not in row:
            raise ValueError(f"{where} must be a dict with 'values' and optionally 'label', 'estimate'")
        values = row["values"]
        if hasattr(values, "tolist"):
            values = values.tolist()
        if not isinstance(values, (list, tuple)):
            raise ValueError(f"{where}['values'] must be a list of numbers")
        values = [_number(v, f"{where}['values'][{j}]") for j, v in enumerate(values)]
        if len(values) != len(tokens):
            raise ValueError(f"{where} has {len(values)} values for {len(tokens)} tokens; they must match")
        label = row.get("label", "")
        if not isinstance(label, str):
            raise ValueError(f"{where}['label'] must be a str")
        out.append({"values": values, "label": label, "estimate": bool(row.get("estimate", False))})
    return list(tokens), out


def prompt_heatmap_html(tokens: list[str], rows: list[dict], title: str, *, inline: bool) -> str:
    """Each row: its label (with an 'estimate' badge where marked) and scale, then the tokens on
    a diverging background scaled to the row's largest |value|."""
    parts = [_tag("div", html.escape(title), inline, "wi-ptitle")] if title else []
    for row in rows:
        values = row["values"]
        vmax = max((abs(v) for v in values), default=0.0)
        label = html.escape(row["label"])
        if row["estimate"]:
            label += _tag("span", "estimate", inline, "wi-badge",
                          title="a first-order (gradient) estimate, not a measured effect")
        label += _tag("span", f"full colour at ±{_fmt_value(vmax)}", inline, rule=".wi-plabel > span")
        spans = "".join(
            _tag("span", html.escape(display_token(tok)), inline,
                 rule=".wi-ptoks > span" if diverging_background(v, vmax) else "",
                 style=diverging_background(v, vmax), data_i=str(i),
                 title=f"{json.dumps(tok, ensure_ascii=False)} (position {i}): {_signed3(v)}"
                 + (" (estimate)" if row["estimate"] else ""))
            for i, (tok, v) in enumerate(zip(tokens, values)))
        parts.append(_tag("div", _tag("div", label, inline, "wi-plabel") + _tag("div", spans, inline, "wi-ptoks"), inline,
                          "wi-prow"))
    key = ("blue: above 0 · red: below 0 · opacity ∝ |value|, strongest at the row's largest |value| · "
           "hover a token for its value")
    parts.append(_tag("div", html.escape(key), inline, "wi-pkey"))
    return _tag("div", "".join(parts), inline, "wi-pheat")


class PromptHeatmap(StaticHTMLWidget):
    """Signed values over a prompt's tokens, on a diverging scale: blue above 0, red below, each
    row scaled to its own largest |value|.

    `PromptHeatmap(tokens, values, label=..., estimate=False)` draws one row;
    `PromptHeatmap.from_attribution(prompt_attribution(...))` draws the occlusion effect (the
    real one) and gradient x input (badged "estimate") for the same tokens.
    """

    _esm = bundle_js("traits.js")
    _css = stylesheet("traits.css")

    tokens = t.List(t.Unicode(), help="The prompt's tokens, as decoded strings.")
    rows = t.List(t.Dict(), help="Rows of values: {'values': one number per token, 'label': str, 'estimate': bool}.")
    title = t.Unicode("", help="Heading above the rows; empty for none.")
    view_html = t.Unicode(help="The heatmap as markup (set by Python).").tag(sync=True)

    def __init__(self, tokens: Iterable[str] = (), values: Iterable[float] | None = None, *, label: str = "",
                 estimate: bool = False, rows: Iterable[dict] | None = None, title: str = "", **kwargs: Any) -> None:
        tokens = tokens.tolist() if hasattr(tokens, "tolist") else list(tokens)
        if rows is None:
            rows = [] if values is None else [{"values": values, "label": label, "estimate": estimate}]
        elif values is not None:
            raise TypeError("PromptHeatmap takes values or rows, not both")
        super().__init__(tokens=tokens, rows=list(rows), title=title, **kwargs)
        self._draw()

    @classmethod
    def from_attribution(cls, attribution: Any, *, title: str | None = None, **kwargs: Any) -> PromptHeatmap:
        """Occlusion and (badged as an estimate) gradient x input of a `prompt_attribution` result
        (or its dict: tokens, occlusion, gradient_x_input; feature optional)."""
        a = _plain(attribution)
        if not isinstance(a, dict) or "tokens" not in a or not ({"occlusion", "gradient_x_input"} & set(a)):
            raise ValueError("from_attribution takes a PromptAttribution or its to_dict(): tokens, occlusion, "
                             "gradient_x_input")
        f = a.get("feature")
        what = f"feature {f}" if f is not None else "the feature"
        rows = []
        if a.get("occlusion") is not None:
            rows.append({"values": a["occlusion"], "label": f"occlusion: drop in {what}'s total activation over the "
                         "reply when the token's embedding is zeroed"})
        if a.get("gradient_x_input") is not None:
            rows.append({"values": a["gradient_x_input"], "label": "gradient × input", "estimate": True})
        if title is None:
            title = f"Which prompt tokens drive {what}"
            if isinstance(a.get("total"), (int, float)) and not isinstance(a["total"], bool):
                title += f" (its total activation over the reply: {_fmt_value(a['total'])})"
        return cls(a["tokens"], rows=rows, title=title, **kwargs)

    @t.validate("tokens", "rows")
    def _valid_rows(self, proposal: t.Bunch) -> list:
        name = proposal["trait"].name
        tokens = proposal["value"] if name == "tokens" else self.tokens
        rows = proposal["value"] if name == "rows" else self.rows
        try:
            tokens, rows = check_rows(tokens, rows)
        except ValueError as error:
            raise t.TraitError(f"{error} (to change tokens and rows together, use set_data)") from None
        return tokens if name == "tokens" else rows

    def set_data(self, tokens: Iterable[str], rows: Iterable[dict]) -> None:
        """Replace the tokens and rows at once (one validation, one redraw)."""
        with self.hold_trait_notifications():
            self.tokens = list(tokens)
            self.rows = list(rows)

    @t.observe("tokens", "rows", "title")
    def _on_change(self, change: t.Bunch) -> None:
        self._draw()

    def _draw(self) -> None:
        self.view_html = prompt_heatmap_html(self.tokens, self.rows, self.title, inline=False)

    def to_html(self) -> str:
        """Self-contained HTML (inline styles, no JavaScript)."""
        return prompt_heatmap_html(self.tokens, self.rows, self.title, inline=True)

    def __repr__(self) -> str:
        return f"PromptHeatmap({len(self.tokens)} tokens, {len(self.rows)} row{'' if len(self.rows) == 1 else 's'})"
