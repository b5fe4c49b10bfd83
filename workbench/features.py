"""Statistics of activations and features, computed from a store. No plotting, no widgets.

Everything streams over the store in batches, so it works on stores larger than memory.
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import json
import math
import os
import shutil
import tempfile
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from jaxtyping import Float, Int
from torch import Tensor

from workbench.dictionaries import SAEDictionary, firings_of
from workbench.files import write_atomic, write_json
from workbench.progress import progress_bar
from workbench.store import ActivationStore


@dataclass
class ActivationStats:
    """Summary of one hook point's activations in a store."""

    n_rows: int
    """Number of activation rows (tokens)."""
    d: int
    """Width of the activations."""
    norm_mean: float
    """Mean L2 norm of a row."""
    norm_std: float
    """Standard deviation of the row norms."""
    norms: Float[Tensor, " n_rows"]
    """Every row's L2 norm, in store order (for histograms)."""
    mean: Float[Tensor, " d"]
    """Mean activation per dimension."""
    std: Float[Tensor, " d"]
    """Standard deviation per dimension."""

    def summary(self) -> dict:
        """The scalar figures, JSON-able."""
        return {"n_rows": self.n_rows, "d": self.d, "norm_mean": self.norm_mean, "norm_std": self.norm_std,
                "max_dim_std": float(self.std.max()), "mean_dim_std": float(self.std.mean())}


def activation_stats(store: ActivationStore, hookpoint: str | None = None, *, batch_size: int = 8192) -> ActivationStats:
    """Norms and per-dimension mean and spread of a hook point's activations (streamed, float64 sums)."""
    d = store.d(hookpoint) if hookpoint else next(iter(store.hookpoints.values()))
    total = torch.zeros(d, dtype=torch.float64)
    total_sq = torch.zeros(d, dtype=torch.float64)
    norms = []
    for batch in store.batches(hookpoint, batch_size=batch_size, shuffle=False):
        batch64 = batch.double()
        total += batch64.sum(0)
        total_sq += batch64.square().sum(0)
        norms.append(batch.norm(dim=-1))
    n = store.n_rows
    mean = total / n
    std = (total_sq / n - mean.square()).clamp_min(0).sqrt()
    norm_all = torch.cat(norms)
    return ActivationStats(n, d, float(norm_all.mean()), float(norm_all.std()), norm_all, mean.float(), std.float())


def context_values(
    store: ActivationStore,
    context: int,
    direction: Int[Tensor, ""] | int | Float[Tensor, " d"],
    hookpoint: str | None = None,
) -> tuple[Int[Tensor, " ctx_len"], Float[Tensor, " ctx_len"]]:
    """A context's token ids and, per position, the activation along ``direction``.

    ``direction`` is a dimension index (a neuron) or a vector (e.g. an SAE decoder row).
    Positions the store did not keep (the dropped BOS) get 0.
    """
    tokens = store.context_tokens([context])[0]
    locations = store.locations()
    rows = torch.nonzero(locations[:, 0] == context).flatten()
    values = torch.zeros(len(tokens))
    if len(rows):
        acts = store.rows(hookpoint, int(rows[0]), int(rows[-1]) + 1)
        if isinstance(direction, Tensor) and direction.ndim == 1:
            projected = acts @ direction.to(acts.dtype)
        else:
            projected = acts[:, int(direction)]
        values[locations[rows, 1]] = projected.float()
    return tokens, values


@dataclass
class FeatureExample:
    """One top-activating token of a feature and the text around it."""

    feature: int
    """The SAE feature."""
    activation: float
    """The feature's activation on the example token."""
    row: int
    """The example token's row in the store."""
    context: int
    """Index of the context (in the store) the token comes from."""
    position: int
    """Position of the token in its context."""
    tokens: Int[Tensor, " window"]
    """Token ids of the window around the example token (within its context)."""
    values: Float[Tensor, " window"]
    """The feature's activation on every token of the window (0 where the store kept none, e.g. BOS)."""
    focus: int
    """Index of the example token within the window."""


@torch.no_grad()
def top_activating_contexts(
    sae: torch.nn.Module,
    store: ActivationStore,
    features: list[int],
    hookpoint: str | None = None,
    *,
    n_examples: int = 5,
    before: int = 12,
    after: int = 4,
    batch_size: int = 4096,
    device: str | torch.device = "cpu",
) -> dict[int, list[FeatureExample]]:
    """Each feature's ``n_examples`` highest activations in the store, with the text around them.

    One streamed pass over the store encodes every row with ``sae`` and keeps a running top-k per
    feature; then each example's context is re-encoded once (shared by the examples in it) to give
    the feature's activation on every token of a window of ``before`` tokens before and ``after`` after the example. Features that
    never fire get fewer (or no) examples.
    """
    if not features:
        return {}
    hookpoint = hookpoint or sae.cfg.hook_name or None
    index = torch.tensor(features, dtype=torch.long, device=device)
    best_values = torch.full((len(features), 0), float("-inf"), device=device)
    best_rows = torch.zeros((len(features), 0), dtype=torch.long, device=device)
    offset = 0
    for batch in store.batches(hookpoint, batch_size=batch_size, shuffle=False, device=device):
        acts = sae.encode(batch.float()).feature_acts[:, index].T  # [features, batch]
        rows = torch.arange(offset, offset + batch.shape[0], device=device).expand(len(features), -1)
        values = torch.cat([best_values, acts], dim=1)
        kept = values.topk(min(n_examples, values.shape[1]), dim=1)
        best_values, best_rows = kept.values, torch.cat([best_rows, rows], dim=1).gather(1, kept.indices)
        offset += batch.shape[0]

    locations = store.locations()
    context_of_row = locations[:, 0].contiguous()  # non-decreasing: rows are stored context by context
    encoded: dict[int, tuple[Tensor, Tensor]] = {}  # context -> (token ids, per-position feature acts)

    def encode_context(context: int) -> tuple[Tensor, Tensor]:
        if context not in encoded:
            start, stop = torch.searchsorted(context_of_row, torch.tensor([context, context + 1])).tolist()
            acts = sae.encode(store.rows(hookpoint, start, stop).float().to(device)).feature_acts[:, index].cpu()
            tokens = store.context_tokens([context])[0]
            per_position = torch.zeros(len(tokens), len(features))
            per_position[locations[start:stop, 1]] = acts.float()
            encoded[context] = tokens, per_position
        return encoded[context]

    examples: dict[int, list[FeatureExample]] = {}
    for i, feature in enumerate(features):
        examples[feature] = []
        for value, row in zip(best_values[i].tolist(), best_rows[i].tolist()):
            if not value > 0:
                continue
            context, position = locations[row].tolist()
            tokens, per_position = encode_context(context)
            start, stop = max(0, position - before), min(len(tokens), position + after + 1)
            examples[feature].append(FeatureExample(feature, value, row, context, position, tokens[start:stop],
                                                    per_position[start:stop, i], position - start))
    return examples


