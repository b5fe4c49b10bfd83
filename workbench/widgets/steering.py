"""`SteeringPanel`: steer generation with a slider per feature and read clean against steered.

An ipywidgets panel (a FloatSlider per feature, temperature, seed, a Regenerate button) around
a callback the notebook supplies, `run(coefficients, temperature=..., seed=...)`, which returns
a comparison dict as `workbench.steer.compare_steering(...).to_dict()` does: the clean and the
steered generation (reply_text or reply_tokens), `kl_next_token`, `steered_loglik_clean` and
`clean_loglik`. The panel holds no science: it draws the two replies side by side (where they
start to differ marked) with those figures, so a reader sees when steering breaks fluency.

The result is drawn once, by `comparison_html` with inline styles: that markup is the live view
(an `ipywidgets.HTML` in the panel) and the static fallback (`to_html()`, the panel's
`text/html`). Displaying the panel registers a display id, and every later result updates that
output in place, so an executed notebook keeps the last result even without widget state.
"""

from __future__ import annotations

import html
import inspect
import math
import uuid
from collections.abc import Callable, Iterable, Mapping
from typing import Any

import ipywidgets as widgets

from workbench.widgets.card import _attrs as _card_attrs
from workbench.widgets.card import _sig

__all__ = ["SteeringPanel", "check_comparison", "comparison_html"]

FIGURES = ("kl_next_token", "steered_loglik_clean", "clean_loglik")

_SANS = "system-ui, -apple-system, 'Segoe UI', Roboto, sans-serif"
_LINE = "rgba(128, 128, 128, 0.3)"

# The result is always drawn with inline styles (an ipywidgets.HTML loads no stylesheet).
_STYLES = {
    ".wi-steer": f"font-family: {_SANS}; font-size: 13px; line-height: 1.5; max-width: 1100px",
    ".wi-shead": "display: flex; flex-wrap: wrap; gap: 2px 14px; align-items: baseline; margin-bottom: 6px",
    ".wi-shead > b": "font-size: 15px; font-weight: 650",
    ".wi-shead > span": "font-size: 12px; opacity: 0.75; font-variant-numeric: tabular-nums",
    ".wi-sprompt": (
        "margin-bottom: 8px; padding: 4px 10px; border-radius: 8px; background-color: rgba(128, 128, 128, 0.12); "
        "white-space: pre-wrap; overflow-wrap: anywhere"
    ),
    ".wi-scols": "display: flex; flex-wrap: wrap; gap: 12px",
    ".wi-scol": (
        f"flex: 1 1 320px; min-width: 0; padding: 6px 12px 10px; border: 1px solid {_LINE}; border-radius: 8px"
    ),
    ".wi-scol > b": (
        "display: block; margin-bottom: 2px; font-size: 11px; font-weight: 600; letter-spacing: 0.05em; "
        "text-transform: uppercase; opacity: 0.7"
    ),
    ".wi-scol > div": "white-space: pre-wrap; overflow-wrap: anywhere",
    ".wi-diff": "background-color: rgba(37, 99, 235, 0.13); border-radius: 2px",
    ".wi-sfig": (
        f"display: flex; flex-wrap: wrap; gap: 6px 26px; margin-top: 10px; padding: 8px 0; border-top: 1px solid {_LINE}; "
        f"border-bottom: 1px solid {_LINE}"
    ),
    ".wi-sfig > div": "display: flex; flex-direction: column",
    ".wi-sfig b": "font-size: 15px; font-weight: 600; font-variant-numeric: tabular-nums",
    ".wi-sfig span": "font-size: 11px; opacity: 0.65",
    ".wi-snote": "margin-top: 6px; font-size: 11px; opacity: 0.6",
    ".wi-serr": (
        "margin-bottom: 8px; padding: 6px 10px; border-radius: 6px; color: #b91c1c; "
        "background-color: rgba(220, 38, 38, 0.1); white-space: pre-wrap"
    ),
    ".wi-sempty": "font-size: 12px; opacity: 0.6; font-style: italic",
}


def _tag(name: str, content: str, cls: str = "", rule: str = "", **extra: str | None) -> str:
    return f"<{name}{_card_attrs(True, cls, rule, rules=_STYLES, **extra)}>{content}</{name}>"


# ---------------------------------------------------------------------------------------
# Validation.


def _reply_tokens(generation: dict, where: str) -> tuple[str, list[str] | None]:
    """The reply's text and tokens (None if only the text is given)."""
    tokens = generation.get("reply_tokens")
    if tokens is not None and (not isinstance(tokens, list) or not all(isinstance(s, str) for s in tokens)):
        raise ValueError(f"{where}['reply_tokens'] must be a list of str")
    text = generation.get("reply_text")
    if text is None and tokens is None:
        raise ValueError(f"{where} needs 'reply_text' or 'reply_tokens' (a Generation dict)")
    if text is not None and not isinstance(text, str):
        raise ValueError(f"{where}['reply_text'] must be a str; got {type(text).__name__}")
    return (text if text is not None else "".join(tokens)), tokens


