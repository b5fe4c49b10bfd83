"""Capture activations with nnsight tracing, streaming them into an activation store.

One traced forward pass reads every requested hook point and stops right after the deepest
one, so capturing ``blocks.15.hook_mlp_out`` costs half a forward pass of a 30-layer model.
This module and the intervention modules are the only places that open ``model.nn.trace()``.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import torch
from jaxtyping import Float, Int
from torch import Tensor

from workbench.hookpoints import HookPoint
from workbench.models import Model, load_model
from workbench.progress import progress_bar
from workbench.store import ActivationStore, ActivationWriter


_DELAY = float(os.environ.get("WORKBENCH_CAPTURE_DELAY", "0"))


def unwrap(value):
    """The hidden-state tensor of a module's input or output (blocks of some models return tuples)."""
    while isinstance(value, (tuple, list)):
        value = value[0]
    return value


def ordered(model: Model, names: list[str]) -> list[HookPoint]:
    """Resolve ``names`` and sort them in forward order (nnsight reads values in the order they occur)."""
    points = [model.hookpoint(name) for name in dict.fromkeys(names)]
    return sorted(points, key=lambda point: point.order)


@torch.inference_mode()
def run_to(
    model: Model,
    names: list[str],
    input_ids: Int[Tensor, "batch seq"],
    attention_mask: Int[Tensor, "batch seq"] | None = None,
) -> dict[str, Float[Tensor, "batch seq d"]]:
    """Run the model up to the deepest of ``names`` and return each hook point's activation."""
    points = ordered(model, names)
    inputs = {"input_ids": input_ids.to(model.device)}
    if attention_mask is not None:
        inputs["attention_mask"] = attention_mask.to(model.device)
    saved = {}
    with model.nn.trace(inputs) as tracer:
        for point in points:
            saved[point.name] = model.nn.get(f"{point.module}.{point.io}").save()
        tracer.stop()
    return {name: unwrap(value) for name, value in saved.items()}


def capture(
    model: Model,
    hookpoints: list[str],
    contexts: Int[Tensor, "n_contexts ctx_len"],
    out: str | Path,
    *,
    batch_size: int = 32,
    drop_bos: bool = True,
    attention_mask: Int[Tensor, "n_contexts ctx_len"] | None = None,
    dtype: torch.dtype = torch.float32,
    contexts_per_shard: int = 256,
    meta: dict | None = None,
    progress: bool = True,
) -> ActivationStore:
    """Capture ``hookpoints`` over ``contexts`` into an activation store at ``out``.

    Rows are (context, position) pairs in context order; position 0 is dropped when it holds
    the model's BOS token (``drop_bos``) and positions where ``attention_mask`` is 0 always are.
    An existing store at ``out`` made with the same settings is resumed from its last
    committed shard; the result is identical to an uninterrupted capture.
    """
    if contexts.ndim != 2 or len(contexts) == 0:
        raise ValueError(f"contexts must be a non-empty [n_contexts, ctx_len] tensor of token ids, got shape {tuple(contexts.shape)}")
    if contexts_per_shard % batch_size:
        raise ValueError(f"contexts_per_shard ({contexts_per_shard}) must be a multiple of batch_size ({batch_size}) so a resumed capture batches exactly like an uninterrupted one")
    points = ordered(model, hookpoints)
    n_contexts, ctx_len = contexts.shape
    meta = {
        "model": model.name,
        "n_contexts": n_contexts,
        "drop_bos": drop_bos,
        "bos_token_id": model.bos_token_id,
        **(meta or {}),
    }
    writer = ActivationWriter(
        out,
        hookpoints={point.name: point.width for point in points},
        dtype=dtype,
        ctx_len=ctx_len,
        meta=meta,
        contexts_per_shard=contexts_per_shard,
    )
    names = [point.name for point in points]
    start = writer.contexts_done
    positions = torch.arange(ctx_len).expand(n_contexts, ctx_len)
    keep_all = torch.ones_like(contexts, dtype=torch.bool)
    if attention_mask is not None:
        keep_all &= attention_mask.bool()
    if drop_bos:
        keep_all[:, 0] &= contexts[:, 0] != model.bos_token_id
    bar = progress_bar(total=n_contexts * ctx_len, initial=start * ctx_len, unit="tok", unit_scale=True, desc="capture", disable=not progress)
    with bar:
        for first in range(start, n_contexts, batch_size):
            stop = min(first + batch_size, n_contexts)
            ids = contexts[first:stop]
            mask = None if attention_mask is None else attention_mask[first:stop]
            acts = run_to(model, names, ids, mask)
            keep = keep_all[first:stop]  # (B, T)
            rows = torch.arange(first, stop).unsqueeze(1).expand_as(ids)
            writer.add(
                {name: value[keep.to(value.device)].to("cpu", dtype) for name, value in acts.items()},
                tokens=ids[keep],
                context=rows[keep],
                position=positions[first:stop][keep],
                context_tokens=ids,
                first_context=first,
            )
            bar.update((stop - first) * ctx_len)
            if _DELAY:  # tests slow a capture down to kill it mid-run
                time.sleep(_DELAY)
    return writer.close()


