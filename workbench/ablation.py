"""The feature-ablation view of Towards Monosemanticity: what a feature does to every token.

For a text and some features, :func:`feature_ablation` ablates each feature at every position
(the SAE spliced in with its error term kept, so only ``a_f d_f`` leaves the activation: see
:mod:`workbench.intervene`) and reports per token the feature's activation and the change in
the log-likelihood of that token, ``log p(token_t | tokens_<t)`` ablated minus clean
(negative: the feature helped predict the token). Two methods:

- ``"full"``: the real effect. The clean pass runs once (its residual entering the hook point's
  block, the hook point's activation, the logits); then only the blocks from the hook point's
  up run, for a batch of ablated copies, one per feature
  (:func:`workbench.intervene.logits_from_block`). One feature over a text costs about
  1 + (share of the model above the hook point) forward passes.
- ``"direct"``: the direct-path estimate (what sae_vis shows). The change ``-a_f d_f`` at each
  position goes straight to the unembedding, through the final norm with the clean run's
  per-token scale: ``logits' = logits - a_f s_t W_U (gamma * d_f)``, then ``log_softmax``.
  At ``mlp.hook_post`` the direction first goes through the MLP's down projection
  (:func:`workbench.dictionaries.down_projection`). It leaves out every path through later
  layers (attention moving the information to later positions included), so it can miss most
  of the effect; it costs one forward pass plus a log-softmax over the vocabulary per feature
  and token.

The BOS position (position 0 when it holds the model's BOS token) is left clean, as in
:mod:`workbench.evaluate`: SAEs are trained without it, and its activations (the attention sink)
are outliers that an SAE does not reconstruct; its activation is reported as 0.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch
from jaxtyping import Float, Int
from torch import Tensor, nn

from workbench.hookpoints import layout_for
from workbench.intervene import activations_and_logits, logits_from_block
from workbench.models import Model

__all__ = ["AblationEffects", "feature_ablation"]

Method = Literal["full", "direct"]


@dataclass
class AblationEffects:
    """Per token of a text, each feature's activation and the effect of ablating it everywhere."""

    token_ids: Int[Tensor, " seq"]
    """The text's token ids."""
    tokens: list[str]
    """Each token decoded on its own."""
    features: list[int]
    """The features, in the order of the columns below."""
    acts: Float[Tensor, "seq n_features"]
    """The feature's activation at each token (0 at a BOS position, which is not ablated)."""
    delta: Float[Tensor, "seq n_features"]
    """Change in ``log p(token_t | tokens_<t)`` when the feature is ablated at every position (error
    term kept); negative where the feature helped predict the token. ``delta[0] = 0``: the first
    token is not predicted."""
    method: Method
    """``"full"`` (re-forward of the layers above the hook point) or ``"direct"`` (direct-path estimate)."""
    hookpoint: str
    """Where the SAE reads."""
    titles: list[str]
    """A label per feature, for views."""

    def to_dict(self) -> dict:
        """Plain JSON values: ``tokens``, ``features``, ``acts`` and ``delta`` (``[seq][n_features]``
        lists), ``method``, ``titles``."""
        return {
            "tokens": list(self.tokens),
            "features": list(self.features),
            "acts": self.acts.tolist(),
            "delta": self.delta.tolist(),
            "method": self.method,
            "titles": list(self.titles),
        }


@torch.inference_mode()
def feature_ablation(
    model: Model,
    sae: nn.Module,
    input_ids: Int[Tensor, " seq"] | Int[Tensor, "1 seq"],
    features: list[int] | int,
    *,
    method: Method = "full",
    hookpoint: str | None = None,
    batch_size: int = 16,
    titles: list[str] | None = None,
) -> AblationEffects:
    """Ablate each of ``features`` at every position of one text; see the module docstring.

    Args:
        model: The language model.
        sae: A workbench SAE (``encode``, ``W_dec [d_sae, d_in]``) for ``hookpoint``.
        input_ids: One text's token ids, ``[seq]`` or ``[1, seq]``.
        features: Feature indices (one column each in the result).
        method: ``"full"`` (the real effect) or ``"direct"`` (the direct-path estimate).
        hookpoint: Where the SAE reads; default its ``cfg.hook_name``.
        batch_size: Ablated copies per forward pass (``"full"``).
        titles: A label per feature (default ``"feature f"``).
    """
    ids = input_ids.reshape(1, -1).to(model.device)
    features = [features] if isinstance(features, int) else [int(f) for f in features]
    hookpoint = hookpoint or getattr(getattr(sae, "cfg", None), "hook_name", "")
    if not hookpoint:
        raise ValueError("give a hookpoint: the SAE's cfg.hook_name is empty")
    if method not in ("full", "direct"):
        raise ValueError(f"unknown method {method!r}; choose 'full' or 'direct'")
    if titles is not None and len(titles) != len(features):
        raise ValueError(f"{len(titles)} titles for {len(features)} features")
    point = model.hookpoint(hookpoint)
    d_sae, d_in = sae.W_dec.shape
    if d_in != point.width:
        raise ValueError(f"the SAE takes d_in={d_in} but {hookpoint} of {model.name} has width {point.width}")
    if not all(0 <= f < d_sae for f in features):
        raise ValueError(f"features must lie in [0, {d_sae}), got {features}")
    sae = sae.to(model.device)

    resume = f"blocks.{point.layer}.hook_resid_pre"
    final = f"blocks.{model.n_layers - 1}.hook_resid_post"
    saved, logits = activations_and_logits(model, ids, [resume, point.name, final])
    x = saved[point.name][0]  # (T, d_in)
    acts = sae.encode(x.to(sae.W_dec.dtype)).feature_acts[:, features].float()  # (T, F)
    if ids[0, 0] == model.bos_token_id:
        acts[0] = 0
    clean = _token_loglik(logits.float(), ids)  # (1, T-1)

    if method == "full":
        ablated = _full(model, sae, ids, point, saved[resume], acts, features, clean, batch_size)
    else:
        ablated = _direct(model, sae, point, saved[final][0], logits[0].float(), ids, acts, features)
    delta = torch.zeros_like(acts)
    delta[1:] = (ablated - clean).T
    return AblationEffects(
        token_ids=ids[0].cpu(),
        tokens=[model.tokenizer.decode([token]) for token in ids[0].tolist()],
        features=features,
        acts=acts.cpu(),
        delta=delta.cpu(),
        method=method,
        hookpoint=hookpoint,
        titles=list(titles) if titles is not None else [f"feature {f}" for f in features],
    )


