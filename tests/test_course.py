"""The beginners' course in notebooks/learn/: every notebook runs under papermill with the solutions (every
check passes) and without (every check reports its missing answer, and the notebook still completes); and the
checks of workbench.course on right and wrong answers, with what they print."""

from __future__ import annotations

import json

import pytest
import torch

from tests.conftest import NOTEBOOKS, ExecutedNotebook
from workbench import course
from workbench import course_solutions as answers

LEARN = NOTEBOOKS / "learn"
SAE_SMALL = dict(tokens=2000, ctx_len=64, d_sae=128, k=8, epochs=1, batch_size=256)
SMALL = {
    "01_superposition": dict(toy_steps=300, sae_steps=300),
    "02_real_activations": dict(SAE_SMALL, eval_tokens=126),
    "03_reading_features": dict(SAE_SMALL, n_top=5, n_intervals=3, per_interval=1, n_ablation_features=2),
    "04_causing_things": dict(SAE_SMALL, n_steer_candidates=2, max_new_tokens=5, n_prompts=4, top_n=[1, 4]),
}
"""Parameters that run each course notebook in seconds to a minute on CPU (the SAE: 2,000 tokens, 128 features)."""
CHECKS = {
    "01_superposition": {"encoder", "topk", "loss"},
    "02_real_activations": {"fvu", "l0"},
    "03_reading_features": {"density", "top_token"},
    "04_causing_things": {"logit_diff", "patch"},
}


@pytest.fixture(scope="module")
def course_run(tmp_path_factory):
    """``run(name, solutions)``: the notebook executed once per module. Runs share one out_dir, so 03 and 04
    reuse the SAE that 02 trains there; 04 without solutions gets a fresh out_dir and trains its own."""
    from workbench.report import execute_notebook

    shared = tmp_path_factory.mktemp("learn")
    done: dict[tuple[str, bool], ExecutedNotebook] = {}

    def run(name: str, solutions: bool) -> ExecutedNotebook:
        if (name, solutions) not in done:
            alone = (name, solutions) == ("04_causing_things", False)
            if name in ("03_reading_features", "04_causing_things") and not alone:
                run("02_real_activations", True)
            out_dir = tmp_path_factory.mktemp("alone") if alone else shared
            folder = tmp_path_factory.mktemp(f"{name}_{solutions}")
            tag = "solutions" if solutions else "blank"
            results = folder / f"{name}.json"
            execute_notebook(LEARN / f"{name}.ipynb", folder / f"{name}_{tag}.ipynb",
                             {"out_dir": str(out_dir / "course"), "results_path": str(results), "solutions": solutions,
                              **SMALL[name]}, cwd=folder)
            done[name, solutions] = ExecutedNotebook(folder / f"{name}_{tag}.ipynb", json.loads(results.read_text()))
        return done[name, solutions]

    return run


def _outputs(path) -> str:
    notebook = json.loads(path.read_text())
    texts = []
    for cell in notebook["cells"]:
        for output in cell.get("outputs", []):
            assert output["output_type"] != "error", output
            text = output.get("text", output.get("data", {}).get("text/plain", ""))
            texts.append("".join(text) if isinstance(text, list) else text)
    return "\n".join(texts)


def _charts(path) -> list[str]:
    notebook = json.loads(path.read_text())
    return ["".join(o["data"]["text/plain"]) for cell in notebook["cells"] for o in cell.get("outputs", [])
            if "image/svg+xml" in o.get("data", {})]


@pytest.mark.slow
@pytest.mark.parametrize("name", list(SMALL))
def test_course_notebook_with_solutions_passes_every_check(course_run, name):
    executed = course_run(name, True)
    checks = executed.results["checks"]
    assert set(checks) == CHECKS[name] and all(checks.values()), checks
    text = _outputs(executed.path)
    assert text.count(course.RIGHT) == len(CHECKS[name])
    charts = _charts(executed.path)
    assert len(charts) == len(set(charts)), charts  # each chart shown once
    assert "widgets" not in json.loads(executed.path.read_text())["metadata"]  # static HTML, no widget state


@pytest.mark.slow
@pytest.mark.parametrize("name", list(SMALL))
def test_course_notebook_without_solutions_reports_missing_answers(course_run, name):
    executed = course_run(name, False)
    checks = executed.results["checks"]
    assert set(checks) == CHECKS[name] and not any(checks.values()), checks
    text = _outputs(executed.path)  # no error output: the notebook ran to its end
    assert text.count("not answered yet") == len(CHECKS[name])
    assert "exercises right" in text


