"""Generation with splices against transformers' own generate with a plain forward hook; the
comparison's numbers and the reply's traits against sums by hand; one acceptance test of
steering on the embedded model."""

from __future__ import annotations

import json

import pytest
import torch
import torch.nn.functional as F

from workbench import hookpoints
from workbench.features import FeatureStats
from workbench.intervene import Splice, Steer, run_with_saes
from workbench.sae import SAE, SAEConfig
from workbench.steer import _eos_ids, compare_steering, generate, prompt_token_ids, reply_traits

from conftest import tiny_model

HOOK = "blocks.1.hook_resid_post"
PROMPT = "w3 w4 w5 w6"


def tiny_sae(d_in: int = 32, d_sae: int = 16, architecture: str = "relu") -> SAE:
    return SAE.from_config(SAEConfig(architecture, d_in=d_in, d_sae=d_sae, k=4, hook_name=HOOK))


def _block(hf, layer: int) -> torch.nn.Module:
    return hf.get_submodule(hookpoints.layout_for(hf).blocks)[layer]


def _adding(hf, layer: int, vector: torch.Tensor):
    """A plain forward hook that adds ``vector`` to block ``layer``'s output at every position."""

    def add(module, args, out):
        if isinstance(out, tuple):
            return (out[0] + vector, *out[1:])
        return out + vector

    return _block(hf, layer).register_forward_hook(add)


def _hf_generate(model, prompt_ids: list[int], n: int) -> list[int]:
    """transformers' greedy generate (with its KV cache), stopped at workbench's end-of-sequence ids."""
    out = model.hf.generate(torch.tensor([prompt_ids]), max_new_tokens=n, do_sample=False,
                            eos_token_id=sorted(_eos_ids(model)), pad_token_id=model.tokenizer.pad_token_id)
    return out[0, len(prompt_ids):].tolist()


def _matches(ours, reference: list[int], model) -> None:
    """``ours`` (a Generation) is ``reference`` with the end-of-sequence token left out."""
    if ours.finished:
        assert reference == [*ours.reply_ids, reference[len(ours.reply_ids)]]
        assert reference[-1] in _eos_ids(model)
    else:
        assert ours.reply_ids == reference


def test_greedy_equals_transformers_generate(any_tiny_model):
    model = any_tiny_model
    ours = generate(model, PROMPT, max_new_tokens=8)
    assert ours.prompt_ids == [model.bos_token_id, 3, 4, 5, 6]
    assert ours.prompt_tokens == ["<bos>", "w3", "w4", "w5", "w6"]
    _matches(ours, _hf_generate(model, ours.prompt_ids, 8), model)
    assert ours.reply_tokens == [model.tokenizer.decode([i]) for i in ours.reply_ids]
    assert ours.reply_text == model.tokenizer.decode(ours.reply_ids)
    assert ours.input_ids.tolist() == [ours.prompt_ids + ours.reply_ids]


def test_steering_applies_at_every_step_to_every_position(any_tiny_model):
    """A Steer edit adds coefficient * d_f at every position, exactly what a forward hook adding it to
    the block's output does; transformers' generate with that hook (and its KV cache) is the reference."""
    model = any_tiny_model
    sae = tiny_sae()
    splice = Splice(sae, [Steer(5, 4.0)])
    clean = generate(model, PROMPT, max_new_tokens=8)
    steered = generate(model, PROMPT, splices=[splice], max_new_tokens=8)
    assert steered.reply_ids != clean.reply_ids  # the steering does something
    handle = _adding(model.hf, 1, 4.0 * sae.W_dec[5].detach())
    try:
        reference = _hf_generate(model, steered.prompt_ids, 8)
    finally:
        handle.remove()
    _matches(steered, reference, model)


def test_sampling_is_reproducible_and_seeded(llama_tiny):
    a = generate(llama_tiny, PROMPT, max_new_tokens=10, temperature=1.5, seed=7)
    b = generate(llama_tiny, PROMPT, max_new_tokens=10, temperature=1.5, seed=7)
    assert a == b
    others = {tuple(generate(llama_tiny, PROMPT, max_new_tokens=10, temperature=1.5, seed=s).reply_ids) for s in range(4)}
    assert len(others) > 1
    # The first token is torch.multinomial's draw from softmax(logits / T) with Generator(seed) on the CPU.
    logits = llama_tiny.hf(torch.tensor([a.prompt_ids])).logits[0, -1].detach()
    draw = torch.multinomial(F.softmax(logits / 1.5, -1), 1, generator=torch.Generator().manual_seed(7))
    if a.reply_ids:
        assert a.reply_ids[0] == int(draw)
    # A steered sample is reproducible too.
    splice = Splice(tiny_sae(), [Steer([1, 2], [2.0, -1.0])])
    assert (generate(llama_tiny, PROMPT, splices=[splice], max_new_tokens=6, temperature=1.0, seed=3)
            == generate(llama_tiny, PROMPT, splices=[splice], max_new_tokens=6, temperature=1.0, seed=3))


