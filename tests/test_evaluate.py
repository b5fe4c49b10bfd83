"""Loss recovered: a perfect reconstruction recovers everything, a zero one nothing."""

from __future__ import annotations

from typing import NamedTuple

import pytest
import torch
from torch import nn

from workbench.evaluate import loss_recovered
from workbench.intervene import logits_skipping_block, logits_with


class _Out(NamedTuple):
    x_hat: torch.Tensor


class FixedSAE(nn.Module):
    """Stands in for an SAE: x_hat = scale * x (1 is perfect, 0 is zero-ablation)."""

    def __init__(self, d: int, scale: float):
        super().__init__()
        self.W_dec = nn.Parameter(torch.zeros(3, d))
        self.scale = scale

    def forward(self, x):
        return _Out(self.scale * x)


def _ids(n=6, seq=10):
    ids = torch.randint(3, 60, (n, seq))
    ids[:, 0] = 0
    return ids


@pytest.mark.parametrize("hookpoint", ["blocks.1.hook_mlp_out", "blocks.1.hook_resid_post", "blocks.2.hook_resid_pre"])
def test_perfect_and_zero_reconstructions(llama_tiny, hookpoint):
    ids = _ids()
    perfect = loss_recovered(llama_tiny, FixedSAE(32, 1.0), hookpoint, ids, batch_size=4)
    assert perfect.ce_sae == pytest.approx(perfect.ce_clean, abs=1e-5)
    assert perfect.loss_recovered == pytest.approx(1.0, abs=1e-3) and perfect.kl == pytest.approx(0, abs=1e-5)
    assert perfect.n_tokens == 6 * 9
    zero = loss_recovered(llama_tiny, FixedSAE(32, 0.0), hookpoint, ids, batch_size=4, mean=torch.zeros(32))
    assert zero.ce_sae == pytest.approx(zero.ce_zero, abs=1e-5) and zero.loss_recovered == pytest.approx(0, abs=1e-3)
    assert zero.ce_mean == pytest.approx(zero.ce_zero, abs=1e-5)
    assert (zero.ce_skip is None) == ("resid" not in hookpoint)
    assert ("of zero-ablating" in zero.sentence()) != zero.residual
    assert ("of skipping the block" in zero.sentence()) == zero.residual
    assert zero.to_dict()["loss_recovered"] == zero.loss_recovered and len(zero.to_dict()["ci"]["kl"]) == 2


def test_mismatched_width_is_a_clear_error(llama_tiny):
    with pytest.raises(ValueError, match="d_in=48 but blocks.1.hook_mlp_out of tiny-llama has width 32"):
        loss_recovered(llama_tiny, FixedSAE(48, 1.0), "blocks.1.hook_mlp_out", _ids())


def test_skipping_a_block_equals_a_hook_that_returns_its_input(llama_tiny):
    ids = _ids(2)
    layer = llama_tiny.hf.model.layers[1]
    handle = layer.register_forward_hook(lambda m, args, out: args[0])
    with torch.no_grad():
        expected = llama_tiny.hf(ids).logits
    handle.remove()
    assert torch.allclose(logits_skipping_block(llama_tiny, ids, 1), expected, atol=1e-6)
    assert torch.allclose(logits_with(llama_tiny, ids), llama_tiny.hf(ids).logits, atol=1e-6)


# ---- an independent reference: plain transformers forward hooks, no nnsight ------------------
@pytest.fixture
def sharp_llama(llama_tiny):
    """The tiny Llama with weights drawn at std 0.3: peaked next-token distributions, so that every
    edit below moves the CE and the KL by a clear margin (at the default init they barely move)."""
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for p in llama_tiny.hf.parameters():
            if p.ndim == 2:
                p.copy_(0.3 * torch.randn(p.shape, generator=g))
    return llama_tiny


def _reference(hf, ids, module=None, edit=None):
    """HF's own next-token loss and logits, with ``edit(output, input)`` written over ``module``'s
    output at every position but the BOS."""

    def hook(_, args, output):
        edited = output.clone()
        edited[:, 1:] = edit(output[:, 1:], args[0][:, 1:])
        return edited

    handle = module.register_forward_hook(hook) if module is not None else None
    try:
        with torch.no_grad():
            out = hf(ids, labels=ids)  # HF shifts: the logits at t predict the token at t + 1
    finally:
        if handle is not None:
            handle.remove()
    return out.loss.item(), out.logits


