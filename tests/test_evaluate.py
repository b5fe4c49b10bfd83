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
    assert "of zero-ablating" in zero.sentence() and zero.to_dict()["loss_recovered"] == zero.loss_recovered


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
