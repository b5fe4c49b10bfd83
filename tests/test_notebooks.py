"""The notebooks run through papermill with small parameters and record the figures they show."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

NOTEBOOKS = Path(__file__).resolve().parent.parent / "notebooks"


def execute(name: str, tmp_path: Path, **parameters) -> dict:
    """Run ``notebooks/<name>.ipynb`` with papermill; return the results JSON it wrote."""
    import papermill

    results = tmp_path / "results.json"
    papermill.execute_notebook(
        str(NOTEBOOKS / f"{name}.ipynb"),
        str(tmp_path / f"{name}.ipynb"),
        parameters={"out_dir": str(tmp_path / "out"), "results_path": str(results), **parameters},
        kernel_name="python3",
        progress_bar=False,
        cwd=str(tmp_path),
    )
    return json.loads(results.read_text())


@pytest.mark.slow
def test_quickstart_trains_and_evaluates_an_sae(tmp_path):
    results = execute("01_quickstart", tmp_path, tokens=3000, ctx_len=64, d_sae=256, k=8, epochs=2, batch_size=256,
                      eval_tokens=504, n_features_shown=2)
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
    assert "% of zero-ablating the MLP" in results["summary"]
    assert sum(results["density"]["counts"]) + results["density"]["n_dead"] == 256
    assert len(results["features"]) == 2
    for feature in results["features"].values():
        assert feature["density"] > 0 and len(feature["top_activations"]) == 5
        assert feature["top_activations"] == sorted(feature["top_activations"], reverse=True)

    executed = (tmp_path / "01_quickstart.ipynb").read_text()
    assert "wb-heatmap" in executed and "rgba(255, 140, 0" in executed  # the static fallback is in the outputs
    assert "zero-ablating the MLP" in executed
    assert executed.count("Plotly.newPlot") >= 3  # norms, training chart, density: as HTML, not only plotly JSON
