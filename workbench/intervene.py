"""Interventions: run the model with some hook points' values replaced.

An *edit* maps a hook point's activation ``[batch, seq, d]`` to the value the rest of the
forward pass sees instead (an SAE reconstruction, zeros, a mean, a steered vector...).
Together with :mod:`workbench.capture`, this is the only module that opens ``model.nn.trace()``.

**SAE splices.** A :class:`Splice` puts an SAE at a hook point and edits its feature
activations there, keeping the error term: with ``a = encode(x)`` and ``a'`` the edited
activations, the rest of the model sees

    x' = decode(a') + (x - decode(a))      error term from the clean x, detached
       = x + (a' - a) @ W_dec

so with no edit it sees ``x`` itself (exactly: the second form is what runs without
gradients), and an edit changes only the edited features' contribution (SAELens #231/#326:
without the error term, splicing the SAE in changes everything at once). The edits, each for
some ``features`` at some ``positions`` (None: every position; a list of indices; a bool mask
``[seq]`` or ``[batch, seq]``), applied in order:

=================  =====================================================================
:class:`Ablate`    ``a_f -> 0``: removes ``a_f d_f`` where the feature fired, nothing elsewhere
:class:`Clamp`     ``a_f -> value``
:class:`Scale`     ``a_f -> factor * a_f``
:class:`Steer`     ``a_f -> a_f + coefficient``: adds ``coefficient * d_f``, fired or not
:class:`Patch`     ``a_f -> acts[..., f]`` from another run
:class:`StopFiring` Cunningham et al.'s "less than rank-one" ablation: ``x`` moves along
                   ``-d_f`` only until the feature stops firing
=================  =====================================================================

:func:`run_with_saes` runs the model with splices at one or more hook points and returns the
logits and each splice's feature activations, before and after its edits; with
``grad=True`` they carry gradients (attribution).
"""

from __future__ import annotations

import weakref
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from numbers import Integral
from typing import NamedTuple, Protocol

import torch
from jaxtyping import Bool, Float, Int
from torch import Tensor, nn

from workbench.capture import ordered
from workbench.hookpoints import layout_for
from workbench.models import Model

Edit = Callable[[Float[Tensor, "batch seq d"]], Float[Tensor, "batch seq d"]]


def _replace(envoy, io: str, new: Tensor) -> None:
    """Swap the hidden-state tensor of a module's input or output for ``new``."""
    if io == "input":
        envoy.input = new
        return
    old = envoy.output
    envoy.output = (new, *old[1:]) if isinstance(old, tuple) else new


def _read(envoy, io: str) -> Tensor:
    value = envoy.input if io == "input" else envoy.output
    return value[0] if isinstance(value, tuple) else value


@torch.inference_mode()
def logits_with(
    model: Model,
    input_ids: Int[Tensor, "batch seq"],
    edits: dict[str, Edit] | None = None,
) -> Float[Tensor, "batch seq vocab"]:
    """Logits of a forward pass in which each hook point in ``edits`` is replaced by ``edit(value)``."""
    return _logits_with(model, input_ids, edits)


def _logits_with(model: Model, input_ids: Tensor, edits: dict[str, Edit] | None, *, final_only: bool = False
                 ) -> Tensor:
    """:func:`logits_with` under whatever grad mode the caller set (gradients flow if enabled).
    ``final_only``: the unembedding runs on the last position only (``[batch, 1, vocab]``), about a
    fifth of a small model's forward pass saved."""
    points = ordered(model, list(edits or {}))
    with model.nn.trace(input_ids.to(model.device), **({"logits_to_keep": 1} if final_only else {})):
        for point in points:
            envoy = model.nn.get(point.module)
            _replace(envoy, point.io, edits[point.name](_read(envoy, point.io)))
        logits = model.nn.output.logits.save()
    return logits


@torch.inference_mode()
def logits_skipping_block(model: Model, input_ids: Int[Tensor, "batch seq"], layer: int) -> Float[Tensor, "batch seq vocab"]:
    """Logits with block ``layer`` removed: its output is replaced by its input (the 'skip this block' baseline)."""
    pre = model.hookpoint(f"blocks.{layer}.hook_resid_pre")
    post = model.hookpoint(f"blocks.{layer}.hook_resid_post")
    with model.nn.trace(input_ids.to(model.device)):
        residual = _read(model.nn.get(pre.module), pre.io)
        _replace(model.nn.get(post.module), post.io, residual)
        logits = model.nn.output.logits.save()
    return logits


