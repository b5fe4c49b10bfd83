"""Prompt attribution against plain transformers forwards (occlusion: one per token; gradient x
input: autograd on the embeddings by hand), and the feature diff of two prompts by hand."""

from __future__ import annotations

import json

import pytest
import torch

from workbench.attribute import GRADIENT_X_INPUT, OCCLUSION, feature_diff, prompt_attribution
from workbench.sae import SAE, SAEConfig

from conftest import tiny_model

HOOK = "blocks.1.hook_resid_post"
PROMPT = [0, 3, 4, 5, 6, 4, 7]  # token 4 twice: scores are per position, not per token
REPLY = [9, 10, 11, 12]


def tiny_sae(architecture: str = "relu") -> SAE:
    return SAE.from_config(SAEConfig(architecture, d_in=32, d_sae=16, k=4, hook_name=HOOK))


def _block_input(model, ids: torch.Tensor) -> torch.Tensor:
    """The residual stream entering block 0, from the embedding modules themselves."""
    hf = model.hf
    x = hf.get_input_embeddings()(ids)
    if model.name == "tiny-gpt2":
        x = x + hf.transformer.wpe(torch.arange(ids.shape[1]))
    return x


def _reply_total(model, sae: SAE, block_input: torch.Tensor, feature: int) -> torch.Tensor:
    """The feature's total over the reply, with the model run from ``block_input`` (inputs_embeds;
    for GPT-2 its position embedding taken back out, since the model adds it again)."""
    hf = model.hf
    embeds = block_input
    if model.name == "tiny-gpt2":
        embeds = block_input - hf.transformer.wpe(torch.arange(block_input.shape[1]))
    hidden = hf(inputs_embeds=embeds, output_hidden_states=True).hidden_states[2]  # block 1's output
    return sae.encode(hidden).feature_acts[0, len(PROMPT):, feature].sum()


def _busiest_feature(model, sae: SAE) -> int:
    with torch.no_grad():
        hidden = model.hf(torch.tensor([PROMPT + REPLY]), output_hidden_states=True).hidden_states[2]
        return int(sae.encode(hidden).feature_acts[0, len(PROMPT):].sum(0).argmax())


@pytest.mark.parametrize("architecture", ["relu", "topk"])
def test_occlusion_equals_one_forward_per_token(any_tiny_model, architecture):
    model, sae = any_tiny_model, tiny_sae(architecture)
    feature = _busiest_feature(model, sae)
    got = prompt_attribution(model, sae, PROMPT, REPLY, feature, batch_size=3)  # 3 batches, the last one short

    ids = torch.tensor([PROMPT + REPLY])
    with torch.no_grad():
        clean = _block_input(model, ids)
        base = _reply_total(model, sae, clean, feature)
        expected = []
        for i in range(len(PROMPT)):
            zeroed = clean.clone()
            zeroed[0, i] = 0
            expected.append(float(base - _reply_total(model, sae, zeroed, feature)))
    assert got.feature == feature and got.total == pytest.approx(float(base), rel=1e-5)
    assert got.total > 0
    assert got.occlusion == pytest.approx(expected, abs=1e-5)
    assert any(abs(v) > 1e-3 for v in expected)  # not a vacuous comparison
    assert got.tokens == [model.tokenizer.decode([i]) for i in PROMPT]


@pytest.mark.parametrize("family", ["llama", "gpt2"])
def test_gradient_x_input_equals_autograd_by_hand(family):
    model, sae = tiny_model(family), tiny_sae()
    feature = _busiest_feature(model, sae)
    got = prompt_attribution(model, sae, torch.tensor(PROMPT), torch.tensor(REPLY), feature)

    x = _block_input(model, torch.tensor([PROMPT + REPLY])).detach().requires_grad_()
    (grad,) = torch.autograd.grad(_reply_total(model, sae, x, feature), x)
    expected = (grad * x).sum(-1)[0, : len(PROMPT)]
    assert got.gradient_x_input == pytest.approx(expected.tolist(), abs=1e-6, rel=1e-4)
    assert expected.abs().max() > 1e-4

    model.hf.requires_grad_(False)  # frozen weights: the embedding is made a leaf to differentiate
    frozen = prompt_attribution(model, sae, PROMPT, REPLY, feature)
    assert frozen.gradient_x_input == pytest.approx(got.gradient_x_input, abs=1e-7)


def test_attribution_dict_and_errors(llama_tiny):
    sae = tiny_sae()
    got = prompt_attribution(llama_tiny, sae, PROMPT, REPLY, 2)
    as_json = json.loads(json.dumps(got.to_dict(), allow_nan=False))
    assert as_json["methods"] == {"occlusion": OCCLUSION, "gradient_x_input": GRADIENT_X_INPUT}
    assert GRADIENT_X_INPUT.startswith("estimate") and OCCLUSION.startswith("real effect")
    assert len(as_json["occlusion"]) == len(as_json["gradient_x_input"]) == len(as_json["tokens"]) == len(PROMPT)
    with pytest.raises(ValueError, match="reply"):
        prompt_attribution(llama_tiny, sae, PROMPT, [], 2)
    with pytest.raises(IndexError):
        prompt_attribution(llama_tiny, sae, PROMPT, REPLY, 16)


def test_feature_diff_by_hand(llama_tiny):
    sae = tiny_sae("topk")  # 4 features a token: many fire on one prompt only
    a, b = "w3 w4 w5 w6", "w20 w21 w22"

    def totals(text: str) -> torch.Tensor:
        ids = [0, *llama_tiny.tokenizer(text, add_special_tokens=False)["input_ids"]]
        with torch.no_grad():
            hidden = llama_tiny.hf(torch.tensor([ids]), output_hidden_states=True).hidden_states[2]
            return sae.encode(hidden).feature_acts[0, 1:].sum(0)  # BOS left out

    ta, tb = totals(a), totals(b)
    diff = feature_diff(llama_tiny, sae, a, b, top=16)
    assert [f for f, _ in diff.only_a] == sorted(torch.nonzero((ta > 0) & (tb == 0)).flatten().tolist(),
                                                 key=lambda f: -ta[f])
    assert [f for f, _ in diff.only_b] == sorted(torch.nonzero((tb > 0) & (ta == 0)).flatten().tolist(),
                                                 key=lambda f: -tb[f])
    assert {f for f, _, _ in diff.both} == set(torch.nonzero((ta > 0) & (tb > 0)).flatten().tolist())
    assert diff.only_a and diff.only_b
    for f, total in diff.only_a:
        assert total == pytest.approx(float(ta[f]), rel=1e-5)
    for f, total_a, total_b in diff.both:
        assert (total_a, total_b) == (pytest.approx(float(ta[f]), rel=1e-5), pytest.approx(float(tb[f]), rel=1e-5))
    assert len(feature_diff(llama_tiny, sae, a, b, top=1).only_a) == 1
    same = feature_diff(llama_tiny, sae, a, a)
    assert same.only_a == same.only_b == [] and same.both
    json.dumps(diff.to_dict(), allow_nan=False)