# ---- feature statistics of any dictionary, in one streaming pass ------------------------------
#
# Pass 1 reads the store once and encodes every row (the only pass that touches activations);
# it keeps per-feature sums, maxima, a log-spaced histogram and a running top-k in memory
# (O(n_features), whatever the store size) and spills every non-zero activation as
# (row int32, feature int32, value float32) to a file. Passes 2 and 3 read that file in chunks:
# pass 2 draws the interval and quantile samples, pass 3 fills in the examples' token windows.
# Nothing grows with the store in memory; the spill file (12 bytes per firing) is deleted at
# the end. Pass 1 checkpoints, so an interrupted computation resumes where it stopped.

STATS_VERSION = 1
STATS_JSON = "feature_stats.json"
STATS_TENSORS = "feature_stats.safetensors"
_PARTIAL = "partial"
STATS_DIRNAME = "feature_stats"
"""Folder of the statistics inside an SAE folder (``RUN/sae_0/feature_stats``)."""
_CHUNK_EVENTS = 1 << 20


@dataclass
class FeatureStatsConfig:
    """What :func:`feature_stats` keeps per feature."""

    n_top: int = 20
    """Top-activating examples per feature."""
    n_intervals: int = 10
    """Equal-width intervals of [0, max] to sample from (SAEDashboard's interval groups)."""
    per_interval: int = 5
    """Random examples per interval."""
    n_quantiles: int = 10
    """Equal-count bins of the firing activations, ranked by activation (delphi's quantiles)."""
    per_quantile: int = 2
    """Random examples per quantile."""
    before: int = 12
    """Tokens shown before an example's token."""
    after: int = 4
    """Tokens shown after it."""
    hist_lo: float = 1e-4
    """Lower edge of the activation histogram's log-spaced bins (smaller values land in the first bin)."""
    hist_hi: float = 1e4
    """Upper edge (larger values land in the last bin)."""
    bins_per_decade: int = 10
    """Histogram resolution."""
    quantile_resolution: int = 1024
    """Linear bins of [0, max] from which quantile edges are read: bins are equal-count to 1/this of the max."""
    batch_size: int = 4096
    """Store rows encoded at once."""
    seed: int = 0
    """Seeds the interval and quantile samples (deterministic per (row, feature))."""

    def __post_init__(self) -> None:
        for name in ("n_top", "n_intervals", "per_interval", "n_quantiles", "per_quantile", "bins_per_decade",
                     "quantile_resolution", "batch_size"):
            if getattr(self, name) < 1:
                raise ValueError(f"FeatureStatsConfig.{name} must be >= 1, got {getattr(self, name)}")
        if self.before < 0 or self.after < 0:
            raise ValueError(f"before and after must be >= 0, got {self.before}, {self.after}")
        if not 0 < self.hist_lo < self.hist_hi:
            raise ValueError(f"need 0 < hist_lo < hist_hi, got {self.hist_lo}, {self.hist_hi}")

    @property
    def hist_edges(self) -> Float[Tensor, " bins_plus_1"]:
        decades = math.log10(self.hist_hi) - math.log10(self.hist_lo)
        n = max(1, round(decades * self.bins_per_decade))
        return torch.logspace(math.log10(self.hist_lo), math.log10(self.hist_hi), n + 1, dtype=torch.float64)


def sample_key(rows: Int[Tensor, " n"], features: Int[Tensor, " n"], seed: int = 0) -> Int[Tensor, " n"]:
    """A pseudo-random key in [0, 2**31) per (row, feature): the firings with the smallest keys in a
    bin (ties: the earlier row) are its uniform random sample. A pure function, so a brute-force
    check draws the same sample."""
    x = rows.long() * -7046029254386353131 + features.long() * -4658895280553007687 + (seed + 1) * 1442695040888963407
    x = x ^ ((x >> 31) & 0x1FFFFFFFF)
    x = x * -7723592293110705685
    x = x ^ ((x >> 29) & 0x7FFFFFFFF)
    return (x >> 32) & 0x7FFFFFFF


def _descending_key(values: Float[Tensor, " n"]) -> Int[Tensor, " n"]:
    """A key in [0, 2**31) that sorts positive float32 values from largest to smallest."""
    return 0x7FFFFFFF - values.float().view(torch.int32).long()


_EMPTY = 1 << 31  # the key of an empty slot: after every real key


def _keep_best(groups: Tensor, keys: Tensor, payload: Tensor, best_keys: Tensor, best_payload: Tensor) -> tuple[Tensor, Tensor]:
    """Merge candidates into per-group lists of the ``k`` smallest keys, ``best_* [G, k]`` (in place).

    Keys lie in [0, 2**31); empty slots hold ``_EMPTY``. Only the groups with candidates are
    re-sorted: one int64 sort on (group, key); equal keys keep the earlier entry (the kept ones,
    then candidates in order). Returns the lists, each sorted by key.
    """
    n_groups, k = best_keys.shape
    if len(groups) == 0:
        return best_keys, best_payload
    touched = torch.zeros(n_groups, dtype=torch.bool)
    touched[groups] = True
    ids = torch.nonzero(touched).flatten()
    local = torch.full((n_groups,), -1, dtype=torch.int64)
    local[ids] = torch.arange(len(ids))
    m = len(ids)
    flat_keys = torch.cat([best_keys[ids].flatten(), keys])
    flat_groups = torch.cat([torch.arange(m).repeat_interleave(k), local[groups]])
    flat_payload = torch.cat([best_payload[ids].flatten(), payload])
    order = torch.sort((flat_groups << 32) | flat_keys, stable=True).indices
    sorted_groups = flat_groups[order]
    starts = torch.searchsorted(sorted_groups, torch.arange(m))
    rank = torch.arange(len(order)) - starts[sorted_groups]
    keep = rank < k
    slot = sorted_groups[keep] * k + rank[keep]
    new_keys = torch.full((m, k), _EMPTY, dtype=torch.int64)
    new_payload = torch.full((m, k), -1, dtype=torch.int64)
    new_keys.view(-1)[slot] = flat_keys[order[keep]]
    new_payload.view(-1)[slot] = flat_payload[order[keep]]
    new_payload[new_keys == _EMPTY] = -1
    best_keys[ids], best_payload[ids] = new_keys, new_payload
    return best_keys, best_payload


