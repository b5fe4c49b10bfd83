"""How faithful is an SAE inside the model: the reconstructed transformer loss.

:func:`faithfulness` (and :func:`loss_recovered`, its CE half) splices the SAE's reconstruction
into the forward pass in place of the real activation and compares the next-token cross-entropy
(CE) on held-out text with:

- the clean model (``ce_clean``);
- **zero-ablation** (``ce_zero``): the activation replaced by zeros, as SAELens's
  ``ce_loss_score`` and Towards Monosemanticity do. ``loss_recovered`` is
  ``(ce_zero - ce_sae) / (ce_zero - ce_clean)``, so 1 is perfect and 0 is no better than
  deleting the activation; "the extra loss is X% of zero-ablating" is ``1 - loss_recovered``;
- **mean-ablation** (``ce_mean``): the activation replaced by its mean over the training
  store, when a mean is given; ``loss_recovered_mean`` uses it as the baseline;
- for residual-stream hook points, **skipping the block** (``ce_skip``): the output of the
  block that writes this residual stream (block L for ``resid_post``, L-1 for ``resid_pre``)
  replaced by its input. Zeroing a residual stream destroys the model, so for those report
  ``ce_increase = ce_sae - ce_clean`` in nats (and ``loss_recovered_skip``), not only
  ``loss_recovered``.

``kl`` is the mean KL divergence KL(clean || spliced) over next-token distributions.
Positions that start a context (the BOS token) are left clean in every variant, the skipped
block included, since SAEs are trained without them; the CE is taken over every next-token
prediction after position 0.

``convention="saelens"`` reproduces SAELens's ``ce_loss_score`` instead (SAELens 6
``evals.get_recons_loss``): its zero-ablation hook zeroes the activation at *every* position,
BOS included, while its SAE splice leaves special tokens (BOS) clean. A zeroed BOS activation
costs more loss than zeroing the rest (the BOS is an attention sink), so ``ce_zero`` is higher and
loss recovered looks better under SAELens's convention than under workbench's, where every
variant leaves BOS alone and so the SAE is compared with ablating exactly what it replaces. The
mean-ablation baseline follows the same choice. Every figure has a 95% bootstrap interval over contexts
(:mod:`workbench.stats`), and the layers below the hook point run once per batch
(:func:`workbench.intervene.logits_from_block`).
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from typing import Literal, NamedTuple

import torch
import torch.nn.functional as F
from jaxtyping import Float, Int
from torch import Tensor

from workbench.afa import AFAAccumulator, AFAMetrics
from workbench.intervene import Edit, logits_from_block, residuals_and_logits
from workbench.metrics import ReconstructionMetrics, reconstruction_metrics
from workbench.models import Model
from workbench.progress import progress_bar
from workbench.stats import Interval, intervals


_COLUMNS = ("n", "clean", "sae", "zero", "mean", "skip", "kl")
"""Per-context sums kept for the bootstrap: predictions, CE of each variant, KL."""


@dataclass
class LossRecovered:
    """Cross-entropy (nats per token) of the model with the SAE spliced in, and its baselines.

    Every figure has a 95% interval in :attr:`ci` (a bootstrap over contexts, paired across
    variants: see :mod:`workbench.stats`).
    """

    hookpoint: str
    """Where the SAE was spliced in."""
    n_tokens: int
    """Number of next-token predictions averaged over."""
    n_contexts: int
    """Number of contexts they come from (the unit the bootstrap resamples)."""
    ce_clean: float
    """CE of the unmodified model."""
    ce_sae: float
    """CE with the SAE's reconstruction in place of the activation."""
    ce_zero: float
    """CE with the activation zeroed."""
    ce_mean: float | None
    """CE with the activation replaced by its mean (None when no mean was given)."""
    ce_skip: float | None
    """CE with the block skipped (residual-stream hook points only)."""
    kl: float
    """Mean KL(clean || SAE-spliced) of the next-token distributions, nats."""
    skip_layer: int | None = None
    """The block skipped for ``ce_skip`` (None for other hook points)."""
    convention: str = "workbench"
    """Which positions the ablation baselines edit: ``"workbench"`` every one but BOS (like the
    SAE splice), ``"saelens"`` every one, BOS included, as SAELens's ``ce_loss_score``."""
    ci: dict[str, Interval] = field(default_factory=dict)
    """95% interval of each figure (``ce_*``, ``kl``, ``ce_increase``, ``loss_recovered*``) by name."""

    @property
    def ce_increase(self) -> float:
        """Extra loss from the SAE, nats per token."""
        return self.ce_sae - self.ce_clean

    @property
    def loss_recovered(self) -> float:
        """(ce_zero - ce_sae) / (ce_zero - ce_clean): share of the zero-ablation loss the SAE recovers."""
        return _recovered(self.ce_zero, self.ce_sae, self.ce_clean)

    @property
    def loss_recovered_mean(self) -> float | None:
        """The same against mean-ablation."""
        return None if self.ce_mean is None else _recovered(self.ce_mean, self.ce_sae, self.ce_clean)

    @property
    def loss_recovered_skip(self) -> float | None:
        """The same against skipping the block."""
        return None if self.ce_skip is None else _recovered(self.ce_skip, self.ce_sae, self.ce_clean)

    @property
    def residual(self) -> bool:
        """Whether the hook point is a residual stream (then zero-ablation is no fair baseline)."""
        return self.ce_skip is not None

    def sentence(self) -> str:
        """The result in one sentence, with 95% intervals.

        For MLP and other block outputs, Towards Monosemanticity's phrasing: the extra loss as a
        share of zero-ablating the activation. A residual stream carries everything, so zeroing
        it is no yardstick: there the sentence leads with the CE increase in nats and compares
        it with skipping the block that writes the stream.
        """
        n = f"{self.n_tokens:,} held-out tokens in {self.n_contexts} contexts"
        inc = f"{self.ce_increase:+.3f} nats/token ({_range(self.ci.get('ce_increase'), '.3f')})"
        if self.residual:
            skip = 1 - self.loss_recovered_skip
            return (f"the SAE adds {inc} to the next-token loss (CE {self.ce_clean:.3f} clean); skipping block "
                    f"{self.skip_layer} adds {self.ce_skip - self.ce_clean:+.3f}, so the SAE costs "
                    f"{100 * skip:.1f}% ({_range(self.ci.get('loss_recovered_skip'), '.1f', percent_lost=True)}%) "
                    f"of skipping the block ({n})")
        where = "the MLP" if "mlp" in self.hookpoint else "this activation"
        lost = 100 * (1 - self.loss_recovered)
        return (f"the extra loss is {lost:.1f}% ({_range(self.ci.get('loss_recovered'), '.1f', percent_lost=True)}%) "
                f"of zero-ablating {where} (CE {self.ce_clean:.3f} clean, {self.ce_sae:.3f} with the SAE, "
                f"{self.ce_zero:.3f} zero-ablated; {inc}; {n})")

    def to_dict(self) -> dict:
        """Figures as JSON-able values; intervals under ``"ci"`` as ``[low, high]``."""
        out = asdict(self)
        out.update(ce_increase=self.ce_increase, loss_recovered=self.loss_recovered,
                   loss_recovered_mean=self.loss_recovered_mean, loss_recovered_skip=self.loss_recovered_skip,
                   ci={name: list(interval) for name, interval in self.ci.items()})
        return out