def test_stops_at_the_end_of_sequence_token(llama_tiny):
    llama_tiny.hf.generation_config.eos_token_id = None
    free = generate(llama_tiny, PROMPT, max_new_tokens=12)
    assert len(free.reply_ids) >= 3 and free.finished == (len(free.reply_ids) < 12)
    stop_at = free.reply_ids[2]
    first = free.reply_ids.index(stop_at)
    llama_tiny.tokenizer.eos_token = llama_tiny.tokenizer.convert_ids_to_tokens(stop_at)
    stopped = generate(llama_tiny, PROMPT, max_new_tokens=12)
    assert stopped.finished and stopped.reply_ids == free.reply_ids[:first]
    assert generate(llama_tiny, PROMPT, max_new_tokens=first).finished is False
    assert generate(llama_tiny, PROMPT, max_new_tokens=0).reply_ids == []


def test_prompts_text_ids_and_chat(llama_tiny):
    assert prompt_token_ids(llama_tiny, PROMPT) == [0, 3, 4, 5, 6]
    assert prompt_token_ids(llama_tiny, [7, 8]) == [7, 8]
    assert prompt_token_ids(llama_tiny, torch.tensor([[7, 8]])) == [7, 8]
    with pytest.raises(ValueError, match="no chat template"):
        generate(llama_tiny, PROMPT, chat=True)
    llama_tiny.tokenizer.chat_template = (
        "{% for m in messages %}<bos> {{ m['content'] }} <eos> {% endfor %}{% if add_generation_prompt %}w9{% endif %}")
    assert prompt_token_ids(llama_tiny, "w3 w4", chat=True) == [0, 3, 4, 1, 9]
    turns = [{"role": "user", "content": "w3"}, {"role": "assistant", "content": "w5"}, {"role": "user", "content": "w7"}]
    assert prompt_token_ids(llama_tiny, turns, chat=True) == [0, 3, 1, 0, 5, 1, 0, 7, 1, 9]
    assert generate(llama_tiny, "w3 w4", chat=True, max_new_tokens=2).prompt_ids == [0, 3, 4, 1, 9]
    with pytest.raises(ValueError, match="max_new_tokens"):
        generate(tiny_model("gpt2"), PROMPT, max_new_tokens=100)  # past GPT-2's 64 positions


def _log_probs(model, ids: list[int], steer: torch.Tensor | None = None) -> torch.Tensor:
    handle = _adding(model.hf, 1, steer) if steer is not None else None
    try:
        with torch.no_grad():
            return F.log_softmax(model.hf(torch.tensor([ids])).logits[0].float(), -1)
    finally:
        if handle is not None:
            handle.remove()


def test_compare_steering_numbers_by_hand(llama_tiny):
    sae = tiny_sae()
    coefficient = 3.0
    comparison = compare_steering(llama_tiny, PROMPT, [Splice(sae, [Steer(5, coefficient)])], max_new_tokens=6,
                                  temperature=1.0, seed=2)
    clean, steered = comparison.clean, comparison.steered
    assert clean == generate(llama_tiny, PROMPT, max_new_tokens=6, temperature=1.0, seed=2)
    n = len(steered.prompt_ids)
    positions = slice(n - 1, n - 1 + len(steered.reply_ids))
    reply = torch.tensor(steered.reply_ids)
    p_clean = _log_probs(llama_tiny, steered.prompt_ids + steered.reply_ids)[positions]
    p_steer = _log_probs(llama_tiny, steered.prompt_ids + steered.reply_ids, coefficient * sae.W_dec[5].detach())[positions]
    kl = (p_clean.exp() * (p_clean - p_steer)).sum(-1).mean()
    assert comparison.kl_next_token == pytest.approx(float(kl), rel=1e-4, abs=1e-7)
    assert comparison.kl_next_token > 0
    assert comparison.steered_loglik_clean == pytest.approx(float(p_clean[torch.arange(len(reply)), reply].mean()), abs=1e-5)
    p_own = _log_probs(llama_tiny, clean.prompt_ids + clean.reply_ids)[n - 1 : n - 1 + len(clean.reply_ids)]
    assert comparison.clean_loglik == pytest.approx(float(p_own[torch.arange(len(clean.reply_ids)), clean.reply_ids].mean()), abs=1e-5)
    as_json = json.loads(json.dumps(comparison.to_dict(), allow_nan=False))
    assert set(as_json) == {"clean", "steered", "kl_next_token", "steered_loglik_clean", "clean_loglik"}
    assert as_json["steered"]["reply_ids"] == steered.reply_ids

    unsteered = compare_steering(llama_tiny, PROMPT, [Splice(sae)], max_new_tokens=6)
    assert unsteered.clean == unsteered.steered
    assert unsteered.kl_next_token == pytest.approx(0, abs=1e-7)
    assert unsteered.steered_loglik_clean == unsteered.clean_loglik


