"""Confidence intervals for held-out figures: a percentile bootstrap over contexts.

Tokens of one context are not independent (a hard document is hard for every variant), so the
unit that is resampled is the context. Every figure here is a ratio of sums over contexts
(mean CE, loss recovered, FVU), so each context contributes a small vector of sums and a
resample is a weighted sum of those vectors: a whole bootstrap is one matrix product.
Variants measured on the same contexts are resampled together, which makes intervals of
differences (CE increase, loss recovered) paired.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import NamedTuple

import torch
from jaxtyping import Float
from torch import Tensor

__all__ = ["Interval", "bootstrap_sums", "intervals", "percentile_interval"]

N_RESAMPLES = 2000
"""Bootstrap resamples behind every interval."""


class Interval(NamedTuple):
    """A two-sided confidence interval."""

    low: float
    high: float

    def __str__(self) -> str:
        return f"{self.low:.4g}-{self.high:.4g}"


def bootstrap_sums(
    per_item: Float[Tensor, "n k"], *, n_resamples: int = N_RESAMPLES, seed: int = 0
) -> Float[Tensor, "n_resamples k"]:
    """Column sums of ``per_item`` over ``n_resamples`` resamples of its rows with replacement.

    The resamples are drawn by a seeded generator, so the same data always give the same
    intervals. Computed in float64 on the CPU.
    """
    per_item = per_item.detach().to("cpu", torch.float64)
    n = per_item.shape[0]
    if n == 0:
        raise ValueError("cannot bootstrap over zero items")
    generator = torch.Generator().manual_seed(seed)
    draws = torch.randint(0, n, (n_resamples, n), generator=generator)  # (R, n) row indices
    weights = torch.zeros(n_resamples, n, dtype=torch.float64)
    weights.scatter_add_(1, draws, torch.ones_like(draws, dtype=torch.float64))  # (R, n) counts
    return weights @ per_item  # (R, k)


def percentile_interval(values: Float[Tensor, " n_resamples"], level: float = 0.95) -> Interval:
    """The central ``level`` interval of bootstrap ``values``, ignoring NaNs (e.g. a 0/0 ratio)."""
    finite = values[torch.isfinite(values)]
    if finite.numel() == 0:
        return Interval(float("nan"), float("nan"))
    tail = (1 - level) / 2
    low, high = torch.quantile(finite.double(), torch.tensor([tail, 1 - tail], dtype=torch.float64)).tolist()
    return Interval(low, high)


def intervals(
    per_item: Float[Tensor, "n k"],
    statistics: dict[str, Callable[[Tensor], Tensor]],
    *,
    level: float = 0.95,
    seed: int = 0,
) -> dict[str, Interval]:
    """Bootstrap interval of each statistic, a function of the column sums ``[..., k]``."""
    sums = bootstrap_sums(per_item, seed=seed)
    return {name: percentile_interval(statistic(sums), level) for name, statistic in statistics.items()}
