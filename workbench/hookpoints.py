"""TransformerLens-style hook point names, resolved to the modules of Hugging Face models.

Four names per layer ``L``, in the order the forward pass reaches them:

=========================  ===============================================================
``blocks.L.hook_resid_pre``  residual stream entering block L (the block's first input)
``blocks.L.mlp.hook_post``   MLP neurons after the non-linearity (for gated MLPs, the input
                             of the down projection: ``act(gate) * up``)
``blocks.L.hook_mlp_out``    what the MLP adds to the residual stream
``blocks.L.hook_resid_post`` residual stream leaving block L
=========================  ===============================================================

A :class:`Layout` says where these live in one family of models (Llama-like, GPT-2,
GPT-NeoX); :func:`resolve` turns a name into a :class:`HookPoint` that says which module
and whether its input or output is meant. Nothing here runs a model.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Literal

from torch import nn

KINDS = ("hook_resid_pre", "mlp.hook_post", "hook_mlp_out", "hook_resid_post")
"""Hook kinds within a block, in forward order."""

_NAME = re.compile(r"^blocks\.(\d+)\.(hook_resid_pre|mlp\.hook_post|hook_mlp_out|hook_resid_post)$")


@dataclass(frozen=True)
class Layout:
    """Where the blocks, MLPs and projections of one model family live."""

    family: str
    """Short name of the family, e.g. ``"llama"``."""
    blocks: str
    """Dotted path of the ``ModuleList`` of transformer blocks."""
    mlp_out: str
    """Path, inside a block, of the module whose output the MLP adds to the residual stream."""
    down_proj: str
    """Path, inside a block, of the MLP's output projection; its input is ``mlp.hook_post``."""
    final_norm: str
    """Dotted path of the final norm before the unembedding."""


LAYOUTS: dict[str, Layout] = {
    "llama": Layout("llama", "model.layers", "mlp", "mlp.down_proj", "model.norm"),
    # Gemma 2/3 normalise the MLP's output before adding it to the residual stream.
    "gemma2": Layout("gemma2", "model.layers", "post_feedforward_layernorm", "mlp.down_proj", "model.norm"),
    "gpt2": Layout("gpt2", "transformer.h", "mlp", "mlp.c_proj", "transformer.ln_f"),
    "gpt_neox": Layout("gpt_neox", "gpt_neox.layers", "mlp", "mlp.dense_4h_to_h", "gpt_neox.final_layer_norm"),
}

_FAMILY_OF_MODEL_TYPE = {
    "llama": "llama",
    "mistral": "llama",
    "qwen2": "llama",
    "qwen3": "llama",
    "gemma": "llama",
    "olmo": "llama",
    "olmo2": "llama",
    "gemma2": "gemma2",
    "gemma3_text": "gemma2",
    "gpt2": "gpt2",
    "gpt_neox": "gpt_neox",
}


class HookPointError(KeyError):
    """An unknown hook point name, or a model family workbench has no layout for."""

    def __str__(self) -> str:  # KeyError would quote the message
        return str(self.args[0])


@dataclass(frozen=True)
class HookPoint:
    """One resolved hook point."""

    name: str
    """The TransformerLens-style name, e.g. ``"blocks.15.hook_mlp_out"``."""
    layer: int
    """Block index."""
    kind: str
    """One of :data:`KINDS`."""
    module: str
    """Dotted path of the module in the Hugging Face model."""
    io: Literal["input", "output"]
    """Whether the activation is the module's (first) input or its output."""
    width: int
    """Size of the activation's last dimension."""

    @property
    def order(self) -> tuple[int, int]:
        """Sort key in forward-pass order."""
        return (self.layer, KINDS.index(self.kind))


def layout_for(model: nn.Module) -> Layout:
    """The layout of a Hugging Face causal LM, from its ``config.model_type``."""
    model_type = getattr(getattr(model, "config", None), "model_type", None)
    family = _FAMILY_OF_MODEL_TYPE.get(model_type)
    if family is None:
        known = ", ".join(sorted(_FAMILY_OF_MODEL_TYPE))
        raise HookPointError(
            f"workbench has no hook-point layout for model_type {model_type!r}; known: {known}. "
            "Add a Layout to workbench/hookpoints.py (paths of blocks, MLP output and down projection)."
        )
    return LAYOUTS[family]


def n_layers(model: nn.Module) -> int:
    """Number of transformer blocks."""
    return len(model.get_submodule(layout_for(model).blocks))


def hookpoint_names(model: nn.Module) -> list[str]:
    """Every valid hook point name of ``model``, in forward order."""
    return [f"blocks.{layer}.{kind}" for layer in range(n_layers(model)) for kind in KINDS]


def resolve(model: nn.Module, name: str) -> HookPoint:
    """Resolve a TransformerLens-style name to a :class:`HookPoint` of ``model``."""
    layout = layout_for(model)
    match = _NAME.match(name)
    count = n_layers(model)
    if match is None or int(match.group(1)) >= count:
        raise HookPointError(
            f"unknown hook point {name!r}. Valid names are blocks.L.<kind> with L in 0..{count - 1} "
            f"and kind one of {', '.join(KINDS)} (e.g. 'blocks.{count // 2}.hook_mlp_out'); "
            "`workbench hookpoints --model M` lists them all."
        )
    layer, kind = int(match.group(1)), match.group(2)
    block = f"{layout.blocks}.{layer}"
    if kind == "hook_resid_pre":
        module, io = block, "input"
    elif kind == "hook_resid_post":
        module, io = block, "output"
    elif kind == "hook_mlp_out":
        module, io = f"{block}.{layout.mlp_out}", "output"
    else:
        module, io = f"{block}.{layout.down_proj}", "input"
    return HookPoint(name, layer, kind, module, io, _width(model, kind, f"{block}.{layout.down_proj}"))


def _width(model: nn.Module, kind: str, down_proj: str) -> int:
    proj = model.get_submodule(down_proj)
    if kind == "mlp.hook_post":
        # nn.Linear stores [out, in]; GPT-2's Conv1D stores [in, out].
        return proj.in_features if isinstance(proj, nn.Linear) else proj.weight.shape[0]
    return proj.out_features if isinstance(proj, nn.Linear) else proj.weight.shape[1]
