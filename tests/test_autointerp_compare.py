"""Examples from feature statistics (split, random and hard negatives) and the comparison runner
(sampling, checkpoints and resume, failures, intervals, correlations), on a tiny model's store."""

from __future__ import annotations

import json
import math

import pytest
import torch

from workbench.autointerp import (AutointerpFailure, ExampleConfig, ExampleSource, Explanation, RuleScorer,
                                  TokenPatternExplainer, run_autointerp)
from workbench.autointerp.compare import correlation, mean_interval
from workbench.autointerp.examples import in_train_split
from workbench.capture import capture
from workbench.charts import interval_chart
from workbench.dictionaries import RandomDictionary, SAEDictionary
from workbench.features import FeatureStatsConfig, feature_stats
from workbench.sae import SAE, SAEConfig

HOOK = "blocks.1.hook_mlp_out"


@pytest.fixture(scope="module")
def case(tmp_path_factory):
    from conftest import tiny_model

    torch.manual_seed(0)
    folder = tmp_path_factory.mktemp("autointerp")
    model = tiny_model("llama")
    contexts = torch.randint(3, 60, (48, 24), generator=torch.Generator().manual_seed(1))
    contexts[:, 0] = 0
    store = capture(model, [HOOK], contexts, folder / "store", batch_size=8, contexts_per_shard=16, progress=False)
    sae = SAE.from_config(SAEConfig("topk", d_in=32, d_sae=48, k=3, hook_name=HOOK))
    dictionaries = {"SAE": SAEDictionary(sae), "random": RandomDictionary(32, 16, seed=1, hookpoint=HOOK)}
    config = FeatureStatsConfig(n_top=8, n_intervals=3, per_interval=3, n_quantiles=3, per_quantile=2, before=4, after=2)
    stats = {name: feature_stats(d, store, config=config, progress=False) for name, d in dictionaries.items()}
    return store, dictionaries, stats, model.tokenizer, contexts


def small_config(**overrides) -> ExampleConfig:
    return ExampleConfig(**{"n_random": 6, "n_hard": 3, "pool_contexts": 24, "min_activating": 2, "min_negatives": 2,
                            **overrides})


def test_examples_are_split_by_context_and_negatives_are_quiet(case):
    store, dictionaries, stats, tokenizer, contexts = case
    source = ExampleSource(stats["SAE"], dictionaries["SAE"], store, tokenizer=tokenizer, config=small_config())
    candidates = source.candidates()
    assert candidates, "some features of a TopK SAE fire often enough"
    all_acts = dictionaries["SAE"].encode(store.rows(HOOK, 0, store.n_rows).float())
    locations = store.locations()
    value_at = {(int(c), int(p)): i for i, (c, p) in enumerate(locations.tolist())}
    for feature in candidates[:6]:
        examples = source.build(feature)
        assert examples.n("train", True) >= 2 and examples.n("test", True) >= 2
        for split, flag in (("train", True), ("test", False)):
            for e in getattr(examples, split):
                context, position = e.source
                assert bool(in_train_split([context])[0]) == flag  # no context in both splits
                lo = max(0, position - 4)
                assert e.tokens == tokenizer.batch_decode([[i] for i in contexts[context, lo:position + 3].tolist()])
                # every value is the dictionary's activation there (0 at BOS, which the store drops)
                expected = [float(all_acts[value_at[(context, p)], feature]) if (context, p) in value_at else 0.0
                            for p in range(lo, lo + len(e.tokens))]
                assert e.activations == pytest.approx(expected, abs=1e-5)
                if e.label:
                    assert e.kind in ("top", "interval", "quantile") and e.activations[position - lo] > 0
                else:
                    assert e.kind in ("random", "hard") and max(e.activations) == 0
            negatives = [e.source for e in getattr(examples, split) if not e.label]
            assert len(set(negatives)) == len(negatives)
            for (c1, p1) in negatives:  # windows of one split never overlap
                assert not any(c1 == c2 and 0 < abs(p1 - p2) <= 6 for c2, p2 in negatives)
        rows = [e.source for e in examples.train + examples.test if e.label]
        assert len(set(rows)) == len(rows)  # a token drawn as top and interval sample counts once
    again = ExampleSource(stats["SAE"], dictionaries["SAE"], store, tokenizer=tokenizer, config=small_config())
    assert again.build(candidates[0]) == source.build(candidates[0])  # deterministic


def test_hard_negatives_sit_where_a_cooccurring_feature_fires(case):
    store, dictionaries, stats, tokenizer, _ = case
    source = ExampleSource(stats["SAE"], dictionaries["SAE"], store, tokenizer=tokenizer, config=small_config(n_hard=4))
    feature = source.candidates()[0]
    examples = source.build(feature)
    _, partners = source._prepared[feature]
    assert partners and feature not in partners
    hard = [e for e in examples.train + examples.test if e.kind == "hard"]
    assert hard
    acts = dictionaries["SAE"].encode(store.rows(HOOK, 0, store.n_rows).float())
    locations = store.locations().tolist()
    for e in hard:
        row = locations.index(list(e.source))
        assert any(float(acts[row, g]) > 0 for g in partners)


