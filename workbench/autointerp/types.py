"""The shared vocabulary of automated interpretability: examples, explanations, scores, and the
metrics every scorer reports. Explainers turn a feature's training examples into an
:class:`Explanation`; scorers judge it on held-out examples and return a :class:`Score`.

No backend, model or store here: this is what explainers, scorers and the comparison agree on.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Protocol, Sequence

__all__ = ["Example", "Explanation", "Score", "Explainer", "Scorer", "AutointerpFailure",
           "balanced_accuracy", "f1_score", "roc_auc", "pearson"]


@dataclass
class Example:
    """A window of text and one feature's activation on each of its tokens."""

    tokens: list[str]
    """Decoded token strings of the window, in order (leading spaces kept)."""
    activations: list[float]
    """The feature's activation on each token (0 where it does not fire); same length as ``tokens``."""
    label: bool
    """True for an activating example (the feature fires in the window), False for a non-activating one."""
    kind: str = "top"
    """Where it came from: "top", "interval", "quantile" (activating); "random", "hard" (non-activating)."""
    source: tuple[int, int] | None = None
    """(context, position) of the window's focus token in the store, when known."""

    def __post_init__(self) -> None:
        if len(self.tokens) != len(self.activations):
            raise ValueError(f"Example has {len(self.tokens)} tokens but {len(self.activations)} activations")

    @property
    def max_activation(self) -> float:
        return max(self.activations, default=0.0)


@dataclass
class Explanation:
    """What an explainer said about one feature."""

    feature: int
    text: str
    """The explanation, one sentence (empty only when ``failed``)."""
    explainer: str
    """Which explainer and backend produced it, e.g. "token-pattern" or "openai:gpt-4o-mini"."""
    failed: bool = False
    """True when no usable explanation came back after retries (then ``text`` is empty and
    scorers record a failure rather than a score)."""
    prompt_tokens: int = 0
    completion_tokens: int = 0
    rule: dict | None = None
    """A machine-readable form, for explainers that have one (the token-pattern explainer's tokens
    and n-grams), used by the rule scorer."""


@dataclass
class Score:
    """One scorer's verdict on one explanation, from held-out examples only."""

    feature: int
    scorer: str
    """"detection", "fuzzing", "simulation" or "rule"."""
    value: float
    """The headline: balanced accuracy (detection, fuzzing, rule) or Pearson r (simulation);
    NaN when ``failed``."""
    metrics: dict[str, float] = field(default_factory=dict)
    """Every metric the scorer computed: "balanced_accuracy", "f1", "auc" (where probabilities
    exist), "pearson", ..."""
    n: int = 0
    """Items (examples or tokens) behind the value."""
    failures: int = 0
    """Items whose answer could not be parsed after retries (left out of the metrics, never scored 0)."""
    failed: bool = False
    """True when nothing could be scored."""
    details: list[dict] = field(default_factory=list)
    """Per item: label and prediction (and probability when there is one)."""
    prompt_tokens: int = 0
    completion_tokens: int = 0


class AutointerpFailure(RuntimeError):
    """A backend answer that stayed unusable after every retry."""


class Explainer(Protocol):
    name: str

    def explain(self, feature: int, examples: Sequence[Example]) -> Explanation: ...


class Scorer(Protocol):
    name: str

    def score(self, explanation: Explanation, examples: Sequence[Example]) -> Score: ...


def balanced_accuracy(labels: Sequence[bool], predictions: Sequence[bool]) -> float:
    """Mean of the true-positive and true-negative rates (NaN if either class is absent)."""
    pos = [p for y, p in zip(labels, predictions) if y]
    neg = [p for y, p in zip(labels, predictions) if not y]
    if not pos or not neg:
        return math.nan
    return 0.5 * (sum(pos) / len(pos) + sum(not p for p in neg) / len(neg))


def f1_score(labels: Sequence[bool], predictions: Sequence[bool]) -> float:
    """F1 of the positive class (0 when nothing is predicted or labelled positive)."""
    tp = sum(1 for y, p in zip(labels, predictions) if y and p)
    fp = sum(1 for y, p in zip(labels, predictions) if not y and p)
    fn = sum(1 for y, p in zip(labels, predictions) if y and not p)
    return 0.0 if tp == 0 else 2 * tp / (2 * tp + fp + fn)


def roc_auc(labels: Sequence[bool], scores: Sequence[float]) -> float:
    """Area under the ROC curve (Mann-Whitney U, ties count one half); NaN if a class is absent."""
    pos = [s for y, s in zip(labels, scores) if y]
    neg = [s for y, s in zip(labels, scores) if not y]
    if not pos or not neg:
        return math.nan
    ranked = sorted([(s, 1) for s in pos] + [(s, 0) for s in neg])
    rank_sum, i = 0.0, 0
    while i < len(ranked):
        j = i
        while j < len(ranked) and ranked[j][0] == ranked[i][0]:
            j += 1
        mid = (i + j + 1) / 2  # average 1-based rank of the tie group
        rank_sum += mid * sum(flag for _, flag in ranked[i:j])
        i = j
    return (rank_sum - len(pos) * (len(pos) + 1) / 2) / (len(pos) * len(neg))


def pearson(x: Sequence[float], y: Sequence[float]) -> float:
    """Pearson correlation; NaN when either side is constant or fewer than two points."""
    n = len(x)
    if n != len(y):
        raise ValueError(f"pearson: {n} and {len(y)} values")
    if n < 2:
        return math.nan
    mx, my = sum(x) / n, sum(y) / n
    sxy = sum((a - mx) * (b - my) for a, b in zip(x, y))
    sxx = sum((a - mx) ** 2 for a in x)
    syy = sum((b - my) ** 2 for b in y)
    if sxx == 0 or syy == 0:
        return math.nan
    return sxy / math.sqrt(sxx * syy)
