"""A feature's examples for automated interpretability, from its :class:`~workbench.features.FeatureStats`
and the store it was computed over.

* **Activating** examples are the statistics' top, interval and quantile samples (each a window of
  ``before`` + 1 + ``after`` tokens with the feature's value on every token), one per token (an
  example drawn twice, as a top and an interval sample, counts once, as the first kind).
* **Non-activating** examples are windows of the same width, from a pool of store contexts that the
  dictionary re-encodes (in batches), where the feature stays quiet on every token: drawn at random
  ("random"), and, as delphi does, around tokens where the features that co-occur most with this one
  fire while it does not ("hard": the negatives a vague explanation fails on).
* **Train / held-out**: every store context belongs to one split, by a seeded hash of its index, so
  no window of the held-out split shares a token with one of the training split. Explanations are
  written from the training split, scores from the held-out one.

"Quiet" means at most ``quiet`` times the feature's maximum: ``quiet=0`` is delphi's definition (the
feature is zero on every token of the window); dense directions (neurons, PCA) rarely have such
windows, and a small positive ``quiet`` gives them some. Everything is deterministic given the seed.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor

from workbench.autointerp.types import Example
from workbench.features import FeatureStats, sample_key
from workbench.store import ActivationStore

__all__ = ["ExampleConfig", "ExampleSource", "FeatureExamples", "in_train_split"]

_KINDS = ("top", "interval", "quantile")


@dataclass
class ExampleConfig:
    """How a feature's examples are drawn and split."""

    train_fraction: float = 0.5
    """Share of store contexts in the training split (the rest are held out)."""
    n_random: int = 20
    """Random non-activating windows per split."""
    n_hard: int = 10
    """Hard negatives per split: quiet windows around tokens where co-occurring features fire."""
    n_cooccurring: int = 5
    """Co-occurring features (most often firing with this one on the pool, by Jaccard) behind the hard negatives."""
    pool_contexts: int = 96
    """Store contexts re-encoded for the non-activating examples (both splits)."""
    quiet: float = 0.0
    """A window is non-activating where the feature is <= quiet x its max on every token; an
    example is activating where it is above that on the example's token. 0: delphi's definition."""
    min_activating: int = 4
    """A feature is eligible with at least this many activating examples in each split ..."""
    min_negatives: int = 4
    """... and at least this many non-activating ones in each split."""
    seed: int = 0
    """Seeds the split, the pool and the draws."""

    def __post_init__(self) -> None:
        if not 0 < self.train_fraction < 1:
            raise ValueError(f"train_fraction must lie in (0, 1), got {self.train_fraction}")
        if not 0 <= self.quiet < 1:
            raise ValueError(f"quiet must lie in [0, 1), got {self.quiet}")
        for name in ("n_random", "n_hard", "n_cooccurring", "min_activating", "min_negatives"):
            if getattr(self, name) < 0:
                raise ValueError(f"ExampleConfig.{name} must be >= 0, got {getattr(self, name)}")
        if self.pool_contexts < 1:
            raise ValueError(f"pool_contexts must be >= 1, got {self.pool_contexts}")


@dataclass
class FeatureExamples:
    """One feature's examples, split."""

    feature: int
    train: list[Example] = field(default_factory=list)
    """Explanations are written from these."""
    test: list[Example] = field(default_factory=list)
    """Scores use only these (no context in common with ``train``)."""

    def counts(self) -> dict[str, int]:
        """Examples per split and kind, e.g. {"train_top": 9, "test_random": 20, ...}."""
        out: dict[str, int] = {}
        for split, examples in (("train", self.train), ("test", self.test)):
            for example in examples:
                out[f"{split}_{example.kind}"] = out.get(f"{split}_{example.kind}", 0) + 1
        return out

    def n(self, split: str, label: bool) -> int:
        return sum(e.label == label for e in getattr(self, split))


def in_train_split(contexts: Tensor | Sequence[int], seed: int = 0, train_fraction: float = 0.5) -> Tensor:
    """Whether each store context is in the training split: a seeded hash of its index, so the
    split of a context is the same whatever else is drawn."""
    contexts = torch.as_tensor(contexts, dtype=torch.int64).reshape(-1)
    key = sample_key(contexts, torch.full_like(contexts, -7919), seed)
    return key.double() / 2**31 < train_fraction


