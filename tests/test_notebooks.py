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
def test_quickstart_captures_real_activations(tmp_path):
    results = execute("01_quickstart", tmp_path, tokens=1500, ctx_len=64)
    store = results["store"]
    assert store["complete"] and store["contexts"] == 24 and store["rows"] == 24 * 63
    stats = results["activation_stats"]
    assert stats["d"] == 576
    # SmolLM2's layer-15 MLP output: norms of a few tens, a few outlier dimensions.
    assert 5 < stats["norm_mean"] < 200 and stats["max_dim_std"] > 3 * stats["mean_dim_std"]
    assert results["heatmap"]["n_tokens"] == 64 and results["heatmap"]["max_value"] > 0
    executed = (tmp_path / "01_quickstart.ipynb").read_text()
    assert "wb-heatmap" in executed and "rgba(255, 140, 0" in executed  # the static fallback is in the outputs