class _Spill:
    """Append-only (row, feature, value) records on disk; :func:`_spill_chunks` reads them back."""

    DTYPE = np.dtype([("row", "<i4"), ("feature", "<i4"), ("value", "<f4")])

    def __init__(self, path: Path, length: int = 0) -> None:
        self.path = path
        with open(path, "ab") as f:  # truncate to the last checkpoint's length
            f.truncate(length * self.DTYPE.itemsize)
        self._file = open(path, "ab")

    def append(self, rows: Tensor, features: Tensor, values: Tensor) -> None:
        records = np.empty(len(rows), self.DTYPE)
        records["row"], records["feature"], records["value"] = rows.numpy(), features.numpy(), values.numpy()
        self._file.write(records.tobytes())

    def flush(self) -> int:
        self._file.flush()
        os.fsync(self._file.fileno())
        return self._file.tell() // self.DTYPE.itemsize

    def close(self) -> None:
        self._file.close()


def _spill_chunks(path: Path, size: int = _CHUNK_EVENTS) -> Iterator[tuple[Tensor, Tensor, Tensor]]:
    """The spilled firings as (rows, features, values), ``size`` at a time, never all in memory."""
    with open(path, "rb") as f:
        while True:
            records = np.fromfile(f, _Spill.DTYPE, count=size)
            if not len(records):
                return
            yield (torch.from_numpy(records["row"].astype(np.int64)), torch.from_numpy(records["feature"].astype(np.int64)),
                   torch.from_numpy(records["value"].copy()))