class ExampleSource:
    """Builds :class:`FeatureExamples` for the features of one dictionary.

    ``stats`` are the dictionary's statistics over ``store`` (their windows give the activating
    examples); ``dictionary`` re-encodes the pool contexts for the non-activating ones; ``tokenizer``
    decodes the token ids of both (without one every token is written ``<id>``). Call :meth:`prepare` with the features about to be built (one encoding
    of the pool serves them all), then :meth:`build` for each.
    """

    def __init__(self, stats: FeatureStats, dictionary: Any, store: ActivationStore, *, tokenizer: Any = None,
                 config: ExampleConfig | None = None, batch_size: int = 2048) -> None:
        if dictionary.n_features != stats.n_features:
            raise ValueError(f"the dictionary has {dictionary.n_features} features, its statistics {stats.n_features}; "
                             f"they belong to different dictionaries")
        self.stats, self.dictionary, self.store = stats, dictionary, store
        self.config = config or ExampleConfig()
        self.tokenizer = tokenizer
        self.batch_size = batch_size
        self._names: dict[int, str] = {}
        self._prepared: dict[int, tuple[Tensor, list[int]]] = {}  # feature -> (its pool values, co-occurring features)
        self._partner_values: dict[int, Tensor] = {}  # co-occurring feature -> its pool values
        self._pool: tuple[Tensor, Tensor, Tensor] | None = None  # contexts, their tokens, in-train flags

    # ---- which features have enough activating examples ------------------------------------------
    def threshold(self, feature: int) -> float:
        return self.config.quiet * float(self.stats.tensors["max"][feature])

    def candidates(self) -> list[int]:
        """Features with at least ``min_activating`` distinct activating examples in each split
        (from the statistics alone; whether they have quiet windows too is known after :meth:`build`)."""
        t, cfg = self.stats.tensors, self.config
        n = self.stats.n_features
        rows = torch.cat([t[f"{k}_rows"].reshape(n, -1) for k in _KINDS], 1)
        acts = torch.cat([t[f"{k}_acts"].reshape(n, -1) for k in _KINDS], 1)
        contexts = torch.cat([t[f"{k}_context"].reshape(n, -1) for k in _KINDS], 1)
        valid = (rows >= 0) & (acts > cfg.quiet * t["max"].unsqueeze(1))
        rows = torch.where(valid, rows, torch.full_like(rows, -1))
        order = rows.argsort(dim=1)
        rows, contexts = rows.gather(1, order), contexts.gather(1, order)
        first = torch.ones_like(rows, dtype=torch.bool)
        first[:, 1:] = rows[:, 1:] != rows[:, :-1]
        keep = first & (rows >= 0)
        train = in_train_split(contexts.clamp_min(0), cfg.seed, cfg.train_fraction).view_as(contexts)
        n_train, n_test = (keep & train).sum(1), (keep & ~train).sum(1)
        ok = (n_train >= max(cfg.min_activating, 1)) & (n_test >= max(cfg.min_activating, 1))
        return torch.nonzero(ok).flatten().tolist()

    # ---- the pool of contexts for non-activating examples -----------------------------------------
    def _pool_contexts(self) -> tuple[Tensor, Tensor, Tensor]:
        if self._pool is None:
            n_contexts = self.store.n_contexts
            generator = torch.Generator().manual_seed(self.config.seed + 104_729)
            picked = torch.randperm(n_contexts, generator=generator)[: self.config.pool_contexts].sort().values
            self._pool = picked, self.store.context_tokens(picked), in_train_split(picked, self.config.seed,
                                                                                    self.config.train_fraction)
        return self._pool

    @torch.no_grad()
    def _encode_pool(self, columns: Callable[[Tensor], Tensor], width: int) -> Tensor:
        """``columns(acts)`` of the dictionary's activations on every pool position: ``[P, ctx_len, width]``
        (0 at positions the store kept no row for, e.g. BOS)."""
        contexts, tokens, _ = self._pool_contexts()
        locations = self._locations()
        context_of_row = locations[:, 0].contiguous()
        out = torch.zeros(len(contexts), tokens.shape[1], width)
        starts = torch.searchsorted(context_of_row, contexts)
        stops = torch.searchsorted(context_of_row, contexts + 1)
        pending: list[tuple[int, int, int]] = []  # (pool index, start row, stop row)

        def flush() -> None:
            if not pending:
                return
            acts = torch.cat([self.store.rows(self.dictionary.hookpoint, a, b) for _, a, b in pending]).float()
            values = columns(self.dictionary.encode(acts).float().cpu())
            at = 0
            for i, a, b in pending:
                out[i, locations[a:b, 1]] = values[at: at + b - a]
                at += b - a
            pending.clear()

        rows_pending = 0
        for i, (a, b) in enumerate(zip(starts.tolist(), stops.tolist())):
            pending.append((i, a, b))
            rows_pending += b - a
            if rows_pending >= self.batch_size:
                flush()
                rows_pending = 0
        flush()
        return out

    def _locations(self) -> Tensor:
        if not hasattr(self, "_locations_cache"):
            self._locations_cache = self.store.locations()
        return self._locations_cache

    def prepare(self, features: Sequence[int]) -> None:
        """Encode the pool once for ``features`` (and their co-occurring features) before :meth:`build`."""
        features = [int(f) for f in features if int(f) not in self._prepared]
        if not features:
            return
        index = torch.tensor(features)
        thresholds = self.config.quiet * self.stats.tensors["max"][index]
        n = self.dictionary.n_features
        both = torch.zeros(len(features), n)
        own_count = torch.zeros(len(features))
        any_count = torch.zeros(n)

        def columns(acts: Tensor) -> Tensor:
            fired = (acts[:, index] > thresholds).float()  # (B, m)
            both.add_(fired.T @ (acts > 0).float())
            own_count.add_(fired.sum(0))
            any_count.add_((acts > 0).float().sum(0))
            return acts[:, index]

        values = self._encode_pool(columns, len(features))  # (P, T, m)
        jaccard = both / (own_count.unsqueeze(1) + any_count.unsqueeze(0) - both).clamp_min(1)
        jaccard[torch.arange(len(features)), index] = -1  # not itself
        k = min(self.config.n_cooccurring, n - 1)
        partners = jaccard.topk(k, dim=1) if k > 0 else None
        needed = set()
        for i, f in enumerate(features):
            mine = [] if partners is None else [int(g) for g, j in zip(partners.indices[i].tolist(),
                                                                         partners.values[i].tolist()) if j > 0]
            self._prepared[f] = (values[:, :, i].clone(), mine)
            needed |= set(mine) - set(self._partner_values)
        if needed:
            wanted = torch.tensor(sorted(needed))
            partner_values = self._encode_pool(lambda acts: acts[:, wanted], len(wanted))
            for j, g in enumerate(wanted.tolist()):
                self._partner_values[g] = partner_values[:, :, j].clone()

    # ---- building ---------------------------------------------------------------------------------
    def _decode(self, ids: list[int]) -> list[str]:
        missing = sorted({i for i in ids if i not in self._names})
        if missing:
            if self.tokenizer is not None:
                texts = self.tokenizer.batch_decode([[i] for i in missing])
            else:  # the statistics' vocabulary covers their examples only: write every id alike
                texts = [f"<{i}>" for i in missing]
            self._names.update(zip(missing, texts))
        return [self._names[i] for i in ids]

    def activating(self, feature: int) -> list[Example]:
        """The statistics' examples of ``feature`` above the quiet level, each token once (top first).
        Their tokens are decoded from the store's ids like the non-activating windows' (so the two
        kinds never differ in how a token is written)."""
        card = self.stats.card(feature)
        threshold = self.threshold(feature)
        picked: dict[tuple[int, int], tuple[str, dict]] = {}
        for group in card["groups"]:
            for e in group["examples"]:
                where = (e["context"], e["position"])
                if where not in picked and e["activation"] > threshold:
                    picked[where] = (group["kind"], e)
        contexts = sorted({c for c, _ in picked})
        ids = dict(zip(contexts, self.store.context_tokens(contexts))) if contexts else {}
        out = []
        for (context, position), (kind, e) in picked.items():
            lo = position - e["focus"]
            tokens = self._decode(ids[context][lo: lo + len(e["values"])].tolist())
            out.append(Example(tokens, [float(v) for v in e["values"]], True, kind, (context, position)))
        return out

    def _window(self, pool_index: int, position: int, values: Tensor, kind: str) -> Example:
        contexts, tokens, _ = self._pool_contexts()
        before, after = self.stats.meta["config"]["before"], self.stats.meta["config"]["after"]
        lo, hi = max(0, position - before), min(tokens.shape[1], position + after + 1)
        return Example(self._decode(tokens[pool_index, lo:hi].tolist()), values[pool_index, lo:hi].tolist(), False,
                       kind, (int(contexts[pool_index]), position))

    def build(self, feature: int) -> FeatureExamples:
        """Activating and non-activating examples of ``feature``, split into train and held-out."""
        feature = int(feature)
        self.prepare([feature])
        cfg = self.config
        values, partners = self._prepared[feature]
        contexts, _, train_flags = self._pool_contexts()
        before, after = self.stats.meta["config"]["before"], self.stats.meta["config"]["after"]
        threshold = self.threshold(feature)
        # quiet[p, t]: the window around position t of pool context p stays at or below the threshold
        peak = F.max_pool1d(F.pad(values.unsqueeze(1), (before, after), value=0.0), before + after + 1, stride=1)
        quiet = peak.squeeze(1) <= threshold
        quiet[:, 0] = False  # BOS holds no activation: never a window's token
        result = FeatureExamples(feature)
        by_split = {True: result.train, False: result.test}
        for example in self.activating(feature):
            by_split[bool(in_train_split([example.source[0]], cfg.seed, cfg.train_fraction)[0])].append(example)
        generator = torch.Generator().manual_seed(int(sample_key(torch.tensor([feature]), torch.tensor([0]), cfg.seed)))
        partner_fire = torch.zeros_like(quiet)
        for g in partners:
            partner_fire |= self._partner_values[g] > 0
        for split in (True, False):
            in_split = (train_flags == split).unsqueeze(1)
            used: set[tuple[int, int]] = set()
            for kind, mask, wanted in (("hard", quiet & in_split & partner_fire, cfg.n_hard),
                                       ("random", quiet & in_split, cfg.n_random)):
                spots = torch.nonzero(mask)
                order = torch.randperm(len(spots), generator=generator)
                taken = 0
                for p, t in spots[order].tolist():
                    if taken >= wanted:
                        break
                    if any((p, t + d) in used for d in range(-before - after, before + after + 1)):
                        continue  # windows of one split do not overlap
                    used.add((p, t))
                    by_split[split].append(self._window(p, t, values, kind))
                    taken += 1
        return result