@torch.inference_mode()
def residuals_and_logits(
    model: Model, input_ids: Int[Tensor, "batch seq"], layers: list[int]
) -> tuple[dict[int, Float[Tensor, "batch seq d"]], Float[Tensor, "batch seq vocab"]]:
    """The clean forward pass: the residual stream entering each block in ``layers``, and the logits.

    A ``layer`` equal to the number of blocks means the stream leaving the last block. The
    streams are what :func:`logits_from_block` resumes from, so a caller that runs several
    variants of the upper layers pays for the lower ones once.
    """
    n = model.n_layers
    names = {layer: f"blocks.{layer}.hook_resid_pre" if layer < n else f"blocks.{n - 1}.hook_resid_post"
             for layer in sorted(set(layers))}
    saved, logits = activations_and_logits(model, input_ids, list(names.values()))
    return {layer: saved[name] for layer, name in names.items()}, logits


@torch.inference_mode()
def logits_from_block(
    model: Model,
    input_ids: Int[Tensor, "batch seq"],
    layer: int,
    residual: Float[Tensor, "batch seq d"],
    edits: dict[str, Edit] | None = None,
) -> Float[Tensor, "batch seq vocab"]:
    """Logits of a forward pass that starts at block ``layer`` with ``residual`` as its input.

    Blocks below ``layer`` are not run: the last of them hands ``residual`` on (the embeddings
    and position encodings, cheap, still are). ``edits`` apply as in :func:`logits_with` and
    must be at or above block ``layer``. With ``residual`` taken from a clean pass this equals
    :func:`logits_with` at the cost of the upper layers only; with the stream entering an
    earlier block, it skips the blocks in between.
    """
    return _logits_from_block(model, input_ids, layer, residual, edits, final_only=False)


@torch.inference_mode()
def final_logits_from_block(
    model: Model,
    input_ids: Int[Tensor, "batch seq"],
    layer: int,
    residual: Float[Tensor, "batch seq d"],
    edits: dict[str, Edit] | None = None,
) -> Float[Tensor, "batch vocab"]:
    """:func:`logits_from_block` at the final position only (the unembedding runs on that position
    alone): what a next-token metric at the end of a prompt needs."""
    return _logits_from_block(model, input_ids, layer, residual, edits, final_only=True)[:, -1]


def _logits_from_block(model: Model, input_ids: Tensor, layer: int, residual: Tensor, edits: dict[str, Edit] | None,
                       *, final_only: bool) -> Tensor:
    points = ordered(model, list(edits or {}))
    if points and points[0].layer < layer:
        raise ValueError(f"edit at {points[0].name} is below block {layer}, where this forward pass starts")
    with _blocks_below(model, layer, residual):
        return _logits_with(model, input_ids, edits, final_only=final_only)


@contextmanager
def _blocks_below(model: Model, layer: int, residual: Tensor) -> Iterator[None]:
    """Replace the forward of blocks ``0..layer-1`` by one that returns ``residual`` (restored on exit)."""
    blocks = model.hf.get_submodule(layout_for(model.hf).blocks)
    if layer == 0:
        yield
        return
    template = _block_output_template(model, blocks[0], residual)

    def skipped(*args, **kwargs):
        return template

    saved = [block.__dict__.get("forward") for block in blocks[:layer]]
    try:
        for block in blocks[:layer]:
            block.forward = skipped
        yield
    finally:
        for block, forward in zip(blocks[:layer], saved):
            if forward is None:
                del block.forward
            else:
                block.forward = forward


_RETURNS_TUPLE: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def _block_output_template(model: Model, block: torch.nn.Module, residual: Tensor):
    """``residual`` shaped like a block's output: a tensor, or a 1-tuple (older transformers' blocks).

    Which one is read once per block from a two-token forward pass with a plain forward hook.
    """
    if block not in _RETURNS_TUPLE:
        seen = {}

        def record(module, args, out) -> None:
            seen.setdefault("tuple", isinstance(out, tuple))

        handle = block.register_forward_hook(record)
        try:
            model.hf(torch.zeros(1, 2, dtype=torch.long, device=model.device))
        finally:
            handle.remove()
        _RETURNS_TUPLE[block] = seen["tuple"]
    return (residual,) if _RETURNS_TUPLE[block] else residual


