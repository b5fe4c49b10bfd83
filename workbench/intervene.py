"""Interventions: run the model with some hook points' values replaced.

An *edit* maps a hook point's activation ``[batch, seq, d]`` to the value the rest of the
forward pass sees instead (an SAE reconstruction, zeros, a mean, a steered vector...).
Together with :mod:`workbench.capture`, this is the only module that opens ``model.nn.trace()``.
"""

from __future__ import annotations

import weakref
from collections.abc import Callable, Iterator
from contextlib import contextmanager

import torch
from jaxtyping import Float, Int
from torch import Tensor

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
    points = ordered(model, list(edits or {}))
    with model.nn.trace(input_ids.to(model.device)):
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
    streams = {}
    with model.nn.trace(input_ids.to(model.device)):
        for layer in sorted(set(layers)):
            if layer < n:
                point = model.hookpoint(f"blocks.{layer}.hook_resid_pre")
            else:
                point = model.hookpoint(f"blocks.{n - 1}.hook_resid_post")
            streams[layer] = _read(model.nn.get(point.module), point.io).save()
        logits = model.nn.output.logits.save()
    return streams, logits


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
    points = ordered(model, list(edits or {}))
    if points and points[0].layer < layer:
        raise ValueError(f"edit at {points[0].name} is below block {layer}, where this forward pass starts")
    with _blocks_below(model, layer, residual):
        return logits_with(model, input_ids, edits)


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
