"""Model-free SAE metrics: reconstruction quality, sparsity and feature density over batches.

Everything is computed in one streaming pass (running sums in float64; no activations are
kept). The loss-recovered metric, which needs the language model, lives elsewhere.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, NamedTuple

import torch
from jaxtyping import Float, Int
from torch import Tensor

from workbench.stats import Interval, intervals

if TYPE_CHECKING:
    from workbench.sae import SAE

__all__ = ["DensityHistogram", "ReconstructionMetrics", "density_histogram", "reconstruction_metrics"]

L0_QUANTILES = (0.05, 0.25, 0.5, 0.75, 0.95)
"""The L0 quantiles reported by :func:`reconstruction_metrics`."""


@dataclass(frozen=True)
class ReconstructionMetrics:
    """How well an SAE reconstructs a set of activations, and how sparsely."""

    n_tokens: int
    """Number of tokens (rows) evaluated."""

    mse_per_token: float
    """Mean over tokens of the squared error summed over ``d_in``: ``mean_t ||x_t - x_hat_t||^2``."""

    mse_per_element: float
    """Mean squared error per element: ``mse_per_token / d_in``."""

    fvu: float
    """Fraction of variance unexplained: total squared error over the total squared deviation
    of ``x`` from its mean (over the whole set, summed over ``d_in``). 0 is perfect; 1 is no
    better than predicting the mean."""

    explained_variance: float
    """``1 - fvu``."""

    l0_mean: float
    """Mean number of active (nonzero) features per token."""

    l0_std: float
    """Standard deviation over tokens of the number of active features."""

    l0_quantiles: dict[str, float]
    """Quantiles of the per-token L0 (keys ``"q05"``, ``"q25"``, ``"q50"``, ``"q75"``, ``"q95"``);
    exact, each the smallest L0 with at least that fraction of tokens at or below it."""

    dead_fraction: float
    """Fraction of features that never fired on these tokens."""

    dense_fraction: float
    """Fraction of features firing on more than ``dense_threshold`` of the tokens."""

    dense_threshold: float
    """The firing frequency above which a feature counts as dense."""

    feature_density: Float[Tensor, " d_sae"] = field(repr=False)
    """Per feature, the fraction of tokens on which it fired (on the CPU, float64)."""

    n_contexts: int | None = None
    """Number of contexts the tokens came from, when batches were ``[contexts, seq, d_in]``."""

    fvu_ci: Interval | None = None
    """95% interval of ``fvu`` (bootstrap over contexts), when batches were ``[contexts, seq, d_in]``."""

    def to_dict(self) -> dict[str, Any]:
        """The scalar metrics as a JSON-able dict (without ``feature_density``)."""
        return {
            "n_tokens": self.n_tokens,
            "mse_per_token": self.mse_per_token,
            "mse_per_element": self.mse_per_element,
            "fvu": self.fvu,
            "explained_variance": self.explained_variance,
            "l0_mean": self.l0_mean,
            "l0_std": self.l0_std,
            "l0_quantiles": dict(self.l0_quantiles),
            "dead_fraction": self.dead_fraction,
            "dense_fraction": self.dense_fraction,
            "dense_threshold": self.dense_threshold,
            "d_sae": self.feature_density.numel(),
            "n_contexts": self.n_contexts,
            "ci": {} if self.fvu_ci is None else {"fvu": list(self.fvu_ci),
                                                  "explained_variance": [1 - self.fvu_ci.high, 1 - self.fvu_ci.low]},
        }

    def feature_density_list(self) -> list[float]:
        """``feature_density`` as a JSON-able list of floats."""
        return self.feature_density.tolist()


@torch.no_grad()
def reconstruction_metrics(
    sae: SAE,
    batches: Iterable[Float[Tensor, "batch d_in"]],
    *,
    dense_threshold: float = 0.1,
    max_batches: int | None = None,
    on_batch: Callable[[Tensor, Tensor], None] | None = None,
) -> ReconstructionMetrics:
    """Reconstruction and sparsity metrics of ``sae`` over ``batches``, in one streaming pass.

    Each batch (extra leading dims are flattened) is moved to the SAE's device and dtype and
    run through ``sae(x)``, whose ``x_hat`` and ``feature_acts`` are used; a feature is active
    on a token when its activation is nonzero. Only running sums are kept: the
    per-dimension mean and squared deviation (merged batch by batch, Chan et al.), the
    squared error, a histogram of per-token L0 and per-feature firing counts. When every batch
    is ``[contexts, seq, d_in]``, a few sums per context are kept too, for a bootstrap interval
    of the FVU over contexts (tokens of one context are not independent).

    ``on_batch(x, feature_acts)``, when given, sees every batch (on the SAE's device and dtype,
    leading dimensions as given) with its feature activations, so that other figures share this
    forward pass (e.g. :class:`workbench.afa.AFAAccumulator`).
    """
    if not 0 <= dense_threshold <= 1:
        raise ValueError(f"dense_threshold is a fraction of tokens in [0, 1], got {dense_threshold}")
    param = next(iter(sae.parameters()))
    d_sae, d_in = sae.W_dec.shape
    n = 0
    mean = torch.zeros(d_in, dtype=torch.float64, device=param.device)
    m2 = torch.zeros(d_in, dtype=torch.float64, device=param.device)  # sum of squared deviations
    sq_err = torch.zeros((), dtype=torch.float64, device=param.device)
    fires = torch.zeros(d_sae, dtype=torch.long, device=param.device)
    l0_hist = torch.zeros(d_sae + 1, dtype=torch.long, device=param.device)
    per_context: list[Tensor] | None = []  # (contexts, 3 + d_in): tokens, sq. error, sum ||x||^2, sum x
    for i, batch in enumerate(batches):
        if max_batches is not None and i >= max_batches:
            break
        x = batch.reshape(-1, d_in).to(param.device, param.dtype)
        if x.shape[0] == 0:
            continue
        out = sae(x)
        acts, x_hat = out.feature_acts, out.x_hat
        if on_batch is not None:
            on_batch(x.view(batch.shape), acts.reshape(*batch.shape[:-1], d_sae))
        x64 = x.double()
        err = (x64 - x_hat.double()).pow(2).sum(-1)  # (B,)
        sq_err += err.sum()
        if per_context is not None and batch.dim() == 3:
            c, t = batch.shape[:2]
            per_context.append(torch.cat([torch.full((c, 1), float(t), dtype=torch.float64, device=x.device),
                                          err.view(c, t, 1).sum(1), x64.pow(2).sum(-1).view(c, t, 1).sum(1),
                                          x64.view(c, t, d_in).sum(1)], 1))
        else:
            per_context = None
        # Merge this batch's mean and squared deviation into the running ones.
        b = x.shape[0]
        b_mean = x64.mean(0)
        b_m2 = (x64 - b_mean).pow(2).sum(0)
        delta = b_mean - mean
        total = n + b
        mean += delta * (b / total)
        m2 += b_m2 + delta.pow(2) * (n * b / total)
        n = total
        active = acts != 0  # (B, d_sae)
        fires += active.sum(0)
        l0_hist += torch.bincount(active.sum(1), minlength=d_sae + 1)
    if n == 0:
        raise ValueError("no tokens to evaluate: the batches were empty")
    total_sq_err = float(sq_err)
    total_var = float(m2.sum())
    fvu = total_sq_err / total_var if total_var > 0 else (0.0 if total_sq_err == 0 else math.inf)
    l0_values = torch.arange(d_sae + 1, dtype=torch.float64)
    hist = l0_hist.cpu().double()
    l0_mean = float((hist * l0_values).sum() / n)
    l0_var = float((hist * (l0_values - l0_mean).pow(2)).sum() / n)
    cdf = hist.cumsum(0) / n
    quantiles = {
        f"q{round(q * 100):02d}": float(torch.searchsorted(cdf, torch.tensor(q, dtype=torch.float64) - 1e-12))
        for q in L0_QUANTILES
    }
    density = fires.cpu().double() / n
    fvu_ci = None if not per_context else intervals(torch.cat(per_context), {"fvu": _fvu_of_sums})["fvu"]
    return ReconstructionMetrics(
        n_tokens=n,
        mse_per_token=total_sq_err / n,
        mse_per_element=total_sq_err / (n * d_in),
        fvu=fvu,
        explained_variance=1.0 - fvu,
        l0_mean=l0_mean,
        l0_std=math.sqrt(max(l0_var, 0.0)),
        l0_quantiles=quantiles,
        dead_fraction=float((density == 0).double().mean()),
        dense_fraction=float((density > dense_threshold).double().mean()),
        dense_threshold=dense_threshold,
        feature_density=density,
        n_contexts=None if not per_context else sum(rows.shape[0] for rows in per_context),
        fvu_ci=fvu_ci,
    )


def _fvu_of_sums(totals: Float[Tensor, "r 3+d"]) -> Float[Tensor, " r"]:
    """FVU from column sums (tokens, squared error, sum ||x||^2, sum x): error / total squared deviation."""
    n, err, sq, s = totals[:, 0], totals[:, 1], totals[:, 2], totals[:, 3:]
    return err / (sq - s.pow(2).sum(-1) / n)


class DensityHistogram(NamedTuple):
    """Histogram of log10 feature density; dead features are counted apart (log10 0 = -inf)."""

    edges: Float[Tensor, " n_edges"]
    """Bin edges in log10(density), increasing (``bins + 1`` of them)."""

    counts: Int[Tensor, " bins"]
    """Number of live features per bin (the last bin includes its right edge)."""

    n_dead: int
    """Features with density 0, left out of ``counts``."""


def density_histogram(
    feature_density: Float[Tensor, " d_sae"],
    bins: int | Sequence[float] = 50,
    *,
    range: tuple[float, float] | None = None,
) -> DensityHistogram:
    """Histogram of ``log10(feature_density)`` over live features, dead ones counted apart.

    ``bins`` is a number of equal-width bins or the edges themselves (log10 units). Without
    ``range`` the bins span from the floor of the smallest live log10 density to 0 (a feature
    firing on every token); live densities outside the range are clipped into the end bins.
    """
    density = feature_density.detach().double().cpu().flatten()
    alive = density > 0
    n_dead = int((~alive).sum())
    logd = density[alive].log10()
    if isinstance(bins, int):
        if bins <= 0:
            raise ValueError(f"bins must be positive, got {bins}")
        if range is None:
            low = math.floor(float(logd.min())) if logd.numel() else -1.0
            range = (min(low, -1.0), 0.0)
        lo, hi = range
        if not hi > lo:
            raise ValueError(f"range must be increasing, got {range}")
        edges = torch.linspace(lo, hi, bins + 1, dtype=torch.float64)
    else:
        edges = torch.as_tensor(list(bins), dtype=torch.float64)
        if edges.numel() < 2 or not bool((edges[1:] > edges[:-1]).all()):
            raise ValueError("bin edges must be at least two increasing numbers")
    n_bins = edges.numel() - 1
    # The nudge keeps a float32 density such as 0.01 (log10 = -2.00000001) on its decade edge.
    index = (torch.bucketize(logd + 1e-6, edges, right=True) - 1).clamp(0, n_bins - 1)
    counts = torch.bincount(index, minlength=n_bins)
    return DensityHistogram(edges=edges, counts=counts, n_dead=n_dead)