@torch.inference_mode()
def activations_and_logits(
    model: Model, input_ids: Int[Tensor, "batch seq"], names: list[str]
) -> tuple[dict[str, Float[Tensor, "batch seq d"]], Float[Tensor, "batch seq vocab"]]:
    """The clean forward pass: the activation at each hook point in ``names``, and the logits.

    Reading ``blocks.L.hook_resid_pre`` gives what :func:`logits_from_block` resumes from, so a
    caller that also needs other activations of the clean run pays for one forward pass.
    """
    saved = {}
    with model.nn.trace(input_ids.to(model.device)):
        for point in ordered(model, names):
            saved[point.name] = _read(model.nn.get(point.module), point.io).save()
        logits = model.nn.output.logits.save()
    return saved, logits


# ---- SAE splices ------------------------------------------------------------------------------
Features = int | Sequence[int]
"""One feature index or several."""
Positions = Sequence[int] | Bool[Tensor, "seq"] | Bool[Tensor, "batch seq"] | None
"""Where an edit applies: None for every position, a list of (possibly negative) indices, or a bool mask."""


class FeatureEdit(Protocol):
    """An edit of feature activations: ``(acts, x, sae) -> edited acts``, all ``[batch, seq, ...]``.

    ``acts`` are the activations so far (earlier edits applied), ``x`` the hook point's clean
    activation in the SAE's dtype. The classes below are the ones workbench provides.
    """

    def __call__(self, acts: Float[Tensor, "batch seq d_sae"], x: Float[Tensor, "batch seq d_in"],
                 sae: nn.Module) -> Float[Tensor, "batch seq d_sae"]: ...


def _feature_index(features: Features, d_sae: int, device: torch.device) -> Int[Tensor, " k"]:
    if isinstance(features, Tensor):
        features = features.reshape(-1).tolist()
    index = [int(features)] if isinstance(features, Integral) else list(dict.fromkeys(int(f) for f in features))
    if not index or not all(-d_sae <= f < d_sae for f in index):
        raise ValueError(f"features must be one or more indices in [0, {d_sae}), got {features!r}")
    return torch.tensor(index, dtype=torch.long, device=device) % d_sae


def _position_mask(positions: Positions, batch: int, seq: int, device: torch.device) -> Bool[Tensor, "batch seq"]:
    if positions is None:
        return torch.ones(batch, seq, dtype=torch.bool, device=device)
    if not isinstance(positions, Tensor):
        positions = torch.as_tensor(positions)
    if positions.dtype == torch.bool:
        if positions.shape not in ((seq,), (batch, seq), (1, seq)):
            raise ValueError(f"a position mask must be [seq={seq}] or [batch={batch}, seq], got {tuple(positions.shape)}")
        return positions.to(device).expand(batch, seq)
    index = positions.to("cpu", torch.long).reshape(-1)
    if len(index) and not ((index >= -seq) & (index < seq)).all():
        raise ValueError(f"positions must lie in [-{seq}, {seq}), got {positions!r}")
    mask = torch.zeros(seq, dtype=torch.bool)
    mask[index] = True
    return mask.to(device).expand(batch, seq)


def _per_feature(value: float | Sequence[float] | Tensor, k: int, like: Tensor) -> Tensor:
    """A scalar or one value per edited feature, as a tensor broadcastable to ``[batch, seq, k]``."""
    value = torch.as_tensor(value, dtype=like.dtype, device=like.device)
    if value.ndim and value.shape[-1] not in (1, k):
        raise ValueError(f"give one value or one per feature ({k}), got shape {tuple(value.shape)}")
    return value


def _edit_features(acts: Tensor, features: Features, positions: Positions,
                   new: Callable[[Tensor, Tensor], Tensor]) -> Tensor:
    """``acts`` with columns ``features`` replaced by ``new(columns, index)`` at ``positions`` (out of place,
    so gradients flow)."""
    batch, seq, d_sae = acts.shape
    index = _feature_index(features, d_sae, acts.device)
    mask = _position_mask(positions, batch, seq, acts.device)[..., None]  # (B, T, 1)
    columns = acts.index_select(-1, index)  # (B, T, k)
    return acts.index_copy(-1, index, torch.where(mask, new(columns, index), columns))


