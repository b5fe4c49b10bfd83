"""Hook-point names resolve to the right modules and widths on three model families."""

import pytest
import torch

from workbench.capture import run_to
from workbench.hookpoints import KINDS, HookPointError, hookpoint_names, layout_for, resolve

from conftest import tiny_hf


@pytest.mark.parametrize(
    ("family", "expected"),
    [
        ("llama", {"blocks.1.hook_resid_pre": ("model.layers.1", "input", 32),
                   "blocks.1.mlp.hook_post": ("model.layers.1.mlp.down_proj", "input", 48),
                   "blocks.1.hook_mlp_out": ("model.layers.1.mlp", "output", 32),
                   "blocks.1.hook_resid_post": ("model.layers.1", "output", 32)}),
        ("gpt2", {"blocks.2.mlp.hook_post": ("transformer.h.2.mlp.c_proj", "input", 128),
                  "blocks.2.hook_mlp_out": ("transformer.h.2.mlp", "output", 32),
                  "blocks.0.hook_resid_pre": ("transformer.h.0", "input", 32)}),
        ("gpt_neox", {"blocks.0.mlp.hook_post": ("gpt_neox.layers.0.mlp.dense_4h_to_h", "input", 80),
                      "blocks.2.hook_resid_post": ("gpt_neox.layers.2", "output", 32)}),
    ],
)
def test_resolve_module_paths_and_widths(family, expected):
    hf = tiny_hf(family)
    for name, (module, io, width) in expected.items():
        point = resolve(hf, name)
        assert (point.module, point.io, point.width) == (module, io, width)
        hf.get_submodule(point.module)  # the path exists


def test_names_are_listed_in_forward_order():
    hf = tiny_hf("llama")
    names = hookpoint_names(hf)
    assert len(names) == 3 * len(KINDS)
    points = [resolve(hf, name) for name in names]
    assert [p.order for p in points] == sorted(p.order for p in points)


@pytest.mark.parametrize("bad", ["blocks.3.hook_mlp_out", "blocks.0.hook_mlp_in", "layers.0.mlp", ""])
def test_unknown_name_lists_valid_ones(bad):
    with pytest.raises(HookPointError, match="Valid names are blocks.L.<kind> with L in 0..2"):
        resolve(tiny_hf("llama"), bad)


def test_unsupported_family_says_how_to_add_it():
    hf = tiny_hf("llama")
    hf.config.model_type = "mamba"
    with pytest.raises(HookPointError, match="no hook-point layout for model_type 'mamba'"):
        layout_for(hf)


def _plain_hooks(hf, points, ids):
    """Reference: the same activations with PyTorch forward hooks."""
    got = {}
    handles = []
    for point in points:
        module = hf.get_submodule(point.module)
        if point.io == "input":
            handles.append(module.register_forward_pre_hook(lambda m, args, name=point.name: got.__setitem__(name, args[0])))
        else:
            handles.append(module.register_forward_hook(
                lambda m, args, out, name=point.name: got.__setitem__(name, out[0] if isinstance(out, tuple) else out)))
    with torch.no_grad():
        hf(ids)
    for handle in handles:
        handle.remove()
    return got


def test_nnsight_capture_equals_plain_hooks_on_every_family(any_tiny_model):
    model = any_tiny_model
    names = hookpoint_names(model.hf)
    ids = torch.randint(3, 60, (2, 10))
    traced = run_to(model, names, ids)
    plain = _plain_hooks(model.hf, [model.hookpoint(n) for n in names], ids)
    for name in names:
        assert traced[name].shape == (2, 10, model.hookpoint(name).width)
        assert torch.equal(traced[name], plain[name]), name


def test_mlp_out_is_what_the_mlp_adds_to_the_residual(llama_tiny):
    """resid_post - resid_pre = attention + mlp_out: check mlp_out against the block's own arithmetic."""
    model = llama_tiny
    ids = torch.randint(3, 60, (1, 6))
    acts = run_to(model, ["blocks.1.hook_resid_pre", "blocks.1.hook_mlp_out", "blocks.1.hook_resid_post"], ids)
    block = model.hf.model.layers[1]
    residual = acts["blocks.1.hook_resid_post"] - acts["blocks.1.hook_mlp_out"]
    with torch.no_grad():
        assert torch.allclose(block.mlp(block.post_attention_layernorm(residual)), acts["blocks.1.hook_mlp_out"], atol=1e-5)