def _range(interval: Interval | None, spec: str, *, percent_lost: bool = False) -> str:
    """``"lo-hi"`` of an interval; for a loss recovered, as the percentage lost (so reversed)."""
    if interval is None:
        return "no interval"
    low, high = interval
    if percent_lost:
        low, high = 100 * (1 - high), 100 * (1 - low)
    return f"{low:{spec}}{' to ' if low < 0 else '-'}{high:{spec}}"


def _recovered(baseline, ce, clean):
    """(baseline - ce) / (baseline - clean), for floats or tensors of sums (NaN where the gap is 0)."""
    gap = baseline - clean
    if not isinstance(gap, Tensor) and gap == 0:
        return float("nan")
    return (baseline - ce) / gap


def _intervals(sums: Float[Tensor, "n_contexts 7"], *, mean: bool, residual: bool) -> dict[str, Interval]:
    """Bootstrap intervals of every figure from per-context sums (columns: :data:`_COLUMNS`)."""
    col = {name: i for i, name in enumerate(_COLUMNS)}

    def per_token(name):
        return lambda totals: totals[:, col[name]] / totals[:, col["n"]]

    def recovered(baseline):
        return lambda t: _recovered(t[:, col[baseline]], t[:, col["sae"]], t[:, col["clean"]])

    statistics = {f"ce_{name}": per_token(name) for name in ("clean", "sae", "zero")}
    statistics.update(kl=per_token("kl"), loss_recovered=recovered("zero"),
                      ce_increase=lambda t: (t[:, col["sae"]] - t[:, col["clean"]]) / t[:, col["n"]])
    if mean:
        statistics.update(ce_mean=per_token("mean"), loss_recovered_mean=recovered("mean"))
    if residual:
        statistics.update(ce_skip=per_token("skip"), loss_recovered_skip=recovered("skip"))
    return intervals(sums, statistics)


