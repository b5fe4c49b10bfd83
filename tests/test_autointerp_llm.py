"""The LLM explainer and scorers: prompts and their parsers, metrics checked by hand on constructed
features with a rule-following stub model (right explanation: perfect scores; shuffled or random:
chance), retries and failures for bad answers, and (slow) one feature explained and scored end to
end by the embedded SmolLM2."""

from __future__ import annotations

import math
import random
from functools import partial

import pytest

from openai_stub import StubServer, rule_model
from workbench.autointerp.backends import LocalBackend, OpenAIBackend
from workbench.autointerp.llm import DetectionScorer, FuzzingScorer, LLMExplainer, SimulationScorer
from workbench.autointerp.prompts import (ParseError, detection_messages, explainer_messages, fuzzing_messages,
                                          highlight, parse_binary_list, parse_explanation, parse_simulation)
from workbench.autointerp.types import Example, Explanation

WORDS = ["the", "a", "sat", "on", "mat", "ran", "big", "red", "and", "then", "up", "down", "tree", "house"]


def feature_examples(n: int, seed: int = 0, *, decoy: str = "dog", length: int = 8) -> list[Example]:
    """Half activating (one or two " cat" tokens at 7.0), half not; ``decoy`` sprinkled over all
    of them at random (30% of examples), independent of the label."""
    rng = random.Random(seed)
    examples = []
    for i in range(n):
        words = [rng.choice(WORDS) for _ in range(length)]
        if rng.random() < 0.3:
            words[rng.randrange(length)] = decoy
        label = i % 2 == 0
        if label:
            for position in rng.sample(range(length), rng.choice([1, 2])):
                words[position] = "cat"
        tokens = [f" {w}" for w in words]
        examples.append(Example(tokens, [7.0 if w == "cat" else 0.0 for w in words], label,
                                "top" if label else "random"))
    return examples


def explanation(text: str = 'the word "cat"') -> Explanation:
    return Explanation(3, text, "stub")


def client(server: StubServer, tmp_path) -> OpenAIBackend:
    return OpenAIBackend(server.url, "stub", api_key_env="WB_UNSET_KEY", backoff=0.01, cache_dir=tmp_path / "cache")


# ---------------------------------------------------------------- prompts and parsers

def test_prompts_mark_tokens_and_list_activations():
    assert highlight([" a", " big", " cat", "\n", "x"], [1, 2, 4]) == " a<< big cat>>\\n<<x>>"
    example = Example([" the", " cat", " sat"], [0.0, 8.0, 2.0], True)
    messages = explainer_messages([example, Example([" a", " cat"], [0.0, 4.0], True)])
    assert messages[0]["role"] == "system" and "[EXPLANATION]:" in messages[0]["content"]
    assert messages[-1]["content"] == ('Example 1:  the<< cat>> sat\nActivations: (" cat", 10)\n'
                                       'Example 2:  a<< cat>>\nActivations: (" cat", 5)')


def test_parse_explanation_is_tolerant_but_refuses_garbage():
    assert parse_explanation("Thinking...\n[EXPLANATION]: The word \"cat\".") == 'The word "cat".'
    assert parse_explanation("**[Explanation]:** Animal nouns\n") == "Animal nouns"
    assert parse_explanation("[EXPLANATION]: first\n[EXPLANATION]: 'second'") == "second"
    copied = explainer_messages([Example([" a"], [1.0], True)])[2]["content"]  # the worked example's answer
    for garbage in ["I cannot help with that.", "[EXPLANATION]:", "[EXPLANATION]: ...", "", copied]:
        with pytest.raises(ParseError):
            parse_explanation(garbage)


