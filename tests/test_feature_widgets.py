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
        self.meta = {"dictionary": f"topk SAE, blocks.15.hook_mlp_out, {n_features} features", "n_tokens": self.n_tokens}

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
        return {"feature": feature, "title": f"feature {feature}", "dictionary": self.meta["dictionary"],
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