@dataclass
class FeatureStats:
    """Statistics of every feature of a dictionary over a store: load with :meth:`load`, make with
    :func:`feature_stats`. Tensors are indexed by feature; examples by (feature, slot), with row -1
    in empty slots. ``card(f)`` and ``table()`` give what the widgets and exports render."""

    meta: dict
    """JSON-able: dictionary, hook point, store, config, n_tokens, vocabulary of the tokens shown."""
    tensors: dict[str, Tensor]
    """fire_count, max, moments, hist_counts, hist_edges, top_*, interval_*, quantile_*, context_*, logit_*."""
    explanations: dict[int, str] = field(default_factory=dict)
    """Optional explanation string per feature (e.g. from autointerp)."""

    # ---- the scalar statistics
    @property
    def n_features(self) -> int:
        return int(self.tensors["fire_count"].shape[0])

    @property
    def n_tokens(self) -> int:
        return int(self.meta["n_tokens"])

    @property
    def density(self) -> Float[Tensor, " n"]:
        """Fraction of tokens on which each feature fires."""
        return self.tensors["fire_count"].double() / max(self.n_tokens, 1)

    @property
    def mean_firing(self) -> Float[Tensor, " n"]:
        """Mean activation over the tokens where the feature fires (0 if it never does)."""
        return self.tensors["mean"]

    @functools.cached_property
    def _moments(self) -> tuple[Tensor, Tensor]:
        """Skew and excess kurtosis of each feature's non-zero activations (0 where undefined);
        computed once, as every card and the table read them."""
        t = self.tensors
        n = t["fire_count"].double().clamp_min(1)
        var, c3, c4 = t["m2"] / n, t["m3"] / n, t["m4"] / n
        defined = (t["fire_count"] > 2) & (var > 1e-12 * t["mean"].square())
        skew = torch.where(defined, c3 / var.clamp_min(1e-300) ** 1.5, torch.zeros_like(var))
        kurt = torch.where(defined, c4 / var.clamp_min(1e-300) ** 2 - 3, torch.zeros_like(var))
        return skew, kurt

    @property
    def skew(self) -> Float[Tensor, " n"]:
        return self._moments[0]

    @property
    def kurtosis(self) -> Float[Tensor, " n"]:
        """Excess kurtosis (0 for a normal distribution)."""
        return self._moments[1]

    def _check(self, feature: int) -> int:
        feature = int(feature)
        if not 0 <= feature < self.n_features:
            raise IndexError(f"feature {feature} is out of range: this dictionary has {self.n_features} features (0..{self.n_features - 1})")
        return feature

    # ---- saving and loading
    def save(self, path: str | Path) -> None:
        """Write ``feature_stats.safetensors`` and ``feature_stats.json`` into ``path`` (atomically, each file)."""
        from safetensors.torch import save_file

        path = Path(path)
        path.mkdir(parents=True, exist_ok=True)
        tensors = {k: v.contiguous() for k, v in self.tensors.items()}
        write_atomic(path / STATS_TENSORS, lambda tmp: save_file(tensors, str(tmp)))
        write_json(path / STATS_JSON, {**self.meta, "explanations": {str(k): v for k, v in self.explanations.items()}},
                   indent=1)

    @classmethod
    def load(cls, path: str | Path) -> FeatureStats:
        """Load what :meth:`save` wrote; a missing or truncated file raises a ValueError saying how to recompute."""
        from safetensors.torch import load_file

        path = Path(path)
        redo = f"recompute with `workbench features RUN_DIR` or features.feature_stats(..., out={str(path)!r})"
        if not (path / STATS_JSON).is_file() or not (path / STATS_TENSORS).is_file():
            raise FileNotFoundError(f"no feature statistics in {path} ({STATS_JSON} and {STATS_TENSORS}); {redo}")
        try:
            meta = json.loads((path / STATS_JSON).read_text())
            tensors = load_file(str(path / STATS_TENSORS))
        except Exception as error:  # safetensors raises its own error types on truncation
            raise ValueError(f"the feature statistics in {path} are unreadable ({error}); {redo}") from error
        if meta.get("version") != STATS_VERSION:
            raise ValueError(f"{path} holds feature statistics of version {meta.get('version')}, this workbench reads {STATS_VERSION}; {redo}")
        explanations = {int(k): v for k, v in meta.pop("explanations", {}).items()}
        return cls(meta, tensors, explanations)

    # ---- views for widgets and exports
    def token(self, token_id: int) -> str:
        """A token id as the text it decodes to (the vocabulary saved with the statistics)."""
        return self.meta["vocab"].get(str(int(token_id)), f"<{int(token_id)}>")

    @functools.cached_property
    def _context_slot(self) -> dict[int, int]:
        """Store context id -> its row in ``context_tokens``."""
        return {int(c): i for i, c in enumerate(self.tensors["context_ids"].tolist())}

    def _examples(self, kind: str, feature: int) -> list[list[dict]]:
        """Examples of ``kind`` (top, interval, quantile) of a feature, grouped: [group][example]."""
        t = self.tensors
        rows, acts = t[f"{kind}_rows"][feature], t[f"{kind}_acts"][feature]
        windows = t[f"{kind}_windows"][feature]
        contexts, positions = t[f"{kind}_context"][feature], t[f"{kind}_position"][feature]
        if rows.ndim == 1:
            rows, acts, windows, contexts, positions = (x.unsqueeze(0) for x in (rows, acts, windows, contexts, positions))
        slot_of = self._context_slot
        before, after = self.meta["config"]["before"], self.meta["config"]["after"]
        groups = []
        for g in range(rows.shape[0]):
            examples = []
            for s in range(rows.shape[1]):
                row = int(rows[g, s])
                if row < 0:
                    continue
                context, position = int(contexts[g, s]), int(positions[g, s])
                ids = t["context_tokens"][slot_of[context]]
                lo, hi = max(0, position - before), min(len(ids), position + after + 1)
                values = windows[g, s, lo - (position - before): hi - (position - before)]
                examples.append({"tokens": [self.token(i) for i in ids[lo:hi].tolist()], "values": [float(v) for v in values],
                                 "focus": position - lo, "activation": float(acts[g, s]), "row": row, "context": context,
                                 "position": position})
            groups.append(examples)
        return groups

    def title(self, feature: int) -> str:
        """How the feature is named: "feature 7", "neuron 7", "PCA 3", ..."""
        titles = self.meta.get("titles") or []
        return titles[feature] if feature < len(titles) else f"feature {feature}"

    def card(self, feature: int, *, top: int | None = None, per_group: int | None = None) -> dict:
        """Everything a feature card shows, as plain JSON types (see the widgets). ``top`` and
        ``per_group`` keep fewer top examples and fewer per interval and quantile (smaller
        notebooks); the statistics and labels still describe all of them."""
        f = self._check(feature)
        t, cfg = self.tensors, self.meta["config"]
        skew, kurt = self._moments
        counts = t["hist_counts"][f]
        edges = t["hist_edges"]
        nonzero = torch.nonzero(counts).flatten()
        lo, hi = (int(nonzero[0]), int(nonzero[-1]) + 1) if len(nonzero) else (0, 0)
        peak = float(t["max"][f])
        groups = [{"kind": "top", "label": "top activations", "examples": self._examples("top", f)[0]}]
        interval_groups = self._examples("interval", f)
        fire = int(t["fire_count"][f])
        for j in reversed(range(cfg["n_intervals"])):
            a, b = peak * j / cfg["n_intervals"], peak * (j + 1) / cfg["n_intervals"]
            share = float(t["interval_counts"][f, j]) / max(fire, 1)
            groups.append({"kind": "interval", "label": f"interval {a:.3f}-{b:.3f} contains {_share(share)}", "lo": a,
                           "hi": b, "fraction": share, "examples": interval_groups[j]})
        quantile_groups = self._examples("quantile", f)
        q_edges = t["quantile_edges"][f].tolist()
        nq = cfg["n_quantiles"]
        for j in reversed(range(nq)):
            rank = nq - j
            label = f"quantile {rank} of {nq}{' (highest)' if rank == 1 else ''}: {q_edges[j]:.3f}-{q_edges[j + 1]:.3f}"
            groups.append({"kind": "quantile", "label": label, "lo": q_edges[j], "hi": q_edges[j + 1],
                           "examples": quantile_groups[j]})
        return {
            "feature": f,
            "title": self.title(f),
            "dictionary": self.meta["dictionary_label"],
            "explanation": self.explanations.get(f, ""),
            "n_tokens": self.n_tokens,
            "fire_count": fire,
            "density": float(self.density[f]),
            "max": peak,
            "mean_firing": float(self.mean_firing[f]),
            "skew": float(skew[f]),
            "kurtosis": float(kurt[f]),
            "histogram": {"edges": [float(e) for e in edges[lo:hi + 1]] if hi else [], "counts": [int(c) for c in counts[lo:hi]]},
            "logits": self._logits(f),
            "groups": [{**g, "examples": g["examples"][:top if g["kind"] == "top" else per_group]} for g in groups],
        }

    def _logits(self, f: int) -> dict | None:
        t = self.tensors
        if "logit_top_ids" not in t:
            return None

        def entries(ids: str, values: str) -> list[dict]:
            return [{"token": self.token(i), "value": float(v)} for i, v in zip(t[ids][f].tolist(), t[values][f].tolist())]

        return {
            "top": entries("logit_top_ids", "logit_top_values"),
            "bottom": entries("logit_bottom_ids", "logit_bottom_values"),
            "histogram": {"edges": [float(e) for e in t["logit_hist_edges"][f]], "counts": [int(c) for c in t["logit_hist_counts"][f]]},
            "method": self.meta.get("logit_method", ""),
        }

    def _focus_ids(self) -> Int[Tensor, "n n_top"]:
        """Token id at each top example's focus (-1 in empty slots)."""
        t = self.tensors
        ids = torch.full(t["top_rows"].shape, -1, dtype=torch.long)
        valid = t["top_rows"] >= 0
        slot = torch.searchsorted(t["context_ids"], t["top_context"][valid])
        ids[valid] = t["context_tokens"][slot, t["top_position"][valid]].long()
        return ids

    def table(self) -> list[dict]:
        """One row per feature: the scalar statistics, the commonest top-example tokens, the top logits."""
        skew, kurt = self._moments
        focus = self._focus_ids()
        density, mean_firing = self.density.tolist(), self.mean_firing.tolist()
        fire, peak = self.tensors["fire_count"].tolist(), self.tensors["max"].tolist()
        has_logits = "logit_top_ids" in self.tensors
        rows = []
        for f in range(self.n_features):
            counts = Counter(i for i in focus[f].tolist() if i >= 0)
            top_tokens = [self.token(i) for i, _ in counts.most_common(5)]
            top_logits = [self.token(i) for i in self.tensors["logit_top_ids"][f, :5].tolist()] if has_logits else []
            rows.append({"feature": f, "density": density[f], "fire_count": fire[f], "max": peak[f],
                         "mean_firing": mean_firing[f], "skew": float(skew[f]), "kurtosis": float(kurt[f]),
                         "top_tokens": top_tokens, "top_logits": top_logits, "explanation": self.explanations.get(f, "")})
        return rows

    def search(self, text: str, *, window: bool = False) -> list[int]:
        """Features whose top examples contain ``text`` (case-insensitive): in the token where they
        fire, or anywhere in the example's window with ``window=True``. Ranked by how many of the
        top examples match, then by the largest matching activation."""
        needle = text.lower()
        if not needle.strip():
            raise ValueError("search text is empty; give a token or a string, e.g. ' def' or 'import'")
        vocab = self.meta["vocab"]
        matching_ids = {int(i) for i, s in vocab.items() if needle in s.lower()}
        t = self.tensors
        if window:
            hits = torch.zeros(t["top_rows"].shape, dtype=torch.bool)
            slot = torch.searchsorted(t["context_ids"], t["top_context"].clamp_min(0))
            wanted = torch.tensor(sorted(matching_ids), dtype=torch.long)
            before, after = self.meta["config"]["before"], self.meta["config"]["after"]
            for offset in range(-before, after + 1):
                pos = t["top_position"] + offset
                ok = (t["top_rows"] >= 0) & (pos >= 0) & (pos < t["context_tokens"].shape[1])
                ids = t["context_tokens"][slot, pos.clamp(0, t["context_tokens"].shape[1] - 1)].long()
                hits |= ok & torch.isin(ids, wanted)
        else:
            hits = torch.isin(self._focus_ids(), torch.tensor(sorted(matching_ids), dtype=torch.long))
        n_hits = hits.sum(1)
        best = torch.where(hits, t["top_acts"], torch.zeros_like(t["top_acts"])).amax(1)
        found = torch.nonzero(n_hits).flatten().tolist()
        return sorted(found, key=lambda f: (-int(n_hits[f]), -float(best[f])))

    def __repr__(self) -> str:
        return f"FeatureStats({self.meta['dictionary_label']}, {self.n_tokens:,} tokens)"