def test_reply_traits_by_hand(llama_tiny):
    sae = tiny_sae()
    generation = generate(llama_tiny, PROMPT, max_new_tokens=8)
    n = len(generation.prompt_ids)
    with torch.no_grad():
        hidden = llama_tiny.hf(generation.input_ids, output_hidden_states=True).hidden_states[2]  # block 1's output
        acts = sae.encode(hidden).feature_acts[0, n:]  # (reply, d_sae)
    total, count = acts.sum(0), (acts > 0).sum(0)

    traits = reply_traits(llama_tiny, sae, generation, top=5)
    assert len(traits) == 5
    assert [t.feature for t in traits] == total.argsort(descending=True)[:5].tolist()
    for trait in traits:
        assert trait.total == pytest.approx(float(total[trait.feature]), rel=1e-5)
        assert trait.n_tokens == int(count[trait.feature])
        assert trait.lift is None and trait.title == f"feature {trait.feature}"

    fire_count = torch.arange(16) * 10  # feature 0 never fired in the statistics
    stats = FeatureStats({"n_tokens": 1000, "titles": [f"f{i}" for i in range(16)]}, {"fire_count": fire_count})
    by_lift = reply_traits(llama_tiny, sae, generation, stats=stats, top=16, by="lift")
    active = [f for f in range(16) if count[f] > 0]
    assert sorted(t.feature for t in by_lift) == active
    usual = (fire_count.double() / 1000).clamp_min(1 / 1000)
    for trait in by_lift:
        assert trait.lift == pytest.approx(count[trait.feature].item() / len(generation.reply_ids) / usual[trait.feature].item())
        assert trait.title == f"f{trait.feature}"
    assert [t.lift for t in by_lift] == sorted((t.lift for t in by_lift), reverse=True)
    json.dumps([t.to_dict() for t in by_lift], allow_nan=False)

    with pytest.raises(ValueError, match="stats"):
        reply_traits(llama_tiny, sae, generation, by="lift")
    empty = generate(llama_tiny, PROMPT, max_new_tokens=0)
    assert reply_traits(llama_tiny, sae, empty) == []


@pytest.mark.slow
def test_steering_promotes_its_token_on_the_embedded_model():
    """An SAE whose feature 3 decodes to a direction whose direct logit effect promotes " cat": steering
    it at blocks.24.hook_resid_post (of 30) raises p(" cat"), greedy and sampled, reproducibly."""
    import workbench
    from workbench.logit_effects import logit_effects

    model = workbench.load_model("smollm2-135m")
    cat = model.tokenizer(" cat", add_special_tokens=False)["input_ids"][0]
    W_U = model.hf.get_output_embeddings().weight.detach()
    gamma = model.hf.get_submodule(hookpoints.layout_for(model.hf).final_norm).weight.detach()
    direction = gamma * W_U[cat]  # W_U (gamma * d) is then largest at " cat"
    hook = "blocks.24.hook_resid_post"
    sae = SAE.from_config(SAEConfig("relu", d_in=model.d_model, d_sae=8, hook_name=hook))
    with torch.no_grad():
        sae.W_dec[3] = direction / direction.norm()
    assert logit_effects(model, sae.W_dec[3:4].detach(), k=1).top_ids[0, 0] == cat
    splice = Splice(sae, [Steer(3, 50.0)])
    prompt = "My favourite animal is the"

    comparison = compare_steering(model, prompt, [splice], max_new_tokens=8)
    clean, steered = comparison.clean, comparison.steered
    ids = torch.tensor([clean.prompt_ids])
    p_clean = F.softmax(run_with_saes(model, ids, []).logits[0, -1], -1)[cat]
    p_steered = F.softmax(run_with_saes(model, ids, [splice]).logits[0, -1], -1)[cat]
    assert p_steered > 2 * p_clean
    assert steered.reply_ids.count(cat) > clean.reply_ids.count(cat)
    assert comparison.kl_next_token > 0

    sampled = [generate(model, prompt, splices=[splice], max_new_tokens=5, temperature=0.8, seed=1) for _ in range(2)]
    assert sampled[0] == sampled[1]
    print(f"p(' cat' | prompt): clean {p_clean:.4f}, steered {p_steered:.4f}; clean {clean.reply_text!r}; "
          f"steered {steered.reply_text!r}; sampled {sampled[0].reply_text!r}; KL {comparison.kl_next_token:.3f}, "
          f"loglik {comparison.steered_loglik_clean:.2f} vs {comparison.clean_loglik:.2f}")