@pytest.mark.slow
def test_course_notebook_figures(course_run):
    toy = course_run("01_superposition", True).results
    assert len(toy["toy"]["norms"]) == 8 and toy["sae"]["trained_by"] == "your encoder, TopK and loss"
    assert len(toy["sae"]["max_cos"]) == 8 and all(-1 <= c <= 1.0001 for c in toy["sae"]["max_cos"])
    assert "library" in course_run("01_superposition", False).results["sae"]["trained_by"]

    real = course_run("02_real_activations", True).results
    assert real["store"]["rows"] == 32 * 63 and real["train"]["steps"] == 2016 // 256
    assert 0 < real["evaluation"]["fvu"] < 1.5 and real["evaluation"]["l0"] == pytest.approx(8)

    reading = course_run("03_reading_features", True).results
    assert reading["card"]["top_activations"] == sorted(reading["card"]["top_activations"], reverse=True)
    assert len(reading["ablation"]["features"]) == 2

    causing = course_run("04_causing_things", True).results
    assert causing["residual_check"]["kl_all"] == pytest.approx(0, abs=1e-4)
    assert causing["residual_check"]["kl_none"] > 0.1
    assert causing["patching"]["labels"] == ["none (clean)", "top 1", "top 4", "all + error"]
    assert causing["ioi"]["logit_diff_clean"] > causing["ioi"]["logit_diff_counterfactual"]
    alone = course_run("04_causing_things", False)
    assert "no SAE in" in _outputs(alone.path)  # trained its own: it runs without notebook 02


# ---- the checks, on right and wrong answers ----------------------------------------------------------
def _says(capsys, check, *args) -> tuple[bool, str]:
    ok = check(*args)
    return ok, capsys.readouterr().out


def test_checks_report_unanswered_exercises(capsys):
    for check in (course.check_encoder, course.check_topk, course.check_loss):
        for blank in (None, lambda *args: None):
            ok, said = _says(capsys, check, blank)
            assert not ok and "not answered yet" in said
    ok, said = _says(capsys, course.check_encoder, lambda *args: 1 / 0)
    assert not ok and "raised ZeroDivisionError" in said


def test_check_encoder(capsys):
    assert _says(capsys, course.check_encoder, answers.encode)[0]
    cases = {
        lambda x, W, b, bd: x @ W + b: "subtract the decoder bias",
        lambda x, W, b, bd: (x - bd) @ W: "forgot to add the encoder bias",
        lambda x, W, b, bd: (x + bd) @ W + b: "wrong sign",
        lambda x, W, b, bd: torch.relu((x - bd) @ W + b): "return the pre-activations",
        lambda x, W, b, bd: ((x - bd) @ W + b).T: "expected (6, 5)",
    }
    for wrong, hint in cases.items():
        ok, said = _says(capsys, course.check_encoder, wrong)
        assert not ok and hint in said, said


def test_check_topk(capsys):
    ok, said = _says(capsys, course.check_topk, answers.topk)
    assert ok and course.RIGHT in said

    def no_relu(pre, k):
        v, i = pre.topk(k, dim=1)
        return torch.zeros_like(pre).scatter(1, i, v)

    def smallest(pre, k):
        v, i = pre.topk(k, dim=1, largest=False)
        return torch.zeros_like(pre).scatter(1, i, v)

    def detached(pre, k):
        return answers.topk(pre.detach(), k)

    cases = {
        lambda pre, k: pre.topk(k, dim=1): "returned a tuple",
        lambda pre, k: pre.topk(k, dim=1).values: "only the k=3 kept values",
        no_relu: "apply ReLU",
        smallest: "smallest",
        lambda pre, k: torch.relu(pre): "at most k=3",
        detached: "no gradient",
    }
    for wrong, hint in cases.items():
        ok, said = _says(capsys, course.check_topk, wrong)
        assert not ok and hint in said, said


def test_check_loss(capsys):
    assert _says(capsys, course.check_loss, answers.loss)[0]
    cases = {
        lambda x, xh: ((xh - x) ** 2).mean(): "4x too small",
        lambda x, xh: ((xh - x) ** 2).sum(): "8x too large",
        lambda x, xh: -((xh - x) ** 2).sum(-1).mean(): "wrong sign",
        lambda x, xh: (xh - x).norm(dim=-1).mean(): "square it",
        lambda x, xh: ((xh - x) ** 2).sum(-1): "expected one number",
        lambda x, xh: ((xh - x) ** 2).sum(-1).mean().detach(): "no gradient",
    }
    for wrong, hint in cases.items():
        ok, said = _says(capsys, course.check_loss, wrong)
        assert not ok and hint in said, said


def _reconstruction(seed: int = 0):
    from workbench.metrics import reconstruction_metrics
    from workbench.sae import SAE, SAEConfig

    torch.manual_seed(seed)
    sae = SAE.from_config(SAEConfig("topk", d_in=6, d_sae=12, k=3))
    x = torch.randn(50, 6) + 2
    with torch.no_grad():
        out = sae(x)
    return x, out.x_hat, out.feature_acts, reconstruction_metrics(sae, [x])