def check_comparison(comparison: Any) -> dict:
    """`comparison` (a SteeringComparison or its to_dict()) as a checked dict; else a ValueError
    naming the bad field. The figures must be numbers (NaN allowed: e.g. an empty reply)."""
    if hasattr(comparison, "to_dict"):
        comparison = comparison.to_dict()
    where = "comparison"
    if not isinstance(comparison, dict):
        raise ValueError(f"{where} must be a dict (workbench.steer.compare_steering(...).to_dict()); "
                         f"got {type(comparison).__name__}")
    missing = [k for k in ("clean", "steered", *FIGURES) if k not in comparison]
    if missing:
        raise ValueError(f"{where} is missing {missing} (workbench.steer.compare_steering(...).to_dict())")
    out = {}
    for side in ("clean", "steered"):
        generation = comparison[side]
        if hasattr(generation, "to_dict"):
            generation = generation.to_dict()
        if not isinstance(generation, dict):
            raise ValueError(f"{where}[{side!r}] must be a Generation dict; got {type(generation).__name__}")
        text, tokens = _reply_tokens(generation, f"{where}[{side!r}]")
        prompt = generation.get("prompt_tokens")
        if prompt is not None and (not isinstance(prompt, list) or not all(isinstance(s, str) for s in prompt)):
            raise ValueError(f"{where}[{side!r}]['prompt_tokens'] must be a list of str")
        out[side] = {"reply_text": text, "reply_tokens": tokens, "prompt": "".join(prompt) if prompt else ""}
    for key in FIGURES:
        v = comparison[key]
        if isinstance(v, bool) or not isinstance(v, (int, float)):
            raise ValueError(f"{where}[{key!r}] must be a number; got {v!r}")
        out[key] = float(v)
    return out


# ---------------------------------------------------------------------------------------
# Markup.


def _figure(v: float, digits: int = 3) -> str:
    if math.isnan(v):
        return "—"
    if math.isinf(v):
        return "∞" if v > 0 else "−∞"
    return f"{v:.{digits}f}"


def _common_prefix(a: list[str], b: list[str]) -> int:
    n = 0
    while n < min(len(a), len(b)) and a[n] == b[n]:
        n += 1
    return n


def _reply_html(text: str, tokens: list[str] | None, same: int | None) -> str:
    """A reply, the part after the first `same` tokens marked as where it differs."""
    if not text and not tokens:
        return _tag("span", "(empty reply)", "wi-sempty")
    if tokens is None or same is None or same >= len(tokens):
        return html.escape(text)
    head, tail = "".join(tokens[:same]), "".join(tokens[same:])
    tip = f"from reply token {same} on, the clean and steered replies differ"
    return html.escape(head) + _tag("span", html.escape(tail), "wi-diff", title=tip)


def _settings(coefficients: Mapping[int, float], titles: Mapping[int, str], temperature: float | None,
              seed: int | None) -> str:
    edits = [f"{titles.get(f, f'feature {f}')} {c:+.2f}" for f, c in coefficients.items() if c != 0]
    parts = ["steering " + (", ".join(edits) if edits else "off (every coefficient 0)")]
    if temperature is not None:
        parts.append("greedy (temperature 0)" if temperature == 0 else f"temperature {_sig(temperature, 2)}")
    if seed is not None and temperature != 0:
        parts.append(f"seed {seed}")
    return " · ".join(parts)