def _share(fraction: float) -> str:
    """A fraction as a percentage that stays readable when tiny: 0.612 -> "61.2%", 2.9e-5 -> "0.0029%"."""
    percent = 100 * fraction
    return f"{percent:.1f}%" if percent >= 0.1 or percent == 0 else f"{percent:.2g}%"


def stats_folder(path: str | Path) -> Path:
    """Where the statistics of ``path`` live: a statistics folder itself, an SAE folder's
    ``feature_stats/``, or a run folder's ``sae_0/feature_stats/``."""
    path = Path(path)
    for candidate in (path, path / STATS_DIRNAME, path / "sae_0" / STATS_DIRNAME):
        if (candidate / STATS_JSON).is_file():
            return candidate
    return path / "sae_0" / STATS_DIRNAME if (path / "sae_0").is_dir() else path / STATS_DIRNAME


def _pack(rows: Tensor, values: Tensor) -> Tensor:
    """(row, float32 value) as one int64: row in the high 32 bits, the value's bits in the low."""
    return (rows.long() << 32) | (values.float().view(torch.int32).long() & 0xFFFFFFFF)


def _unpack(packed: Tensor) -> tuple[Tensor, Tensor]:
    rows = torch.where(packed >= 0, packed >> 32, torch.full_like(packed, -1))
    bits = (packed & 0xFFFFFFFF).to(torch.int64)
    bits = torch.where(bits >= 2**31, bits - 2**32, bits).to(torch.int32)
    return rows, torch.where(packed >= 0, bits.view(torch.float32), torch.zeros_like(bits, dtype=torch.float32))


def as_dictionary(dictionary: Any) -> Any:
    """A :mod:`workbench.dictionaries` dictionary for ``dictionary``: SAEs are wrapped, the rest pass through."""
    from workbench.sae import SAE

    return SAEDictionary(dictionary) if isinstance(dictionary, SAE) else dictionary


def _dictionary_label(dictionary: Any) -> str:
    desc = dictionary.describe()
    if desc.get("label"):
        return desc["label"]
    kind = desc.get("kind", "sae")
    name = {"sae": f"{desc.get('architecture', '')} SAE".strip(), "neurons": "MLP neurons", "pca": "PCA directions",
            "ica": "ICA directions", "random": "random directions"}.get(kind, kind)
    return f"{name}, {dictionary.hookpoint}, {dictionary.n_features} features"


def _fingerprint(dictionary: Any, store: ActivationStore, cfg: FeatureStatsConfig) -> dict:
    """What the statistics depend on: the dictionary's encoding of a probe, the store, the config."""
    probe = store.rows(dictionary.hookpoint, 0, min(256, store.n_rows)).float()
    with torch.no_grad():
        encoded = dictionary.encode(probe.to(_device_of(dictionary))).float().cpu().contiguous()
    digest = hashlib.sha256(encoded.numpy().tobytes()).hexdigest()[:16]
    return {"dictionary_probe": digest, "n_features": dictionary.n_features, "store": str(Path(store.path).resolve()),
            "store_rows": store.n_rows, "hookpoint": dictionary.hookpoint, "config": asdict(cfg)}


def _device_of(dictionary: Any) -> torch.device:
    if isinstance(getattr(dictionary, "device", None), (str, torch.device)):
        return torch.device(dictionary.device)
    module = getattr(dictionary, "sae", None) or dictionary
    try:
        return next(module.parameters()).device
    except (AttributeError, StopIteration, TypeError):
        return torch.device("cpu")


