"""How faithful is an SAE inside the model: the reconstructed transformer loss.

:func:`loss_recovered` splices the SAE's reconstruction into the forward pass in place of the
real activation and compares the next-token cross-entropy (CE) on held-out text with:

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
Positions that start a context (the BOS token) are left clean in every variant, since SAEs are
trained without them; the CE is taken over every next-token prediction after position 0.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import torch
import torch.nn.functional as F
from jaxtyping import Float, Int
from torch import Tensor
from tqdm.auto import tqdm

from workbench.intervene import logits_skipping_block, logits_with
from workbench.models import Model


@dataclass
class LossRecovered:
    """Cross-entropy (nats per token) of the model with the SAE spliced in, and its baselines."""

    hookpoint: str
    """Where the SAE was spliced in."""
    n_tokens: int
    """Number of next-token predictions averaged over."""
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

    def sentence(self) -> str:
        """Towards Monosemanticity's phrasing of the result."""
        where = "the MLP" if "mlp" in self.hookpoint else "this activation"
        return (f"the extra loss is {100 * (1 - self.loss_recovered):.1f}% of zero-ablating {where} "
                f"(CE {self.ce_clean:.3f} clean, {self.ce_sae:.3f} with the SAE, {self.ce_zero:.3f} zero-ablated; "
                f"+{self.ce_increase:.3f} nats/token)")

    def to_dict(self) -> dict:
        out = asdict(self)
        out.update(ce_increase=self.ce_increase, loss_recovered=self.loss_recovered,
                   loss_recovered_mean=self.loss_recovered_mean, loss_recovered_skip=self.loss_recovered_skip)
        return out


def _recovered(baseline: float, ce: float, clean: float) -> float:
    return (baseline - ce) / (baseline - clean) if baseline != clean else float("nan")


def _keep_first(edit):
    """Apply ``edit`` to every position but the first (the BOS stays clean)."""

    def edited(x: Tensor) -> Tensor:
        out = x.clone()
        out[:, 1:] = edit(x[:, 1:]).to(x.dtype)
        return out

    return edited


def _next_token_ce(logits: Float[Tensor, "b s v"], ids: Int[Tensor, "b s"]) -> Float[Tensor, "b s-1"]:
    logp = logits[:, :-1].float().log_softmax(-1)
    return -logp.gather(-1, ids[:, 1:, None].to(logits.device)).squeeze(-1)


def _kl(clean: Tensor, other: Tensor) -> Tensor:
    p = clean[:, :-1].float().log_softmax(-1)
    q = other[:, :-1].float().log_softmax(-1)
    return F.kl_div(q, p, log_target=True, reduction="none").sum(-1)


@torch.inference_mode()
def loss_recovered(
    model: Model,
    sae: torch.nn.Module,
    hookpoint: str,
    contexts: Int[Tensor, "n seq"],
    *,
    batch_size: int = 16,
    mean: Float[Tensor, " d"] | None = None,
    progress: bool = False,
) -> LossRecovered:
    """CE with ``sae`` spliced in at ``hookpoint`` over ``contexts`` (use held-out text), with baselines."""
    point = model.hookpoint(hookpoint)
    d_in = sae.W_dec.shape[1]
    if d_in != point.width:
        raise ValueError(f"the SAE takes d_in={d_in} but {hookpoint} of {model.name} has width {point.width}: "
                         "use the SAE trained for this hook point and model")
    # The block whose removal is the residual baseline: the one writing this residual stream.
    skip_layer = point.layer if point.kind == "hook_resid_post" else point.layer - 1
    residual = "resid" in point.kind and skip_layer >= 0
    sae = sae.to(model.device)
    zero = _keep_first(torch.zeros_like)
    reconstruct = _keep_first(lambda x: sae(x.float()).x_hat)
    ablate_mean = None if mean is None else _keep_first(lambda x: mean.to(x).expand_as(x))
    sums: dict[str, float] = {"clean": 0.0, "sae": 0.0, "zero": 0.0, "mean": 0.0, "skip": 0.0, "kl": 0.0}
    n_tokens = 0
    for ids in tqdm(contexts.split(batch_size), desc="loss recovered", disable=not progress):
        ids = ids.to(model.device)
        clean = logits_with(model, ids)
        spliced = logits_with(model, ids, {hookpoint: reconstruct})
        sums["clean"] += _next_token_ce(clean, ids).sum().item()
        sums["sae"] += _next_token_ce(spliced, ids).sum().item()
        sums["kl"] += _kl(clean, spliced).sum().item()
        sums["zero"] += _next_token_ce(logits_with(model, ids, {hookpoint: zero}), ids).sum().item()
        if ablate_mean is not None:
            sums["mean"] += _next_token_ce(logits_with(model, ids, {hookpoint: ablate_mean}), ids).sum().item()
        if residual:
            sums["skip"] += _next_token_ce(logits_skipping_block(model, ids, skip_layer), ids).sum().item()
        n_tokens += ids[:, 1:].numel()
    avg = {name: value / n_tokens for name, value in sums.items()}
    return LossRecovered(
        hookpoint=hookpoint, n_tokens=n_tokens, ce_clean=avg["clean"], ce_sae=avg["sae"], ce_zero=avg["zero"],
        ce_mean=avg["mean"] if mean is not None else None, ce_skip=avg["skip"] if residual else None, kl=avg["kl"],
    )