SPLICES = {  # hook point: (the module whose output it is, the block its skip baseline removes)
    "blocks.1.hook_mlp_out": ("model.layers.1.mlp", None),
    "blocks.1.hook_resid_post": ("model.layers.1", 1),
    "blocks.2.hook_resid_pre": ("model.layers.1", 1),  # enters block 2 = leaves block 1; block 1 wrote it
}


@pytest.mark.parametrize("hookpoint", list(SPLICES))
def test_matches_plain_forward_hooks(sharp_llama, hookpoint):
    """A half-scale reconstruction, a non-zero mean and the skip baseline, each against HF's own loss."""
    ids, mean = _ids(), torch.randn(32)
    got = loss_recovered(sharp_llama, FixedSAE(32, 0.5), hookpoint, ids, batch_size=4, mean=mean)
    hf = sharp_llama.hf
    module_name, skip = SPLICES[hookpoint]
    module = hf.get_submodule(module_name)
    ce_clean, clean = _reference(hf, ids)
    ce_sae, spliced = _reference(hf, ids, module, lambda out, _: 0.5 * out)
    p, q = clean[:, :-1].log_softmax(-1), spliced[:, :-1].log_softmax(-1)
    expected = {
        "ce_clean": ce_clean,
        "ce_sae": ce_sae,
        "ce_zero": _reference(hf, ids, module, lambda out, _: torch.zeros_like(out))[0],
        "ce_mean": _reference(hf, ids, module, lambda out, _: mean.expand_as(out))[0],
        "ce_skip": None if skip is None else _reference(hf, ids, hf.model.layers[skip], lambda _, inp: inp)[0],
        "kl": (p.exp() * (p - q)).sum(-1).mean().item(),  # KL(clean || spliced)
        "n_tokens": 6 * 9,
    }
    assert {name: getattr(got, name) for name in expected} == pytest.approx(expected, abs=1e-5)
    # every edit moves the loss, so a baseline computed the wrong way cannot pass by coincidence
    figures = [v for v in expected.values() if isinstance(v, float)]
    assert min(abs(a - b) for i, a in enumerate(figures) for b in figures[i + 1:]) > 1e-3


def test_saelens_convention_ablates_the_bos_too(sharp_llama):
    """``convention="saelens"``: zero- and mean-ablation cover every position (SAELens's
    ``ce_loss_score``), the SAE splice still leaves BOS clean; against HF forward hooks."""
    ids, mean = _ids(), torch.randn(32)
    hookpoint = "blocks.1.hook_mlp_out"
    got = loss_recovered(sharp_llama, FixedSAE(32, 0.5), hookpoint, ids, batch_size=4, mean=mean,
                         convention="saelens")
    hf = sharp_llama.hf
    module = hf.get_submodule(SPLICES[hookpoint][0])

    def everywhere(value):
        handle = module.register_forward_hook(lambda _m, _a, out: value(out))
        try:
            with torch.no_grad():
                return hf(ids, labels=ids).loss.item()
        finally:
            handle.remove()

    expected = {
        "ce_clean": _reference(hf, ids)[0],
        "ce_sae": _reference(hf, ids, module, lambda out, _: 0.5 * out)[0],
        "ce_zero": everywhere(torch.zeros_like),
        "ce_mean": everywhere(lambda out: mean.expand_as(out).clone()),
    }
    assert {name: getattr(got, name) for name in expected} == pytest.approx(expected, abs=1e-5)
    workbench = loss_recovered(sharp_llama, FixedSAE(32, 0.5), hookpoint, ids, batch_size=4, mean=mean)
    assert abs(workbench.ce_zero - got.ce_zero) > 1e-3 and got.convention == "saelens"
    with pytest.raises(ValueError, match="convention"):
        loss_recovered(sharp_llama, FixedSAE(32, 0.5), hookpoint, ids, convention="transformerlens")