@torch.no_grad()
def feature_stats(
    dictionary: Any,
    store: ActivationStore,
    *,
    model: Any = None,
    tokenizer: Any = None,
    config: FeatureStatsConfig | None = None,
    out: str | Path | None = None,
    progress: bool = True,
    _stop_after: int | None = None,
) -> FeatureStats:
    """Statistics of every feature of ``dictionary`` (an SAE, or any :mod:`workbench.dictionaries`
    dictionary) over the rows of ``store`` at the dictionary's hook point.

    One pass encodes the store (memory bounded whatever its size); per feature it gives density,
    max and mean when firing, skew and kurtosis of the non-zero activations, their log-spaced
    histogram, the top examples, SAEDashboard's interval samples (``n_intervals`` equal-width
    intervals of [0, max], ``per_interval`` random examples from each, with the share of
    activations each interval contains) and delphi's quantile samples (the firing activations
    ranked and split into ``n_quantiles`` equal-count bins), each example with its store row,
    context and position and the feature's values on the window around it. With ``model``, the
    logit effects of the features that write to the residual stream (:mod:`workbench.logit_effects`)
    and the token strings.

    With ``out``, the result is saved there and an up-to-date result there is returned at once;
    pass 1 checkpoints into ``out/partial`` and an interrupted call resumes from it.
    """
    dictionary = as_dictionary(dictionary)
    cfg = config or FeatureStatsConfig()
    hookpoint = dictionary.hookpoint
    if hookpoint not in store.hookpoints:
        raise ValueError(f"the store at {store.path} has no {hookpoint!r} (it holds {', '.join(store.hookpoints)}); "
                         f"capture that hook point, or use a dictionary that reads one of these")
    if store.d(hookpoint) != dictionary.d_in:
        raise ValueError(f"the dictionary reads {dictionary.d_in}-dimensional activations but the store's {hookpoint} "
                         f"is {store.d(hookpoint)}-dimensional; they come from different models or hook points")
    if store.n_rows == 0:
        raise ValueError(f"the store at {store.path} is empty; capture some text first")
    tokenizer = tokenizer or getattr(model, "tokenizer", None)
    fingerprint = _fingerprint(dictionary, store, cfg)
    out = Path(out) if out is not None else None
    if out is not None and (out / STATS_JSON).is_file():
        with contextlib.suppress(ValueError, FileNotFoundError):
            existing = FeatureStats.load(out)
            if existing.meta.get("fingerprint") == fingerprint and (existing.meta.get("has_logits") or model is None):
                return existing
    scratch = None
    if out is None:
        scratch = Path(tempfile.mkdtemp(prefix="workbench-features-"))
    work = (out or scratch) / _PARTIAL
    try:
        state = _pass_over_store(dictionary, store, cfg, work, fingerprint, progress, _stop_after)
        if state is None:
            raise KeyboardInterrupt("stopped early (_stop_after), as a test asked")
        stats = _finish(dictionary, store, cfg, work, state, fingerprint, model, tokenizer, progress)
        if out is not None:
            stats.save(out)
        shutil.rmtree(work, ignore_errors=True)
        return stats
    finally:
        if scratch is not None:
            shutil.rmtree(scratch, ignore_errors=True)


def _tally(index: Int[Tensor, " e"], size: int, weights: Tensor | None = None) -> Tensor:
    """``bincount`` by ``index_add_`` (many times faster on CPU): counts (int64), or sums of ``weights``."""
    if weights is None:
        return torch.zeros(size, dtype=torch.int64, device=index.device).index_add_(0, index, torch.ones_like(index))
    return torch.zeros(size, dtype=weights.dtype, device=index.device).index_add_(0, index, weights)


def _merge_moments(state: dict[str, Tensor], f: Int[Tensor, " e"], v: Float[Tensor, " e"], n: int) -> None:
    """Add firings (feature ``f``, value ``v``) to the per-feature count, mean and central moment
    sums m2..m4, merging a batch's exact moments by Pebay's pairwise formulas (stable where the
    mean is large against the spread, unlike raw power sums)."""
    nb = _tally(f, n, torch.ones_like(v))
    mb = _tally(f, n, v) / nb.clamp_min(1)
    d = v - mb[f]
    d2 = d * d
    m2b, m3b, m4b = _tally(f, n, d2), _tally(f, n, d2 * d), _tally(f, n, d2 * d2)
    na, ma, m2a, m3a, m4a = state["fire_count"].double(), state["mean"], state["m2"], state["m3"], state["m4"]
    total = (na + nb).clamp_min(1)
    delta = mb - ma
    state["mean"] = ma + delta * nb / total
    state["m4"] = (m4a + m4b + delta**4 * na * nb * (na**2 - na * nb + nb**2) / total**3
                   + 6 * delta**2 * (na**2 * m2b + nb**2 * m2a) / total**2 + 4 * delta * (na * m3b - nb * m3a) / total)
    state["m3"] = m3a + m3b + delta**3 * na * nb * (na - nb) / total**2 + 3 * delta * (na * m2b - nb * m2a) / total
    state["m2"] = m2a + m2b + delta**2 * na * nb / total
    state["fire_count"] += nb.long()


def _fresh_state(n: int, cfg: FeatureStatsConfig) -> dict[str, Tensor]:
    nb = len(cfg.hist_edges) - 1
    return {
        "fire_count": torch.zeros(n, dtype=torch.int64),
        "mean": torch.zeros(n, dtype=torch.float64),
        "m2": torch.zeros(n, dtype=torch.float64),
        "m3": torch.zeros(n, dtype=torch.float64),
        "m4": torch.zeros(n, dtype=torch.float64),
        "max": torch.zeros(n, dtype=torch.float32),
        "hist_counts": torch.zeros(n, nb, dtype=torch.int64),
        "top_key": torch.full((n, cfg.n_top), _EMPTY, dtype=torch.int64),
        "top_packed": torch.full((n, cfg.n_top), -1, dtype=torch.int64),
    }


def _pass_over_store(dictionary: Any, store: ActivationStore, cfg: FeatureStatsConfig, work: Path, fingerprint: dict,
                     progress: bool, stop_after: int | None) -> dict[str, Tensor] | None:
    """Pass 1: encode every row; accumulate the per-feature state; spill the firings. Resumable."""
    from safetensors.torch import load_file, save_file

    n = dictionary.n_features
    work.mkdir(parents=True, exist_ok=True)
    marker = work / "state.json"
    done, spilled, state = 0, 0, _fresh_state(n, cfg)
    if marker.is_file():
        saved = json.loads(marker.read_text())
        if saved.get("fingerprint") == fingerprint:
            done, spilled = saved["batches_done"], saved["events"]
            state = load_file(str(work / "state.safetensors"))
    if done * cfg.batch_size >= store.n_rows and marker.is_file():
        return state
    spill = _Spill(work / "events.bin", spilled)
    edges = cfg.hist_edges.float()
    inner_edges = edges[1:-1]
    nb = len(edges) - 1
    device = _device_of(dictionary)
    # in store order a read-ahead of a few batches is enough (the default shuffle buffer holds 262k rows)
    batches = store.batches(dictionary.hookpoint, batch_size=cfg.batch_size, shuffle=False, device=device,
                            buffer_rows=4 * cfg.batch_size).skip(done)
    n_batches = math.ceil(store.n_rows / cfg.batch_size)
    last_save = time.monotonic()

    def checkpoint() -> None:
        events = spill.flush()
        write_atomic(work / "state.safetensors", lambda tmp: save_file(state, str(tmp)))
        write_json(marker, {"fingerprint": fingerprint, "batches_done": done, "events": events}, indent=1)

    bar = progress_bar(total=store.n_rows, initial=min(done * cfg.batch_size, store.n_rows), unit="tok", unit_scale=True,
                       desc="feature statistics", disable=not progress)
    try:
        with bar:
            for batch in batches:
                fired = dictionary.firings(batch.float()) if hasattr(dictionary, "firings") else \
                    firings_of(dictionary.encode(batch.float()))
                r, f, v = fired.rows.cpu(), fired.features.cpu(), fired.values.float().cpu()
                rows = r + done * cfg.batch_size
                _merge_moments(state, f, v.double(), n)
                state["max"].scatter_reduce_(0, f, v, "amax")
                bins = torch.bucketize(v, inner_edges, right=True)
                state["hist_counts"] += _tally(f * nb + bins, n * nb).view(n, nb)
                key = _descending_key(v)
                better = key < state["top_key"][f, -1]
                state["top_key"], state["top_packed"] = _keep_best(
                    f[better], key[better], _pack(rows[better], v[better]), state["top_key"], state["top_packed"])
                spill.append(rows, f, v)
                done += 1
                bar.update(len(batch))
                if done == n_batches or time.monotonic() - last_save > 30:
                    checkpoint()
                    last_save = time.monotonic()
                if stop_after is not None and done >= stop_after and done < n_batches:
                    checkpoint()
                    return None
    finally:
        spill.close()
    if done < n_batches:  # the store ended early: cannot happen for a complete store
        raise ValueError(f"the store at {store.path} yielded {done} of {n_batches} batches; is it complete?")
    return state