def test_quiet_level_lets_dense_directions_have_negatives(case):
    store, dictionaries, stats, tokenizer, _ = case
    strict = ExampleSource(stats["random"], dictionaries["random"], store, config=small_config())
    loose = ExampleSource(stats["random"], dictionaries["random"], store, config=small_config(quiet=0.5))
    feature = 0
    n_strict = sum(not e.label for e in strict.build(feature).train)
    built = loose.build(feature)
    threshold = 0.5 * float(stats["random"].tensors["max"][feature])
    assert sum(not e.label for e in built.train) >= n_strict
    assert all(max(e.activations) <= threshold for e in built.train + built.test if not e.label)
    assert all(e.activations[e.tokens.index(e.tokens[0])] >= 0 for e in built.train)


class Counting:
    """Wraps an explainer and counts its calls; fails on the features in ``fail``."""

    def __init__(self, inner, fail=()):
        self.inner, self.fail, self.calls, self.name = inner, set(fail), 0, inner.name

    def explain(self, feature, examples):
        self.calls += 1
        if feature in self.fail:
            raise AutointerpFailure("unparsable answer after 3 attempts")
        return self.inner.explain(feature, examples)


def test_run_autointerp_samples_scores_resumes_and_writes_explanations(case, tmp_path):
    store, dictionaries, stats, tokenizer, _ = case
    for s in stats.values():
        s.explanations.clear()
    explainer = Counting(TokenPatternExplainer())
    kwargs = dict(dictionaries=dictionaries, store=store, scorers=[RuleScorer()], n_features=5, seed=3,
                  out_dir=tmp_path / "ai", example_config=small_config(), tokenizer=tokenizer, progress=False)
    first = run_autointerp(stats, explainer=explainer, **kwargs)
    sae = first.summary["dictionaries"]["SAE"]
    assert sae["eligible"] == 5 == len(first.records["SAE"]) and sae["checked"] >= 5
    assert explainer.calls == sum(len(r) for r in first.records.values())
    features = [r["feature"] for r in first.records["SAE"]]
    assert len(set(features)) == 5
    rule = sae["scores"]["rule"]
    values = [r["scores"]["rule"]["value"] for r in first.records["SAE"]]
    assert rule["n"] == 5 and rule["mean"] == pytest.approx(sum(values) / 5)
    assert rule["ci"][0] <= rule["mean"] <= rule["ci"][1]
    for r in first.records["SAE"]:
        text = stats["SAE"].explanations[r["feature"]]
        assert text.startswith(r["explanation"]["text"]) and f"[rule {r['scores']['rule']['value']:.2f}]" in text
        assert stats["SAE"].card(r["feature"])["explanation"] == text
    files = list((tmp_path / "ai" / "SAE").glob("*/feature_*.json"))
    assert len(files) == sae["checked"]
    assert json.loads(files[0].read_text())["feature"] in features + [int(f.stem[8:]) for f in files]

    resumed = Counting(TokenPatternExplainer())
    second = run_autointerp(stats, explainer=resumed, **kwargs)
    assert resumed.calls == 0  # everything read back from the checkpoints
    assert second.records == first.records
    assert second.summary["dictionaries"] == first.summary["dictionaries"]
    other_seed = run_autointerp(stats, explainer=resumed, **{**kwargs, "seed": 4})
    assert [r["feature"] for r in other_seed.records["SAE"]] != features  # a different random sample


def test_failures_are_counted_not_scored(case, tmp_path):
    store, dictionaries, stats, tokenizer, _ = case
    plain = run_autointerp({"SAE": stats["SAE"]}, dictionaries={"SAE": dictionaries["SAE"]}, store=store,
                           explainer=TokenPatternExplainer(), scorers=[RuleScorer()], n_features=4, seed=0,
                           example_config=small_config(), progress=False, write_explanations=False)
    first = plain.records["SAE"][0]["feature"]
    explainer = Counting(TokenPatternExplainer(), fail={first})
    result = run_autointerp({"SAE": stats["SAE"]}, dictionaries={"SAE": dictionaries["SAE"]}, store=store,
                            explainer=explainer, scorers=[RuleScorer()], n_features=4, seed=0,
                            example_config=small_config(), progress=False, write_explanations=False)
    summary = result.summary["dictionaries"]["SAE"]
    assert summary["eligible"] == 4 and summary["explanation_failures"] == 1
    assert summary["scores"]["rule"]["failures"] == 1 and summary["scores"]["rule"]["n"] == 3
    failed = next(r for r in result.records["SAE"] if r["feature"] == first)
    assert failed["explanation"]["failed"] and math.isnan(failed["scores"]["rule"]["value"])


