"""notebooks/05_autointerp.ipynb run through papermill with small parameters: the comparison's
figures in its results JSON, and feature cards that show the explanations."""

from __future__ import annotations

import json
import math

import pytest

from conftest import _run_notebook
from test_notebooks import WIDGET_VIEW, outputs, plain_text

AUTOINTERP_SMALL = dict(train_tokens=3000, ctx_len=64, d_sae=256, k=8, epochs=2, tokens=2048, fit_rows=1024,
                        ica_iterations=3, n_features=3, n_top=6, n_intervals=3, per_interval=2, n_quantiles=3,
                        per_quantile=2, n_random=4, n_hard=2, pool_contexts=16, min_activating=2, quiet=0.2,
                        logits=False, card_top=3)
"""Parameters that run the notebook (training its own small SAE) on CPU in seconds of compute: no logit
effects, and quiet=0.2 so that dense directions find quiet windows in a pool of 16 short contexts
(with quiet=0, ICA visited 196 features to find 3 eligible ones)."""

NAMES = ["SAE", "neurons", "PCA", "ICA", "random"]


@pytest.fixture(scope="module")
def autointerp_notebook(tmp_path_factory):
    return _run_notebook(tmp_path_factory, "05_autointerp", AUTOINTERP_SMALL)


@pytest.mark.slow
def test_autointerp_notebook_compares_five_dictionaries(autointerp_notebook):
    results = autointerp_notebook.results
    assert results["backend"] == "offline"
    assert set(results) >= {"store", "sae", "dictionaries", "summary", "chart", "table", "correlations", "cards",
                            "explanations", "seconds"}
    assert set(results["store"]["hookpoints"]) == {"blocks.15.hook_mlp_out", "blocks.15.mlp.hook_post"}
    summary = results["summary"]
    assert list(summary["dictionaries"]) == NAMES and summary["scorers"] == ["rule"]
    for name in NAMES:
        d = summary["dictionaries"][name]
        assert d["eligible"] <= min(d["checked"], 3) and d["checked"] <= d["candidates"] <= d["n_features"]
        rule = d["scores"]["rule"]
        assert rule["n"] + rule["failures"] == d["eligible"]
        if rule["n"]:
            assert 0 <= rule["mean"] <= 1 and rule["ci"][0] <= rule["mean"] <= rule["ci"][1]
        assert results["chart"]["rule"][name]["mean"] == rule["mean"] or math.isnan(rule["mean"])
    assert summary["dictionaries"]["SAE"]["eligible"] == 3  # a sparse dictionary always has quiet windows
    for group in results["correlations"]["rule"].values():
        assert set(group) == {"skew", "kurtosis"}
    assert summary["usage"] == {} and summary["tokens"] == {"prompt": 0, "completion": 0}


@pytest.mark.slow
def test_autointerp_notebook_cards_show_the_explanations(autointerp_notebook):
    results = autointerp_notebook.results
    assert "SAE" in results["cards"]
    html = [("".join(o["data"]["text/html"])) for o in outputs(autointerp_notebook.path)
            if 'class="wf-card"' in "".join(o.get("data", {}).get("text/html", ""))]
    assert len(html) == len(results["cards"])
    for card, markup in zip(results["cards"].values(), html):
        assert card["explanation"].startswith("fires on ") and "[rule " in card["explanation"]
        assert "wf-expl" in markup and "fires on " in markup
    found = outputs(autointerp_notebook.path)
    charts = [plain_text(o) for o in found if "image/svg+xml" in o.get("data", {})]
    assert len(charts) == 1 and charts[0].startswith("Chart('Automated interpretability at blocks.15")
    assert all(WIDGET_VIEW in o["data"] for o in found if 'class="wf-card"' in "".join(o.get("data", {}).get("text/html", "")))
    executed = autointerp_notebook.path.read_text()
    assert len(executed) < 1_000_000 and "widgets" not in json.loads(executed)["metadata"]


@pytest.mark.slow
def test_autointerp_notebook_with_the_embedded_model_as_explainer_and_scorer(tmp_path_factory):
    """backend="local": SmolLM2-135M-Instruct explains and scores (detection) one feature per dictionary,
    end to end in the notebook, its answers prefilled so that they parse."""
    executed = _run_notebook(tmp_path_factory, "05_autointerp",
                             {**AUTOINTERP_SMALL, "backend": "local", "llm_scorers": ["detection"], "n_features": 1})
    summary = executed.results["summary"]
    assert summary["explainer"] == "local:smollm2-135m" and summary["scorers"] == ["detection"]
    assert summary["usage"]["requests"] > 0 and summary["tokens"]["prompt"] > 0 and summary["tokens"]["completion"] > 0
    explained = [row for rows in executed.results["explanations"].values() for row in rows]
    assert explained and all(text for _, text, _ in explained)  # every explanation parsed
    detection = summary["dictionaries"]["SAE"]["scores"]["detection"]
    assert detection["n"] == 1 and detection["failures"] == 0 and 0 <= detection["mean"] <= 1
    assert "auc" in detection["metrics"]
