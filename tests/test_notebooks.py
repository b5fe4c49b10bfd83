"""The notebooks run through papermill with small parameters and record the figures they show."""

from __future__ import annotations

import json
import re

import pytest

WIDGET_VIEW = "application/vnd.jupyter.widget-view+json"


def outputs(path) -> list[dict]:
    """Every output of every code cell of the notebook at ``path``, in order."""
    notebook = json.loads(path.read_text())
    return [o for cell in notebook["cells"] if cell["cell_type"] == "code" for o in cell.get("outputs", [])]


def plain_text(output: dict) -> str:
    text = output.get("data", {}).get("text/plain", output.get("text", ""))
    return "".join(text) if isinstance(text, list) else text


@pytest.mark.slow
def test_quickstart_trains_and_evaluates_an_sae(quickstart):
    results = quickstart.results
    store = results["store"]
    assert store["complete"] and store["contexts"] == 48 and store["rows"] == 48 * 63
    stats = results["activation_stats"]
    assert stats["d"] == 576
    # SmolLM2's layer-15 MLP output: norms of a few tens, a few outlier dimensions.
    assert 5 < stats["norm_mean"] < 200 and stats["max_dim_std"] > 3 * stats["mean_dim_std"]
    assert results["heatmap"]["n_tokens"] == 64 and results["heatmap"]["max_value"] > 0

    assert results["train"]["steps"] == 2 * (48 * 63 // 256)
    recon = results["reconstruction"]
    assert recon["n_tokens"] == results["heldout"]["tokens"] == 8 * 63 and recon["l0_mean"] == pytest.approx(8)
    assert 0 < recon["fvu"] < 1
    recovered = results["loss_recovered"]
    # Even a tiny SAE trained for seconds beats zero-ablation, and loses something against the clean model.
    assert recovered["ce_clean"] < recovered["ce_sae"] < recovered["ce_zero"]
    assert 0 < recovered["loss_recovered"] < 1
    assert "of zero-ablating the MLP" in results["summary"]
    zf = results["zf_plot"]  # the ZF plot's figures: the evaluation's epsilon-LBO, every held-out token drawn
    assert zf["n_tokens"] == zf["n_points"] == 8 * 63 and zf["eps_lbo"] == results["afa"]["eps_lbo"]
    assert 0 < zf["ci"][0] <= zf["eps_lbo"] <= zf["ci"][1]
    assert sum(results["density"]["counts"]) + results["density"]["n_dead"] == 256
    assert len(results["features"]) == 2
    for feature in results["features"].values():
        assert feature["density"] > 0 and len(feature["top_activations"]) == 5
        assert feature["top_activations"] == sorted(feature["top_activations"], reverse=True)


@pytest.mark.slow
def test_quickstart_executed_copy_reads_as_a_report(quickstart):
    """Each chart once, as small SVG (binned: counts, not raw values); progress bars in their
    final state; heatmaps with their static HTML; no widget state (so nbconvert shows that HTML)."""
    executed = quickstart.path.read_text()
    found = outputs(quickstart.path)
    assert len(executed) < 500_000, f"the executed notebook is {len(executed):,} bytes"
    assert "Plotly" not in executed and "plotly" not in executed

    charts = [o for o in found if "image/svg+xml" in o.get("data", {})]
    titles = [plain_text(o) for o in charts]
    zf = quickstart.results["zf_plot"]
    assert titles == [
        "Chart('Activation norms per token')",
        "Chart('loss (scaled units), L0, dead fraction')",  # the live chart, once, in its final state
        "Chart('ZF plot: εLBO %.3g (95%% %.3g to %.3g), %d tokens')"
        % (zf["eps_lbo"], *zf["ci"], zf["n_tokens"]),
        "Chart('Feature density on held-out text (%d of 256 features never fired)')"
        % quickstart.results["density"]["n_dead"],
    ]
    for chart in charts:
        svg = chart["data"]["image/svg+xml"]
        svg = "".join(svg) if isinstance(svg, list) else svg
        assert len(svg) < 60_000  # 100 binned counts, not 3,024 raw norms; the ZF points as one raster

    bars = [plain_text(o) for o in found if "wb-progress" in "".join(o.get("data", {}).get("text/html", ""))]
    steps = quickstart.results["train"]["steps"]
    assert any(re.match(r"capture: 100% (\S+)/\1 \[", b) for b in bars), bars
    assert f"train: 100% {steps}/{steps} [" in "\n".join(bars), bars
    assert not any(" 0%" in b for b in bars), bars  # no bar left frozen at its start

    heatmaps = [o for o in found if "wb-heatmap" in "".join(o.get("data", {}).get("text/html", ""))]
    assert len(heatmaps) == 1 + 2  # the dimension on context 0, then each shown feature's contexts
    assert all(WIDGET_VIEW in o["data"] for o in heatmaps)  # live in a kernel ...
    widgets = [o for o in found if WIDGET_VIEW in o.get("data", {})]
    assert len(widgets) == len(heatmaps)  # every widget output is a heatmap with its static twin
    assert "widgets" not in json.loads(executed)["metadata"]  # ... static in the export
    assert "zero-ablating the MLP" in executed


@pytest.mark.slow
def test_features_notebook_reports_cards_sentence_and_baselines(features_notebook):
    results = features_notebook.results
    stats = results["stats"]
    assert stats["n_features"] == 256 and stats["n_tokens"] == results["sae"]["store_rows"] == 48 * 63
    assert sum(results["density_histogram"]["counts"]) == 256 - stats["dead"]
    assert len(results["cards"]) == 2
    densities = [card["density"] for card in results["cards"].values()]
    assert densities[0] < densities[1]  # spread out: rare first, common last
    for card in results["cards"].values():
        tops = card["top_activations"]
        assert 0 < len(tops) <= 5 and tops == sorted(tops, reverse=True) and tops[0] == pytest.approx(card["max"])
        assert len(card["top_logits"]) == 10
        assert sum(fraction for _, _, fraction, _ in card["intervals"]) == pytest.approx(1.0)
    sentence = results["sentence"]
    assert sentence["n_tokens"] == len(sentence["active_per_token"]) and set(sentence["active_per_token"]) == {8}  # k = 8
    totals = [total for _, total, _ in sentence["ranking"]]
    assert totals == sorted(totals, reverse=True)
    assert results["browser"]["selected"] == sentence["ranking"][0][0]
    compare = results["compare"]
    assert compare["tokens"] > 0 and 0 <= compare["neuron"] < 2 * 1536 and 0 <= compare["pca_component"] < 2 * 576
    assert 0 < compare["neuron_cosine"] <= 1 and 0 < compare["pca_cosine"] <= 1
    assert set(compare["cards"]) == {"sae", "neuron", "pca"}


@pytest.mark.slow
def test_features_notebook_executed_copy_reads_as_a_report(features_notebook):
    executed = features_notebook.path.read_text()
    assert len(executed) < 1_000_000, f"the executed notebook is {len(executed):,} bytes"
    found = outputs(features_notebook.path)
    charts = [plain_text(o) for o in found if "image/svg+xml" in o.get("data", {})]
    assert len(charts) == 1 and charts[0].startswith("Chart('Feature density")
    cards = [o for o in found if 'class="wf-card"' in "".join(o.get("data", {}).get("text/html", ""))]
    assert len(cards) == 2 + 1 + 3  # the cards at spread-out densities, the browser's selected card, sae/neuron/pca
    assert all(WIDGET_VIEW in o["data"] for o in cards)  # live in a kernel, static HTML in the export
    assert "widgets" not in json.loads(executed)["metadata"]


@pytest.mark.slow
def test_interventions_notebook_reports_ablation_steering_traits_and_attribution(interventions_notebook):
    results = interventions_notebook.results
    ablation = results["ablation"]
    assert len(ablation["features"]) == 2 and ablation["tokens"] > 10
    for figures in ablation["per_feature"].values():
        assert figures["max_activation"] > 0 and figures["max_abs_delta_full"] >= 0
    steering = results["steering"]
    assert steering["reproducible"] and len(results["steering_candidates"]) == 3
    gains = results["steering_candidates"]  # the chosen feature is the candidate that raises its word the most
    assert max(gains, key=gains.get) == str(steering["feature"])
    assert steering["p_promoted_steered"] / steering["p_promoted_clean"] == pytest.approx(max(gains.values()), rel=1e-4)
    assert steering["kl_next_token"] >= 0 and steering["steered"]["reply_text"] and steering["clean"]["reply_text"]
    (turn,) = results["traits"]
    assert turn["reply"] and 0 < len(turn["traits"]) <= 8
    totals = [t[1] for t in turn["traits"]]
    assert totals == sorted(totals, reverse=True) and all(t[3] is None or t[3] > 0 for t in turn["traits"])
    attribution = results["prompt_attribution"]
    assert len(attribution["tokens"]) == len(attribution["occlusion"]) == len(attribution["gradient_x_input"])
    assert set(results["feature_diff"]) >= {"only_a", "only_b", "both"}


@pytest.mark.slow
def test_interventions_notebook_executed_copy_reads_as_a_report(interventions_notebook):
    executed = interventions_notebook.path.read_text()
    assert len(executed) < 1_000_000, f"the executed notebook is {len(executed):,} bytes"
    html = "".join("".join(o.get("data", {}).get("text/html", "")) for o in outputs(interventions_notebook.path))
    for marker in ("wi-ablation", "wi-steer", "wi-scols", "estimate"):  # ablation view, steering, prompt attribution
        assert marker.lower() in html.lower(), marker
    assert "widgets" not in json.loads(executed)["metadata"]