def test_check_fvu_and_l0_against_the_library(capsys):
    x, x_hat, acts, library = _reconstruction()
    ok, said = _says(capsys, course.check_fvu, answers.fvu, x, x_hat, library.fvu)
    assert ok and "the same as the library" in said
    fvu_cases = {
        lambda x, xh: 1 - answers.fvu(x, xh): "explained variance",
        lambda x, xh: float(((x - xh) ** 2).sum() / (x ** 2).sum()): "deviation from the mean",
        lambda x, xh: float(((x - xh) ** 2).sum(-1).mean()): "MSE per token",
    }
    for wrong, hint in fvu_cases.items():
        ok, said = _says(capsys, course.check_fvu, wrong, x, x_hat, library.fvu)
        assert not ok and hint in said, said

    assert _says(capsys, course.check_l0, answers.l0, acts, library.l0_mean)[0]
    l0_cases = {
        lambda a: (a != 0).sum(-1): "one count per token",
        lambda a: float((a != 0).sum()): "divide by the number of tokens",
        lambda a: float((a != 0).float().mean()): "averaged over the features too",
        lambda a: float(a.sum(-1).mean()): "summed the activations",
    }
    for wrong, hint in l0_cases.items():
        ok, said = _says(capsys, course.check_l0, wrong, acts, library.l0_mean)
        assert not ok and hint in said, said


def test_check_density_and_top_token(capsys):
    acts = torch.relu(torch.randn(40, 7))
    assert _says(capsys, course.check_density, answers.density, acts)[0]
    density_cases = {
        lambda a: (a > 0).float().mean(1): "one value per token",
        lambda a: (a > 0).float().sum(0): "those are counts",
        lambda a: a.mean(0): "averaged the activation values",
    }
    for wrong, hint in density_cases.items():
        ok, said = _says(capsys, course.check_density, wrong, acts)
        assert not ok and hint in said, said

    tokens = [f"t{i}" for i in range(40)]
    ok, said = _says(capsys, course.check_top_token, answers.top_token, acts, tokens, 2)
    assert ok and repr(tokens[int(acts[:, 2].argmax())]) in said
    top_cases = {
        lambda a, t, f: int(a[:, f].argmax()): "position of the token",
        lambda a, t, f: t[int(a[:, f].argmin())]: "argmin",
    }
    for wrong, hint in top_cases.items():
        ok, said = _says(capsys, course.check_top_token, wrong, acts, tokens, 2)
        assert not ok and hint in said, said


def test_check_logit_diff_and_patch(capsys):
    logits = torch.randn(5, 30)
    io, s = torch.tensor([1, 2, 3, 4, 5]), torch.tensor([6, 7, 8, 9, 10])
    assert _says(capsys, course.check_logit_diff, answers.logit_diff, logits, io, s)[0]
    diff_cases = {
        lambda lg, i, j: answers.logit_diff(lg, j, i): "wrong sign",
        lambda lg, i, j: answers.logit_diff(lg, i, j).mean(): "the mean over prompts",
        lambda lg, i, j: answers.logit_diff(lg.softmax(-1), i, j): "difference of probabilities",
    }
    for wrong, hint in diff_cases.items():
        ok, said = _says(capsys, course.check_logit_diff, wrong, logits, io, s)
        assert not ok and hint in said, said

    x, c, c_bar = torch.randn(2, 3, 4), torch.relu(torch.randn(2, 3, 6)), torch.relu(torch.randn(2, 3, 6))
    directions, mask = torch.randn(6, 4), torch.tensor([1.0, 0, 1, 0, 0, 1])
    assert _says(capsys, course.check_patch, answers.patch, x, c, c_bar, directions, mask)[0]
    patch_cases = {
        lambda x, c, cb, d, m: x + ((c - cb) * m) @ d: "wrong sign",
        lambda x, c, cb, d, m: x + (cb - c) @ d: "patched every feature",
        lambda x, c, cb, d, m: ((cb - c) * m) @ d: "only the change",
        lambda x, c, cb, d, m: (x + ((cb - c) * m) @ d)[0]: "wrong shape",
    }
    for wrong, hint in patch_cases.items():
        ok, said = _says(capsys, course.check_patch, wrong, x, c, c_bar, directions, mask)
        assert not ok and hint in said, said


def test_toy_model_and_sae_recover_the_features():
    model, losses = course.train_toy_model(5, 2, 0.05, steps=400, seed=0)
    assert losses[-1] < losses[0]
    hidden = model.hidden(course.sparse_features(4000, 5, 0.05, seed=1)).detach()
    hidden = hidden[hidden.norm(dim=1) > 0]
    W_dec, history, who = course.train_toy_sae(hidden, 10, 1, encode=answers.encode, topk=answers.topk,
                                               loss=answers.loss, ready=True, steps=400, seed=0)
    assert who.startswith("your") and W_dec.shape == (10, 2) and history[-1] < history[0]
    cos = course.cosine_matrix(model.W.detach(), W_dec)
    strong = model.W.detach().norm(dim=1) > 0.5
    assert (cos.max(1).values[strong] > 0.9).all(), cos