def _sample_bins(events: Path, n: int, n_bins: int, per_bin: int, bin_of, seed: int,
                 counts: bool = False) -> tuple[Tensor, Tensor, Tensor | None]:
    """Per (feature, bin) the ``per_bin`` firings with the smallest sample keys: a uniform random
    sample without replacement. ``bin_of(features, values)`` gives each firing's bin."""
    best_key = torch.full((n * n_bins, per_bin), _EMPTY, dtype=torch.int64)
    best_packed = torch.full((n * n_bins, per_bin), -1, dtype=torch.int64)
    totals = torch.zeros(n * n_bins, dtype=torch.int64) if counts else None
    for rows, feats, vals in _spill_chunks(events):
        groups = feats * n_bins + bin_of(feats, vals)
        if totals is not None:
            totals += _tally(groups, n * n_bins)
        keys = sample_key(rows, feats, seed)
        better = keys < best_key[groups, -1]
        best_key, best_packed = _keep_best(groups[better], keys[better], _pack(rows[better], vals[better]), best_key,
                                           best_packed)
    return best_key, best_packed, totals


def _finish(dictionary: Any, store: ActivationStore, cfg: FeatureStatsConfig, work: Path, state: dict[str, Tensor],
            fingerprint: dict, model: Any, tokenizer: Any, progress: bool) -> FeatureStats:
    """Passes 2-4 over the spilled firings: interval and quantile samples, example windows; then logits and vocab."""
    n = dictionary.n_features
    events = work / "events.bin"
    peak = state["max"]
    ni, nq, res = cfg.n_intervals, cfg.n_quantiles, cfg.quantile_resolution
    scale = torch.where(peak > 0, peak, torch.ones_like(peak))

    def interval_of(feats: Tensor, vals: Tensor) -> Tensor:
        return (vals / scale[feats] * ni).floor().long().clamp(0, ni - 1)

    _, interval_packed, interval_counts = _sample_bins(events, n, ni, cfg.per_interval, interval_of, cfg.seed, counts=True)

    def fine_of(feats: Tensor, vals: Tensor) -> Tensor:
        return (vals / scale[feats] * res).floor().long().clamp(0, res - 1)

    fine = torch.zeros(n * res, dtype=torch.int64)
    for _, feats, vals in _spill_chunks(events):
        fine += _tally(feats * res + fine_of(feats, vals), n * res)
    cumulative = fine.view(n, res).cumsum(1)
    targets = state["fire_count"].unsqueeze(1) * torch.arange(1, nq) / nq  # (n, nq-1)
    cut = torch.searchsorted(cumulative.double(), targets.double().contiguous())  # fine bin where each quantile ends
    q_edges = torch.cat([torch.zeros(n, 1), (cut + 1).float() / res * peak.unsqueeze(1), peak.unsqueeze(1)], dim=1)
    q_cut = cut  # firings in fine bins <= cut[j] belong to quantile <= j

    def quantile_of(feats: Tensor, vals: Tensor) -> Tensor:
        return (fine_of(feats, vals).unsqueeze(1) > q_cut[feats]).sum(1)

    _, quantile_packed, _ = _sample_bins(events, n, nq, cfg.per_quantile, quantile_of, cfg.seed + 1)

    top_rows, top_acts = _unpack(state["top_packed"])
    int_rows, int_acts = _unpack(interval_packed.view(n, ni, cfg.per_interval))
    q_rows, q_acts = _unpack(quantile_packed.view(n, nq, cfg.per_quantile))
    kinds = {"top": (top_rows, top_acts), "interval": (int_rows, int_acts), "quantile": (q_rows, q_acts)}
    tensors = {k: state[k] for k in ("fire_count", "mean", "m2", "m3", "m4", "max", "hist_counts")}
    tensors["hist_edges"] = cfg.hist_edges
    tensors["interval_counts"] = interval_counts.view(n, ni)
    tensors["quantile_edges"] = q_edges
    tensors.update(_windows(events, store, cfg, n, kinds))
    meta = {
        "version": STATS_VERSION,
        "dictionary": dictionary.describe(),
        "dictionary_label": _dictionary_label(dictionary),
        "hookpoint": dictionary.hookpoint,
        "store": str(Path(store.path).resolve()),
        "n_tokens": store.n_rows,
        "config": asdict(cfg),
        "fingerprint": fingerprint,
        "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "titles": [dictionary.title(i) for i in range(n)] if hasattr(dictionary, "title") else [],
    }
    directions = dictionary.residual_directions(model) if model is not None else None
    if directions is not None:
        from workbench.logit_effects import METHOD, logit_effects

        effects = logit_effects(model, directions.float())
        tensors.update({"logit_top_ids": effects.top_ids, "logit_top_values": effects.top_values,
                        "logit_bottom_ids": effects.bottom_ids, "logit_bottom_values": effects.bottom_values,
                        "logit_hist_counts": effects.hist_counts, "logit_hist_edges": effects.hist_edges})
        meta["logit_method"] = METHOD
    meta["has_logits"] = directions is not None
    ids = set(tensors["context_tokens"].unique().tolist())
    for key in ("logit_top_ids", "logit_bottom_ids"):
        if key in tensors:
            ids |= set(tensors[key].unique().tolist())
    ids = sorted(ids)
    texts = tokenizer.batch_decode([[i] for i in ids]) if tokenizer is not None else [f"<{i}>" for i in ids]
    meta["vocab"] = {str(i): text for i, text in zip(ids, texts)}
    return FeatureStats(meta, {k: v.contiguous() for k, v in tensors.items()})


