"""IOI prompts, counterfactuals and metrics: on the word-level tiny tokenizer and model, and
(slow) the baseline of the embedded model."""

from __future__ import annotations

from collections import Counter

import pytest
import torch
from conftest import tiny_model, tiny_tokenizer

from workbench.ioi import (
    TEMPLATES,
    IOIError,
    accuracy,
    batches,
    evaluate_ioi,
    filter_correct,
    ioi_prompts,
    logit_diff,
    single_token_words,
    stack_ids,
)

# The tiny tokenizer knows only 'w3'..'w62': everything else in a template is its unknown token.
NAMES = [f"w{i}" for i in range(3, 15)]
PLACES = ["w20", "w21", "w22"]
OBJECTS = ["w30", "w31"]
WORDS = dict(names=NAMES, places=PLACES, objects=OBJECTS)


def tiny_prompts(n: int, **kwargs):
    return ioi_prompts(tiny_tokenizer(), n, **{**WORDS, **kwargs})


def test_single_token_words_keeps_known_single_tokens_once():
    tokenizer = tiny_tokenizer()
    assert single_token_words(tokenizer, ["w3", "Mary", "w3", "w5", "w6 w7"]) == ["w3", "w5"]


def test_prompts_are_deterministic_distinct_and_balanced():
    prompts = tiny_prompts(90)
    assert prompts == tiny_prompts(90)
    assert [p.text for p in prompts] != [p.text for p in tiny_prompts(90, seed=1)]
    assert len({p.text for p in prompts}) == 90
    counts = Counter((p.template, p.order) for p in prompts)
    assert len(counts) == len(TEMPLATES) * 2 and set(counts.values()) == {3}
    lengths = {}
    for p in prompts:  # one token length per template and order, so a group stacks without padding
        assert lengths.setdefault((p.template, p.order), len(p.input_ids)) == len(p.input_ids)


def test_prompt_fields_and_counterfactuals():
    tokenizer = tiny_tokenizer()
    for p in tiny_prompts(60):
        ids = list(p.input_ids)
        assert ids[0] == tokenizer.bos_token_id
        assert ids[1:] == tokenizer(p.text, add_special_tokens=False)["input_ids"]
        assert (p.io_id, p.s_id, p.c_id) == tuple(tokenizer.convert_tokens_to_ids([p.io, p.s, p.c]))
        assert len({p.io, p.s, p.c}) == 3
        assert ids[p.io_position] == p.io_id and [ids[i] for i in p.s_positions] == [p.s_id, p.s_id]
        assert p.positions == tuple(sorted((p.io_position, *p.s_positions)))
        first = p.text.split().index(p.io) < p.text.split().index(p.s)
        assert (p.order == "ABBA") == first
        # Cunningham et al.: IO -> C, nothing else changes
        cf = list(p.counterfactual.input_ids)
        assert len(cf) == len(ids) and cf[p.io_position] == p.c_id
        assert [t for i, t in enumerate(cf) if i != p.io_position] == [t for i, t in enumerate(ids) if i != p.io_position]
        assert p.counterfactual.text.split() == [p.c if w == p.io else w for w in p.text.split()]
        # ABC: three different names, none of them IO or S, at the same positions
        abc = list(p.abc.input_ids)
        assert len(abc) == len(ids) and len(set(p.abc.names)) == 3 and not {p.io, p.s} & set(p.abc.names)
        assert [abc[i] for i in p.positions] == tokenizer.convert_tokens_to_ids(list(p.abc.names))
        assert [t for i, t in enumerate(abc) if i not in p.positions] == [t for i, t in enumerate(ids) if i not in p.positions]
        assert p.ids("counterfactual") == p.counterfactual.input_ids and p.ids("abc") == p.abc.input_ids


def test_sampled_rather_than_enumerated_prompts(monkeypatch):
    """Templates with many distinct prompts (the real names) are drawn at random, not enumerated."""
    import workbench.ioi

    monkeypatch.setattr(workbench.ioi, "_ENUMERATE_BELOW", 0)
    prompts = tiny_prompts(200)
    assert prompts == tiny_prompts(200) and len({p.text for p in prompts}) == 200
    assert set(Counter((p.template, p.order) for p in prompts).values()) == {6, 7}


def test_orders_bos_and_a_model_as_tokenizer():
    assert {p.order for p in tiny_prompts(20, orders=("ABBA",))} == {"ABBA"}
    assert all(p.input_ids[0] == 7 for p in tiny_prompts(5, bos_token_id=7))
    model = tiny_model("llama")
    model.bos_token_id = 1
    assert [p.input_ids for p in ioi_prompts(model, 5, **WORDS)] == [p.input_ids for p in tiny_prompts(5, bos_token_id=1)]


def test_templates_without_place_or_object():
    prompts = tiny_prompts(40)
    argument = [p for p in prompts if "[PLACE]" not in TEMPLATES[p.template]]
    assert argument and all(p.place is None and p.object is None for p in argument)


