"""Feature statistics from a store: top-activating contexts against a brute-force search."""

from __future__ import annotations

import json

import pytest
import torch

from workbench.capture import capture
from workbench.features import FeatureStats, FeatureStatsConfig, feature_stats, sample_key, top_activating_contexts
from workbench.sae import SAE, SAEConfig


def test_top_activating_contexts_match_brute_force(tmp_path, llama_tiny):
    contexts = torch.randint(3, 60, (12, 10), generator=torch.Generator().manual_seed(3))
    contexts[:, 0] = 0
    hookpoint = "blocks.1.hook_mlp_out"
    store = capture(llama_tiny, [hookpoint], contexts, tmp_path / "s", batch_size=4, contexts_per_shard=4,
                    progress=False)
    sae = SAE.from_config(SAEConfig("relu", d_in=32, d_sae=16, hook_name=hookpoint))
    acts = sae.encode(store.rows(hookpoint, 0, store.n_rows).float()).feature_acts
    locations = store.locations()
    features = [0, 5, 11]

    found = top_activating_contexts(sae, store, features, n_examples=3, before=4, after=2, batch_size=7)
    for feature in features:
        expected = acts[:, feature].topk(3)
        examples = found[feature]
        positive = int((expected.values > 0).sum())
        assert len(examples) == positive
        for example, value, row in zip(examples, expected.values.tolist(), expected.indices.tolist()):
            assert example.row == row and abs(example.activation - value) < 1e-5
            context, position = locations[row].tolist()
            assert (example.context, example.position) == (context, position)
            start = max(0, position - 4)
            assert torch.equal(example.tokens, contexts[context, start:position + 3])
            assert example.focus == position - start
            assert abs(float(example.values[example.focus]) - value) < 1e-5
            if start == 0:
                assert example.values[0] == 0  # BOS was not captured


# ---- feature_stats against brute force ---------------------------------------------------------


class _Plain:
    """The dictionary protocol over an SAE, written out here so the test checks features.py alone."""

    kind = "sae"

    def __init__(self, sae, hookpoint):
        self.sae, self.hookpoint, self.d_in, self.n_features = sae, hookpoint, sae.cfg.d_in, sae.cfg.d_sae

    def encode(self, x):
        return self.sae.encode(x).feature_acts

    def residual_directions(self, model=None):
        return self.sae.W_dec.detach()

    def describe(self):
        return {"kind": "sae", "architecture": "relu", "hookpoint": self.hookpoint, "n_features": self.n_features}


@pytest.fixture
def small_stats_case(tmp_path, llama_tiny):
    contexts = torch.randint(3, 60, (24, 12), generator=torch.Generator().manual_seed(5))
    contexts[:, 0] = 0
    hookpoint = "blocks.1.hook_mlp_out"
    store = capture(llama_tiny, [hookpoint], contexts, tmp_path / "s", batch_size=4, contexts_per_shard=8, progress=False)
    sae = SAE.from_config(SAEConfig("relu", d_in=32, d_sae=24, hook_name=hookpoint))
    with torch.no_grad():
        sae.b_enc.normal_(0, 0.5)
    return store, _Plain(sae, hookpoint), contexts