@dataclass(frozen=True)
class Ablate:
    """``a_f -> 0``: the feature's contribution ``a_f d_f`` leaves the activation where it fired."""

    features: Features
    """Feature index or indices."""
    positions: Positions = None
    """Where (None: every position)."""

    def __call__(self, acts, x, sae):
        return _edit_features(acts, self.features, self.positions, lambda a, _: torch.zeros_like(a))


@dataclass(frozen=True)
class Clamp:
    """``a_f -> value`` (where it fired or not)."""

    features: Features
    """Feature index or indices."""
    value: float | Sequence[float]
    """The activation to set: one for all, or one per feature."""
    positions: Positions = None
    """Where (None: every position)."""

    def __call__(self, acts, x, sae):
        return _edit_features(acts, self.features, self.positions,
                              lambda a, _: _per_feature(self.value, a.shape[-1], a).expand_as(a))


@dataclass(frozen=True)
class Scale:
    """``a_f -> factor * a_f``."""

    features: Features
    """Feature index or indices."""
    factor: float | Sequence[float]
    """The multiplier: one for all, or one per feature."""
    positions: Positions = None
    """Where (None: every position)."""

    def __call__(self, acts, x, sae):
        return _edit_features(acts, self.features, self.positions,
                              lambda a, _: a * _per_feature(self.factor, a.shape[-1], a))


@dataclass(frozen=True)
class Steer:
    """``a_f -> a_f + coefficient``: adds ``coefficient * d_f`` to the activation, fired or not."""

    features: Features
    """Feature index or indices."""
    coefficient: float | Sequence[float]
    """How much of the decoder direction to add: one for all, or one per feature."""
    positions: Positions = None
    """Where (None: every position)."""

    def __call__(self, acts, x, sae):
        return _edit_features(acts, self.features, self.positions,
                              lambda a, _: a + _per_feature(self.coefficient, a.shape[-1], a))


@dataclass(frozen=True)
class Patch:
    """``a_f -> source[..., f]``: activations from another run (e.g. :attr:`SpliceRun.acts`)."""

    acts: Float[Tensor, "batch_or_1 seq d_sae"]
    """The other run's feature activations at this hook point."""
    features: Features | None = None
    """Feature index or indices (None: every feature)."""
    positions: Positions = None
    """Where (None: every position)."""

    def __call__(self, acts, x, sae):
        if self.acts.shape[-2:] != acts.shape[-2:] or self.acts.shape[0] not in (1, acts.shape[0]):
            raise ValueError(f"patch activations of shape {tuple(self.acts.shape)} do not fit a run of shape "
                             f"{tuple(acts.shape)}: need [batch or 1, seq, d_sae]")
        features = range(acts.shape[-1]) if self.features is None else self.features
        source = self.acts.to(acts)
        return _edit_features(acts, features, self.positions,
                              lambda a, index: source.index_select(-1, index).expand_as(a))


@dataclass(frozen=True)
class StopFiring:
    """Cunningham et al. (2023)'s "less than rank-one" ablation: where feature ``f`` fires, move
    ``x`` along ``-d_f`` only until it stops firing: ``x' = x - t d_f`` with the least ``t >= 0``
    such that ``encode(x')[f] == 0``, which is ``a_f -> a_f - t`` in the splice.

    Why along the decoder direction ``d_f`` and not the encoder's ``w_f`` (along which the
    distance to the firing boundary is shortest): ``d_f`` is what the feature writes, so the
    edit stays a change of ``a_f`` alone, in the same coordinates as the other edits, and with
    ``t = a_f`` it is exactly :class:`Ablate`; Cunningham et al. lower the activation "in the
    direction of the feature". It is less than ablation where the feature stops firing
    before ``t = a_f`` (an encoder bias or threshold), more where it does not.

    ``t`` in closed form where the firing boundary is linear in ``t`` (relu: ``pre``;
    jumprelu, batchtopk: ``pre`` reaching the threshold; gated: the gate or the magnitude
    reaching 0): ``t = (pre - threshold) / (w_f . d_f)``, then raised by a few ulps where
    rounding leaves the feature on. Otherwise (topk, topafa, where firing depends on the other
    features) by bisection on ``[0, t_relu]``, the feature on at the lower end and off at the
    upper: this finds the first boundary when the firing ``t`` form an interval. Each of several
    features gets the step that stops it alone, all measured from the clean ``x`` (so put it
    before other edits of the same features).

    Raises ValueError where a fired feature cannot be stopped this way (``w_f . d_f <= 0``).
    """

    features: Features
    """Feature index or indices."""
    positions: Positions = None
    """Where (None: every position)."""

    def __call__(self, acts, x, sae):
        def lowered(columns: Tensor, index: Tensor) -> Tensor:
            steps = torch.stack([stop_firing_step(sae, x, columns[..., i], int(f)) for i, f in enumerate(index)], -1)
            return columns - steps

        return _edit_features(acts, self.features, self.positions, lowered)