def test_a_prefilled_answer_is_continued_and_parsed():
    """For a backend that continues a final assistant turn (a local model), the explainer starts the
    answer with "[EXPLANATION]:"; the continuation's first line is the explanation, unless the answer
    writes its own [EXPLANATION]: line (a chat API that answered the turn anew)."""
    examples = [Example([" the", " cat"], [0.0, 8.0], True)]
    messages = explainer_messages(examples, prefill=True)
    assert messages[-1] == {"role": "assistant", "content": "[EXPLANATION]:"}
    assert messages[:2] == [explainer_messages(examples)[0], explainer_messages(examples)[-1]]  # no worked example
    assert parse_explanation(' The word "cat".\n\nExample 3: ...', prefilled=True) == 'The word "cat".'
    assert parse_explanation(' The word "cat". It fires on', prefilled=True) == 'The word "cat".'
    assert parse_explanation("\n  Cats\n", prefilled=True) == "Cats"
    assert parse_explanation("Sure.\n[EXPLANATION]: Cats", prefilled=True) == "Cats"
    for garbage in ["", " \n ...", " Common idioms, especially cheerful ones."]:
        with pytest.raises(ParseError):
            parse_explanation(garbage, prefilled=True)
    with pytest.raises(ParseError):
        parse_explanation(' The word "cat".')  # not prefilled: no [EXPLANATION]: line
    assert LLMExplainer(LocalBackend()).prefill and not LLMExplainer(OpenAIBackend("http://127.0.0.1:9", "m")).prefill
    assert LLMExplainer(OpenAIBackend("http://127.0.0.1:9", "m"), prefill=True).prefill


def test_prefilled_classifier_answers():
    """A local model's classifier answers are started with "[" and hold one text per prompt: "1]",
    "0, then chatter" and "1, 0]" parse, offsets in the generated text (for the log-probabilities)."""
    messages = detection_messages("cats", ["a cat", "a dog"], prefill=True)
    assert [m["role"] for m in messages] == ["system", "user", "assistant"] and messages[-1]["content"] == "["
    assert fuzzing_messages("cats", ["a <<cat>>"], prefill=True)[-1]["content"] == "["
    assert parse_binary_list("1]\n\nExample", 1, prefilled=True) == [(1, 0)]
    assert parse_binary_list(" 0, 1, 1,", 1, prefilled=True) == [(0, 1)]
    assert parse_binary_list("1, 0]", 2, prefilled=True) == [(1, 0), (0, 3)]
    assert parse_binary_list("Sure: [0, 1]", 2, prefilled=True) == [(0, 7), (1, 10)]  # answered anew
    for garbage, n in [("10]", 1), ("yes", 1), ("1, 2, 3]", 3)]:
        with pytest.raises(ParseError):
            parse_binary_list(garbage, n, prefilled=True)
    local = DetectionScorer(LocalBackend())
    assert local.prefill and local.batch_size == 1 and local.max_tokens == 6
    remote = FuzzingScorer(OpenAIBackend("http://127.0.0.1:9", "m"))
    assert not remote.prefill and remote.batch_size == 5 and remote.max_tokens == 50


def test_parse_binary_list():
    assert [p.value for p in parse_binary_list("Sure! [1, 0, true, False]", 4)] == [1, 0, 1, 0]
    parsed = parse_binary_list("```\n[0,1]\n```", 2)
    assert [p.offset for p in parsed] == [5, 7]
    assert [p.value for p in parse_binary_list("Answer:\n1, 0, 1", 3)] == [1, 0, 1]
    assert [p.value for p in parse_binary_list("[Example 1] -> [1, 1]", 2)] == [1, 1]
    for garbage, n in [("[1, 0]", 3), ("[1, 2, 0]", 3), ("yes, no", 2), ("", 1)]:
        with pytest.raises(ParseError):
            parse_binary_list(garbage, n)


def test_parse_simulation():
    tokens = [" the", " cat", "\n", " 10"]
    answer = "<start>\nthe\t0\ncat 10\n\\n\t1\n10\t3\n<end>"
    assert [p.value for p in parse_simulation(answer, tokens)] == [0, 10, 1, 3]
    assert parse_simulation(answer, tokens)[1].offset == answer.index("10")
    for garbage in ["the\t0\ncat\t10", "the\t0\ncat\t11\n\\n\t0\n10\t0", "a\t0\nb\t0\nc\t0\nd\t0", "no idea"]:
        with pytest.raises(ParseError):
            parse_simulation(garbage, tokens)