def test_feature_stats_equal_brute_force(tmp_path, small_stats_case, llama_tiny):
    store, dictionary, contexts = small_stats_case
    cfg = FeatureStatsConfig(n_top=5, n_intervals=4, per_interval=3, n_quantiles=3, per_quantile=2, before=3, after=2,
                             batch_size=37, seed=7)
    stats = feature_stats(dictionary, store, model=llama_tiny, config=cfg, out=tmp_path / "stats", progress=False)
    x = store.rows(dictionary.hookpoint, 0, store.n_rows).float()
    acts = dictionary.encode(x).detach()
    n_rows, n = acts.shape
    locations = store.locations()

    fires = acts > 0
    assert torch.equal(stats.tensors["fire_count"], fires.sum(0))
    assert torch.allclose(stats.density, fires.double().mean(0))
    assert torch.allclose(stats.tensors["max"], acts.amax(0))
    for f in range(n):
        on = acts[fires[:, f], f].double()
        if len(on) > 2:
            centred = on - on.mean()
            var = centred.square().mean()
            assert stats.skew[f] == pytest.approx(float(centred.pow(3).mean() / var**1.5), rel=1e-6, abs=1e-8)
            assert stats.kurtosis[f] == pytest.approx(float(centred.pow(4).mean() / var**2 - 3), rel=1e-6, abs=1e-8)
        assert stats.mean_firing[f] == pytest.approx(float(on.mean()) if len(on) else 0.0, rel=1e-6)
        # histogram: bins [e_i, e_i+1) of the log-spaced edges, out-of-range values in the end bins
        edges = cfg.hist_edges.float()
        expected = torch.bincount(torch.bucketize(on.float(), edges[1:-1], right=True), minlength=len(edges) - 1)
        assert torch.equal(stats.tensors["hist_counts"][f], expected)
        # top-k
        top = acts[:, f].topk(cfg.n_top)
        n_pos = int((top.values > 0).sum())
        rows = stats.tensors["top_rows"][f]
        assert rows[:n_pos].tolist() == top.indices[:n_pos].tolist() and (rows[n_pos:] == -1).all()
        assert torch.allclose(stats.tensors["top_acts"][f, :n_pos], top.values[:n_pos])
        # intervals: equal-width bins of [0, max], the per_interval firings with the smallest sample keys
        firing_rows = torch.nonzero(fires[:, f]).flatten()
        values = acts[firing_rows, f]
        interval = (values / acts[:, f].max() * cfg.n_intervals).floor().long().clamp(0, cfg.n_intervals - 1)
        keys = sample_key(firing_rows, torch.full_like(firing_rows, f), cfg.seed)
        for j in range(cfg.n_intervals):
            inside = interval == j
            assert int(stats.tensors["interval_counts"][f, j]) == int(inside.sum())
            chosen = firing_rows[inside][keys[inside].argsort(stable=True)[: cfg.per_interval]]
            got = stats.tensors["interval_rows"][f, j]
            assert got[got >= 0].tolist() == chosen.tolist()
        # quantiles: every sample lies in its bin; bins hold about equal counts
        q_edges = stats.tensors["quantile_edges"][f]
        for j in range(cfg.n_quantiles):
            got = stats.tensors["quantile_acts"][f, j][stats.tensors["quantile_rows"][f, j] >= 0]
            assert ((got >= q_edges[j] - 1e-6) & (got <= q_edges[j + 1] + 1e-6)).all()
    # windows: the feature's activation at each position around the example, 0 where no row (BOS)
    card = stats.card(3)
    for group in card["groups"]:
        for example in group["examples"]:
            context, position = example["context"], example["position"]
            start = position - example["focus"]
            for i, value in enumerate(example["values"]):
                where = torch.nonzero((locations[:, 0] == context) & (locations[:, 1] == start + i)).flatten()
                truth = float(acts[where[0], 3]) if len(where) else 0.0
                assert value == pytest.approx(truth, abs=1e-6)
            assert example["tokens"] == [f"w{i}" if i >= 3 else "<bos>" for i in contexts[context, start:start + len(example["tokens"])].tolist()]


def test_feature_stats_logit_effects_and_views(tmp_path, small_stats_case, llama_tiny):
    store, dictionary, _ = small_stats_case
    stats = feature_stats(dictionary, store, model=llama_tiny, config=FeatureStatsConfig(batch_size=50), progress=False)
    hf = llama_tiny.hf
    effects = (dictionary.sae.W_dec.detach() * hf.model.norm.weight.detach()) @ hf.lm_head.weight.detach().T
    top = effects.topk(10, dim=1)
    assert torch.equal(stats.tensors["logit_top_ids"], top.indices)
    assert torch.allclose(stats.tensors["logit_top_values"], top.values, atol=1e-5)
    card = stats.card(0)
    assert card["logits"]["top"][0]["value"] == pytest.approx(float(top.values[0, 0]), abs=1e-5)
    json.dumps(card)  # plain JSON
    table = stats.table()
    assert len(table) == 24 and table[0]["feature"] == 0 and len(table[0]["top_logits"]) == 5
    with pytest.raises(IndexError, match="out of range"):
        stats.card(24)