@dataclass
class CaptureConfig:
    """What ``workbench capture`` does: run a model over a corpus and store activations."""

    out: str
    """Folder of the activation store (resumed if it holds a partial capture with these settings)."""
    hookpoint: list[str] = field(default_factory=lambda: ["blocks.15.hook_mlp_out"])
    """Hook points to capture in one pass, e.g. blocks.15.hook_mlp_out (repeat the flag for several)."""
    model: str = "smollm2-135m"
    """Embedded model name, local folder or Hugging Face id."""
    tokens: int = 100_000
    """Number of activation rows (tokens) to capture."""
    corpus: str = "django-docs"
    """Embedded corpus name, local .txt/.jsonl file or folder, or Hugging Face dataset name."""
    split: Literal["train", "test", "all"] = "train"
    """Document split of the corpus (test is a held-out ~10% of documents)."""
    ctx_len: int = 128
    """Tokens per context, BOS included."""
    batch_size: int = 32
    """Contexts per forward pass."""
    seed: int = 0
    """Seed of the document order."""
    dtype: Literal["float32", "float16", "bfloat16"] = "float32"
    """Storage dtype of the activations."""
    device: str = "cpu"
    """Torch device of the model, e.g. cpu or cuda."""
    drop_bos: bool = True
    """Leave out the BOS position of every context (its activations are outliers)."""
    contexts_per_shard: int = 256
    """Contexts per store shard (a multiple of batch_size)."""

    def __post_init__(self) -> None:
        if self.tokens <= 0 or self.ctx_len < 2 or self.batch_size <= 0:
            raise ValueError("tokens and batch_size must be positive and ctx_len at least 2")
        if not self.hookpoint:
            raise ValueError("give at least one hook point")


def capture_corpus(cfg: CaptureConfig, *, model: Model | None = None, progress: bool = True) -> ActivationStore:
    """Load the model (unless given) and corpus of ``cfg`` and capture into ``cfg.out``."""
    from workbench.data import describe_source, token_contexts

    model = model or load_model(cfg.model, device=cfg.device)
    per_context = cfg.ctx_len - 1 if cfg.drop_bos else cfg.ctx_len
    n_contexts = -(-cfg.tokens // per_context)
    contexts = token_contexts(model.tokenizer, cfg.corpus, n_contexts=n_contexts, ctx_len=cfg.ctx_len, seed=cfg.seed,
                              split=cfg.split, bos_token_id=model.bos_token_id, progress=progress)
    meta = {"corpus": describe_source(cfg.corpus), "split": cfg.split, "seed": cfg.seed}
    return capture(model, cfg.hookpoint, contexts, cfg.out, batch_size=cfg.batch_size, drop_bos=cfg.drop_bos,
                   dtype=getattr(torch, cfg.dtype), contexts_per_shard=cfg.contexts_per_shard, meta=meta,
                   progress=progress)


@torch.inference_mode()
def attention_patterns(model: Model, input_ids: Int[Tensor, "batch seq"]) -> Float[Tensor, "layer batch head seq seq"]:
    """Every layer's attention probabilities on ``input_ids`` (row: the attending position).

    Fused attention kernels do not return probabilities, so the model runs once with eager
    attention, then is switched back to the implementation it had.
    """
    hf = model.hf
    before = hf.config._attn_implementation
    hf.set_attn_implementation("eager")
    try:
        out = hf(input_ids.to(model.device), output_attentions=True)
    finally:
        hf.set_attn_implementation(before)
    return torch.stack([a.float() for a in out.attentions])