def _keep_first(edit, *, keep: bool = True):
    """Apply ``edit`` to every position but the first (the BOS stays clean); with ``keep=False``
    to every position."""

    def edited(x: Tensor) -> Tensor:
        if not keep:
            return edit(x).to(x.dtype)
        out = x.clone()
        out[:, 1:] = edit(x[:, 1:]).to(x.dtype)
        return out

    return edited


def _logits_skipping(model: Model, ids: Tensor, layer: int, streams: dict[int, Tensor]) -> Tensor:
    """Logits with block ``layer`` skipped at every position but the BOS: block ``layer + 1``
    reads the stream that entered block ``layer``."""
    skipped = streams[layer].clone()
    skipped[:, 0] = streams[layer + 1][:, 0]
    return logits_from_block(model, ids, layer + 1, skipped)


def _next_token_ce(logits: Float[Tensor, "b s v"], ids: Int[Tensor, "b s"]) -> Float[Tensor, "b s-1"]:
    logp = logits[:, :-1].float().log_softmax(-1)
    return -logp.gather(-1, ids[:, 1:, None].to(logits.device)).squeeze(-1)


def _kl(clean: Tensor, other: Tensor) -> Tensor:
    p = clean[:, :-1].float().log_softmax(-1)
    q = other[:, :-1].float().log_softmax(-1)
    return F.kl_div(q, p, log_target=True, reduction="none").sum(-1)


class Faithfulness(NamedTuple):
    """An SAE measured on one set of contexts: reconstruction and the loss in the forward pass."""

    reconstruction: ReconstructionMetrics
    """FVU (with its interval), MSE, L0, dead and dense features, on the hook point's activations."""
    loss_recovered: LossRecovered
    """CE with the SAE spliced in vs the clean model and the ablation baselines, with intervals."""
    afa: AFAMetrics | None = None
    """Epsilon-LBO (with its interval) and the ZF-plot sample on the same activations (:mod:`workbench.afa`)."""


def loss_recovered(
    model: Model,
    sae: torch.nn.Module,
    hookpoint: str,
    contexts: Int[Tensor, "n seq"],
    *,
    batch_size: int = 16,
    mean: Float[Tensor, " d"] | None = None,
    convention: Literal["workbench", "saelens"] = "workbench",
    progress: bool = False,
) -> LossRecovered:
    """CE with ``sae`` spliced in at ``hookpoint`` over ``contexts`` (use held-out text), with baselines.

    Every figure comes with a 95% bootstrap interval over contexts (``.ci``); use a few hundred
    contexts or more for intervals to mean much. The arguments are :func:`faithfulness`'s; here
    the SAE's ``forward`` only needs to return ``x_hat``.
    """
    rows: list[Tensor] = []
    for _ in _spliced_batches(model, sae, hookpoint, contexts, rows, batch_size=batch_size, mean=mean,
                              convention=convention, progress=progress):
        pass
    return _loss_recovered(hookpoint, model.hookpoint(hookpoint), rows, mean is not None, convention)


def faithfulness(
    model: Model,
    sae: torch.nn.Module,
    hookpoint: str,
    contexts: Int[Tensor, "n seq"],
    *,
    batch_size: int = 16,
    mean: Float[Tensor, " d"] | None = None,
    convention: Literal["workbench", "saelens"] = "workbench",
    progress: bool = False,
) -> Faithfulness:
    """Reconstruction metrics and loss recovered of ``sae`` at ``hookpoint`` in one pass over ``contexts``.

    Per batch, the layers below the hook point run once (the clean pass, whose activations are
    also what the reconstruction metrics measure), then only the rest of the model for each
    variant: the SAE spliced in, zero-ablation, mean-ablation (with ``mean``) and, for residual
    streams, the block skipped. Position 0 (BOS) is left clean in every variant and left out of
    the reconstruction metrics and of the AFA figures (epsilon-LBO, ZF pairs), which come from
    the same clean activations and the same SAE forward pass.

    Args:
        model: The language model.
        sae: Anything with ``W_dec [d_sae, d_in]`` whose ``forward(x)`` returns ``x_hat`` and
            ``feature_acts``.
        hookpoint: Where the SAE reads and is spliced in.
        contexts: Held-out token ids ``[n, seq]``, each starting with BOS.
        batch_size: Contexts per forward pass.
        mean: The activation's mean over training data, for the mean-ablation baseline.
        convention: ``"workbench"``: the baselines leave BOS clean, as the SAE splice does.
            ``"saelens"``: they edit BOS too, as SAELens's ``ce_loss_score`` (see the module docstring).
        progress: Show a progress bar.

    Raises:
        ValueError: When the SAE's width does not match the hook point's.
    """
    rows: list[Tensor] = []
    batches = _spliced_batches(model, sae, hookpoint, contexts, rows, batch_size=batch_size, mean=mean,
                               convention=convention, progress=progress)
    afa = AFAAccumulator(sae)
    # [contexts, seq, d] batches: the FVU and the epsilon-LBO get intervals over contexts
    recon = reconstruction_metrics(sae, batches, on_batch=afa.add)
    return Faithfulness(
        recon, _loss_recovered(hookpoint, model.hookpoint(hookpoint), rows, mean is not None, convention), afa.result()
    )