def test_every_distinct_prompt_and_not_one_more():
    words = dict(names=NAMES[:5], places=PLACES[:1], objects=OBJECTS[:1], templates=TEMPLATES[:1])
    available = 5 * 4 * 2  # (IO, S) pairs x two orders
    prompts = ioi_prompts(tiny_tokenizer(), available, **words)
    assert len({p.text for p in prompts}) == available
    with pytest.raises(IOIError, match=f"only {available} distinct prompts"):
        ioi_prompts(tiny_tokenizer(), available + 1, **words)


def test_too_few_single_token_names():
    with pytest.raises(IOIError, match="only 0 of 99 names"):
        ioi_prompts(tiny_tokenizer(), 10)  # the real names are all unknown to the tiny tokenizer
    with pytest.raises(IOIError, match="only 4 of"):
        tiny_prompts(10, names=NAMES[:4])
    with pytest.raises(IOIError, match="needs a single-token place"):
        tiny_prompts(10, places=["Paris"])


def test_logit_diff_and_accuracy():
    logits = torch.tensor([[0.0, 2.0, 5.0], [1.0, 3.0, -1.0]])
    assert logit_diff(logits, [1, 0], [2, 1]).tolist() == [-3.0, -2.0]
    assert logit_diff(logits, torch.tensor([2, 1]), torch.tensor([1, 2])).tolist() == [3.0, 4.0]
    assert accuracy(logits, [2, 0], [1, 1]) == 0.5


def test_batches_stack_without_padding():
    prompts = tiny_prompts(45)
    groups = list(batches(prompts, batch_size=2))
    assert sorted(i for g in groups for i in g) == list(range(45))
    for group in groups:
        assert 1 <= len(group) <= 2
        assert stack_ids([prompts[i] for i in group]).shape == (len(group), len(prompts[group[0]].input_ids))
    mixed = [p for p in prompts if len(p.input_ids) != len(prompts[0].input_ids)][:1] + prompts[:1]
    with pytest.raises(ValueError, match="batches"):
        stack_ids(mixed)


@pytest.mark.parametrize("variant", ["clean", "counterfactual"])
def test_evaluate_matches_a_plain_forward_pass(variant):
    model = tiny_model("llama")
    prompts = tiny_prompts(16)
    result = evaluate_ioi(model, prompts, batch_size=3, variant=variant)
    expected = []
    with torch.no_grad():
        for p in prompts:
            last = model.hf(torch.tensor([p.ids(variant)])).logits[0, -1]
            expected.append(last[p.io_id if variant == "clean" else p.c_id] - last[p.s_id])
    expected = torch.stack(expected)
    torch.testing.assert_close(result.logit_diff, expected, atol=1e-5, rtol=1e-5)
    assert result.correct.tolist() == (expected > 0).tolist()
    assert result.accuracy == pytest.approx((expected > 0).float().mean().item())
    assert result.mean_logit_diff == pytest.approx(expected.mean().item(), abs=1e-5)


def test_filter_correct_keeps_the_right_ones_and_reports_the_rest(capsys):
    model = tiny_model("llama")
    prompts = tiny_prompts(30)
    result = evaluate_ioi(model, prompts)
    assert 0 < result.correct.sum() < 30  # a random model gets some of them right
    kept = filter_correct(prompts, result, show=2)
    assert kept == [p for p, ok in zip(prompts, result.correct) if ok]
    report = capsys.readouterr().err
    assert f"gets {30 - len(kept)} of 30 prompts wrong" in report and "more" in report
    with pytest.raises(ValueError, match="evaluation"):
        filter_correct(prompts[:-1], result)


@pytest.mark.slow
def test_smollm2_answers_at_least_200_prompts():
    import workbench

    model = workbench.load_model("smollm2-135m")
    prompts = ioi_prompts(model, 400)
    assert len({p.text for p in prompts}) == 400
    assert all(p.input_ids[0] == model.bos_token_id for p in prompts)
    clean = evaluate_ioi(model, prompts)
    counterfactual = evaluate_ioi(model, prompts, variant="counterfactual")
    print(f"SmolLM2-135M on 400 IOI prompts: accuracy {clean.accuracy:.4f}, mean logit diff IO - S "
          f"{clean.mean_logit_diff:.3f}; counterfactual (C - S) accuracy {counterfactual.accuracy:.4f}, "
          f"mean {counterfactual.mean_logit_diff:.3f}")
    kept = filter_correct(prompts, clean)
    print(f"kept {len(kept)} of 400 (counterfactual also right: {int((clean.correct & counterfactual.correct).sum())})")
    assert len(kept) >= 200
    assert clean.accuracy > 0.9 and clean.mean_logit_diff > 2
    assert all(len(p.counterfactual.input_ids) == len(p.abc.input_ids) == len(p.input_ids) for p in kept)
