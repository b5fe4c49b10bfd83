"""Approximate feature activation (AFA): do an SAE's feature activations have the size the input predicts?

Lee et al. 2025, "Evaluating and Designing Sparse Autoencoders by Approximating Quasi-Orthogonality"
(arXiv 2503.24277), show that under the linear representation and superposition hypotheses the
l2 norm of the dense input ``||z||`` approximates the norm of the (ground-truth) sparse feature
vector, with a closed-form error. That gives any SAE, of any architecture, two checks that need
no language model, computed here exactly as the reference code does (github SewoongLee/top-afa-sae,
``visualization/zf-plot.ipynb``):

- per token, the **ZF pair**: ``||z||``, the norm of the activation the SAE reads (raw, ``b_dec``
  not subtracted), and ``||f~||``, the norm of the decoder-weighted feature activations with the
  decoder bias appended as one more unit feature::

      f~ = (f_1 ||W_dec_1||, ..., f_h ||W_dec_h||, ||b_dec||),   h = d_sae

  (``x_hat = sum_i f~_i * W_dec_i / ||W_dec_i|| + ||b_dec|| * b_dec / ||b_dec||``, so with
  orthonormal decoder rows and ``b_dec`` orthogonal to them ``||f~|| = ||x_hat||`` exactly).
  The **ZF plot** draws ``||z||`` (x) against ``||f~||`` (y) with the line y = x: points below it
  are under-activated, points above it over-activated (:func:`workbench.charts.zf_plot`);
- per token, the **epsilon lower bound** (epsilon-LBO): the smallest epsilon for which the
  decoder directions could be epsilon-quasi-orthogonal given that token's two norms::

      eps_lbo = | ||z||^2 - ||f~||^2 | / ((h - 1) ||f~||^2)

  (the reference's ``df['elbo']``; it is infinite where ``||f~|| = 0``). Lower is better.

The reference code shows the per-token epsilon-LBO as violin plots and ranks SAEs by its median.
:func:`afa_metrics` reports, over a stream of activations, the **mean** over tokens (a ratio of
sums, so its 95% interval is the percentile bootstrap of :mod:`workbench.stats`: over contexts
when batches are ``[contexts, seq, d_in]``, over tokens when they are ``[tokens, d_in]``), the
median of a bounded seeded sample of tokens, and that sample's ZF pairs for the plot. Memory is
bounded: a few numbers per context (or per block of consecutive tokens) and at most
``max_points`` pairs.

:class:`AFAAccumulator` takes activations with feature activations already computed, so an
evaluation that runs the SAE anyway (:func:`workbench.evaluate.faithfulness`) gets these
figures from the same forward pass.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, NamedTuple

import torch
from jaxtyping import Float
from torch import Tensor

from workbench.stats import Interval, intervals

if TYPE_CHECKING:
    from workbench.sae import SAE

__all__ = ["AFAAccumulator", "AFAMetrics", "ZFPoints", "afa_metrics", "eps_lbo", "zf_points"]

MAX_POINTS = 20_000
"""ZF pairs kept by default for the plot (a uniform seeded sample of the tokens)."""

MAX_UNITS = 4096
"""At most this many bootstrap units are kept; beyond, consecutive units are merged into blocks."""


class ZFPoints(NamedTuple):
    """The two norms of the ZF plot, per token."""

    norm_z: Float[Tensor, "..."]
    """``||z||``: l2 norm of the activation the SAE reads (the AFA of the paper's ZF plot)."""

    norm_f: Float[Tensor, "..."]
    """``||f~||``: l2 norm of ``(f_i ||W_dec_i||)_i`` with ``||b_dec||`` appended."""


@dataclass(frozen=True)
class AFAMetrics:
    """The AFA figures of an SAE over a set of activations (see the module docstring)."""

    eps_lbo: float
    """Mean over tokens of the per-token epsilon-LBO (tokens where it is undefined left out).
    Lower is better: 0 means ``||f~|| = ||z||`` on every token."""

    eps_lbo_ci: Interval | None
    """95% percentile-bootstrap interval of ``eps_lbo``: over contexts for ``[contexts, seq, d_in]``
    batches, else over tokens (in blocks of consecutive ones beyond :data:`MAX_UNITS`). None with
    fewer than two units."""

    eps_lbo_median: float
    """Median of the per-token epsilon-LBO over the kept sample (exact when every token is kept),
    the statistic the reference code ranks SAEs by."""

    n_tokens: int
    """Tokens measured."""

    n_contexts: int | None
    """Contexts they came from, when every batch was ``[contexts, seq, d_in]``; else None."""

    n_undefined: int
    """Tokens with ``||f~|| = 0`` (no feature active and ``b_dec = 0``), whose epsilon-LBO is
    infinite (0 / 0 when ``z = 0`` too): left out of ``eps_lbo``, still drawn in the ZF plot."""

    d_sae: int
    """``h``, the number of features, in the epsilon-LBO's denominator."""

    norm_z: Float[Tensor, " n_points"] = field(repr=False)
    """``||z||`` of the kept tokens (float64, CPU), for the ZF plot."""

    norm_f: Float[Tensor, " n_points"] = field(repr=False)
    """``||f~||`` of the same tokens."""

    @property
    def n_points(self) -> int:
        """Number of kept ZF pairs."""
        return self.norm_z.numel()

    def to_dict(self) -> dict[str, Any]:
        """The scalar figures as a JSON-able dict (without the ZF pairs); the interval under ``"ci"``."""
        return {
            "eps_lbo": self.eps_lbo,
            "eps_lbo_median": self.eps_lbo_median,
            "n_tokens": self.n_tokens,
            "n_contexts": self.n_contexts,
            "n_undefined": self.n_undefined,
            "d_sae": self.d_sae,
            "n_points": self.n_points,
            "ci": {} if self.eps_lbo_ci is None else {"eps_lbo": list(self.eps_lbo_ci)},
        }


def eps_lbo(norm_z: Float[Tensor, "*n"], norm_f: Float[Tensor, "*n"], d_sae: int) -> Float[Tensor, "*n"]:
    """Per-token epsilon-LBO ``| ||z||^2 - ||f~||^2 | / ((h - 1) ||f~||^2)`` with ``h = d_sae``.

    As the reference's ``df['elbo']`` (SewoongLee/top-afa-sae, ``visualization/zf-plot.ipynb``):
    infinite where ``||f~|| = 0 < ||z||``, NaN where both are 0.
    """
    if d_sae < 2:
        raise ValueError(f"the epsilon-LBO divides by d_sae - 1; it needs d_sae >= 2, got {d_sae}")
    z2, f2 = norm_z.pow(2), norm_f.pow(2)
    return (z2 - f2).abs() / ((d_sae - 1) * f2)


@torch.no_grad()
def zf_points(sae: SAE, x: Float[Tensor, "*lead d_in"]) -> ZFPoints:
    """``||z||`` and ``||f~||`` of every token of ``x`` (``[tokens, d_in]`` or ``[contexts, seq, d_in]``)
    under ``sae`` (any architecture), float64, shaped like ``x`` without its last dimension.

    Encodes ``x`` with ``sae.encode``; ``||f~||`` is the reference's ``sqrt(f_tilde @ f_tilde)``
    with ``f_tilde = append(f * ||W_dec||_rows, ||b_dec||)`` (``visualization/zf-plot.ipynb``).
    """
    x = _checked(x, sae.W_dec.shape[1])
    acts = sae.encode(x.to(sae.W_dec.device)).feature_acts
    return _norms(x, acts, *_decoder_norms(sae, acts.device))


class AFAAccumulator:
    """Streams activations and their feature activations into :class:`AFAMetrics`.

    ``add(x, feature_acts)`` per batch (``[contexts, seq, ...]`` or ``[tokens, ...]``), then
    :meth:`result`. Keeps per bootstrap unit the number of tokens with a defined epsilon-LBO and
    their sum (at most ``2 * max_units`` rows: past that, neighbouring rows are summed into
    blocks), and a uniform sample of ``max_points`` ZF pairs drawn with ``seed``.

    Works with anything that has ``W_dec [d_sae, d_in]`` (``b_dec``, when absent, counts as 0).
    """

    def __init__(self, sae: torch.nn.Module, *, max_points: int = MAX_POINTS, seed: int = 0,
                 max_units: int = MAX_UNITS) -> None:
        if max_points < 0:
            raise ValueError(f"max_points must be >= 0, got {max_points}")
        if max_units < 1:
            raise ValueError(f"max_units must be >= 1, got {max_units}")
        self.d_sae, self.d_in = sae.W_dec.shape
        if self.d_sae < 2:
            raise ValueError(f"the epsilon-LBO divides by d_sae - 1; it needs d_sae >= 2, got {self.d_sae}")
        self.sae, self.max_points, self.max_units = sae, max_points, max_units
        self._generator = torch.Generator().manual_seed(seed)
        self._decoder: tuple[Tensor, Tensor] | None = None  # per-row decoder norms and ||b_dec||, cached
        self._rows: list[Tensor] = []  # (r, 2) float64 per block of units: tokens with a defined eps_lbo, their sum
        self._n_rows = 0
        self._block = 1  # units summed into each row of _rows
        self._partial = torch.zeros(2, dtype=torch.float64)  # the sum of the units of the unfinished block
        self._partial_units = 0
        self._keys = torch.empty(0, dtype=torch.float64)
        self._z = torch.empty(0, dtype=torch.float64)
        self._f = torch.empty(0, dtype=torch.float64)
        self.n_tokens = 0
        self.n_undefined = 0
        self._n_contexts: int | None = 0

    @torch.no_grad()
    def add(self, x: Float[Tensor, "*lead d_in"], feature_acts: Float[Tensor, "*lead d_sae"]) -> None:
        """One batch of activations ``x`` and the SAE's ``feature_acts`` on them (same leading shape)."""
        x = _checked(x, self.d_in)
        if feature_acts.shape != (*x.shape[:-1], self.d_sae):
            raise ValueError(f"feature_acts must have shape {(*x.shape[:-1], self.d_sae)} for inputs of shape "
                             f"{tuple(x.shape)}, got {tuple(feature_acts.shape)}")
        if x.shape[:-1].numel() == 0:
            return
        if self._decoder is None or self._decoder[0].device != feature_acts.device:
            self._decoder = _decoder_norms(self.sae, feature_acts.device)
        points = _norms(x, feature_acts, *self._decoder)
        if not bool(torch.isfinite(points.norm_f).all()):
            raise ValueError("the SAE's feature activations are not finite (NaN or inf): check its weights")
        norm_z, norm_f = points.norm_z.reshape(x.shape[:-1]).cpu(), points.norm_f.reshape(x.shape[:-1]).cpu()
        per_token = eps_lbo(norm_z, norm_f, self.d_sae)
        defined = norm_f > 0
        values = torch.where(defined, per_token, torch.zeros_like(per_token))
        if x.dim() == 3:  # one unit per context
            units = torch.stack([defined.sum(1).double(), values.sum(1)], 1)
            if self._n_contexts is not None:
                self._n_contexts += x.shape[0]
        else:  # one unit per token
            units = torch.stack([defined.double(), values], 1)
            self._n_contexts = None
        self._add_units(units)
        self.n_tokens += norm_z.numel()
        self.n_undefined += int((~defined).sum())
        self._keep(norm_z.flatten(), norm_f.flatten())

    def _add_units(self, units: Float[Tensor, "n 2"]) -> None:
        """Append bootstrap units (rows of: tokens with a defined eps_lbo, their sum), in order."""
        fill = min(self._block - self._partial_units, len(units))  # first finish the unfinished block
        self._partial += units[:fill].sum(0)
        self._partial_units += fill
        if self._partial_units == self._block:
            self._append_rows(self._partial[None])
            self._partial, self._partial_units = torch.zeros(2, dtype=torch.float64), 0
        rest = units[fill:]
        whole = len(rest) // self._block * self._block
        if whole:
            self._append_rows(rest[:whole].view(-1, self._block, 2).sum(1))
        if whole < len(rest):
            self._partial, self._partial_units = rest[whole:].sum(0), len(rest) - whole
        while self._n_rows > 2 * self.max_units:  # sum neighbouring rows into blocks twice as long
            rows = torch.cat(self._rows)
            lone, rows = (rows[-1], rows[:-1]) if len(rows) % 2 else (None, rows)
            self._rows, self._n_rows = [rows.view(-1, 2, 2).sum(1)], len(rows) // 2
            if lone is not None:  # half a new block, followed by the unfinished one
                self._partial, self._partial_units = lone + self._partial, self._block + self._partial_units
            self._block *= 2

    def _append_rows(self, rows: Tensor) -> None:
        self._rows.append(rows)
        self._n_rows += len(rows)

    def _keep(self, norm_z: Tensor, norm_f: Tensor) -> None:
        """Keep the ``max_points`` tokens with the smallest random keys seen so far: a uniform sample."""
        if self.max_points == 0:
            return
        keys = torch.cat([self._keys, torch.rand(len(norm_z), generator=self._generator, dtype=torch.float64)])
        z, f = torch.cat([self._z, norm_z]), torch.cat([self._f, norm_f])
        if len(keys) > self.max_points:
            keep = keys.topk(self.max_points, largest=False).indices.sort().values
            keys, z, f = keys[keep], z[keep], f[keep]
        self._keys, self._z, self._f = keys, z, f

    def result(self) -> AFAMetrics:
        """The figures over every batch added so far."""
        if self.n_tokens == 0:
            raise ValueError("no tokens to measure: the batches were empty")
        rows = torch.cat([*self._rows, *([self._partial[None]] if self._partial_units else [])])
        count, total = rows.sum(0).tolist()
        ci = None
        if len(rows) >= 2:
            ci = intervals(rows, {"eps_lbo": lambda t: t[:, 1] / t[:, 0]})["eps_lbo"]
        sample = eps_lbo(self._z, self._f, self.d_sae)
        sample = sample[self._f > 0]
        median = float(torch.quantile(sample, 0.5)) if len(sample) else math.nan
        return AFAMetrics(
            eps_lbo=total / count if count else math.nan, eps_lbo_ci=ci, eps_lbo_median=median,
            n_tokens=self.n_tokens, n_contexts=self._n_contexts, n_undefined=self.n_undefined, d_sae=self.d_sae,
            norm_z=self._z.clone(), norm_f=self._f.clone(),
        )


@torch.no_grad()
def afa_metrics(
    sae: SAE,
    batches: Iterable[Float[Tensor, "*lead d_in"]],
    *,
    max_points: int = MAX_POINTS,
    seed: int = 0,
) -> AFAMetrics:
    """Epsilon-LBO (mean, 95% interval, median), token count and a ZF-plot sample of ``sae`` over ``batches``.

    Streams: each batch is moved to the SAE's device, encoded, reduced to a few numbers and
    dropped (``||z||`` is taken in float64 from the batch as given). Give ``[contexts, seq, d_in]`` batches (e.g. a store's rows grouped by context)
    for an interval over contexts; ``[tokens, d_in]`` batches get one over tokens. Any workbench
    SAE works, SAELens folders included (load them with :meth:`workbench.sae.SAE.load`).

    Args:
        sae: The SAE.
        batches: Activations at the SAE's hook point, ``[contexts, seq, d_in]`` or ``[tokens, d_in]``.
        max_points: ZF pairs to keep for the plot (a uniform sample of the tokens, seeded).
        seed: Seed of that sample.

    Raises:
        ValueError: On a batch of the wrong width or rank, non-finite values, or no tokens at all.
    """
    accumulator = AFAAccumulator(sae, max_points=max_points, seed=seed)
    for batch in batches:
        x = _checked(batch, accumulator.d_in)
        if x.shape[:-1].numel():  # (SAE.encode cannot reshape an empty [0, seq, d_in] batch)
            accumulator.add(x, sae.encode(x.to(sae.W_dec.device)).feature_acts)
    return accumulator.result()


def _checked(x: Tensor, d_in: int) -> Tensor:
    if not isinstance(x, Tensor):
        raise ValueError(f"activations must be tensors, got {type(x).__name__}")
    if x.dim() not in (2, 3) or x.shape[-1] != d_in:
        raise ValueError(f"expected activations [tokens, d_in] or [contexts, seq, d_in] with d_in={d_in}, "
                         f"got shape {tuple(x.shape)}: use the SAE trained for this hook point")
    return x


def _decoder_norms(sae: torch.nn.Module, device: torch.device) -> tuple[Tensor, Tensor]:
    """Per-row decoder norms ``||W_dec_i||`` and ``||b_dec||`` (0 without a ``b_dec``), on ``device``."""
    w = sae.W_dec.detach().to(device)
    dtype = torch.promote_types(w.dtype, torch.float32)
    b = getattr(sae, "b_dec", None)
    b_norm = torch.zeros((), dtype=torch.float64, device=device) if b is None else \
        torch.linalg.vector_norm(b.detach().to(device, torch.float64))
    return torch.linalg.vector_norm(w.to(dtype), dim=1), b_norm


def _norms(x: Tensor, feature_acts: Tensor, w_norm: Tensor, b_norm: Tensor) -> ZFPoints:
    """``||z||`` and ``||f~||`` per token (float64); raises on non-finite activations."""
    norm_z = torch.linalg.vector_norm(x.detach().to(torch.float64), dim=-1)
    if not bool(torch.isfinite(norm_z).all()):
        raise ValueError("the activations hold non-finite values (NaN or inf)")
    scaled = feature_acts.detach().to(w_norm.dtype) * w_norm  # (..., d_sae): f_i ||W_dec_i||
    norm_f = torch.linalg.vector_norm(scaled, dim=-1).to(torch.float64)
    return ZFPoints(norm_z, (norm_f.pow(2) + b_norm.pow(2)).sqrt())
