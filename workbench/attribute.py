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

**Counterfactual patching over a dictionary** (Cunningham et al. 2024, section 4; Marks et al.,
"Sparse Feature Circuits"). At a hook point, with clean coefficients ``c`` and counterfactual
ones ``c-bar`` at every position, patching the directions ``F`` gives
``x' = x + sum_{j in F} (c-bar_j - c_j) d_j``; the metric is KL(counterfactual || patched) of the
next-token distribution at the final position, and the edit size ``||x' - x||`` summed over
positions (in the hook point's own basis: neurons at ``mlp.hook_post`` are measured there).
Every dictionary has one more node, last, the *rest* (an SAE's error term, what a linear
dictionary's directions do not span; see :class:`Basis`), so that patching everything gives
the counterfactual's activation exactly. At a residual-stream hook point that is the
counterfactual run; at ``mlp.hook_post`` or ``hook_mlp_out`` it is the clean run with that MLP's
output from the counterfactual (attention beside it stays clean).

* :func:`prepare_counterfactual` runs clean and counterfactual prompts once; each patched pass
  (:func:`counterfactual_patches`, many masks at once) restarts at the hook point's block
  (:func:`workbench.intervene.final_logits_from_block`); :func:`counterfactual_patch` does both for
  one mask;
* :func:`attribution_scores`: attribution patching (``steps=1``) and integrated gradients, an
  estimate per direction, from :func:`kl_gradient` (the same for every dictionary at a hook
  point, so computed once for all); :func:`single_direction_effects` measures what they estimate;
* :func:`flat_acdc`: C24's search, (number patched, KL, edit size) per threshold.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import asdict, dataclass, replace
from typing import TYPE_CHECKING, NamedTuple

import torch
from jaxtyping import Bool, Float, Int
from torch import Tensor, nn

from workbench.intervene import Ablate, Splice, run_with_saes
from workbench.sae import EncoderOutput
from workbench.steer import Prompt, feature_acts, prompt_token_ids, sae_hookpoint

if TYPE_CHECKING:
    from workbench.dictionaries import Dictionary
    from workbench.models import Model
    from workbench.sae import SAE

__all__ = [
    "Basis",
    "Counterfactual",
    "FeatureDiff",
    "PatchResult",
    "PromptAttribution",
    "SearchStep",
    "attribution_scores",
    "counterfactual_patch",
    "counterfactual_patches",
    "default_taus",
    "dictionary_basis",
    "dictionary_directions",
    "feature_diff",
    "flat_acdc",
    "kl_gradient",
    "prepare_counterfactual",
    "prepare_counterfactuals",
    "prompt_attribution",
    "single_direction_effects",
    "top_n_curves",
    "top_n_patches",
]

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


# ---- counterfactual patching over a dictionary (Cunningham et al. 2024, section 4) -------------
class Basis(NamedTuple):
    """A dictionary's coefficients at a hook point: ``x = offset + c @ directions + rest``.

    Direction ``j < n_features`` is the dictionary's; the last one, index ``n_features``, is the
    *rest node*: ``rest`` as a whole, patched like a direction with coefficient 1 (an SAE's error
    term ``x - decode(c)``, Marks et al.'s error node; for a linear dictionary the part of
    ``x - mean`` its directions do not span; zero for the standard basis). Patching every
    direction and the rest node therefore maps the clean ``x`` to the counterfactual's exactly.
    """

    coefficients: Float[Tensor, "batch seq n_features"]
    """``c``, float32."""
    rest: Float[Tensor, "batch seq d"]
    """What the coefficients do not explain, float32."""


def dictionary_directions(dictionary: Dictionary | None, d: int) -> Float[Tensor, "n_features d"] | None:
    """The patching directions ``d_j`` of ``dictionary`` in its hook point's basis (float32, CPU);
    None for the standard basis (neurons, or ``dictionary=None``), which is never materialised.

    * SAE: the ``W_dec`` rows;
    * PCA, ICA, random (``both_signs=False`` only): the rows of ``pinv(encoder).T``. With
      ``c = (x - mean) @ encoder.T`` this makes ``c @ directions`` the projection of ``x - mean``
      onto the encoder's row space (the whole of it when the encoder spans ``d``, e.g. an
      overcomplete random dictionary), so patching every direction moves ``x`` to ``x-bar`` up to
      the rest node. For orthonormal PCA components it is the components themselves; for ICA it
      is the stored ``decoder`` (the unit mixing directions: ``encoder @ decoder.T = I`` with both
      in the span of the whitened components); for random directions it differs from them.
    """
    from workbench.dictionaries import NeuronDictionary, SAEDictionary, _Linear

    if dictionary is None or isinstance(dictionary, NeuronDictionary):
        if isinstance(dictionary, NeuronDictionary) and dictionary.both_signs:
            raise ValueError("counterfactual patching needs signed coefficients: build the NeuronDictionary "
                             "with both_signs=False")
        return None
    if isinstance(dictionary, SAEDictionary):
        return dictionary.sae.W_dec.detach().float().cpu()
    if isinstance(dictionary, _Linear):
        if dictionary.both_signs:
            raise ValueError(f"counterfactual patching needs signed coefficients: fit the {dictionary.kind} "
                             "dictionary with both_signs=False")
        return torch.linalg.pinv(dictionary.encoder.double().cpu()).T.float().contiguous()
    raise TypeError(f"no patching basis for a {type(dictionary).__name__}; pass an SAE, neuron, PCA, ICA or "
                    "random dictionary, or None for the hook point's standard basis")


def dictionary_basis(dictionary: Dictionary | None, x: Float[Tensor, "batch seq d"],
                     directions: Tensor | None) -> Basis:
    """``x``'s coefficients and rest in ``dictionary`` (see :class:`Basis`); ``directions`` from
    :func:`dictionary_directions`."""
    from workbench.dictionaries import SAEDictionary

    x = x.float()
    if directions is None:
        return Basis(x, torch.zeros_like(x))
    if isinstance(dictionary, SAEDictionary):
        sae = dictionary.sae
        acts = sae.encode(x.to(sae.W_enc.device, sae.W_enc.dtype)).feature_acts
        rest = x - sae.decode(acts).float().to(x.device)
        return Basis(acts.float().to(x.device), rest)
    centred = x - dictionary.mean.to(x.device)
    c = centred @ dictionary.encoder.to(x.device).T
    return Basis(c, centred - c @ directions.to(x.device))


@dataclass
class Counterfactual:
    """Clean and counterfactual runs at one hook point, prepared once for many patches
    (:func:`prepare_counterfactual`). Tensors are ``[n, seq, ...]`` on the model's device."""

    model: Model
    hookpoint: str
    layer: int
    """The hook point's block, where patched forward passes restart."""
    clean_ids: Int[Tensor, "n seq"]
    residual: Float[Tensor, "n seq d_model"]
    """The clean stream entering block :attr:`layer`."""
    directions: Float[Tensor, "n_features d"] | None
    """Patching directions (None: the standard basis)."""
    delta_c: Float[Tensor, "n seq n_features"]
    """``c-bar - c`` at every position."""
    delta_rest: Float[Tensor, "n seq d"]
    """``rest-bar - rest``: what patching the rest node adds."""
    cf_logprobs: Float[Tensor, "n vocab"]
    """Counterfactual next-token log-probabilities at the final position."""
    clean_kl: Float[Tensor, " n"]
    """KL(counterfactual || clean) at the final position."""

    @property
    def n_directions(self) -> int:
        """Dictionary directions plus the rest node (the last index)."""
        return self.delta_c.shape[-1] + 1

    def active(self, rest: bool = True) -> Int[Tensor, " k"]:
        """Directions whose coefficient differs on some prompt and position (the rest node included
        when it is non-zero and ``rest``): the only ones whose patching changes anything."""
        moved = self.delta_c.ne(0).flatten(0, 1).any(0)
        rest = (self.delta_rest.ne(0).any() & rest).reshape(1)
        return torch.nonzero(torch.cat([moved, rest])).flatten().cpu()

    def delta(self, masks: Bool[Tensor, "k n_directions"] | Float[Tensor, "k n_directions"]
              ) -> Float[Tensor, "k n seq d"]:
        """``x' - x`` for each mask (weights in [0, 1] also work: a fraction of each edit)."""
        masks = masks.to(self.delta_c.device, torch.float32)
        weighted = self.delta_c[None] * masks[:, None, None, :-1]  # (k, n, T, m)
        moved = weighted if self.directions is None else weighted @ self.directions.to(weighted.device)
        return moved + masks[:, -1, None, None, None] * self.delta_rest[None]

    def first(self, k: int) -> Counterfactual:
        """The same over the first ``k`` prompts only (views, no forward pass): e.g. a search's
        trials on a few prompts, then :func:`measure_steps` on all of them."""
        if not 1 <= k <= self.clean_ids.shape[0]:
            raise ValueError(f"k must be in 1..{self.clean_ids.shape[0]}, got {k}")
        return replace(self, clean_ids=self.clean_ids[:k], residual=self.residual[:k], delta_c=self.delta_c[:k],
                       delta_rest=self.delta_rest[:k], cf_logprobs=self.cf_logprobs[:k], clean_kl=self.clean_kl[:k])

    def masks(self, patched: Tensor | list[int] | list[list[int]]) -> Bool[Tensor, "k n_directions"]:
        """Bool masks ``[k, n_directions]`` from a mask, masks, an index list or index lists."""
        if isinstance(patched, Tensor) and patched.dtype == torch.bool:
            masks = patched.reshape(-1, patched.shape[-1])
            if masks.shape[-1] != self.n_directions:
                raise ValueError(f"a mask needs {self.n_directions} entries (directions + the rest node), "
                                 f"got {masks.shape[-1]}")
            return masks
        lists = patched.tolist() if isinstance(patched, Tensor) else list(patched)
        if not lists or not isinstance(lists[0], (list, tuple)):
            lists = [lists]
        masks = torch.zeros(len(lists), self.n_directions, dtype=torch.bool)
        for row, index in enumerate(lists):
            masks[row, torch.as_tensor(index, dtype=torch.long)] = True
        return masks


class PatchResult(NamedTuple):
    """What :func:`counterfactual_patch` returns (one mask) or :func:`counterfactual_patches` (``k``
    masks: a leading ``k`` axis on each field)."""

    kl: Float[Tensor, "*k n"]
    """KL(counterfactual || patched) of the next-token distribution at the final position."""
    edit_size: Float[Tensor, "*k n"]
    """``||x' - x||`` summed over positions."""
    patched_logits: Float[Tensor, "*k n vocab"]
    """The patched run's logits at the final position."""


def _kl(cf_logprobs: Tensor, logits: Tensor) -> Tensor:
    """KL(cf || softmax(logits)) over the last axis."""
    logq = torch.log_softmax(logits.float(), dim=-1)
    return (cf_logprobs.exp() * (cf_logprobs - logq)).sum(-1)


@torch.inference_mode()
def prepare_counterfactual(model: Model, dictionary: Dictionary | None, hookpoint: str,
                           clean_ids: Int[Tensor, "n seq"], cf_ids: Int[Tensor, "n seq"]) -> Counterfactual:
    """One forward pass over clean and counterfactual prompts together: the stream entering the
    hook point's block, both runs' coefficients in ``dictionary`` (None: the standard basis) and
    the counterfactual's final-position distribution. Prompts must have equal lengths (no padding)."""
    return prepare_counterfactuals(model, {"": dictionary}, hookpoint, clean_ids, cf_ids)[""]


@torch.inference_mode()
def prepare_counterfactuals(model: Model, dictionaries: Mapping[str, Dictionary | None], hookpoint: str,
                            clean_ids: Int[Tensor, "n seq"], cf_ids: Int[Tensor, "n seq"]
                            ) -> dict[str, Counterfactual]:
    """:func:`prepare_counterfactual` for several dictionaries at one hook point, from one forward pass."""
    from workbench.intervene import activations_and_logits

    if clean_ids.shape != cf_ids.shape or clean_ids.ndim != 2:
        raise ValueError(f"clean and counterfactual ids must both be [n, seq], got {tuple(clean_ids.shape)} and "
                         f"{tuple(cf_ids.shape)}")
    layer = model.hookpoint(hookpoint).layer
    resid = f"blocks.{layer}.hook_resid_pre"
    n = clean_ids.shape[0]
    names = list(dict.fromkeys([hookpoint, resid]))
    saved, logits = activations_and_logits(model, torch.cat([clean_ids, cf_ids]), names)
    x = saved[hookpoint].float()
    cf_logprobs = torch.log_softmax(logits[n:, -1].float(), dim=-1)
    clean_kl = _kl(cf_logprobs, logits[:n, -1])
    residual = saved[resid][:n].clone()
    prepared = {}
    for name, dictionary in dictionaries.items():
        directions = dictionary_directions(dictionary, x.shape[-1])
        basis = dictionary_basis(dictionary, x, directions)
        prepared[name] = Counterfactual(
            model=model, hookpoint=hookpoint, layer=layer, clean_ids=clean_ids.to(model.device), residual=residual,
            directions=None if directions is None else directions.to(x.device),
            delta_c=basis.coefficients[n:] - basis.coefficients[:n], delta_rest=basis.rest[n:] - basis.rest[:n],
            cf_logprobs=cf_logprobs, clean_kl=clean_kl)
    return prepared


@torch.inference_mode()
def counterfactual_patches(counterfactual: Counterfactual, patched: Tensor | list, *, batch_size: int = 64
                           ) -> PatchResult:
    """Several candidate patches at once: ``patched`` is bool masks ``[k, n_directions]`` or ``k``
    index lists; the result has a leading ``k`` axis. Each patched pass restarts at the hook
    point's block (:func:`workbench.intervene.final_logits_from_block`), ``batch_size`` prompt-patch
    pairs at a time."""
    from workbench.intervene import final_logits_from_block

    cf = counterfactual
    masks = cf.masks(patched)
    k, (n, seq) = masks.shape[0], cf.clean_ids.shape
    per = max(1, batch_size // n)
    kls, sizes, finals = [], [], []
    for start in range(0, k, per):
        delta = cf.delta(masks[start:start + per])  # (j, n, T, d)
        j = delta.shape[0]
        sizes.append(delta.norm(dim=-1).sum(-1).cpu())
        flat = delta.flatten(0, 1)
        logits = final_logits_from_block(cf.model, cf.clean_ids.repeat(j, 1), cf.layer, cf.residual.repeat(j, 1, 1),
                                         {cf.hookpoint: lambda x, flat=flat: x + flat.to(x.dtype)})
        final = logits.float().reshape(j, n, -1)
        finals.append(final.cpu())
        kls.append(_kl(cf.cf_logprobs[None], final).cpu())
    return PatchResult(torch.cat(kls), torch.cat(sizes), torch.cat(finals))


def counterfactual_patch(model: Model, dictionary: Dictionary | None, hookpoint: str,
                         clean_ids: Int[Tensor, "n seq"], cf_ids: Int[Tensor, "n seq"],
                         patched: Bool[Tensor, " n_directions"] | list[int]) -> PatchResult:
    """Patch the directions ``patched`` (a bool mask over the dictionary's directions and, last,
    the rest node, or an index list) from the counterfactual run into the clean one at every
    position: ``x' = x + sum_{j in F} (c-bar_j - c_j) d_j`` (see :class:`Basis`,
    :func:`dictionary_directions`). For repeated patches of the same prompts, call
    :func:`prepare_counterfactual` once and :func:`counterfactual_patches`."""
    counterfactual = prepare_counterfactual(model, dictionary, hookpoint, clean_ids, cf_ids)
    result = counterfactual_patches(counterfactual, patched)
    if result.kl.shape[0] != 1:
        raise ValueError("counterfactual_patch takes one mask or index list; use counterfactual_patches for several")
    return PatchResult(*(field[0] for field in result))


# ---- attribution: estimates of each direction's effect, from gradients ------------------------
def _kl_gradient(cf: Counterfactual, alpha: float, batch_size: int) -> Float[Tensor, "n seq d"]:
    """``d KL(cf || patched) / d x'`` at ``x' = x + alpha * (x-bar - x)`` (every direction patched
    by the fraction ``alpha``), each prompt's KL its own term. One forward from the hook point's
    block and one backward pass per ``batch_size`` prompts."""
    from workbench.intervene import _blocks_below, _logits_with

    n = cf.clean_ids.shape[0]
    full = cf.delta(torch.ones(1, cf.n_directions))[0].clone()  # (n, T, d)
    grads = []
    for start in range(0, n, batch_size):
        rows = slice(start, start + batch_size)
        seen = {}

        def edit(x: Tensor, rows=rows) -> Tensor:
            seen["y"] = (x.detach() + alpha * full[rows].to(x.dtype)).requires_grad_()
            return seen["y"]

        with torch.enable_grad(), _blocks_below(cf.model, cf.layer, cf.residual[rows].clone()):
            logits = _logits_with(cf.model, cf.clean_ids[rows], {cf.hookpoint: edit}, final_only=True)
            kl = _kl(cf.cf_logprobs[rows].clone(), logits[:, -1])
            (grad,) = torch.autograd.grad(kl.sum(), seen["y"])
        grads.append(grad.float())
    return torch.cat(grads)


def kl_gradient(counterfactual: Counterfactual, *, steps: int = 1, batch_size: int = 64
                ) -> Float[Tensor, "n seq d"]:
    """The gradient :func:`attribution_scores` projects: ``d KL(cf || patched) / d x'`` at the clean
    run (``steps=1``), or averaged over ``x' = x + alpha (x-bar - x)`` at the midpoints
    ``alpha = (i + 1/2) / steps`` (integrated gradients), per prompt and position.

    It depends on the hook point and the prompts only, not on the dictionary: with every
    direction and the rest node patched by ``alpha``, any dictionary moves ``x`` by
    ``alpha (x-bar - x)``. So one gradient serves every dictionary at a hook point (pass it as
    ``attribution_scores(..., gradient=)``), and its first ``k`` rows serve the first ``k``
    prompts (each prompt's KL is its own term)."""
    if steps < 1:
        raise ValueError(f"steps must be >= 1, got {steps}")
    alphas = [0.0] if steps == 1 else [(i + 0.5) / steps for i in range(steps)]
    return sum(_kl_gradient(counterfactual, a, batch_size) for a in alphas) / len(alphas)


def attribution_scores(counterfactual: Counterfactual, *, steps: int = 1, batch_size: int = 64,
                       gradient: Float[Tensor, "n seq d"] | None = None) -> Float[Tensor, " n_directions"]:
    """Per direction (the rest node last), the gradient estimate of what patching it alone does to
    the prompts' mean KL(counterfactual || patched): ``mean_prompts sum_positions
    grad_c KL . (c-bar - c)``. Negative: patching the direction brings the run towards the
    counterfactual. An estimate, not a measured effect (:func:`counterfactual_patches` measures).

    ``steps=1`` is attribution patching (Nanda; Syed et al.): the gradient at the clean run, one
    forward and backward pass. ``steps > 1`` is integrated gradients as Marks et al. use for
    nodes: the gradient averaged over ``x + alpha (x-bar - x)`` with every direction patched by
    ``alpha`` at the midpoints ``(i + 1/2) / steps``, so the scores sum to about
    ``KL(cf || all patched) - KL(cf || clean)`` (completeness, up to the quadrature). That is
    ``-KL(cf || clean)`` at residual-stream hook points, where patching everything gives the
    counterfactual run; at an MLP's hook points the rest of the stream stays clean, and on IOI at
    SmolLM2's layer-15 MLP output it was only -0.06 of KL(cf || clean) = 5.3.

    ``gradient``: :func:`kl_gradient` of the same hook point, prompts and ``steps``, computed once
    for several dictionaries (``steps`` is then not used); its rows must match the prompts.
    """
    cf = counterfactual
    if gradient is None:
        gradient = kl_gradient(cf, steps=steps, batch_size=batch_size)
    elif tuple(gradient.shape) != (*cf.clean_ids.shape, cf.delta_rest.shape[-1]):
        raise ValueError(f"gradient of shape {tuple(gradient.shape)} does not fit these prompts "
                         f"({tuple(cf.clean_ids.shape)}, d={cf.delta_rest.shape[-1]}); compute it with "
                         "kl_gradient on the same hook point and prompts")
    grad = gradient.to(cf.delta_rest.device, torch.float32)  # (n, T, d)
    along = grad if cf.directions is None else grad @ cf.directions.to(grad.device).T  # (n, T, m)
    n = grad.shape[0]
    features = (along * cf.delta_c).sum((0, 1)) / n
    rest = (grad * cf.delta_rest).sum() / n
    return torch.cat([features, rest.reshape(1)]).cpu()


def single_direction_effects(counterfactual: Counterfactual, directions: Tensor | list[int] | None = None, *,
                             batch_size: int = 64) -> Float[Tensor, " k"]:
    """The measured effect of patching each of ``directions`` (default: :meth:`Counterfactual.active`)
    alone: mean KL(cf || patched) minus mean KL(cf || clean); what :func:`attribution_scores`
    estimates. One patched pass per direction and prompt, batched."""
    cf = counterfactual
    index = cf.active() if directions is None else torch.as_tensor(directions, dtype=torch.long).reshape(-1)
    masks = torch.zeros(len(index), cf.n_directions, dtype=torch.bool)
    masks[torch.arange(len(index)), index] = True
    kl = counterfactual_patches(cf, masks, batch_size=batch_size).kl  # (k, n)
    return kl.mean(1) - cf.clean_kl.mean().cpu()


# ---- C24's search: ACDC on a flat graph ---------------------------------------------------------
class SearchStep(NamedTuple):
    """Where :func:`flat_acdc` stands after one threshold."""

    tau: float
    """The threshold: a direction was un-patched when the mean KL rose by less than this."""
    n_patched: int
    """Directions still patched (of the active ones; the rest node counts as one)."""
    kl: float
    """Mean KL(counterfactual || patched) over the prompts."""
    edit_size: float
    """Mean ``||x' - x||`` summed over positions."""
    patched: list[int]
    """The patched direction ids (``n_features`` is the rest node)."""


def default_taus(counterfactual: Counterfactual, n: int = 9, smallest: float = 1e-4, largest: float = 1.0
                 ) -> list[float]:
    """``n`` thresholds from ``smallest`` to ``largest`` times the mean KL(counterfactual || clean),
    log-spaced. ACDC's cost is a trial per patched direction and threshold, so the smallest
    threshold, where nearly every direction stays patched, is the dearest."""
    if not 0 < smallest < largest or n < 1:
        raise ValueError(f"need n >= 1 and 0 < smallest < largest, got n={n}, smallest={smallest}, largest={largest}")
    scale = float(counterfactual.clean_kl.mean())
    low, high = math.log10(smallest), math.log10(largest)
    return [scale * 10 ** (low + (high - low) * i / max(n - 1, 1)) for i in range(n)]


def flat_acdc(counterfactual: Counterfactual, taus: list[float] | None = None, *, seed: int = 0,
              batch_size: int = 64, rest: bool = True) -> list[SearchStep]:
    """Cunningham et al.'s search (ACDC on a flat graph): start with every active direction
    (:meth:`Counterfactual.active`) patched; for each ``tau`` in ascending order
    (:func:`default_taus` if None), visit the patched directions in a random order (seeded) and
    un-patch one whenever the mean KL rises by less than ``tau``. Returns a step per ``tau``.

    ``rest=False`` leaves the rest node out: it is never patched, so an SAE's error term (what a
    dictionary does not explain) stays that of the clean run, as in C24; then patching everything
    need not reach the counterfactual.

    Directions that never move cannot change anything and are left out. Candidates are tried in
    speculative batches (``batch_size`` prompt x trial pairs per pass), betting that the next
    outcomes repeat the last one: after a kept direction, trial un-patches of the next ones, each
    against the current state (the first accepted one in visit order is taken); after an
    un-patched one, the next ones un-patched cumulatively (each is accepted while its own rise in KL
    stays below ``tau``). A batch grows while its bet holds; the trials after a broken bet are
    evaluated again, so the result equals the one-at-a-time search. A trial measured since the
    last un-patch (at this threshold or the one before) is not run again: the state it was measured
    in has not changed, so its KL is known.
    """
    cf = counterfactual
    taus = sorted(default_taus(cf) if taus is None else [float(t) for t in taus])
    n_prompts = cf.clean_ids.shape[0]
    largest = max(1, batch_size // n_prompts)
    patched = torch.zeros(cf.n_directions, dtype=torch.bool)
    patched[cf.active(rest)] = True
    current = float(counterfactual_patches(cf, patched[None], batch_size=batch_size).kl.mean())
    generator = torch.Generator().manual_seed(seed)
    steps, chunk, removing = [], {False: 1, True: 1}, False  # removing: betting on a run of un-patches
    known: dict[int, float] = {}  # KL with one more direction un-patched, measured in the current state
    for tau in taus:
        candidates = torch.nonzero(patched).flatten()
        order = candidates[torch.randperm(len(candidates), generator=generator)].tolist()
        at = 0
        while at < len(order):
            if order[at] in known:  # measured since the last un-patch (e.g. at the previous tau): decided free
                kl = known[order[at]]
                removing = kl - current < tau
                if removing:
                    patched[order[at]] = False
                    current = kl
                    known.clear()
                at += 1
                continue
            trial = order[at:at + chunk[removing]]
            masks = patched.repeat(len(trial), 1)
            for row in range(len(trial)):  # removing: the trials up to this one; else this one alone
                masks[row, trial[:row + 1] if removing else trial[row]] = False
            kls = counterfactual_patches(cf, masks, batch_size=batch_size).kl.mean(1).tolist()
            if removing:
                held, decided = True, len(trial)
                for row, kl in enumerate(kls):
                    if kl - current >= tau:  # kept: the trials before it were un-patched, as bet
                        held, decided = False, row + 1
                        known[trial[row]] = kl
                        break
                    patched[trial[row]] = False
                    current = kl
                    known.clear()
            else:
                accepted = next((row for row, kl in enumerate(kls) if kl - current < tau), None)
                held, decided = accepted is None, len(trial) if accepted is None else accepted + 1
                if accepted is None:
                    known.update(zip(trial, kls))
                else:
                    patched[trial[accepted]] = False
                    current = kls[accepted]
                    known.clear()
            at += decided
            chunk[removing] = min(2 * chunk[removing], largest) if held else max(1, chunk[removing] // 2)
            removing = removing if held else not removing
        final = counterfactual_patches(cf, patched[None], batch_size=batch_size)
        steps.append(SearchStep(tau, int(patched.sum()), float(final.kl.mean()), float(final.edit_size.mean()),
                                torch.nonzero(patched).flatten().tolist()))
    return steps


# ---- attribution-ranked patching, re-measurement, and the KL target ------------------------------
def log_grid(largest: int, per_octave: int = 2) -> list[int]:
    """Patch counts ``0, 1, 2, 3, 4, 6, 8, ...`` (``per_octave`` per doubling) up to ``largest``."""
    ns, x = {0, largest}, 1.0
    while x < largest:
        ns.add(int(round(x)))
        x *= 2 ** (1 / per_octave)
    return sorted(n for n in ns if n <= largest)


def top_n_patches(counterfactual: Counterfactual, scores: Float[Tensor, " n_directions"],
                  ns: list[int] | None = None, *, batch_size: int = 64, rest: bool = True) -> list[SearchStep]:
    """Patch the ``n`` active directions (the rest node among them unless ``rest=False``) with the
    lowest attribution scores (:func:`attribution_scores`: most negative first, those estimated to
    bring the run closest to the counterfactual), for each ``n`` in ``ns`` (default
    :func:`log_grid` over the active directions), and measure KL and edit size.
    ``SearchStep.tau`` is the score of the last direction patched (NaN for ``n = 0``)."""
    return top_n_curves(counterfactual, {"": scores}, ns, batch_size=batch_size, rest=rest)[""]


def top_n_curves(counterfactual: Counterfactual, scores: Mapping[str, Float[Tensor, " n_directions"]],
                 ns: list[int] | None = None, *, batch_size: int = 64, rest: bool = True,
                 target: float | None = None, resolution: float = 0.125) -> dict[str, list[SearchStep]]:
    """:func:`top_n_patches` for several rankings (e.g. attribution patching and integrated
    gradients) at once: a patch two rankings share (the same top ``n`` set, always so for none and
    all) is measured once, and patching nothing is the clean run (no forward pass).

    ``target``: a mean KL to reach. Where a ranking's curve crosses it between two ``n`` of the
    grid (KL above the target at the smaller, at or below it at the larger), the gap is bisected
    until it is at most ``resolution`` times the smaller ``n`` (or 1): the fewest directions that
    reach the target, to that precision, from a coarse grid and a few more patched passes."""
    cf = counterfactual
    active = cf.active(rest)
    ranked = {name: active[torch.argsort(s[active], stable=True)] for name, s in scores.items()}
    ns = log_grid(len(active)) if ns is None else sorted({min(int(n), len(active)) for n in ns})
    measured: dict[str, dict[int, tuple[float, float]]] = {name: {} for name in ranked}  # n -> (KL, edit size)

    def measure(wanted: list[tuple[str, int]]) -> None:
        masks = torch.zeros(len(wanted), cf.n_directions, dtype=torch.bool)
        for row, (name, n) in enumerate(wanted):
            masks[row, ranked[name][:n]] = True
        unique, inverse = torch.unique(masks, dim=0, return_inverse=True)
        kl, size = torch.full((len(unique),), float(cf.clean_kl.mean())), torch.zeros(len(unique))
        moved = unique.any(1)
        if moved.any():
            result = counterfactual_patches(cf, unique[moved], batch_size=batch_size)
            kl[moved], size[moved] = result.kl.mean(1), result.edit_size.mean(1)
        for (name, n), row in zip(wanted, inverse.tolist()):
            measured[name][n] = (float(kl[row]), float(size[row]))

    measure([(name, n) for name in ranked for n in ns])
    while target is not None:
        wanted = []
        for name, curve in measured.items():
            done = sorted(curve)
            for low, high in zip(done, done[1:]):
                if curve[low][0] > target >= curve[high][0]:
                    if high - low > max(1.0, resolution * low):
                        wanted.append((name, (low + high) // 2))
                    break
        if not wanted:
            break
        measure(wanted)
    curves = {}
    for name, order in ranked.items():
        curves[name] = [SearchStep(float(scores[name][order[n - 1]]) if n else float("nan"), n,
                                   *measured[name][n], order[:n].tolist()) for n in sorted(measured[name])]
    return curves


def measure_steps(counterfactual: Counterfactual, steps: list[SearchStep], *, batch_size: int = 64
                  ) -> list[SearchStep]:
    """``steps`` (found on some prompts, e.g. :func:`flat_acdc` on a subset) measured again on
    ``counterfactual``'s prompts: same thresholds and patched ids, KL and edit size from these
    prompts. Directions are the same dictionary's, so ids carry over; a direction that does not
    move on these prompts changes nothing."""
    if not steps:
        return []
    masks = counterfactual.masks([s.patched for s in steps])
    result = counterfactual_patches(counterfactual, masks, batch_size=batch_size)
    return [s._replace(kl=float(result.kl[i].mean()), edit_size=float(result.edit_size[i].mean()))
            for i, s in enumerate(steps)]


def first_below(steps: list[SearchStep], target: float) -> SearchStep | None:
    """The step with the fewest patched directions whose KL is at most ``target`` (ties: the
    smaller edit), or None when no step gets there."""
    ok = [s for s in steps if s.kl <= target]
    return min(ok, key=lambda s: (s.n_patched, s.edit_size)) if ok else None