def _token_loglik(logits: Float[Tensor, "b seq vocab"], ids: Int[Tensor, "1 seq"]) -> Float[Tensor, "b seq_1"]:
    """``log p(token_t | tokens_<t)`` for t >= 1, per row of ``logits``."""
    targets = ids[:, 1:].expand(logits.shape[0], -1)
    logp = torch.log_softmax(logits[:, :-1], dim=-1)
    return logp.gather(-1, targets[..., None])[..., 0]


def _full(model: Model, sae: nn.Module, ids: Tensor, point, residual: Tensor, acts: Tensor, features: list[int],
          clean: Float[Tensor, "1 seq_1"], batch_size: int) -> Float[Tensor, "n_features seq_1"]:
    """Log-likelihoods with each feature ablated, the blocks from the hook point's up re-run per batch of features.

    A feature that fires nowhere leaves the model as it is: its row is the clean pass's, not re-run."""
    out = clean.expand(len(features), -1).clone()
    todo = [i for i, on in enumerate(acts.gt(0).any(0).tolist()) if on]
    for start in range(0, len(todo), batch_size):
        chunk = todo[start : start + batch_size]
        index = torch.tensor([features[i] for i in chunk], device=acts.device)
        # x' = x - a_f d_f: the feature's share of the decoded activation, error term kept
        change = -(acts[:, chunk].T[:, :, None] * sae.W_dec[index].float()[:, None, :])  # (c, T, d_in)

        def ablate(x: Tensor, change: Tensor = change) -> Tensor:
            return x + change.to(x.dtype)

        n = len(chunk)
        logits = logits_from_block(model, ids.expand(n, -1), point.layer,
                                   residual.expand(n, -1, -1).contiguous(), {point.name: ablate})
        out[chunk] = _token_loglik(logits.float(), ids)
    return out


def _direct(model: Model, sae: nn.Module, point, final: Float[Tensor, "seq d_model"], logits: Tensor, ids: Tensor,
            acts: Tensor, features: list[int]) -> Float[Tensor, "n_features seq_1"]:
    """Log-likelihoods with ``-a_f d_f`` added to the logits along the direct path only."""
    from workbench.dictionaries import down_projection
    from workbench.logit_effects import through_norm

    hf = model.hf
    norm = hf.get_submodule(layout_for(hf).final_norm)
    directions = sae.W_dec[features].float()  # (F, d_in)
    if point.kind == "mlp.hook_post":  # neuron space -> what the MLP adds to the residual stream
        directions = directions @ down_projection(model, point.layer).to(directions.device)
    W_U = hf.get_output_embeddings().weight.float()  # (vocab, d_model)
    effect = through_norm(norm, directions) @ W_U.T  # (F, vocab): one unit of d_f, before the norm's scale
    size = -(acts.T * _norm_scale(norm, final.float()))[:, :-1]  # (F, T-1): -a_f s_t
    targets = ids[0, 1:, None]  # (T-1, 1)
    out = torch.empty_like(size)
    per_chunk = max(1, 2**26 // (logits.numel()))  # at most ~64M logits at a time
    for start in range(0, len(features), per_chunk):
        stop = start + per_chunk
        edited = logits[None, :-1] + size[start:stop, :, None] * effect[start:stop, None, :]  # (c, T-1, vocab)
        out[start:stop] = torch.log_softmax(edited, -1).gather(-1, targets.expand(len(edited), -1, -1))[..., 0]
    return out


def _norm_scale(norm: nn.Module, residual: Float[Tensor, "seq d"]) -> Float[Tensor, " seq"]:
    """The norm's data-dependent scale per token in the clean run: ``norm(r) = s * affine(r) + bias``
    with ``affine`` :func:`workbench.logit_effects.through_norm`, so ``s`` is read off by projection
    (exact for LayerNorm and RMS norms, whatever their epsilon)."""
    from workbench.logit_effects import through_norm

    out = norm(residual.to(next(norm.parameters(), residual).dtype)).float()
    bias = getattr(norm, "bias", None)
    if isinstance(bias, Tensor):
        out = out - bias.float()
    affine = through_norm(norm, residual)
    return (out * affine).sum(-1) / (affine * affine).sum(-1).clamp_min(torch.finfo(affine.dtype).tiny)
