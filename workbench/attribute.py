"""Which prompt tokens drive a feature in the reply, and which features two prompts do not share.

:func:`prompt_attribution` scores each prompt token by what it does to one feature's total
activation over a reply, with the model reading prompt + reply:

* **occlusion** (the real effect): the drop in that total when the token's embedding is zeroed,
  one forward pass per token (batched);
* **gradient x input** (an estimate of the same drop, to first order): ``grad . embedding`` at the
  token, one forward and one backward pass for all tokens. It is exact for a function linear in
  the embedding and can be far off otherwise (a ReLU that switches off, attention that moves).
  In pre-norm models it is a weak estimate by construction: ``grad . e`` is the derivative along
  ``e``'s own scale, and block 0's attention and MLP read ``RMSNorm(e)``, which changes with that
  scale only through the norm's epsilon, so little more than the residual path is seen. On SmolLM2-135M (the quickstart's TopK SAE
  at ``blocks.15.hook_mlp_out``, a 37-token chat prompt) its correlation with occlusion was 0.05.

"The embedding" is the residual stream entering block 0, ``blocks.0.hook_resid_pre``: the token
embedding in Llama-like and GPT-NeoX models (rotary positions act inside attention); in GPT-2 it
also holds the learned position embedding, which is zeroed with it.

Both go through :func:`workbench.intervene.run_with_saes`: the stream at block 0 is spliced in
as a dictionary of its own coordinates (:class:`_Coordinates`), so zeroing a token is an
:class:`~workbench.intervene.Ablate` of every coordinate at its position, and its gradient is
that splice's ``edited`` activations' gradient.

:func:`feature_diff` compares the features two prompts evoke.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING

import torch
from jaxtyping import Float, Int
from torch import Tensor, nn

from workbench.intervene import Ablate, Splice, run_with_saes
from workbench.sae import EncoderOutput
from workbench.steer import Prompt, feature_acts, prompt_token_ids, sae_hookpoint

if TYPE_CHECKING:
    from workbench.models import Model
    from workbench.sae import SAE

__all__ = ["FeatureDiff", "PromptAttribution", "feature_diff", "prompt_attribution"]

EMBEDDING = "blocks.0.hook_resid_pre"
"""The hook point whose value at a prompt token counts as that token's embedding."""

OCCLUSION = "real effect: drop in the feature's total activation over the reply when the token's embedding is zeroed"
GRADIENT_X_INPUT = "estimate: gradient of that total with respect to the token's embedding, dotted with the embedding"


@dataclass
class PromptAttribution:
    """How much each prompt token drives one feature over a reply (see the module docstring).

    Positive scores: the token raises the feature (zeroing it lowers the total).
    """

    feature: int
    """The feature."""
    tokens: list[str]
    """The prompt's tokens, decoded."""
    total: float
    """The feature's activation summed over the reply's tokens, nothing zeroed."""
    occlusion: list[float]
    """Per prompt token: ``total`` minus the total with that token's embedding zeroed. The real effect."""
    gradient_x_input: list[float]
    """Per prompt token: ``d total / d e_i . e_i``, the first-order estimate of :attr:`occlusion`. An estimate."""

    def to_dict(self) -> dict:
        """Plain JSON: the fields, and ``methods``, what each score is (the estimate marked as one)."""
        return {**asdict(self), "methods": {"occlusion": OCCLUSION, "gradient_x_input": GRADIENT_X_INPUT}}


@dataclass
class FeatureDiff:
    """Features that fire on one prompt and not the other, and those on both; ``total`` is a
    feature's activation summed over a prompt's tokens (its BOS left out)."""

    only_a: list[tuple[int, float]]
    """(feature, total on a) for features silent on b, largest first."""
    only_b: list[tuple[int, float]]
    """(feature, total on b) for features silent on a, largest first."""
    both: list[tuple[int, float, float]]
    """(feature, total on a, total on b) for features on both, by the sum of the two."""

    def to_dict(self) -> dict:
        """Plain JSON lists."""
        return {"only_a": [list(x) for x in self.only_a], "only_b": [list(x) for x in self.only_b],
                "both": [list(x) for x in self.both]}