def _windows(events: Path, store: ActivationStore, cfg: FeatureStatsConfig, n: int,
             kinds: dict[str, tuple[Tensor, Tensor]]) -> dict[str, Tensor]:
    """Pass 4: each example's context, position, and the feature's values on its window of
    ``before`` + 1 + ``after`` positions (0 outside the context and where the store kept no row)."""
    locations = store.locations()
    n_rows = store.n_rows
    width = cfg.before + 1 + cfg.after
    offsets = torch.arange(-cfg.before, cfg.after + 1)
    out: dict[str, Tensor] = {}
    requests = []  # (kind, flat example index, window slot, key)
    for kind, (rows, acts) in kinds.items():
        flat = rows.reshape(-1)
        valid = flat >= 0
        context = torch.full_like(flat, -1)
        position = torch.full_like(flat, -1)
        context[valid], position[valid] = locations[flat[valid], 0], locations[flat[valid], 1]
        out[f"{kind}_rows"], out[f"{kind}_acts"] = rows, acts
        out[f"{kind}_context"], out[f"{kind}_position"] = context.view(rows.shape), position.view(rows.shape)
        feature = torch.arange(n).view(n, *([1] * (rows.ndim - 1))).expand_as(rows).reshape(-1)
        ex = torch.nonzero(valid).flatten()
        target = flat[ex].unsqueeze(1) + offsets  # (E, W) candidate rows
        inside = (target >= 0) & (target < n_rows)
        t = target.clamp(0, n_rows - 1)
        same = inside & (locations[t, 0] == context[ex].unsqueeze(1)) & (locations[t, 1] == position[ex].unsqueeze(1) + offsets)
        e_idx, w_idx = torch.nonzero(same, as_tuple=True)
        keys = feature[ex[e_idx]] * n_rows + target[e_idx, w_idx]
        requests.append((kind, ex[e_idx] * width + w_idx, keys, rows.numel() * width, rows.shape))
    all_keys = torch.cat([keys for *_, keys, _, _ in requests])
    unique, inverse = torch.unique(all_keys, return_inverse=True)
    values = torch.zeros(len(unique))
    for rows, feats, vals in _spill_chunks(events):
        keys = feats * n_rows + rows
        at = torch.searchsorted(unique, keys).clamp(max=max(len(unique) - 1, 0))
        hit = unique[at] == keys if len(unique) else torch.zeros_like(keys, dtype=torch.bool)
        values[at[hit]] = vals[hit]
    start = 0
    for kind, slots, keys, size, shape in requests:
        window = torch.zeros(size)
        window[slots] = values[inverse[start:start + len(keys)]]
        start += len(keys)
        out[f"{kind}_windows"] = window.view(*shape, width)
    contexts = torch.cat([out[f"{kind}_context"].reshape(-1) for kind in kinds])
    context_ids = contexts[contexts >= 0].unique()
    out["context_ids"] = context_ids
    out["context_tokens"] = store.context_tokens(context_ids).int() if len(context_ids) else torch.zeros(0, store.ctx_len, dtype=torch.int32)
    return out


# ---- which features fire here? -----------------------------------------------------------------


@dataclass
class TextFeatures:
    """The features of a dictionary on one text, token by token (BOS excluded)."""

    tokens: list[str]
    """The text's tokens, decoded."""
    token_ids: list[int]
    """Their ids."""
    acts: Float[Tensor, "seq n_features"]
    """Every feature's activation on every token."""
    titles: list[str] = field(default_factory=list)
    """Feature names, if the dictionary has them."""

    @property
    def per_token(self) -> list[list[tuple[int, float]]]:
        """Per token, the active features and their activations, strongest first."""
        out = []
        for row in self.acts:
            active = torch.nonzero(row > 0).flatten()
            order = row[active].argsort(descending=True, stable=True)
            out.append([(int(f), float(row[f])) for f in active[order]])
        return out

    @property
    def ranking(self) -> list[tuple[int, float, int]]:
        """Features active anywhere in the text: (feature, total activation, tokens active), by total."""
        total = self.acts.clamp_min(0).sum(0)
        count = (self.acts > 0).sum(0)
        active = torch.nonzero(count).flatten()
        order = total[active].argsort(descending=True, stable=True)
        return [(int(f), float(total[f]), int(count[f])) for f in active[order]]

    def values(self, feature: int) -> list[float]:
        """One feature's activation on each token (for a heatmap)."""
        return [float(v) for v in self.acts[:, feature]]

    def to_dict(self, *, max_per_token: int = 32) -> dict:
        """Plain JSON: tokens, the active features per token (at most ``max_per_token``), the ranking."""
        return {"tokens": self.tokens, "per_token": [[[f, a] for f, a in fs[:max_per_token]] for fs in self.per_token],
                "ranking": [[f, t, n] for f, t, n in self.ranking], "titles": self.titles}


@torch.no_grad()
def text_features(model: Any, dictionary: Any, text: str, *, max_tokens: int = 1024) -> TextFeatures:
    """Which features fire on ``text``: the model reads it (BOS first, as the store's contexts
    start), the dictionary encodes its activations at the dictionary's hook point."""
    from workbench.capture import run_to

    if not isinstance(text, str):
        raise TypeError(f"text must be a str, got {type(text).__name__}; decode bytes first, e.g. data.decode('utf-8')")
    if not text.strip():
        raise ValueError("text is empty; give a sentence to look at")
    dictionary = as_dictionary(dictionary)
    ids = model.tokenizer(text, add_special_tokens=False)["input_ids"]
    if len(ids) > max_tokens:
        raise ValueError(f"text is {len(ids)} tokens long; at most {max_tokens} (max_tokens) are read at once, split it")
    input_ids = torch.tensor([[model.bos_token_id, *ids]])
    acts = run_to(model, [dictionary.hookpoint], input_ids)[dictionary.hookpoint][0, 1:]
    encoded = dictionary.encode(acts.float()).float().cpu()
    titles = [dictionary.title(i) for i in range(dictionary.n_features)] if hasattr(dictionary, "title") else []
    return TextFeatures([model.tokenizer.decode([i]) for i in ids], list(ids), encoded, titles)
