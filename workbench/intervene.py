"""Interventions: run the model with some hook points' values replaced.

An *edit* maps a hook point's activation ``[batch, seq, d]`` to the value the rest of the
forward pass sees instead (an SAE reconstruction, zeros, a mean, a steered vector...).
Together with :mod:`workbench.capture`, this is the only module that opens ``model.nn.trace()``.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from jaxtyping import Float, Int
from torch import Tensor

from workbench.capture import ordered
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