def test_feature_stats_resume_and_reload(tmp_path, small_stats_case):
    store, dictionary, _ = small_stats_case
    cfg = FeatureStatsConfig(batch_size=30)
    whole = feature_stats(dictionary, store, config=cfg, out=tmp_path / "a", progress=False)
    with pytest.raises(KeyboardInterrupt):
        feature_stats(dictionary, store, config=cfg, out=tmp_path / "b", progress=False, _stop_after=3)
    assert (tmp_path / "b" / "partial" / "state.json").is_file()
    resumed = feature_stats(dictionary, store, config=cfg, out=tmp_path / "b", progress=False)
    for key, value in whole.tensors.items():
        assert torch.equal(value, resumed.tensors[key]), key
    assert not (tmp_path / "b" / "partial").exists()
    again = FeatureStats.load(tmp_path / "b")
    assert torch.equal(again.tensors["top_rows"], whole.tensors["top_rows"])
    (tmp_path / "b" / "feature_stats.safetensors").write_bytes(b"truncated")
    with pytest.raises(ValueError, match="recompute"):
        FeatureStats.load(tmp_path / "b")


def test_text_features_rank_the_features_of_a_text(llama_tiny):
    from workbench.capture import run_to
    from workbench.features import text_features

    hookpoint = "blocks.1.hook_mlp_out"
    sae = SAE.from_config(SAEConfig("relu", d_in=32, d_sae=24, hook_name=hookpoint))
    dictionary = _Plain(sae, hookpoint)
    found = text_features(llama_tiny, dictionary, "w5 w9 w9 w17")
    assert found.tokens == ["w5", "w9", "w9", "w17"]
    acts = dictionary.encode(run_to(llama_tiny, [hookpoint], torch.tensor([[0, 5, 9, 9, 17]]))[hookpoint][0, 1:]).detach()
    assert torch.allclose(found.acts, acts)
    for row, active in zip(acts, found.per_token):
        assert [f for f, _ in active] == [int(f) for f in row.argsort(descending=True) if row[f] > 0]
    totals = [t for _, t, _ in found.ranking]
    assert totals == sorted(totals, reverse=True) and found.ranking[0][0] == int(acts.sum(0).argmax())
    json.dumps(found.to_dict())
    with pytest.raises(ValueError, match="empty"):
        text_features(llama_tiny, dictionary, "  ")
    with pytest.raises(TypeError, match="decode"):
        text_features(llama_tiny, dictionary, b"w5")


def test_topk_firings_path_equals_the_dense_path(tmp_path, small_stats_case):
    """A TopK SAE's statistics come from its k indices (no dense tensor); they equal the dense path's."""
    from workbench.dictionaries import SAEDictionary

    store, dense, _ = small_stats_case
    sae = SAE.from_config(SAEConfig("topk", d_in=32, d_sae=24, k=4, hook_name=dense.hookpoint))
    cfg = FeatureStatsConfig(n_top=4, n_intervals=3, per_interval=2, batch_size=41)
    sparse = feature_stats(SAEDictionary(sae), store, config=cfg, progress=False)
    reference = feature_stats(_Plain(sae, dense.hookpoint), store, config=cfg, progress=False)
    assert int(sparse.tensors["fire_count"].sum()) <= 4 * store.n_rows
    for key, value in reference.tensors.items():
        assert torch.allclose(sparse.tensors[key].double(), value.double(), rtol=1e-6, atol=1e-6), key