def test_mean_interval_and_correlations_match_references():
    scipy_stats = pytest.importorskip("scipy.stats")
    m = mean_interval([0.5, 0.7, 0.9, float("nan")])
    assert m["n"] == 3 and m["mean"] == pytest.approx(0.7) and m["ci"][0] < 0.7 < m["ci"][1]
    assert mean_interval([])["n"] == 0
    g = torch.Generator().manual_seed(0)
    x = torch.randn(200, generator=g)
    y = 0.5 * x + torch.randn(200, generator=g)
    y[::7] = y[3]  # ties
    c = correlation(x.tolist(), y.tolist())
    assert c["pearson"] == pytest.approx(scipy_stats.pearsonr(x, y)[0], abs=1e-9)
    assert c["spearman"] == pytest.approx(scipy_stats.spearmanr(x, y)[0], abs=1e-9)
    assert c["pearson_ci"][0] < c["pearson"] < c["pearson_ci"][1] and c["n"] == 200
    assert math.isnan(correlation([1.0, 2.0], [1.0, 2.0])["pearson"])


def test_interval_chart_draws_each_series():
    chart = interval_chart(["SAE", "neurons"], {"rule": [(0.7, 0.6, 0.8), (0.55, 0.5, 0.6)],
                                                "detection": [(0.8, 0.7, 0.9), (float("nan"),) * 3]},
                           reference=0.5, title="scores")
    assert chart.svg.startswith("<?xml") and "SAE" in chart.svg and chart.title == "scores"
    with pytest.raises(ValueError, match="2 groups"):
        interval_chart(["a", "b"], {"rule": [(0.5, 0.4, 0.6)]})


def test_runner_rejects_mismatched_inputs(case):
    store, dictionaries, stats, _, _ = case
    with pytest.raises(ValueError, match="same names"):
        run_autointerp(stats, dictionaries={"SAE": dictionaries["SAE"]}, store=store,
                       explainer=TokenPatternExplainer(), scorers=[RuleScorer()])
    with pytest.raises(ValueError, match="scorer"):
        run_autointerp(stats, dictionaries=dictionaries, store=store, explainer=TokenPatternExplainer(), scorers=[])
    assert Explanation(0, "", "x", failed=True).failed


def test_a_larger_run_resumes_from_a_smaller_one(case, tmp_path):
    store, dictionaries, stats, tokenizer, _ = case
    kwargs = dict(dictionaries={"SAE": dictionaries["SAE"]}, store=store, scorers=[RuleScorer()], seed=5,
                  out_dir=tmp_path / "ai", example_config=small_config(), tokenizer=tokenizer, progress=False,
                  write_explanations=False)
    small = run_autointerp({"SAE": stats["SAE"]}, explainer=Counting(TokenPatternExplainer()), n_features=2, **kwargs)
    explainer = Counting(TokenPatternExplainer())
    large = run_autointerp({"SAE": stats["SAE"]}, explainer=explainer, n_features=5, **kwargs)
    assert large.records["SAE"][:2] == small.records["SAE"] and explainer.calls == 3
    cold = run_autointerp({"SAE": stats["SAE"]}, explainer=TokenPatternExplainer(), n_features=5,
                          **{**kwargs, "out_dir": None})
    assert [r["feature"] for r in cold.records["SAE"]] == [r["feature"] for r in large.records["SAE"]]


class Batched:
    """An LLM-like explainer and scorer: the runner hands them a chunk's features at once."""

    name = "batched"

    def __init__(self):
        self.batches = []
        self.inner, self.rule = TokenPatternExplainer(), RuleScorer()
        self.backend = self  # its own backend, with the backends' usage property

    @property
    def usage(self):
        return {"requests": len(self.batches), "cached": 0, "prompt_tokens": 10, "completion_tokens": 2}

    def explain_many(self, jobs):
        self.batches.append(len(jobs))
        return [self.inner.explain(f, ex) for f, ex in jobs]

    def score_many(self, pairs):
        self.batches.append(len(pairs))
        return [self.rule.score(e, ex) for e, ex in pairs]

    def explain(self, feature, examples):
        raise AssertionError("explain_many is used")

    def score(self, explanation, examples):
        raise AssertionError("score_many is used")


def test_explainers_and_scorers_with_batch_methods_get_whole_chunks(case):
    store, dictionaries, stats, tokenizer, _ = case
    batched = Batched()
    result = run_autointerp({"SAE": stats["SAE"]}, dictionaries={"SAE": dictionaries["SAE"]}, store=store,
                            explainer=batched, scorers=[batched], n_features=6, chunk=4, example_config=small_config(),
                            progress=False, write_explanations=False)
    assert result.summary["dictionaries"]["SAE"]["scores"]["batched"]["n"] == 6
    assert max(batched.batches) > 1 and sum(batched.batches) == 2 * 6
    # the backend's usage is reported once (the explainer and the scorer share it)
    assert result.summary["usage"] == {"requests": len(batched.batches), "cached": 0, "prompt_tokens": 10,
                                       "completion_tokens": 2}
