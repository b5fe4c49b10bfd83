"""An explainer that needs no language model, and the scorer that reads its rule.

:class:`TokenPatternExplainer` looks at a feature's training examples token by token: a token
*fires* where the feature's activation is above every value it takes in the non-activating
examples (0 for delphi's quiet windows). Candidate terms are single tokens (" __init__"), words
(the token stripped and lower-cased: " Model" and "model" alike) and bigrams (a token after a given
previous token). Terms are chosen greedily to maximise token-level F1 on the training examples (at
most ``max_terms``, each adding at least ``min_gain``), and written as a sentence: "fires on
' __init__' after 'def', or on ' filter'". :attr:`Explanation.rule` holds the terms, with a weight
each (the mean activation of the training tokens it matches, over the largest), so the rule predicts
a value per token as well as a yes/no per example.

:class:`RuleScorer` applies that rule to held-out examples: an example is predicted activating when
any of its tokens matches; it reports balanced accuracy (the headline), F1 and AUC per example, and
the Pearson correlation of the predicted values with the activations over every token. A rule that
matches exactly the firing tokens scores 1 on both; an unrelated one about 0.5 and 0.
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass

from workbench.autointerp.types import Example, Explanation, Score, balanced_accuracy, f1_score, pearson, roc_auc

__all__ = ["RuleScorer", "TokenPatternExplainer", "apply_rule", "rule_sentence"]


def _word(token: str) -> str:
    return token.strip().lower()


def _key(kind: str, token: str, prev: str | None = None) -> tuple:
    return (kind, token, prev)


def _keys_at(tokens: Sequence[str], i: int) -> list[tuple]:
    """The candidate terms that token ``i`` of ``tokens`` matches."""
    keys = [_key("token", tokens[i])]
    word = _word(tokens[i])
    if word:
        keys.append(_key("word", word))
    if i > 0:
        keys.append(_key("bigram", tokens[i], tokens[i - 1]))
    return keys


def apply_rule(rule: dict, tokens: Sequence[str]) -> list[float]:
    """The rule's predicted value on each token: the largest weight of the terms it matches, else 0."""
    weights: dict[tuple, float] = {}
    for term in rule.get("terms", []):
        key = _key(term["kind"], term["token"], term.get("prev"))
        weights[key] = max(weights.get(key, 0.0), float(term.get("weight", 1.0)))
    return [max((weights.get(k, 0.0) for k in _keys_at(tokens, i)), default=0.0) for i in range(len(tokens))]


def rule_sentence(rule: dict) -> str:
    """The rule in words: "fires on ' __init__' after 'def', or on ' filter'"."""
    parts = []
    for term in rule.get("terms", []):
        if term["kind"] == "bigram":
            parts.append(f"{term['token']!r} after {term['prev']!r}")
        elif term["kind"] == "word":
            parts.append(f"the word {term['token']!r} (any case or spacing)")
        else:
            parts.append(repr(term["token"]))
    if not parts:
        return ""
    return "fires on " + (parts[0] if len(parts) == 1 else ", ".join(parts[:-1]) + ", or on " + parts[-1])


@dataclass
class TokenPatternExplainer:
    """The offline explainer: the tokens, words and bigrams that best separate firing tokens from
    the rest in the training examples (see the module docstring)."""

    max_terms: int = 3
    """Terms in a rule at most."""
    min_gain: float = 0.02
    """A further term must raise the training F1 by at least this much."""
    min_count: int = 2
    """A term must match at least this many firing training tokens (1 when nothing else would do)."""
    name: str = "token-pattern"

    def explain(self, feature: int, examples: Sequence[Example]) -> Explanation:
        negatives = [a for e in examples if not e.label for a in e.activations]
        level = max([0.0, *negatives])  # a token fires above everything the quiet windows reach
        fires: list[bool] = []
        values: list[float] = []
        matches: dict[tuple, list[int]] = {}
        for e in examples:
            for i, a in enumerate(e.activations):
                for key in _keys_at(e.tokens, i):
                    matches.setdefault(key, []).append(len(fires))
                fires.append(e.label and a > level)
                values.append(a)
        positives = sum(fires)
        if positives == 0:
            return Explanation(feature, "", self.name, failed=True, rule={"terms": [], "level": level})
        peak = max(values)
        tp_of = {key: sum(fires[j] for j in where) for key, where in matches.items()}
        floor = self.min_count if any(tp >= self.min_count for tp in tp_of.values()) else 1
        candidates = [key for key, tp in tp_of.items() if tp >= floor]
        chosen: list[tuple] = []
        covered: set[int] = set()
        best_f1 = 0.0
        for _ in range(self.max_terms):
            best = None
            for key in candidates:
                if key in chosen:
                    continue
                union = covered | set(matches[key])
                tp = sum(fires[j] for j in union)
                f1 = 2 * tp / (len(union) + positives)  # 2tp / (2tp + fp + fn)
                if best is None or f1 > best[0] + 1e-12:
                    best = (f1, key, union)
            if best is None or best[0] < best_f1 + (self.min_gain if chosen else 1e-12):
                break
            best_f1, key, covered = best
            chosen.append(key)
        terms = []
        for kind, token, prev in chosen:
            hit = [values[j] for j in matches[(kind, token, prev)] if fires[j]]
            weight = (sum(hit) / len(hit) / peak) if hit and peak > 0 else 0.0
            term = {"kind": kind, "token": token, "weight": round(weight, 6)}
            if prev is not None:
                term["prev"] = prev
            terms.append(term)
        rule = {"terms": terms, "level": level, "train_f1": best_f1}
        return Explanation(feature, rule_sentence(rule), self.name, rule=rule)


@dataclass
class RuleScorer:
    """Scores a rule (:attr:`Explanation.rule`) on held-out examples: balanced accuracy of the
    per-example prediction (the headline), F1 and AUC, and the per-token Pearson correlation."""

    name: str = "rule"

    def score(self, explanation: Explanation, examples: Sequence[Example]) -> Score:
        if explanation.failed or not explanation.rule:
            return Score(explanation.feature, self.name, math.nan, failed=True, n=len(examples))
        labels, predictions, example_scores, details = [], [], [], []
        predicted_values, activations = [], []
        for e in examples:
            values = apply_rule(explanation.rule, e.tokens)
            predicted_values += values
            activations += e.activations
            labels.append(e.label)
            predictions.append(max(values, default=0.0) > 0)
            example_scores.append(max(values, default=0.0))
            details.append({"label": e.label, "prediction": predictions[-1], "kind": e.kind})
        r = pearson(predicted_values, activations)
        if math.isnan(r) and len(set(activations)) > 1:
            r = 0.0  # the rule predicts the same everywhere: it carries no information (not a failure)
        metrics = {"balanced_accuracy": balanced_accuracy(labels, predictions), "f1": f1_score(labels, predictions),
                   "auc": roc_auc(labels, example_scores), "pearson": r,
                   "tokens": float(len(activations)), "positives": float(sum(labels))}
        kinds = Counter(d["kind"] for d in details)
        for kind in kinds:  # the share of each kind predicted activating (e.g. how many hard negatives fool it)
            metrics[f"predicted_{kind}"] = sum(d["prediction"] for d in details if d["kind"] == kind) / kinds[kind]
        value = metrics["balanced_accuracy"]
        return Score(explanation.feature, self.name, value, metrics, n=len(examples), failed=math.isnan(value),
                     details=details)
