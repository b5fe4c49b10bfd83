"""Statistics of activations and features, computed from a store. No plotting, no widgets.

Everything streams over the store in batches, so it works on stores larger than memory.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from jaxtyping import Float, Int
from torch import Tensor

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