@torch.no_grad()
def stop_firing_step(sae: nn.Module, x: Float[Tensor, "... d_in"], a: Float[Tensor, "..."], feature: int
                     ) -> Float[Tensor, "..."]:
    """The least ``t >= 0`` with ``encode(x - t d_f)[f] == 0`` (0 where ``a``, the feature's
    activation at ``x``, is 0): see :class:`StopFiring`. Checked with the splice's own arithmetic
    (``x + ((a - t) - a) d_f``), so the edited activation is off exactly."""
    from workbench.sae import BatchTopKSAE, GatedSAE, JumpReLUSAE, ReLUSAE

    shape = a.shape
    x = x.reshape(-1, x.shape[-1]).to(sae.W_dec.dtype)
    a = a.reshape(-1).to(sae.W_dec.dtype)
    t = torch.zeros_like(a)
    fired = a > 0
    if not fired.any():
        return t.reshape(shape)
    xs, av = x[fired], a[fired]
    d = sae.W_dec[feature]
    w = sae.W_enc[:, feature]
    slope = w @ d  # how fast the pre-activation falls per unit of t
    if slope <= 0:
        raise ValueError(f"feature {feature} cannot be stopped by moving along -d_f: w_f . d_f = {slope.item():.3g} <= 0")
    sae_in = xs - sae.b_dec if sae.apply_b_dec_to_input else xs
    if isinstance(sae, GatedSAE):
        gate = sae_in @ w + sae.b_gate[feature]
        magnitude = sae_in @ w * sae.r_mag[feature].exp() + sae.b_mag[feature]
        step = torch.minimum(gate / slope, magnitude / (slope * sae.r_mag[feature].exp()))
        exact = True
    else:
        pre = sae_in @ w + (sae.b_enc[feature] if sae.b_enc is not None else 0)
        threshold = torch.zeros((), dtype=pre.dtype, device=pre.device)
        if isinstance(sae, JumpReLUSAE):
            threshold = sae.threshold[feature]
        elif isinstance(sae, BatchTopKSAE):
            threshold = sae.threshold.clamp_min(0)
        exact = isinstance(sae, (ReLUSAE, JumpReLUSAE, BatchTopKSAE))
        step = (pre - threshold) / slope
    step = step.clamp_min(0)

    def off(steps: Tensor) -> Tensor:
        moved = xs + ((av - steps) - av)[:, None] * d
        return sae.encode(moved).feature_acts[:, feature] == 0

    if not exact:  # bisection between 0 (on) and the ReLU bound (off once pre <= 0)
        low, high = torch.zeros_like(step), _raise_until_off(step, off)
        for _ in range(48):
            middle = (low + high) / 2
            now_off = off(middle)
            high, low = torch.where(now_off, middle, high), torch.where(now_off, low, middle)
        step = high
    t[fired] = _raise_until_off(step, off)
    return t.reshape(shape)


def _raise_until_off(step: Tensor, off: Callable[[Tensor], Tensor]) -> Tensor:
    """``step`` raised by the least relative amount (doubling from 2^-24) that turns the feature off."""
    bump = 2.0**-24
    for _ in range(40):
        still_on = ~off(step)
        if not still_on.any():
            return step
        step = torch.where(still_on, step * (1 + bump) + torch.finfo(step.dtype).tiny, step)
        bump *= 2
    raise RuntimeError("the feature stayed on far past its firing boundary: is the encoder monotonic along -d_f?")


