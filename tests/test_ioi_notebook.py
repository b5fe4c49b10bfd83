"""notebooks/04_ioi_attribution.ipynb runs through papermill with small parameters, patches every
dictionary at three residual-stream layers, and records every figure it shows."""

from __future__ import annotations

import json

import pytest

from conftest import NOTEBOOKS, ExecutedNotebook

IOI_SMALL = dict(layers=[26, 27, 29], acdc_layers=[27], train_tokens=3000, ctx_len=64, d_sae=64, ks=[4, 16],
                 epochs=1, pca_components=32, ica_components=8, random_directions=32, n_draw=60, n_prompts=8,
                 search_prompts=4, n_taus=3, ig_steps=2, spearman_directions=6, n_features_shown=2, n_heads_shown=2)
"""Parameters that run the IOI notebook (fitting its own small dictionaries) in about a minute on CPU: late
layers, so that each patched pass runs few blocks."""


@pytest.fixture(scope="module")
def ioi_notebook(tmp_path_factory) -> ExecutedNotebook:
    from workbench.report import execute_notebook

    folder = tmp_path_factory.mktemp("04_ioi_attribution")
    results = folder / "results.json"
    execute_notebook(NOTEBOOKS / "04_ioi_attribution.ipynb", folder / "04_ioi_attribution.ipynb",
                     {"out_dir": str(folder / "out"), "results_path": str(results), **IOI_SMALL}, cwd=folder)
    return ExecutedNotebook(folder / "04_ioi_attribution.ipynb", json.loads(results.read_text()))


def _outputs(path) -> list[dict]:
    notebook = json.loads(path.read_text())
    return [o for cell in notebook["cells"] if cell["cell_type"] == "code" for o in cell.get("outputs", [])]


@pytest.mark.slow
def test_ioi_notebook_records_prompts_searches_and_targets(ioi_notebook):
    r = ioi_notebook.results
    prompts = r["prompts"]
    assert prompts["drawn"] == 60 and 0.5 < prompts["accuracy_before_filter"] <= 1
    assert prompts["used"] == len(prompts["items"]) == 8
    item = prompts["items"][0]
    assert item["text"] and item["counterfactual"] and len(item["ids"]) == len(item["counterfactual_ids"])
    names = {"sae k=4", "sae k=16", "pca", "ica", "random", "standard"}
    pairs = {(s["layer"], s["dictionary"]) for s in r["searches"]}
    assert pairs == {(layer, name) for layer in (26, 27, 29) for name in names}
    for record in r["searches"]:
        assert record["hookpoint"] == f"blocks.{record['layer']}.hook_resid_pre"
        methods = ("acdc", "attribution", "integrated gradients") if record["layer"] == 27 else \
            ("attribution", "integrated gradients")
        assert set(record["searches"]) == set(methods)
        for method in methods:
            steps = record["searches"][method]
            assert steps and all({"n_patched", "kl", "edit_size", "patched", "tau"} <= set(s) for s in steps)
            assert all(len(s["patched"]) == s["n_patched"] for s in steps)
        curve = record["searches"]["integrated gradients"]
        # patching none is the clean run; every direction, the dictionary's best; with the rest, the counterfactual
        assert curve[0]["n_patched"] == 0 and curve[0]["kl"] == pytest.approx(record["clean_kl"], rel=1e-4)
        assert curve[-1]["n_patched"] == record["n_active"]
        assert curve[-1]["kl"] == pytest.approx(record["kl_all_directions"], rel=1e-4, abs=1e-6)
        assert record["kl_with_rest"] < 1e-4
        if record["dictionary"] == "standard":  # the whole stream: patching all of it is the counterfactual
            assert record["kl_all_directions"] < 1e-4 and record["at_target"]["integrated gradients"] is not None
        for method in ("attribution", "integrated gradients"):
            assert -1 <= record["spearman"][method]["rho"] <= 1 or record["spearman"][method]["rho"] != \
                record["spearman"][method]["rho"]
    assert len(r["summary"]) == len(r["searches"])
    assert set(r["figures"]["kl_curves"]) == {"acdc vs n_patched", "acdc vs edit_size", "integrated gradients vs n_patched",
                                              "integrated gradients vs edit_size"}
    assert len(r["heads"]) == 2 and all(0 <= h["attention_to_io"] <= 1 for h in r["heads"])
    assert len(r["top_features"]["features"]) == 2 and r["top_features"]["ablation"]["acts"]


@pytest.mark.slow
def test_ioi_notebook_executed_copy_reads_as_a_report(ioi_notebook):
    executed = ioi_notebook.path.read_text()
    # the circuitsvis drawing carries its 1.3 MB script (it must show offline); everything else is small
    assert len(executed) < 2_000_000, f"the executed notebook is {len(executed):,} bytes"
    found = _outputs(ioi_notebook.path)
    charts = ["".join(o["data"]["text/plain"]) for o in found if "image/svg+xml" in o.get("data", {})]
    assert len(charts) == 4, charts  # KL vs n and vs edit size, for ACDC and for IG top-n: each once
    html = ["".join(o.get("data", {}).get("text/html", "")) for o in found]
    drawings = [h for h in html if "CircuitsVis.render" in h]
    assert len(drawings) == 1 and "unpkg.com" not in drawings[0]  # the bundled script, no CDN
    assert any("wi-ablation" in h for h in html)
    assert "widgets" not in json.loads(executed)["metadata"]