# ---------------------------------------------------------------- scorers on constructed cases

@pytest.mark.parametrize("logprobs", [True, False])
def test_the_right_explanation_scores_perfectly(tmp_path, logprobs):
    examples = feature_examples(40)
    with StubServer(rule_model, logprobs=logprobs) as server:
        backend = client(server, tmp_path)
        found = LLMExplainer(backend).explain(3, examples)
        assert found.text == 'the word "cat"' and not found.failed and found.prompt_tokens > 0
        detection = DetectionScorer(backend).score(found, examples)
        fuzzing = FuzzingScorer(backend).score(found, examples)
        simulation = SimulationScorer(backend).score(found, examples[:10])
    assert detection.value == 1.0 and detection.metrics["f1"] == 1.0 and detection.n == 40
    assert fuzzing.value == 1.0 and fuzzing.n == 60  # 20 right, 20 mismarked, 20 non-activating
    assert simulation.value == pytest.approx(1.0) and simulation.metrics["top_and_random"] == simulation.value
    assert simulation.n == 80 and simulation.failures == 0
    if logprobs:
        assert detection.metrics["auc"] == 1.0 and fuzzing.metrics["auc"] == 1.0
        # P("1") is 0.8 where the stub said 1 and 0.2 where it said 0; predictions are the
        # probability-weighted means, 10 * 0.8 = 8 and 1 * 0.2 = 0.2
        assert sorted({round(d["probability"], 9) for d in detection.details}) == [0.2, 0.8]
        assert sorted({round(v, 9) for d in simulation.details for v in d["predicted"]}) == [0.2, 8.0]
    else:
        assert "auc" not in detection.metrics
        assert {v for d in simulation.details for v in d["predicted"]} == {0.0, 10.0}


def test_many_features_at_once(tmp_path):
    dog = [Example([w.replace("cat", "dog") for w in e.tokens], e.activations, e.label) for e in feature_examples(10)]
    features = [(3, feature_examples(10)), (4, dog), (5, [e for e in dog if not e.label])]
    with StubServer(rule_model, delay=0.2) as server:
        backend = client(server, tmp_path)
        found = LLMExplainer(backend).explain_many(features)
        assert [e.text for e in found] == ['the word "cat"', 'the word "dog"', ""]
        assert found[2].failed and server.requests == 2 and server.most_active == 2
        scores = DetectionScorer(backend).score_many([(e, examples) for e, (_, examples) in zip(found, features)])
    assert [s.feature for s in scores] == [3, 4, 5] and [s.value for s in scores[:2]] == [1.0, 1.0]
    assert scores[2].failed and scores[2].failures == 5


def test_metrics_match_a_hand_computed_case(tmp_path):
    """4 activating examples hold "cat"; of 4 non-activating ones, 2 hold "cat" too (hard negatives).
    Predictions: TPR 1, TNR 1/2, so balanced accuracy 3/4; F1 = 2*4 / (2*4 + 2 + 0) = 0.8;
    P("1") 0.8 for the six said-1 and 0.2 for the two said-0: AUC = (4*2 + 4*2/2) / 16 = 0.75."""
    examples = [Example([" the", " cat"], [0.0, 5.0], True) for _ in range(4)]
    examples += [Example([" the", " cat"], [0.0, 0.0], False, "hard") for _ in range(2)]
    examples += [Example([" the", " mat"], [0.0, 0.0], False) for _ in range(2)]
    with StubServer(rule_model) as server:
        score = DetectionScorer(client(server, tmp_path), batch_size=3).score(explanation(), examples)
        assert server.requests == 3
    assert score.value == 0.75 and score.metrics["f1"] == pytest.approx(0.8)
    assert score.metrics["auc"] == 0.75 and score.metrics["accuracy"] == 0.75
    hard = [d for d in score.details if d["kind"] == "hard"]
    assert len(hard) == 2 and all(d["prediction"] and not d["label"] for d in hard)


