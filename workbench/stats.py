"""Confidence intervals for held-out figures: a percentile bootstrap over contexts.

Tokens of one context are not independent (a hard document is hard for every variant), so the
unit that is resampled is the context. Every figure here is a ratio of sums over contexts
(mean CE, loss recovered, FVU), so each context contributes a small vector of sums and a
resample is a weighted sum of those vectors: a whole bootstrap is one matrix product.
Variants measured on the same contexts are resampled together, which makes intervals of
differences (CE increase, loss recovered) paired.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import NamedTuple

import torch
from jaxtyping import Float
from torch import Tensor

__all__ = ["Interval", "bootstrap_sums", "correlation", "intervals", "mean_interval", "percentile_interval"]

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


# ---- means and correlations over items (features, directions), with percentile bootstrap intervals
def mean_interval(values: Sequence[float], *, seed: int = 0, level: float = 0.95) -> dict:
    """Mean of ``values`` with a percentile bootstrap interval (NaN when empty)."""
    values = [v for v in values if v is not None and math.isfinite(v)]
    if not values:
        return {"mean": math.nan, "ci": [math.nan, math.nan], "n": 0}
    per_item = torch.tensor(values, dtype=torch.float64).unsqueeze(1)
    means = bootstrap_sums(per_item, seed=seed)[:, 0] / len(values)
    low, high = percentile_interval(means, level)
    return {"mean": sum(values) / len(values), "ci": [low, high], "n": len(values)}


def _ranks(x: torch.Tensor) -> torch.Tensor:
    """Average ranks along the last dimension (ties share their mean rank)."""
    order = x.argsort(dim=-1)
    sorted_x = x.gather(-1, order)
    n = x.shape[-1]
    position = torch.arange(n, dtype=torch.float64).expand_as(x).clone()
    # tie groups: the mean position of each run of equal sorted values
    new_group = torch.ones_like(sorted_x, dtype=torch.bool)
    new_group[..., 1:] = sorted_x[..., 1:] != sorted_x[..., :-1]
    group = new_group.long().cumsum(-1) - 1
    sums = torch.zeros_like(position).scatter_add_(-1, group, position)
    counts = torch.zeros_like(position).scatter_add_(-1, group, torch.ones_like(position))
    mean_position = (sums / counts.clamp_min(1)).gather(-1, group)
    return torch.empty_like(position).scatter_(-1, order, mean_position)


def _pearson_rows(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    x = x - x.mean(-1, keepdim=True)
    y = y - y.mean(-1, keepdim=True)
    return (x * y).sum(-1) / ((x * x).sum(-1) * (y * y).sum(-1)).sqrt()


def correlation(x: Sequence[float], y: Sequence[float], *, seed: int = 0, n_resamples: int = N_RESAMPLES) -> dict:
    """Pearson and Spearman correlations of paired values with percentile bootstrap 95% intervals
    (pairs resampled together; non-finite pairs dropped)."""
    pairs = [(a, b) for a, b in zip(x, y) if math.isfinite(a) and math.isfinite(b)]
    out = {"n": len(pairs), "pearson": math.nan, "pearson_ci": [math.nan, math.nan], "spearman": math.nan,
           "spearman_ci": [math.nan, math.nan]}
    if len(pairs) < 3:
        return out
    xs = torch.tensor([a for a, _ in pairs], dtype=torch.float64)
    ys = torch.tensor([b for _, b in pairs], dtype=torch.float64)
    draws = torch.randint(0, len(pairs), (n_resamples, len(pairs)), generator=torch.Generator().manual_seed(seed))
    for name, transform in (("pearson", lambda v: v), ("spearman", _ranks)):
        out[name] = float(_pearson_rows(transform(xs.unsqueeze(0)), transform(ys.unsqueeze(0)))[0])
        out[f"{name}_ci"] = list(percentile_interval(_pearson_rows(transform(xs[draws]), transform(ys[draws]))))
    return out