@dataclass
class Splice:
    """An SAE at a hook point, with the edits made to its feature activations there."""

    sae: nn.Module
    """Anything with ``encode(x).feature_acts``, ``decode`` and ``W_dec [d_sae, d_in]`` (a workbench SAE)."""
    edits: Sequence[FeatureEdit] = ()
    """Edits applied in order (:class:`Ablate`, :class:`Clamp`, ...); none leaves the model as it is."""
    hookpoint: str | None = None
    """Where to splice; None: the SAE's own ``cfg.hook_name``."""

    def __post_init__(self) -> None:
        if self.hookpoint is None:
            self.hookpoint = getattr(getattr(self.sae, "cfg", None), "hook_name", "") or None
        if not self.hookpoint:
            raise ValueError("the SAE's cfg.hook_name is empty: give the splice a hookpoint, e.g. 'blocks.15.hook_mlp_out'")
        if not isinstance(self.edits, (list, tuple)):
            self.edits = (self.edits,)


def splice_edit(splice: Splice, *, grad: bool = False, record: dict | None = None) -> Edit:
    """The ``x -> x'`` function of a splice (see the module docstring), for :func:`logits_with` and friends.

    Without ``grad`` it computes ``x + (a' - a) @ W_dec`` (``x`` itself when nothing is edited);
    with it, ``decode(a') + (x - decode(a)).detach()``, through which gradients reach ``a`` and
    ``a'``. ``record``, if given, receives ``"acts"`` and ``"edited"`` ``[batch, seq, d_sae]``.
    """
    sae = splice.sae

    def edit(x: Float[Tensor, "batch seq d"]) -> Float[Tensor, "batch seq d"]:
        x_in = x.to(sae.W_dec.dtype)
        acts = sae.encode(x_in).feature_acts
        edited = acts
        for change in splice.edits:
            edited = change(edited, x_in, sae)
        if record is not None:
            record["acts"], record["edited"] = acts, edited
        if grad:
            out = sae.decode(edited) + (x_in - sae.decode(acts)).detach()
        else:
            change = edited - acts
            touched = change.ne(0).flatten(0, -2).any(0).nonzero()[:, 0]  # the edited features only
            if len(touched) == 0:
                return x
            out = x_in + change.index_select(-1, touched) @ sae.W_dec[touched]
        return out.to(x.dtype)

    return edit


class SpliceRun(NamedTuple):
    """What :func:`run_with_saes` returns."""

    logits: Float[Tensor, "batch seq vocab"]
    """Logits of the run with every splice (and its edits) in place."""
    acts: dict[str, Float[Tensor, "batch seq d_sae"]]
    """Per hook point, the SAE's feature activations of the activation arriving there (before
    its own edits; after those of splices upstream, if any)."""
    edited: dict[str, Float[Tensor, "batch seq d_sae"]]
    """Per hook point, the activations after the edits: what the splice decodes."""


def run_with_saes(
    model: Model,
    input_ids: Int[Tensor, "batch seq"] | Int[Tensor, " seq"],
    splices: Sequence[Splice],
    *,
    grad: bool = False,
) -> SpliceRun:
    """Run the model with each splice's SAE at its hook point, error term kept, edits applied.

    With no edits the logits are the clean model's (exactly, without ``grad``). ``grad=True``
    runs outside inference mode: ``logits``, ``acts`` and ``edited`` carry gradients, e.g.
    ``torch.autograd.grad(metric, run.edited[hook])`` for attribution (the error term is
    detached, so gradients upstream of a splice flow through its SAE).
    """
    ids = input_ids[None] if input_ids.ndim == 1 else input_ids
    splices = list(splices)
    hooks = [splice.hookpoint for splice in splices]
    if len(set(hooks)) != len(hooks):
        raise ValueError(f"one splice per hook point, got {hooks}")
    records: dict[str, dict] = {hook: {} for hook in hooks}
    edits = {}
    for splice in splices:
        point = model.hookpoint(splice.hookpoint)
        if splice.sae.W_dec.shape[1] != point.width:
            raise ValueError(f"the SAE takes d_in={splice.sae.W_dec.shape[1]} but {point.name} of {model.name} "
                             f"has width {point.width}")
        splice.sae.to(model.device)
        edits[point.name] = splice_edit(splice, grad=grad, record=records[splice.hookpoint])
    with torch.inference_mode(not grad), torch.set_grad_enabled(grad):
        logits = _logits_with(model, ids, edits)
    return SpliceRun(logits, {h: r["acts"] for h, r in records.items()}, {h: r["edited"] for h, r in records.items()})
