"""The Neuronpedia export writes SAEDashboard's batch files: the same keys, in the same order,
with the same JSON types, checked against a hard-coded reference, against sae_dashboard's own
dataclasses and against a real SAEDashboard export of a tiny model (when sae_dashboard is installed)."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch

from workbench.neuronpedia import write_neuronpedia

# The reference key sets and JSON types, read from sae-dashboard 0.8.0:
# sae_dashboard/neuronpedia/neuronpedia_dashboard.py (NeuronpediaDashboardBatch/Feature/Activation.to_dict)
# and neuronpedia_converter.py (the values it puts there: dfa_* are written even without DFA).
NUMBER = (int, float)
BATCH_SPEC = {"model_id": str, "layer": int, "sae_set": str, "sae_id_suffix": (str, type(None)), "features": list}
FEATURE_SPEC = {
    "feature_index": int,
    "neuron_alignment_indices": [int],
    "neuron_alignment_values": [float],
    "neuron_alignment_l1": [float],
    "correlated_neurons_indices": [int],
    "correlated_neurons_l1": [float],
    "correlated_neurons_pearson": [float],
    "correlated_features_indices": [int],
    "correlated_features_l1": [float],
    "correlated_features_pearson": [float],
    "neg_str": [str],
    "neg_values": [float],
    "pos_str": [str],
    "pos_values": [float],
    "frac_nonzero": float,
    "freq_hist_data_bar_values": [float],
    "freq_hist_data_bar_heights": [int],
    "logits_hist_data_bar_heights": [int],
    "logits_hist_data_bar_values": [float],
    "n_prompts_total": int,
    "n_tokens_in_prompt": int,
    "dataset": str,
    "decoder_weights_dist": [float],
    "activations": [dict],
    "vector": [float],
}
ACTIVATION_SPEC = {
    "bin_min": NUMBER,  # -1 (an int) for the top group, a float for the intervals
    "bin_max": NUMBER,
    "bin_contains": NUMBER,
    "tokens": [str],
    "values": [float],
    "qualifying_token_index": int,
    "dfa_values": [float],
    "dfa_maxValue": NUMBER,
    "dfa_targetIndex": int,
}


def _check(value, spec, where: str) -> None:
    if isinstance(spec, list):
        assert isinstance(value, list), f"{where}: expected a list, got {type(value).__name__}"
        for i, item in enumerate(value):
            _check(item, spec[0], f"{where}[{i}]")
    else:
        # bool is an int in Python but not in JSON's eyes
        assert isinstance(value, spec) and not isinstance(value, bool), f"{where}: {value!r} is not {spec}"


def check_batch(batch: dict) -> None:
    assert list(batch) == list(BATCH_SPEC)
    for key, spec in BATCH_SPEC.items():
        _check(batch[key], spec, key)
    for feature in batch["features"]:
        assert list(feature) == list(FEATURE_SPEC), set(feature) ^ set(FEATURE_SPEC)
        for key, spec in FEATURE_SPEC.items():
            _check(feature[key], spec, f"feature {feature['feature_index']}.{key}")
        for activation in feature["activations"]:
            assert list(activation) == list(ACTIVATION_SPEC)
            for key, spec in ACTIVATION_SPEC.items():
                _check(activation[key], spec, f"feature {feature['feature_index']} activation.{key}")


# ---- a synthetic FeatureStats (cards as in the issue-9 contract) -------------------------------
def _example(row: int, value: float) -> dict:
    return {"tokens": [" a", " b", " c", " d"], "values": [0.0, value / 2, value, 0.0], "focus": 2,
            "activation": value, "row": row, "context": row // 10, "position": row % 10}


def _card(feature: int, *, dead: bool = False, logits: bool = True) -> dict:
    card = {
        "feature": feature, "title": f"feature {feature}", "dictionary": "topk SAE, blocks.3.hook_mlp_out, 5 features",
        "explanation": "", "n_tokens": 1000, "fire_count": 0 if dead else 12 + feature,
        "density": 0.0 if dead else (12 + feature) / 1000, "max": 0.0 if dead else 3.25 + feature,
        "mean_firing": 0.0 if dead else 1.5, "skew": 0.0, "kurtosis": 0.0,
        "histogram": {"edges": [], "counts": []} if dead else {"edges": [0.1, 0.5, 2.0, 4.0 + feature], "counts": [5, 4, 3 + feature]},
        "logits": None,
        "groups": [] if dead else [
            {"kind": "top", "label": "top activations", "examples": [_example(7, 3.25 + feature), _example(8, 2.0)]},
            {"kind": "interval", "label": "interval 1.6-3.2 contains 40%", "lo": 1.625, "hi": 3.25 + feature,
             "fraction": 0.4, "examples": [_example(9, 2.0)]},
            {"kind": "interval", "label": "interval 0-1.6 contains 60%", "lo": 0.0, "hi": 1.625,
             "fraction": 0.6, "examples": [_example(11, 0.5)]},
            {"kind": "quantile", "label": "quantile 1 of 10 (highest)", "lo": 2.0, "hi": 3.25, "examples": [_example(7, 3.25)]},
        ],
    }
    if logits:
        card["logits"] = {
            "top": [{"token": f" up{i}", "value": 1.0 - 0.1 * i} for i in range(10)],
            "bottom": [{"token": f" down{i}", "value": -1.0 + 0.1 * i} for i in range(10)],
            "histogram": {"edges": [-1.0, 0.0, 1.0], "counts": [30, 34]},
            "method": "direct path",
        }
    return card


class FakeStats:
    n_features = 5
    n_tokens = 1000
    meta = {"model": "tiny-model", "hookpoint": "blocks.3.hook_mlp_out", "corpus": "embedded", "n_contexts": 8, "ctx_len": 128}

    def card(self, feature: int) -> dict:
        return _card(feature, dead=feature == 4, logits=feature != 3)

    def table(self) -> list[dict]:
        return [{"feature": i} for i in range(self.n_features)]


def _read(out: Path) -> list[dict]:
    names = sorted((p.name for p in out.glob("batch-*.json")), key=lambda n: int(n[6:-5]))
    return [json.loads((out / name).read_text()) for name in names]


# ---- tests ------------------------------------------------------------------------------------
def test_batches_have_saedashboards_keys_and_types(tmp_path):
    out = tmp_path / "np"
    files = write_neuronpedia(FakeStats(), out, batch_size=2)
    assert [f.name for f in files] == ["batch-0.json", "batch-1.json", "batch-2.json"]
    assert sorted(p.name for p in out.iterdir()) == ["batch-0.json", "batch-1.json", "batch-2.json",
                                                     "run_settings.json", "skipped_indexes.json"]
    batches = _read(out)
    for batch in batches:
        check_batch(batch)
    assert [[f["feature_index"] for f in b["features"]] for b in batches] == [[0, 1], [2, 3], [4]]
    assert batches[0]["model_id"] == "tiny-model" and batches[0]["layer"] == 3 and batches[0]["sae_id_suffix"] is None
    skipped = json.loads((out / "skipped_indexes.json").read_text())
    assert skipped == {"model_id": "tiny-model", "layer": "3", "sae_set": "workbench", "log_sparsity": None,
                       "skipped_indexes": []}


def test_card_values_land_in_the_right_fields(tmp_path):
    write_neuronpedia(FakeStats(), tmp_path / "np", dataset="my/data")
    features = _read(tmp_path / "np")[0]["features"]
    f1, f3, f4 = features[1], features[3], features[4]
    assert f1["frac_nonzero"] == pytest.approx(0.013)
    assert f1["pos_str"][0] == " up0" and f1["pos_values"] == sorted(f1["pos_values"], reverse=True)
    assert f1["neg_str"][0] == " down0" and f1["neg_values"][0] == -1.0  # most negative first, as SAEDashboard
    assert f1["freq_hist_data_bar_heights"] == [5, 4, 4]
    assert f1["freq_hist_data_bar_values"] == [0.3, 1.25, 3.5]  # bin centres of the card's edges
    assert f1["logits_hist_data_bar_values"] == [-0.5, 0.5] and f1["logits_hist_data_bar_heights"] == [30, 34]
    assert f1["dataset"] == "my/data" and f1["n_prompts_total"] == 8 and f1["n_tokens_in_prompt"] == 128
    # top group: -1, max, -1; intervals: lo, hi, fraction; the quantile group is left out
    bins = [(a["bin_min"], a["bin_max"], a["bin_contains"]) for a in f1["activations"]]
    assert bins == [(-1, 4.25, -1), (-1, 4.25, -1), (1.625, 4.25, 0.4), (0.0, 1.625, 0.6)]
    first = f1["activations"][0]
    assert first["tokens"] == [" a", " b", " c", " d"] and first["qualifying_token_index"] == 2
    assert first["values"][first["qualifying_token_index"]] == 4.25
    # no logits: empty logit fields; a dead feature: empty histogram and no examples
    assert f3["pos_str"] == f3["neg_values"] == f3["logits_hist_data_bar_values"] == []
    assert f4["freq_hist_data_bar_heights"] == [] and f4["activations"] == [] and f4["frac_nonzero"] == 0.0
    # what SAEDashboard writes when it has no table data
    assert f1["correlated_neurons_indices"] == f1["correlated_features_pearson"] == f1["neuron_alignment_l1"] == []


def test_neuron_alignment_from_a_decoder(tmp_path):
    decoder = torch.zeros(5, 4)
    decoder[:, 0], decoder[:, 1], decoder[:, 2], decoder[:, 3] = 2.0, -4.0, 1.0, 0.5  # norm 4.6098, L1 7.5
    write_neuronpedia(FakeStats(), tmp_path / "np", decoder=decoder)
    f0 = _read(tmp_path / "np")[0]["features"][0]
    norm = math.sqrt(4 + 16 + 1 + 0.25)
    assert f0["neuron_alignment_indices"] == [0, 2, 3]  # largest signed weights, as SAEDashboard's TopK
    assert f0["neuron_alignment_values"] == [round(2 / norm, 3), round(1 / norm, 3), round(0.5 / norm, 3)]
    assert f0["neuron_alignment_l1"] == [round(2 / 7.5, 3), round(1 / 7.5, 3), round(0.5 / 7.5, 3)]
    with pytest.raises(ValueError, match="decoder must be"):
        write_neuronpedia(FakeStats(), tmp_path / "np2", decoder=torch.zeros(4, 4))


def test_decoder_norms_are_folded_as_saedashboard_does(tmp_path):
    decoder = torch.zeros(5, 4)
    decoder[:, 0] = 2.0  # every row has norm 2: activations x2, logit effects / 2
    write_neuronpedia(FakeStats(), tmp_path / "np", decoder=decoder)
    write_neuronpedia(FakeStats(), tmp_path / "raw", decoder=decoder, fold_decoder_norms=False)
    folded, raw = _read(tmp_path / "np")[0]["features"][1], _read(tmp_path / "raw")[0]["features"][1]
    assert raw["pos_values"][0] == 1.0 and folded["pos_values"][0] == 0.5
    assert raw["freq_hist_data_bar_values"] == [0.3, 1.25, 3.5] and folded["freq_hist_data_bar_values"] == [0.6, 2.5, 7.0]
    assert folded["logits_hist_data_bar_values"] == [-0.25, 0.25]
    assert [(a["bin_min"], a["bin_max"]) for a in folded["activations"]] == [(-1, 8.5), (-1, 8.5), (3.25, 8.5), (0.0, 3.25)]
    assert folded["activations"][0]["values"] == [0.0, 4.25, 8.5, 0.0]
    assert folded["frac_nonzero"] == raw["frac_nonzero"] and folded["freq_hist_data_bar_heights"] == raw["freq_hist_data_bar_heights"]
    with pytest.raises(ValueError, match="all-zero rows"):
        write_neuronpedia(FakeStats(), tmp_path / "zero", decoder=torch.zeros(5, 4))


def test_a_subset_is_recorded_as_skipped(tmp_path):
    write_neuronpedia(FakeStats(), tmp_path / "np", features=[1, 3])
    assert [f["feature_index"] for f in _read(tmp_path / "np")[0]["features"]] == [1, 3]
    assert json.loads((tmp_path / "np" / "skipped_indexes.json").read_text())["skipped_indexes"] == [0, 2, 4]
    with pytest.raises(ValueError, match="outside"):
        write_neuronpedia(FakeStats(), tmp_path / "np", features=[5])


def test_writes_are_atomic_and_never_clobber_other_files(tmp_path):
    out = tmp_path / "np"
    write_neuronpedia(FakeStats(), out, batch_size=1)
    write_neuronpedia(FakeStats(), out, batch_size=5)  # a previous export is replaced whole
    assert sorted(p.name for p in out.glob("batch-*.json")) == ["batch-0.json"]
    (out / "notes.txt").write_text("mine")
    with pytest.raises(FileExistsError, match="notes.txt"):
        write_neuronpedia(FakeStats(), out)
    assert (out / "notes.txt").read_text() == "mine"

    class Broken(FakeStats):
        def card(self, feature):
            if feature == 3:
                raise RuntimeError("boom")
            return super().card(feature)

    fresh = tmp_path / "fresh"
    with pytest.raises(RuntimeError, match="boom"):
        write_neuronpedia(Broken(), fresh, batch_size=1)
    assert not fresh.exists() and [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []


def test_missing_metadata_gives_clear_errors(tmp_path):
    class Bare(FakeStats):
        meta = {}

    with pytest.raises(ValueError, match="pass model_id="):
        write_neuronpedia(Bare(), tmp_path / "a")
    with pytest.raises(ValueError, match="pass layer="):
        write_neuronpedia(Bare(), tmp_path / "b", model_id="m")
    write_neuronpedia(Bare(), tmp_path / "c", model_id="m", layer=0)
    with pytest.raises(ValueError, match="batch_size"):
        write_neuronpedia(FakeStats(), tmp_path / "d", batch_size=0)


def test_real_feature_stats_export(tmp_path, llama_tiny):
    """Cards from feature_stats on a tiny model, not hand-made ones, give valid batches."""
    from workbench.capture import capture
    from workbench.dictionaries import SAEDictionary
    from workbench.features import FeatureStatsConfig, feature_stats
    from workbench.sae import SAE, SAEConfig

    contexts = torch.randint(3, 60, (16, 12), generator=torch.Generator().manual_seed(5))
    contexts[:, 0] = 0
    hookpoint = "blocks.1.hook_mlp_out"
    store = capture(llama_tiny, [hookpoint], contexts, tmp_path / "s", batch_size=4, contexts_per_shard=8, progress=False)
    sae = SAE.from_config(SAEConfig("relu", d_in=32, d_sae=10, hook_name=hookpoint))
    with torch.no_grad():
        sae.b_enc.normal_(0, 0.5)
    stats = feature_stats(SAEDictionary(sae), store, model=llama_tiny, progress=False,
                          config=FeatureStatsConfig(n_top=4, n_intervals=3, per_interval=2, before=3, after=2))
    write_neuronpedia(stats, tmp_path / "np", model_id="tiny-llama", batch_size=4, decoder=sae.W_dec)
    batches = _read(tmp_path / "np")
    assert [len(b["features"]) for b in batches] == [4, 4, 2] and batches[0]["layer"] == 1
    for batch in batches:
        check_batch(batch)
    live = [f for b in batches for f in b["features"] if f["frac_nonzero"] > 0]
    assert live and all(f["activations"] and len(f["pos_str"]) == 10 for f in live)
    norms = sae.W_dec.detach().norm(dim=1)
    for f in live:
        card = stats.card(f["feature_index"])
        assert f["frac_nonzero"] == card["density"]
        assert f["activations"][0]["bin_max"] == pytest.approx(card["max"] * float(norms[f["feature_index"]]), abs=1e-3)
        first = f["activations"][0]
        assert first["values"][first["qualifying_token_index"]] == pytest.approx(first["bin_max"], abs=2e-3)


def test_round_trips_through_sae_dashboards_dataclasses(tmp_path):
    dashboard = pytest.importorskip("sae_dashboard.neuronpedia.neuronpedia_dashboard")
    write_neuronpedia(FakeStats(), tmp_path / "np", decoder=torch.randn(5, 8))
    for batch in _read(tmp_path / "np"):
        assert dashboard.NeuronpediaDashboardBatch(**batch).to_dict() == batch


@pytest.mark.filterwarnings("ignore:Using a non-tuple sequence")  # inside eindex, SAEDashboard's dependency
def test_matches_a_real_saedashboard_export(tmp_path):
    """Run SAEDashboard's SaeVisRunner and NeuronpediaConverter on a tiny random model and SAE,
    and check that the hard-coded reference above is what it writes."""
    pytest.importorskip("sae_dashboard")
    from sae_dashboard.components_config import (ActsHistogramConfig, Column, FeatureTablesConfig,
                                                 LogitsHistogramConfig, LogitsTableConfig, SequencesConfig)
    from sae_dashboard.layout import SaeVisLayoutConfig
    from sae_dashboard.neuronpedia.neuronpedia_converter import NeuronpediaConverter
    from sae_dashboard.neuronpedia.neuronpedia_runner_config import NeuronpediaRunnerConfig
    from sae_dashboard.sae_vis_data import SaeVisConfig
    from sae_dashboard.sae_vis_runner import SaeVisRunner
    from sae_lens import StandardSAE, StandardSAEConfig
    from transformer_lens import HookedTransformer, HookedTransformerConfig

    model = HookedTransformer(HookedTransformerConfig(n_layers=1, d_model=16, d_head=4, n_heads=4, d_mlp=32,
                                                      d_vocab=40, n_ctx=12, act_fn="relu", normalization_type="LN"))
    sae = StandardSAE(StandardSAEConfig(d_in=16, d_sae=6))
    with torch.no_grad():
        sae.b_enc.fill_(0.05)
    # the layout NeuronpediaRunner.run uses
    layout = SaeVisLayoutConfig(columns=[Column(
        SequencesConfig(stack_mode="stack-all", buffer=None, compute_buffer=True, n_quantiles=5,
                        top_acts_group_size=20, quantile_group_size=5),
        ActsHistogramConfig(), LogitsHistogramConfig(), LogitsTableConfig(), FeatureTablesConfig(n_rows=3),
    )])
    cfg = SaeVisConfig(hook_point="blocks.0.hook_mlp_out", features=list(range(6)), minibatch_size_features=6,
                       minibatch_size_tokens=8, feature_centric_layout=layout, device="cpu")
    data = SaeVisRunner(cfg).run(encoder=sae, model=model, tokens=torch.randint(1, 40, (24, 12)))
    np_cfg = NeuronpediaRunnerConfig(sae_set="s", sae_path="p", outputs_dir=str(tmp_path), model_id="tiny", layer=0,
                                     n_prompts_total=24, n_tokens_in_prompt=12, huggingface_dataset_path="d")
    reference = json.loads(NeuronpediaConverter.convert_to_np_json(model, data, np_cfg, {i: f"t{i}" for i in range(40)}))
    check_batch(reference)
    assert any(f["activations"] for f in reference["features"])

    write_neuronpedia(FakeStats(), tmp_path / "np", decoder=torch.randn(5, 8))
    ours = _read(tmp_path / "np")[0]
    assert list(ours) == list(reference)
    assert list(ours["features"][0]) == list(reference["features"][0])
    assert list(ours["features"][0]["activations"][0]) == list(reference["features"][0]["activations"][0])
    top_ref, top_ours = reference["features"][0]["activations"][0], ours["features"][0]["activations"][0]
    assert (top_ref["bin_min"], top_ref["bin_contains"]) == (top_ours["bin_min"], top_ours["bin_contains"]) == (-1, -1)
    assert (top_ref["dfa_values"], top_ref["dfa_maxValue"], top_ref["dfa_targetIndex"]) == \
        (top_ours["dfa_values"], top_ours["dfa_maxValue"], top_ours["dfa_targetIndex"])
