"""Answers to the exercises of the course in ``notebooks/learn/`` (kept apart from :mod:`workbench.course`,
so the course can be handed out without them). A notebook run with ``solutions = True`` imports them.
"""

from __future__ import annotations

import torch
from jaxtyping import Float, Int
from torch import Tensor

__all__ = ["density", "encode", "fvu", "l0", "logit_diff", "loss", "patch", "top_token", "topk"]


# ---- 01_superposition ----------------------------------------------------------------------------
def encode(x: Float[Tensor, "batch d_in"], W_enc: Float[Tensor, "d_in d_sae"], b_enc: Float[Tensor, " d_sae"],
           b_dec: Float[Tensor, " d_in"]) -> Float[Tensor, "batch d_sae"]:
    """Pre-activations: centre the input on the decoder bias, project, add the encoder bias."""
    return (x - b_dec) @ W_enc + b_enc


def topk(pre: Float[Tensor, "batch d_sae"], k: int) -> Float[Tensor, "batch d_sae"]:
    """Keep each row's k largest pre-activations (ReLU'd), zero elsewhere."""
    values, indices = pre.topk(k, dim=1)
    return torch.zeros_like(pre).scatter(1, indices, values.relu())


def loss(x: Float[Tensor, "batch d_in"], x_hat: Float[Tensor, "batch d_in"]) -> Float[Tensor, ""]:
    """Squared error summed over d_in, averaged over the batch."""
    return ((x_hat - x) ** 2).sum(-1).mean()


# ---- 02_real_activations -------------------------------------------------------------------------
def fvu(x: Float[Tensor, "n d"], x_hat: Float[Tensor, "n d"]) -> float:
    """Total squared error over the total squared deviation of x from its mean."""
    x, x_hat = x.double(), x_hat.double()
    return float(((x - x_hat) ** 2).sum() / ((x - x.mean(0)) ** 2).sum())


def l0(acts: Float[Tensor, "n d_sae"]) -> float:
    """Mean number of non-zero features per token."""
    return float((acts != 0).sum(-1).float().mean())


# ---- 03_reading_features -------------------------------------------------------------------------
def density(acts: Float[Tensor, "n d_sae"]) -> Float[Tensor, " d_sae"]:
    """Per feature, the fraction of tokens it fires on."""
    return (acts > 0).float().mean(0)


def top_token(acts: Float[Tensor, "n d_sae"], tokens: list[str], feature: int) -> str:
    """The token on which ``feature`` is largest."""
    return tokens[int(acts[:, feature].argmax())]


# ---- 04_causing_things ---------------------------------------------------------------------------
def logit_diff(logits: Float[Tensor, "n vocab"], io_ids: Int[Tensor, " n"], s_ids: Int[Tensor, " n"]
               ) -> Float[Tensor, " n"]:
    """Per prompt, the logit of the IO name minus that of the S name."""
    rows = torch.arange(logits.shape[0])
    return logits[rows, io_ids] - logits[rows, s_ids]


def patch(x: Float[Tensor, "... d"], c: Float[Tensor, "... n"], c_bar: Float[Tensor, "... n"],
          directions: Float[Tensor, "n d"], mask: Float[Tensor, " n"]) -> Float[Tensor, "... d"]:
    """``x + sum_j mask_j (c_bar_j - c_j) d_j``."""
    return x + ((c_bar - c) * mask) @ directions