def comparison_html(comparison: dict | None, *, settings: str = "", prompt: str = "", error: str = "") -> str:
    """Clean and steered replies side by side with KL and log-likelihoods, inline styles.
    `comparison`: checked (check_comparison) or None (nothing run yet); `settings`: a line on
    what was steered; `error`: the last run's failure, shown above the last good result."""
    parts = [_tag("div", _tag("b", "Steering", rule=".wi-shead > b")
                  + (_tag("span", html.escape(settings), rule=".wi-shead > span") if settings else ""), "wi-shead")]
    if error:
        parts.append(_tag("div", html.escape(error), "wi-serr"))
    if comparison is None:
        parts.append(_tag("div", "Nothing generated yet: press Regenerate.", "wi-sempty"))
        return _tag("div", "".join(parts), "wi-steer")
    prompt = prompt or comparison["clean"]["prompt"]
    if prompt:
        parts.append(_tag("div", html.escape(prompt), "wi-sprompt", title="the prompt"))
    clean, steered = comparison["clean"], comparison["steered"]
    same = None
    if clean["reply_tokens"] is not None and steered["reply_tokens"] is not None:
        same = _common_prefix(clean["reply_tokens"], steered["reply_tokens"])
    cols = "".join(
        _tag("div", _tag("b", label, rule=".wi-scol > b")
             + _tag("div", _reply_html(g["reply_text"], g["reply_tokens"], same), rule=".wi-scol > div"), "wi-scol")
        for label, g in (("clean", clean), ("steered", steered)))
    parts.append(_tag("div", cols, "wi-scols"))

    def figure(value: str, caption: str, tip: str) -> str:
        return _tag("div", _tag("b", value, rule=".wi-sfig b") + _tag("span", html.escape(caption), rule=".wi-sfig span"),
                    rule=".wi-sfig > div", title=tip)

    kl, steered_ll, clean_ll = (comparison[k] for k in FIGURES)
    gap = steered_ll - clean_ll
    parts.append(_tag("div", "".join((
        figure(_figure(kl), "KL(clean ‖ steered), nats per next token",
               "mean KL divergence of the next-token distribution over the steered reply's positions"),
        figure(_figure(steered_ll), "log p of the steered reply under the clean model, per token",
               "mean log-likelihood per reply token of the steered text, scored by the unsteered model"),
        figure(_figure(clean_ll), "log p of the clean reply, per token",
               "mean log-likelihood per reply token of the unsteered text under the unsteered model"),
        figure(("+" if gap > 0 else "") + _figure(gap), "difference (steered − clean)",
               "how much less likely the clean model finds the steered text, per token: far below 0 = less fluent"),
    )), "wi-sfig"))
    if same is not None:
        note = ("the replies are identical" if same >= max(len(clean["reply_tokens"]), len(steered["reply_tokens"]))
                else f"shaded: where the replies differ (from reply token {same})")
    else:
        note = "the comparison carries no reply tokens, so where the replies differ is not marked"
    parts.append(_tag("div", html.escape(note), "wi-snote"))
    return _tag("div", "".join(parts), "wi-steer")


# ---------------------------------------------------------------------------------------
# The panel.


def _accepted(run: Callable, names: Iterable[str]) -> set[str]:
    """Which of `names` `run` takes as keyword arguments."""
    try:
        params = inspect.signature(run).parameters.values()
    except (TypeError, ValueError):
        return set(names)
    if any(p.kind is p.VAR_KEYWORD for p in params):
        return set(names)
    keywords = {p.name for p in params if p.kind in (p.KEYWORD_ONLY, p.POSITIONAL_OR_KEYWORD)}
    return {n for n in names if n in keywords}


