"""Direct logit effects against each tiny model's own final norm and lm_head."""

from __future__ import annotations

import pytest
import torch

from workbench import hookpoints
from workbench.logit_effects import METHOD, logit_effects, through_norm
from workbench.models import Model

from conftest import VOCAB, tiny_model


def tiny_gemma2() -> Model:
    """A tiny random Gemma 2 (its RMS norms multiply by 1 + weight); logit effects need only ``hf``."""
    from transformers import Gemma2Config, Gemma2ForCausalLM

    config = Gemma2Config(vocab_size=VOCAB, hidden_size=32, intermediate_size=48, num_hidden_layers=2,
                          num_attention_heads=4, num_key_value_heads=2, head_dim=8, max_position_embeddings=64)
    return Model(name="tiny-gemma2", hf=Gemma2ForCausalLM(config).eval(), nn=None, tokenizer=None, bos_token_id=0)


def _randomise_norm(norm: torch.nn.Module) -> None:
    """Give the final norm a non-trivial weight (and bias), so that the test sees them."""
    with torch.no_grad():
        norm.weight.uniform_(0.5, 2.0)
        if getattr(norm, "bias", None) is not None:
            norm.bias.normal_()


def _by_hand(hf: torch.nn.Module, directions: torch.Tensor) -> torch.Tensor:
    """Effects through the modules themselves: run ``d`` through the final norm and lm_head, take
    away what a zero-effect input gives (the biases), and undo the norm's 1/rms (or 1/std) scale."""
    norm = hf.get_submodule(hookpoints.layout_for(hf).final_norm)
    head = hf.get_output_embeddings()
    with torch.no_grad():
        if isinstance(norm, torch.nn.LayerNorm):
            scale = (directions.var(dim=-1, unbiased=False, keepdim=True) + norm.eps).sqrt()
            offset = head(norm.bias)  # a centred zero input gives the bias alone
        else:
            eps = getattr(norm, "variance_epsilon", getattr(norm, "eps", None))
            scale = (directions.square().mean(dim=-1, keepdim=True) + eps).sqrt()
            offset = head(torch.zeros(directions.shape[1]))
        return (head(norm(directions)) - offset) * scale


@pytest.mark.parametrize("family", ["llama", "gpt2", "gpt_neox"])
def test_effects_equal_the_models_own_norm_and_head(family):

    model = tiny_model(family)
    norm = model.hf.get_submodule(hookpoints.layout_for(model.hf).final_norm)
    _randomise_norm(norm)
    directions = torch.randn(7, 32)
    expected = _by_hand(model.hf, directions)  # [7, vocab]

    got = logit_effects(model, directions, k=5, bins=8, batch=3)  # 3 chunks, the last one short
    assert torch.allclose(got.top_values, expected.topk(5, dim=1).values, atol=1e-4)
    assert torch.equal(got.top_ids, expected.topk(5, dim=1).indices)
    assert torch.allclose(got.bottom_values, expected.topk(5, dim=1, largest=False).values, atol=1e-4)
    assert torch.equal(got.bottom_ids, expected.topk(5, dim=1, largest=False).indices)
    gathered = expected.gather(1, got.top_ids)
    assert torch.allclose(gathered, got.top_values, atol=1e-4)


def test_ordering_and_histogram(llama_tiny):
    directions = torch.randn(5, 32)
    got = logit_effects(llama_tiny, directions, k=4, bins=10)
    assert got.top_ids.shape == got.bottom_values.shape == (5, 4)
    assert (got.top_values.diff(dim=1) <= 0).all()  # descending
    assert (got.bottom_values.diff(dim=1) >= 0).all()  # ascending, most negative first
    assert (got.top_values[:, -1] >= got.bottom_values[:, -1]).all()
    assert got.hist_counts.dtype == torch.long and got.hist_counts.shape == (5, 10)
    assert (got.hist_counts.sum(dim=1) == VOCAB).all()
    assert got.hist_edges.shape == (5, 11)
    assert torch.allclose(got.hist_edges[:, 0], got.bottom_values[:, 0])
    assert torch.allclose(got.hist_edges[:, -1], got.top_values[:, 0])
    assert (got.hist_edges.diff(dim=1) > 0).all()
    # The counts match a per-direction histogram of the full effect vector.
    norm = llama_tiny.hf.model.norm
    effects = through_norm(norm, directions) @ llama_tiny.hf.lm_head.weight.detach().T
    for i in range(5):
        counts = torch.histc(effects[i], bins=10, min=float(effects[i].min()), max=float(effects[i].max()))
        assert (counts.long() - got.hist_counts[i]).abs().sum() <= 2  # edge rounding may move a value


def test_zero_direction_and_errors(llama_tiny):
    got = logit_effects(llama_tiny, torch.zeros(2, 32), k=3, bins=4)
    assert (got.hist_counts.sum(dim=1) == VOCAB).all()
    assert torch.allclose(got.hist_edges[:, 0], torch.full((2,), -0.5))
    assert torch.allclose(got.hist_edges[:, -1], torch.full((2,), 0.5))
    with pytest.raises(ValueError, match="d_model=32"):
        logit_effects(llama_tiny, torch.zeros(2, 31))
    with pytest.raises(ValueError, match="k <= vocab"):
        logit_effects(llama_tiny, torch.zeros(2, 32), k=VOCAB + 1)
    assert "direct path" in METHOD


def test_through_norm_of_gemma_and_weightless_norms():
    class GemmaRMSNorm(torch.nn.Module):  # named like transformers' Gemma norms, which store weight - 1
        def __init__(self):
            super().__init__()
            self.weight = torch.nn.Parameter(torch.tensor([0.0, 1.0, -0.5]))

    class OlmoLayerNorm(torch.nn.Module):  # a LayerNorm without parameters
        pass

    d = torch.tensor([[1.0, 2.0, 3.0]])
    assert torch.allclose(through_norm(GemmaRMSNorm(), d), torch.tensor([[1.0, 4.0, 1.5]]))
    assert torch.allclose(through_norm(OlmoLayerNorm(), d), torch.tensor([[-1.0, 0.0, 1.0]]))
