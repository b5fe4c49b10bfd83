"""Direct logit effects of residual-stream directions: which tokens a feature promotes or suppresses.

For a direction ``d`` that a feature adds to the residual stream (see
:meth:`workbench.dictionaries.Dictionary.residual_directions`), the effect on the logits along
the direct path is::

    RMSNorm (Llama, Qwen, Mistral, OLMo 2):  effect = W_U (gamma * d)
    RMSNorm of Gemma (weight stored as g-1):  effect = W_U ((1 + gamma) * d)
    LayerNorm (GPT-2, GPT-NeoX, OLMo):        effect = W_U (gamma * (d - mean(d)))

with ``gamma`` the final norm's weight and ``W_U`` the unembedding (``lm_head.weight``,
``[vocab, d_model]``). This is an approximation, as in Bricken et al. 2023's logit weights
and Neuronpedia's "top logits":

* only the direct path: what the later layers do with ``d`` is ignored;
* the final norm's data-dependent scale ``1 / rms(x)`` (or ``1 / std(x)``) is left out, so the
  numbers rank tokens within a feature but are not logit differences of any real token; the
  ranking, and the relative size of effects within one feature, are what it is meant for;
* biases drop out (of the norm and of the unembedding): a direction has no offset;
* a final logit soft-cap (Gemma 2) is ignored.

:func:`logit_effects` streams over the directions in chunks, so a ``[n_features, vocab]``
matrix is never held whole (4608 features x 49152 tokens in float32 would be 900 MB).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, NamedTuple

import torch
from jaxtyping import Float, Int
from torch import Tensor, nn

from workbench import hookpoints

if TYPE_CHECKING:
    from workbench.models import Model

__all__ = ["LogitEffects", "METHOD", "logit_effects", "through_norm"]

METHOD = "direct path: W_U (gamma * d) through the final norm's weight, no norm scale"
"""How the effects are computed, in words (a feature card's ``logits.method``)."""


class LogitEffects(NamedTuple):
    """What :func:`logit_effects` returns: per direction, its extreme tokens and a histogram."""

    top_ids: Int[Tensor, "n k"]
    """Token ids of the ``k`` largest effects (promoted tokens), largest first."""
    top_values: Float[Tensor, "n k"]
    """Their effects, descending."""
    bottom_ids: Int[Tensor, "n k"]
    """Token ids of the ``k`` most negative effects (suppressed tokens), most negative first."""
    bottom_values: Float[Tensor, "n k"]
    """Their effects, ascending."""
    hist_counts: Int[Tensor, "n bins"]
    """How many of the vocabulary's effects fall in each bin (each row sums to the vocabulary size)."""
    hist_edges: Float[Tensor, "n bins_plus_1"]
    """Bin edges per direction: linear from its smallest to its largest effect (a direction whose
    effects are all equal gets edges from value - 0.5 to value + 0.5, as numpy does)."""


def through_norm(norm: nn.Module, directions: Float[Tensor, "n d"]) -> Float[Tensor, "n d"]:
    """The affine part of ``norm`` applied to ``directions``, without its data-dependent scale.

    LayerNorms (``nn.LayerNorm``, or a class named ``...LayerNorm`` that is not an RMS norm)
    centre ``d`` first; Gemma's RMS norms (classes named ``Gemma...``) multiply by
    ``1 + weight``, other norms by ``weight``; a norm without a weight multiplies by 1. The
    bias drops out: it is added to any input, so it is no part of a direction's effect.
    """
    name = type(norm).__name__
    directions = directions.float()
    if isinstance(norm, nn.LayerNorm) or ("LayerNorm" in name and "RMS" not in name):
        directions = directions - directions.mean(dim=-1, keepdim=True)
    weight = getattr(norm, "weight", None)
    if isinstance(weight, Tensor):
        gain = weight.detach().float().to(directions.device)
        directions = directions * (1 + gain if name.startswith("Gemma") else gain)
    return directions


@torch.no_grad()
def logit_effects(
    model: Model,
    directions: Float[Tensor, "n d_model"],
    *,
    k: int = 10,
    bins: int = 40,
    batch: int = 256,
) -> LogitEffects:
    """Direct logit effects of each direction (see the module docstring), reduced to its ``k``
    most promoted and most suppressed tokens and a ``bins``-bin histogram over the vocabulary.

    Computed on the unembedding's device in float32, ``batch`` directions at a time; the
    results are on the CPU.
    """
    hf = model.hf
    unembed = hf.get_output_embeddings()
    if unembed is None or not isinstance(getattr(unembed, "weight", None), Tensor):
        raise ValueError(f"{type(hf).__name__} has no output embedding (lm_head) to read logit effects from")
    W_U = unembed.weight.detach()  # [vocab, d_model]
    vocab, d_model = W_U.shape
    if directions.ndim != 2 or directions.shape[1] != d_model:
        raise ValueError(f"directions must be [n, d_model={d_model}], got shape {tuple(directions.shape)}")
    if not (1 <= k <= vocab) or bins < 1 or batch < 1:
        raise ValueError(f"need 1 <= k <= vocab ({vocab}), bins >= 1 and batch >= 1; got k={k}, bins={bins}, batch={batch}")
    norm = hf.get_submodule(hookpoints.layout_for(hf).final_norm)
    device = W_U.device
    W_U = W_U.float()
    n = directions.shape[0]
    out = LogitEffects(
        top_ids=torch.empty(n, k, dtype=torch.long),
        top_values=torch.empty(n, k),
        bottom_ids=torch.empty(n, k, dtype=torch.long),
        bottom_values=torch.empty(n, k),
        hist_counts=torch.empty(n, bins, dtype=torch.long),
        hist_edges=torch.empty(n, bins + 1),
    )
    steps = torch.linspace(0, 1, bins + 1, device=device)
    for start in range(0, n, batch):
        chunk = through_norm(norm, directions[start : start + batch].to(device))
        effects = chunk @ W_U.T  # (c, vocab)
        stop = start + chunk.shape[0]
        top = effects.topk(k, dim=1)
        bottom = effects.topk(k, dim=1, largest=False)
        lo, hi = effects.min(dim=1).values, effects.max(dim=1).values
        flat = hi == lo
        lo, hi = torch.where(flat, lo - 0.5, lo), torch.where(flat, hi + 0.5, hi)
        edges = lo[:, None] + (hi - lo)[:, None] * steps  # (c, bins + 1)
        which = ((effects - lo[:, None]) / (hi - lo)[:, None] * bins).long().clamp_(0, bins - 1)
        counts = torch.zeros(chunk.shape[0], bins, dtype=torch.long, device=device)
        counts.scatter_add_(1, which, torch.ones_like(which))
        out.top_ids[start:stop] = top.indices.cpu()
        out.top_values[start:stop] = top.values.cpu()
        out.bottom_ids[start:stop] = bottom.indices.cpu()
        out.bottom_values[start:stop] = bottom.values.cpu()
        out.hist_counts[start:stop] = counts.cpu()
        out.hist_edges[start:stop] = edges.cpu()
    return out
