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