def test_a_shuffled_explanation_or_random_answers_score_at_chance(tmp_path):
    examples = feature_examples(160, seed=1)
    with StubServer(rule_model) as server:
        backend = client(server, tmp_path)
        wrong = explanation('the word "dog"')  # another feature's explanation
        detection = DetectionScorer(backend).score(wrong, examples)
        simulation = SimulationScorer(backend).score(wrong, examples[:60])
    assert abs(detection.value - 0.5) < 0.1 and abs(detection.metrics["auc"] - 0.5) < 0.1  # 0.48 here
    assert abs(simulation.value) < 0.15 and simulation.n == 480  # r = -0.06 with this seed
    with StubServer(partial(rule_model, guess=random.Random(0))) as server:
        guessed = DetectionScorer(client(server, tmp_path / "guess")).score(explanation(), examples)
    assert abs(guessed.value - 0.5) < 0.1  # 0.49 here


def test_bad_answers_are_retried_then_recorded_as_failures(tmp_path):
    examples = feature_examples(10)
    with StubServer(lambda body: "I am not sure what you mean.") as server:
        backend = client(server, tmp_path)
        found = LLMExplainer(backend, attempts=3).explain(3, examples)
        assert found.failed and found.text == "" and server.requests == 3
        assert [b["temperature"] for b in server.bodies] == [0.0, 0.7, 0.7]
        score = DetectionScorer(backend, attempts=2).score(explanation(), examples)
        assert server.requests == 3 + 2 * 2  # two batches, two attempts each
        assert score.failed and math.isnan(score.value) and score.failures == 10 and score.n == 0
        simulation = SimulationScorer(backend, attempts=1).score(explanation(), examples[:3])
        assert simulation.failed and simulation.failures == 3 and math.isnan(simulation.value)
        for scorer in (DetectionScorer(backend), SimulationScorer(backend)):  # a failed explanation
            assert scorer.score(found, examples).failed
        before = server.requests
        DetectionScorer(backend, attempts=2).score(explanation(), examples)  # replayed from the cache
        assert server.requests == before


def test_an_answer_that_parses_on_retry_counts(tmp_path):
    """Garbage at temperature 0, good answers when a retry samples: nothing is lost."""
    def flaky(body):
        return "hmm" if body["temperature"] == 0 else rule_model(body)

    examples = feature_examples(10)
    with StubServer(flaky) as server:
        score = DetectionScorer(client(server, tmp_path)).score(explanation(), examples)
        assert server.requests == 4
    assert score.value == 1.0 and score.failures == 0 and not score.failed


def test_partial_failures_are_left_out_not_scored_zero(tmp_path):
    def half(body):
        answer = rule_model(body)
        return answer if "Example 1:  the" not in body["messages"][-1]["content"] else "[1, 1]"

    examples = feature_examples(20)
    with StubServer(half) as server:
        score = DetectionScorer(client(server, tmp_path), attempts=1).score(explanation(), examples)
    assert 0 < score.failures < 20 and score.n + score.failures == 20 and score.value == 1.0


@pytest.mark.slow
def test_the_embedded_model_explains_and_scores_a_feature(tmp_path):
    import torch

    torch.set_num_threads(1)
    backend = LocalBackend("smollm2-135m", cache_dir=tmp_path / "cache")
    examples = feature_examples(4, length=6)
    found = LLMExplainer(backend, max_examples=2, max_tokens=24, attempts=1).explain(3, examples)
    # the answer is prefilled with "[EXPLANATION]:" (no worked example to copy), so it parses
    assert not found.failed and found.text.strip(), found
    assert found.explainer == "local:smollm2-135m" and found.prompt_tokens > 0
    # four prompts of one example each (prefilled with "["), generated as one left-padded batch
    score = DetectionScorer(backend, attempts=1).score(found, examples)
    assert score.scorer == "detection" and score.n == 4 and score.failures == 0
    assert 0 <= score.value <= 1 and all(d["probability"] is not None for d in score.details)
    assert "auc" in score.metrics
    assert backend.usage["requests"] == 5
    LLMExplainer(backend, max_examples=2, max_tokens=24, attempts=1).explain(3, examples)
    assert backend.usage["requests"] == 5 and backend.usage["cached"] == 1
