"""The offline token-pattern explainer and its rule scorer on constructed examples, against
values computed by hand."""

from __future__ import annotations

import math
import random

import pytest

from workbench.autointerp import Example, Explanation, RuleScorer, TokenPatternExplainer, apply_rule, rule_sentence

WORDS = [" the", " a", " model", " query", " field", " set", " of", " to", " is", "(", ")", ".", " and", " in"]


def synthetic(n: int, seed: int, fire=lambda tokens, i: tokens[i] == " __init__" and i > 0 and tokens[i - 1] == "def"):
    """Windows of random words; half of them hold 'def __init__' somewhere. The feature fires where
    ``fire`` says (value 2, or 3 after 'def'), so the rule "' __init__' after 'def'" is exact."""
    rng = random.Random(seed)
    out = []
    for k in range(n):
        tokens = [rng.choice(WORDS) for _ in range(12)]
        if k % 2 == 0:
            i = rng.randrange(1, 12)
            tokens[i - 1], tokens[i] = "def", " __init__"
        else:  # decoys: ' __init__' without 'def', 'def' without ' __init__'
            tokens[rng.randrange(1, 12)] = rng.choice([" __init__", "def"])
        acts = [3.0 if fire(tokens, i) else 0.0 for i in range(len(tokens))]
        out.append(Example(tokens, acts, label=max(acts) > 0, kind="top" if max(acts) > 0 else "random"))
    return out


def test_explainer_finds_the_bigram_and_says_it():
    explanation = TokenPatternExplainer().explain(7, synthetic(40, seed=1))
    assert not explanation.failed and explanation.feature == 7 and explanation.explainer == "token-pattern"
    assert explanation.rule["terms"] == [{"kind": "bigram", "token": " __init__", "prev": "def", "weight": 1.0}]
    assert explanation.text == "fires on ' __init__' after 'def'"
    assert explanation.rule["train_f1"] == pytest.approx(1.0)


def test_explainer_joins_terms_when_one_is_not_enough():
    fire = lambda tokens, i: tokens[i] in (" query", " field")  # noqa: E731
    examples = [e for e in synthetic(60, seed=2, fire=fire)]
    explanation = TokenPatternExplainer().explain(0, examples)
    kinds = {(t["kind"], t["token"]) for t in explanation.rule["terms"]}
    assert kinds in ({("token", " query"), ("token", " field")}, {("word", "query"), ("word", "field")})
    assert explanation.text.startswith("fires on ") and ", or on " in explanation.text


def test_explainer_with_no_firing_token_fails_rather_than_guessing():
    quiet = [Example([" a", " b"], [0.0, 0.0], label=False, kind="random")]
    explanation = TokenPatternExplainer().explain(3, quiet)
    assert explanation.failed and explanation.text == ""
    score = RuleScorer().score(explanation, quiet)
    assert score.failed and math.isnan(score.value)


def test_perfect_rule_scores_one():
    held_out = synthetic(50, seed=3)
    rule = {"terms": [{"kind": "bigram", "token": " __init__", "prev": "def", "weight": 1.0}]}
    score = RuleScorer().score(Explanation(1, rule_sentence(rule), "hand", rule=rule), held_out)
    assert score.value == 1.0 and score.metrics["f1"] == 1.0 and score.metrics["auc"] == 1.0
    assert score.metrics["pearson"] == pytest.approx(1.0)
    assert score.n == 50 and not score.failed and len(score.details) == 50


def test_hand_computed_rule_score():
    """Two activating and two non-activating examples; the rule ' x' matches one of each."""
    examples = [
        Example([" x", " y"], [1.0, 0.0], True),   # predicted yes: TP
        Example([" y", " y"], [0.0, 2.0], True),   # no: FN
        Example([" x", " z"], [0.0, 0.0], False, "random"),  # yes: FP
        Example([" z", " z"], [0.0, 0.0], False, "hard"),    # no: TN
    ]
    rule = {"terms": [{"kind": "token", "token": " x", "weight": 1.0}]}
    score = RuleScorer().score(Explanation(0, "fires on ' x'", "hand", rule=rule), examples)
    assert score.value == pytest.approx(0.5 * (1 / 2 + 1 / 2))
    assert score.metrics["f1"] == pytest.approx(2 * 1 / (2 * 1 + 1 + 1))
    # per token: predictions [1,0,0,0,1,0,0,0], activations [1,0,0,2,0,0,0,0]
    p, a = [1, 0, 0, 0, 1, 0, 0, 0], [1, 0, 0, 2, 0, 0, 0, 0]
    mp, ma = sum(p) / 8, sum(a) / 8
    r = sum((x - mp) * (y - ma) for x, y in zip(p, a)) / math.sqrt(sum((x - mp) ** 2 for x in p) * sum((y - ma) ** 2 for y in a))
    assert score.metrics["pearson"] == pytest.approx(r)
    assert score.metrics["predicted_top"] == 0.5 and score.metrics["predicted_random"] == 1.0
    assert score.metrics["predicted_hard"] == 0.0


def test_shuffled_rule_scores_chance():
    """Rules learned on one feature, scored on another's examples with the same tokens: about 0.5
    balanced accuracy and 0 correlation, over many held-out examples."""
    rng = random.Random(4)
    examples = []
    for _ in range(4000):
        tokens = [rng.choice(WORDS) for _ in range(8)]
        label = rng.random() < 0.5
        acts = [0.0] * 8
        if label:
            acts[rng.randrange(8)] = 1.0 + rng.random()  # fires on a random token: no pattern
        examples.append(Example(tokens, acts, label))
    rule = {"terms": [{"kind": "token", "token": " model", "weight": 1.0}]}
    score = RuleScorer().score(Explanation(0, rule_sentence(rule), "shuffled", rule=rule), examples)
    assert score.value == pytest.approx(0.5, abs=0.03)
    assert score.metrics["pearson"] == pytest.approx(0.0, abs=0.03)
    learned = TokenPatternExplainer().explain(0, examples[:200])  # whatever it learns from noise ...
    held_out = RuleScorer().score(learned, examples[200:])  # ... does not carry over
    assert held_out.value == pytest.approx(0.5, abs=0.05) and abs(held_out.metrics["pearson"]) < 0.05


def test_rule_that_never_matches_has_zero_correlation_not_a_failure():
    examples = synthetic(10, seed=5)
    rule = {"terms": [{"kind": "token", "token": " nowhere", "weight": 1.0}]}
    score = RuleScorer().score(Explanation(0, "fires on ' nowhere'", "hand", rule=rule), examples)
    assert score.value == 0.5 and score.metrics["pearson"] == 0.0 and not score.failed


def test_apply_rule_matches_words_and_bigrams():
    rule = {"terms": [{"kind": "word", "token": "model", "weight": 0.5},
                      {"kind": "bigram", "token": " __init__", "prev": "def", "weight": 1.0}]}
    assert apply_rule(rule, [" Model", "def", " __init__", " __init__", "model "]) == [0.5, 0.0, 1.0, 0.0, 0.5]
    assert rule_sentence(rule) == "fires on the word 'model' (any case or spacing), or on ' __init__' after 'def'"