class SteeringPanel(widgets.VBox):
    """Sliders for steering coefficients, temperature and seed, a Regenerate button, and the
    clean and steered replies side by side with KL and log-likelihoods.

    `SteeringPanel(run, features)`: `run(coefficients: {feature: float}, temperature=, seed=)`
    returns a comparison (`compare_steering(...)` or its to_dict()); `features` is a list of ids
    or {feature: title}. Temperature and seed controls appear only if `run` takes them. With
    `run_now=True` (the default) the panel generates once on construction, so it shows a
    result when displayed. `regenerate()` runs again, as the button does.
    """

    def __init__(self, run: Callable[..., Any], features: Iterable[int] | Mapping[int, str], *,
                 coefficients: Mapping[int, float] | None = None, prompt: str = "",
                 value_range: tuple[float, float] = (-10.0, 10.0), step: float = 0.25, temperature: float = 0.0,
                 seed: int = 0, run_now: bool = True, **kwargs: Any) -> None:
        if not callable(run):
            raise TypeError(f"run must be callable: run(coefficients, temperature=, seed=) -> comparison; got {run!r}")
        titles = dict(features) if isinstance(features, Mapping) else {int(f): f"feature {f}" for f in features}
        if not titles:
            raise ValueError("SteeringPanel needs at least one feature to steer")
        lo, hi = value_range
        if not lo < hi:
            raise ValueError(f"value_range must be (low, high) with low < high; got {value_range}")
        coefficients = dict(coefficients or {})
        unknown = set(coefficients) - set(titles)
        if unknown:
            raise ValueError(f"coefficients name features {sorted(unknown)} that are not in features {list(titles)}")
        self.run, self.titles, self.prompt = run, titles, prompt
        self.comparison: dict | None = None
        """The last good result, checked (check_comparison); None before the first."""
        self.error = ""
        """The last run's failure ("" if it worked)."""
        self.ran_with: dict[str, Any] = {}
        """The settings of the last good result: coefficients, temperature, seed."""
        self._display_ids: list[str] = []
        self._accepts = _accepted(run, ("temperature", "seed"))

        slider_layout = widgets.Layout(width="420px")
        style = {"description_width": "160px"}
        self.sliders = {
            f: widgets.FloatSlider(value=float(coefficients.get(f, 0.0)), min=lo, max=hi, step=step,
                                   description=_short(title), description_tooltip=f"feature {f}: {title}",
                                   continuous_update=False, readout_format="+.2f", layout=slider_layout, style=style)
            for f, title in titles.items()
        }
        self.temperature = widgets.FloatSlider(value=temperature, min=0.0, max=2.0, step=0.05, description="temperature",
                                               continuous_update=False, readout_format=".2f", layout=slider_layout,
                                               style=style)
        self.seed = widgets.BoundedIntText(value=seed, min=0, max=2**31 - 1, description="seed",
                                           layout=widgets.Layout(width="260px"), style=style)
        self.button = widgets.Button(description="Regenerate", button_style="primary", icon="refresh",
                                     tooltip="generate the clean and the steered reply with these settings")
        self.status = widgets.Label("")
        self.output = widgets.HTML(comparison_html(None))
        self.button.on_click(lambda _: self.regenerate())
        controls = [*self.sliders.values()]
        if "temperature" in self._accepts:
            controls.append(self.temperature)
        if "seed" in self._accepts:
            controls.append(self.seed)
        controls.append(widgets.HBox([self.button, self.status], layout=widgets.Layout(align_items="center")))
        super().__init__([*controls, self.output], **kwargs)
        if run_now:
            self.regenerate()

    @property
    def coefficients(self) -> dict[int, float]:
        """The sliders' values: {feature: coefficient}."""
        return {f: float(s.value) for f, s in self.sliders.items()}

    def set_coefficients(self, coefficients: Mapping[int, float], *, regenerate: bool = True) -> None:
        """Move sliders (features not named keep their value), then regenerate."""
        unknown = set(coefficients) - set(self.sliders)
        if unknown:
            raise ValueError(f"no slider for features {sorted(unknown)}; the panel steers {list(self.sliders)}")
        for f, c in coefficients.items():
            self.sliders[f].value = float(c)
        if regenerate:
            self.regenerate()

    def regenerate(self) -> dict | None:
        """Call `run` with the current settings and draw its result (or its error, above the last
        good result); returns the checked comparison, or None if it failed."""
        settings = {"coefficients": self.coefficients, "temperature": float(self.temperature.value),
                    "seed": int(self.seed.value)}
        extra = {k: settings[k] for k in ("temperature", "seed") if k in self._accepts}
        self.button.disabled, self.status.value = True, "generating…"
        try:
            result = check_comparison(self.run(dict(settings["coefficients"]), **extra))
        except Exception as error:  # shown in the panel, not lost in a callback log
            self.error = f"run failed: {type(error).__name__}: {error}"
            result = None
        else:
            self.comparison, self.error = result, ""
            self.ran_with = {"coefficients": settings["coefficients"], **extra}
        finally:
            self.button.disabled = False
        self.status.value = "" if result is not None else "failed: see below"
        self.output.value = self.to_html()
        self._update_displays()
        return result

    def to_html(self) -> str:
        """The last result as self-contained HTML (inline styles, no JavaScript)."""
        ran = self.ran_with
        settings = ""
        if ran:
            settings = _settings(ran["coefficients"], self.titles, ran.get("temperature"), ran.get("seed"))
        return comparison_html(self.comparison, settings=settings, prompt=self.prompt, error=self.error)

    # --- display: the widget view, with to_html() as its static text/html ---------------------

    def _repr_mimebundle_(self, **kwargs: Any) -> dict:
        data = super()._repr_mimebundle_(**kwargs)
        return {**data, "text/html": self.to_html()} if data else data

    def _ipython_display_(self) -> None:
        """Display with a display id, so each new result updates this output's static HTML too."""
        from IPython.display import display

        display_id = uuid.uuid4().hex
        self._display_ids.append(display_id)
        display(self._repr_mimebundle_(), raw=True, display_id=display_id)

    def _update_displays(self) -> None:
        if not self._display_ids:
            return
        from IPython.display import update_display

        bundle = self._repr_mimebundle_()
        for display_id in self._display_ids:
            update_display(bundle, raw=True, display_id=display_id)

    def __repr__(self) -> str:
        state = "nothing generated" if self.comparison is None else f"KL {_figure(self.comparison['kl_next_token'])}"
        return f"SteeringPanel({len(self.sliders)} feature{'' if len(self.sliders) == 1 else 's'}, {state})"


def _short(title: str, n: int = 22) -> str:
    return title if len(title) <= n else title[: n - 1] + "…"