@torch.inference_mode()
def _spliced_batches(
    model: Model, sae: torch.nn.Module, hookpoint: str, contexts: Tensor, rows: list[Tensor], *,
    batch_size: int, mean: Tensor | None, convention: str = "workbench", progress: bool,
) -> Iterator[Float[Tensor, "batch seq_1 d"]]:
    """Run every variant of each batch, append its per-context sums (:data:`_COLUMNS`) to ``rows``,
    and yield the batch's clean activations after BOS."""
    point = model.hookpoint(hookpoint)
    d_in = sae.W_dec.shape[1]
    if d_in != point.width:
        raise ValueError(f"the SAE takes d_in={d_in} but {hookpoint} of {model.name} has width {point.width}: "
                         "use the SAE trained for this hook point and model")
    skip_layer = _skip_layer(point)
    residual = skip_layer is not None
    if convention not in ("workbench", "saelens"):
        raise ValueError(f"unknown convention {convention!r}; choose 'workbench' or 'saelens'")
    sae = sae.to(model.device)
    keep_bos = convention == "workbench"
    zero = _keep_first(torch.zeros_like, keep=keep_bos)
    ablate_mean = None if mean is None else _keep_first(lambda x: mean.to(x).expand_as(x), keep=keep_bos)
    seen: list[Tensor] = []

    def splice(x: Tensor) -> Tensor:
        seen.append(x.float())
        return sae(x.float()).x_hat

    reconstruct = _keep_first(splice)
    for ids in progress_bar(contexts.split(batch_size), desc="evaluate", disable=not progress):
        ids = ids.to(model.device)
        # The layers below the hook point run once; each variant runs only the rest of the model.
        layers = [point.layer, skip_layer, skip_layer + 1] if residual else [point.layer]
        streams, clean = residuals_and_logits(model, ids, layers)

        def variant(edit: Edit) -> Tensor:
            return logits_from_block(model, ids, point.layer, streams[point.layer], {hookpoint: edit})

        spliced = variant(reconstruct)
        none = torch.zeros(ids.shape[0], device=clean.device)
        columns = {
            "n": torch.full_like(none, ids.shape[1] - 1),
            "clean": _next_token_ce(clean, ids).sum(1),
            "sae": _next_token_ce(spliced, ids).sum(1),
            "kl": _kl(clean, spliced).sum(1),
            "zero": _next_token_ce(variant(zero), ids).sum(1),
            "mean": none if ablate_mean is None else _next_token_ce(variant(ablate_mean), ids).sum(1),
            "skip": _next_token_ce(_logits_skipping(model, ids, skip_layer, streams), ids).sum(1) if residual else none,
        }
        rows.append(torch.stack([columns[name] for name in _COLUMNS], 1).double())
        yield seen.pop()


def _skip_layer(point) -> int | None:
    """The block whose removal is a residual stream's baseline (the one writing it), else None."""
    if "resid" not in point.kind:
        return None
    layer = point.layer if point.kind == "hook_resid_post" else point.layer - 1
    return layer if layer >= 0 else None


def _loss_recovered(hookpoint: str, point, rows: list[Tensor], with_mean: bool, convention: str) -> LossRecovered:
    """Averages and intervals from the per-context sums of every batch."""
    skip_layer = _skip_layer(point)
    residual = skip_layer is not None
    sums = torch.cat(rows).cpu()  # (n_contexts, 7); one host transfer at the end
    totals = dict(zip(_COLUMNS, sums.sum(0).tolist()))
    n_tokens = int(totals["n"])
    avg = {name: value / n_tokens for name, value in totals.items()}
    return LossRecovered(
        hookpoint=hookpoint, n_tokens=n_tokens, n_contexts=sums.shape[0], ce_clean=avg["clean"], ce_sae=avg["sae"],
        ce_zero=avg["zero"], ce_mean=avg["mean"] if with_mean else None,
        ce_skip=avg["skip"] if residual else None, kl=avg["kl"], skip_layer=skip_layer, convention=convention,
        ci=_intervals(sums, mean=with_mean, residual=residual),
    )