def prompt_attribution(
    model: Model,
    sae: SAE,
    prompt_ids: Int[Tensor, " n_prompt"] | list[int],
    reply_ids: Int[Tensor, " n_reply"] | list[int],
    feature: int,
    *,
    batch_size: int = 8,
) -> PromptAttribution:
    """Occlusion and gradient x input of every prompt token for ``feature``'s total activation over
    the reply (e.g. ``generation.prompt_ids, generation.reply_ids``).

    Costs about one forward pass per prompt token (``batch_size`` of them at once) and one forward
    and backward pass; each pass runs to the logits (``batch_size x seq x vocab`` floats held at
    once: 0.8 GB for 8 x 500 tokens of SmolLM2's 49k vocabulary), since
    :func:`~workbench.intervene.run_with_saes` does not stop at the SAE's hook point."""
    prompt = [int(i) for i in prompt_ids]
    reply = [int(i) for i in reply_ids]
    if not prompt or not reply:
        raise ValueError("prompt attribution needs a prompt and a reply of at least one token each")
    feature = int(feature)
    if not 0 <= feature < sae.cfg.d_sae:
        raise IndexError(f"feature {feature} is out of range: the SAE has {sae.cfg.d_sae} features")
    hook = sae_hookpoint(sae)
    n_prompt, seq = len(prompt), len(prompt) + len(reply)
    ids = torch.tensor([prompt + reply])
    coordinates = _Coordinates(model.d_model)

    def total(run) -> Float[Tensor, " batch"]:
        return run.acts[hook][:, n_prompt:, feature].float().sum(1)

    run = run_with_saes(model, ids, [Splice(sae, hookpoint=hook)])
    base = float(total(run)[0])
    dropped = []
    for start in range(0, n_prompt, batch_size):
        rows = torch.arange(start, min(start + batch_size, n_prompt))
        zeroed = torch.zeros(len(rows), seq, dtype=torch.bool)
        zeroed[torch.arange(len(rows)), rows] = True  # row b zeroes prompt token start + b
        occluded = Splice(coordinates, [Ablate(range(model.d_model), positions=zeroed)], hookpoint=EMBEDDING)
        run = run_with_saes(model, ids.expand(len(rows), seq), [occluded, Splice(sae, hookpoint=hook)])
        dropped.append(base - total(run).cpu())

    run = run_with_saes(model, ids, [Splice(coordinates, hookpoint=EMBEDDING), Splice(sae, hookpoint=hook)], grad=True)
    embedding = run.edited[EMBEDDING]  # (1, seq, d): what block 0 reads
    (grad,) = torch.autograd.grad(total(run).sum(), embedding)
    gxi = (grad * embedding.detach()).sum(-1)[0, :n_prompt]
    return PromptAttribution(feature=feature, tokens=[model.tokenizer.decode([i]) for i in prompt], total=base,
                             occlusion=[float(v) for v in torch.cat(dropped)],
                             gradient_x_input=[float(v) for v in gxi.cpu()])


class _Coordinates(nn.Module):
    """The residual stream's own coordinates as a dictionary: ``encode(x) = x``, ``W_dec = I``.

    Spliced in at :data:`EMBEDDING`, its edits act on the embedding itself (``Ablate`` of every
    coordinate at a position zeroes it exactly: ``x + (0 - x) @ I = 0``), and its ``edited``
    activations are the embedding, with gradients when the run has them.
    """

    def __init__(self, d: int):
        super().__init__()
        self.register_buffer("W_dec", torch.eye(d))

    def encode(self, x: Float[Tensor, "... d"]) -> EncoderOutput:
        if torch.is_grad_enabled() and not x.requires_grad:  # a model with frozen embeddings
            x = x.detach().requires_grad_()
        return EncoderOutput(x, x)

    def decode(self, acts: Float[Tensor, "... d"]) -> Float[Tensor, "... d"]:
        return acts @ self.W_dec


def feature_diff(model: Model, sae: SAE, prompt_a: Prompt, prompt_b: Prompt, *, top: int = 10,
                 chat: bool = False) -> FeatureDiff:
    """The ``top`` features of each kind: firing on ``prompt_a``'s tokens and never on
    ``prompt_b``'s, the reverse, and on both. Prompts are read as :func:`workbench.steer.generate`
    reads them (text after the model's BOS, chat messages with ``chat=True``, or token ids)."""
    totals = []
    for prompt in (prompt_a, prompt_b):
        ids = prompt_token_ids(model, prompt, chat=chat)
        acts = feature_acts(model, sae, torch.tensor([ids]))[0]  # (seq, d_sae)
        if ids[0] == model.bos_token_id:
            acts = acts[1:]
        totals.append(acts.clamp_min(0).sum(0).double())
    a, b = totals

    def ranked(score: Tensor, where: Tensor) -> list[int]:
        index = torch.nonzero(where).flatten()
        return index[score[index].argsort(descending=True, stable=True)][:top].tolist()

    return FeatureDiff(
        only_a=[(f, float(a[f])) for f in ranked(a, (a > 0) & (b == 0))],
        only_b=[(f, float(b[f])) for f in ranked(b, (b > 0) & (a == 0))],
        both=[(f, float(a[f]), float(b[f])) for f in ranked(a + b, (a > 0) & (b > 0))],
    )
