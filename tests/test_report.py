"""workbench.report: notebooks by short name, parameters checked before anything runs, grids
that resume, the index page, the HTML export; and the runner's older command line (make run).

Runs use a tiny notebook written to tmp_path (a kernel start each, no model)."""

from __future__ import annotations

import json
import re
from pathlib import Path

import nbformat
import pytest

from workbench import cli, report

NOTEBOOKS = Path(__file__).resolve().parent.parent / "notebooks"


def write_notebook(path: Path, parameters: str, body: str, markdown: str = "# Tiny") -> Path:
    notebook = nbformat.v4.new_notebook()
    cell = nbformat.v4.new_code_cell(parameters)
    cell.metadata["tags"] = ["parameters"]
    notebook.cells = [nbformat.v4.new_markdown_cell(markdown), cell, nbformat.v4.new_code_cell(body)]
    notebook.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    path.parent.mkdir(parents=True, exist_ok=True)
    nbformat.write(notebook, path)
    return path


TINY_PARAMETERS = '''k = 4                # active features
scale = 1.5          # a float
name = "tiny"
out_dir = "o"
results_path = "r.json"'''

TINY_BODY = '''import json, pathlib
assert k != 13, "unlucky k"
pathlib.Path(out_dir).mkdir(parents=True, exist_ok=True)
pathlib.Path(results_path).write_text(json.dumps({"product": k * scale, "name": name, "nested": {"x": k}}))
print("product", k * scale)'''


@pytest.fixture
def tiny(tmp_path) -> Path:
    return write_notebook(tmp_path / "nb" / "tiny.ipynb", TINY_PARAMETERS, TINY_BODY)


@pytest.fixture
def counted(monkeypatch) -> list:
    """Every call of execute_notebook (still executed), to count runs."""
    calls, execute = [], report.execute_notebook

    def counting(*args, **kwargs):
        calls.append(args)
        return execute(*args, **kwargs)

    monkeypatch.setattr(report, "execute_notebook", counting)
    return calls


# ---- the older command line


def test_parameter_values_are_python_literals_or_strings():
    assert report._value("3000") == 3000
    assert report._value("2e-3") == 0.002
    assert report._value("None") is None and report._value("False") is False
    assert report._value("build/01_quickstart") == "build/01_quickstart"
    assert report._value("'quoted'") == "quoted"


def test_main_passes_parameters_to_execute_notebook(monkeypatch, tmp_path):
    calls = []
    monkeypatch.setattr(report, "execute_notebook", lambda *args, **kwargs: calls.append((args, kwargs)))
    assert report.main(["in.ipynb", str(tmp_path / "out.ipynb"), "-p", "tokens", "3000", "-p", "out_dir", "b/q"]) == 0
    (input_path, output_path, parameters), kwargs = calls[0]
    assert (input_path, parameters) == ("in.ipynb", {"tokens": 3000, "out_dir": "b/q"})
    assert kwargs["kernel_name"] == "python3"


# ---- names


def test_project_notebooks_by_short_name():
    assert report.find_notebook("quickstart") == (NOTEBOOKS / "01_quickstart.ipynb").resolve()
    assert report.find_notebook("features") == (NOTEBOOKS / "02_features.ipynb").resolve()
    assert report.find_notebook("interventions") == (NOTEBOOKS / "03_interventions.ipynb").resolve()
    assert report.find_notebook("01_quickstart") == (NOTEBOOKS / "01_quickstart.ipynb").resolve()


def test_names_come_from_the_files_found(tmp_path):
    root = tmp_path / "notebooks"
    for name in ["01_quickstart", "02_features", "04_ioi_attribution", "05_autointerp",
                 "learn/01_what_is_an_sae", "learn/02_features"]:
        write_notebook(root / f"{name}.ipynb", "x = 1", "pass")
    names = report.notebook_names([root])
    assert names["quickstart"] == (root / "01_quickstart.ipynb").resolve()
    assert names["what_is_an_sae"] == names["learn/what_is_an_sae"] == (root / "learn/01_what_is_an_sae.ipynb").resolve()
    # a name shared with a course notebook is the top-level one's; the course's keeps its folder form
    assert names["features"] == names["02_features"] == (root / "02_features.ipynb").resolve()
    assert names["learn/features"] == (root / "learn/02_features.ipynb").resolve()
    write_notebook(root / "03_features.ipynb", "x = 1", "pass")
    assert "features" not in report.notebook_names([root])  # two at the same level: neither
    assert report.find_notebook("ioi", [root]) == (root / "04_ioi_attribution.ipynb").resolve()  # a leading part
    assert report.find_notebook("autointerp", [root]) == (root / "05_autointerp.ipynb").resolve()
    with pytest.raises(report.ReportError, match="no notebook named 'nope'.*quickstart.*what_is_an_sae"):
        report.find_notebook("nope", [root])
    with pytest.raises(report.ReportError, match="no notebook at"):
        report.find_notebook(str(tmp_path / "missing.ipynb"), [root])


# ---- parameters


def test_parameters_with_defaults_and_comments():
    quickstart = report.notebook_parameters(NOTEBOOKS / "01_quickstart.ipynb")
    assert quickstart["tokens"].default == 150_000 and quickstart["tokens"].help == "training tokens to capture"
    assert quickstart["lr"].default == 2e-3 and quickstart["tokens"].kind == "int"
    interventions = report.notebook_parameters(NOTEBOOKS / "03_interventions.ipynb")
    assert interventions["text"].default.startswith("Django's") and interventions["text"].default.endswith("shell.")
    assert interventions["chat_prompts"].kind == "list"


def test_params_lists_them(capsys):
    assert cli.main(["report", "quickstart", "--params"]) == 0
    shown = capsys.readouterr().out
    assert "tokens" in shown and "150_000" in shown and "training tokens to capture" in shown
    assert "set by workbench report inside --out" in shown


def test_grid_values():
    assert report.grid_values("16,32,64") == [16, 32, 64]
    assert report.grid_values("3000") == [3000]
    assert report.grid_values("relu,topk") == ["relu", "topk"]
    assert report.grid_values("'a, b'") == ["a, b"]  # quoted: one string, commas and all
    assert report.grid_values("[1, 2], [3]") == [[1, 2], [3]]
    assert report.grid_values("build/x") == ["build/x"]
    assert report.grid_values("None") == [None]
    assert report.grid_values("2e-3,1e-3") == [0.002, 0.001]


def test_grid_expansion_and_folder_names():
    grid = report.expand_grid({"k": [16, 32], "d_sae": [2304, 4608], "epochs": [2]})
    assert grid == [{"k": 16, "d_sae": 2304, "epochs": 2}, {"k": 16, "d_sae": 4608, "epochs": 2},
                    {"k": 32, "d_sae": 2304, "epochs": 2}, {"k": 32, "d_sae": 4608, "epochs": 2}]
    assert report.run_folder_name({"k": 16, "d_sae": 2304}) == "k=16_d_sae=2304"
    odd = report.run_folder_name({"text": "a/b c"})
    assert odd.startswith("text=a-b-c-") and odd != report.run_folder_name({"text": "a-b c"})


@pytest.mark.parametrize("argv, message", [
    (["-p", "nope", "1"], "has no parameter 'nope'; its parameters are: k, scale, name$"),
    (["-p", "k", "abc"], "parameter k of tiny.ipynb takes an int \\(default 4\\); got 'abc', a str"),
    (["-p", "k", "2,x"], "takes an int"),  # one bad value of a grid refuses the whole grid
    (["-p", "scale", "'big'"], "takes a float"),
    (["-p", "name", "3"], "takes a str \\(default \"tiny\"\\); got 3, an int; for the string, quote it: -p name \"'3'\""),
    (["-p", "out_dir", "x"], "set by `workbench report` inside --out"),
    (["-p", "k", "2", "-p", "k", "3"], "given twice"),
])
def test_bad_parameters_are_refused_before_anything_runs(tiny, tmp_path, monkeypatch, capsys, argv, message):
    monkeypatch.setattr(report, "execute_notebook", lambda *a, **k: pytest.fail("a kernel was started"))
    out = tmp_path / "out"
    assert cli.main(["report", str(tiny), *argv, "--out", str(out)]) == 2
    error = capsys.readouterr().err.strip().splitlines()[-1]
    assert error.startswith("workbench report: error: ")
    assert re.search(message, error), error
    assert not out.exists()


def test_values_of_the_defaults_type_pass(tiny):
    parameters = report.notebook_parameters(tiny)
    report.check_parameters(tiny, {"k": [1, 2], "scale": [1, 2.5], "name": ["x"]}, parameters)  # an int for a float
    report.check_parameters(tiny, {"k": [None]}, parameters)  # None: "off" / "automatic"
    with pytest.raises(report.ReportError):
        report.check_parameters(tiny, {"k": [True]}, parameters)  # a bool is no int here


# ---- headline figures


def test_headline_rules():
    results = {"fvu": 0.2, "n": 3, "ok": True, "summary": "fine", "long": "x" * 400, "nested": {"a": 1},
               "list": [1, 2], "nan": float("nan")}
    assert report.headline(results) == {"fvu": 0.2, "n": 3, "ok": True, "summary": "fine"}
    assert report.headline({**results, "headline": {"loss recovered": 0.9}}) == {"loss recovered": 0.9}
    assert report.headline(results, ["nested.a", "fvu", "missing.key"]) == {"nested.a": 1, "fvu": 0.2,
                                                                              "missing.key": None}


# ---- runs


def test_single_run_writes_the_executed_copy_html_and_headline(tiny, tmp_path, capsys, counted):
    out = tmp_path / "single"
    assert cli.main(["report", str(tiny), "-p", "k", "3", "--out", str(out)]) == 0
    shown = capsys.readouterr().out
    assert (out / "tiny.ipynb").is_file() and (out / "tiny.html").is_file() and (out / "out").is_dir()
    assert json.loads((out / "results.json").read_text())["product"] == 4.5
    record = json.loads((out / "report.json").read_text())
    assert record["status"] == "done" and record["parameters"] == {"k": 3}
    assert "[1/1] tiny.ipynb: done in" in shown and "product: 4.5" in shown and "name: tiny" in shown
    assert f"HTML:              {out / 'tiny.html'}" in shown
    assert not (out / "index.html").exists()
    assert cli.main(["report", str(tiny), "-p", "k", "3", "--out", str(out)]) == 0 and len(counted) == 1
    assert "done before with the same notebook and parameters, skipped" in capsys.readouterr().out
    assert cli.main(["report", str(tiny), "-p", "k", "3", "--out", str(out), "--force"]) == 0 and len(counted) == 2


def test_grid_runs_every_combination_resumably_and_records_failures(tiny, tmp_path, counted, capsys):
    out = tmp_path / "grid"
    argv = ["report", str(tiny), "-p", "k", "2,13", "-p", "scale", "1,2.5", "-p", "name", "g", "--out", str(out)]
    assert cli.main(argv) == 1  # k=13 fails: recorded, and the grid goes on
    shown = capsys.readouterr().out
    assert len(counted) == 4
    for i in range(1, 5):
        assert f"[{i}/4] tiny.ipynb" in shown
    assert "[3/4] tiny.ipynb k=13 scale=1.0: FAILED" in shown and "AssertionError: unlucky k" in shown
    grid = json.loads((out / "grid.json").read_text())
    assert grid["axes"] == ["k", "scale"]
    assert [r["status"] for r in grid["runs"]] == ["done", "done", "failed", "failed"]
    assert [r["headline"].get("product") for r in grid["runs"]] == [2.0, 5.0, None, None]
    assert [r["parameters"]["scale"] for r in grid["runs"]] == [1.0, 2.5, 1.0, 2.5]  # floats, as the default
    assert (out / "k=2_scale=2.5" / "tiny.html").is_file()
    assert (out / "k=13_scale=1.0" / "tiny.html").is_file()  # the executed copy up to the error, exported
    assert json.loads((out / "k=13_scale=1.0" / "report.json").read_text())["error"] == "AssertionError: unlucky k"

    page = (out / "index.html").read_text()
    assert page.count("<tr class=") == 4 and page.count("<svg") == 1 and "<script" not in page
    assert 'href="k=2_scale=2.5/tiny.html"' in page and "unlucky k" in page and "the same in every run: name=g" in page

    # Again: the finished runs are skipped, the failed ones run again.
    assert cli.main(argv) == 1
    assert len(counted) == 6 and [a[0] for a in counted[4:]] == [tiny, tiny]
    assert capsys.readouterr().out.count("skipped (--force runs it again)") == 2


def test_a_finished_run_is_not_reused_for_other_parameters_or_an_edited_notebook(tiny, tmp_path):
    from workbench.files import write_json

    folder = tmp_path / "run"
    folder.mkdir()
    (folder / "tiny.ipynb").write_text("{}")
    (folder / "tiny.html").write_text("")
    sha = report._sha256(tiny)
    write_json(folder / "report.json", {"status": "done", "notebook_sha256": sha, "parameters": {"k": 2},
                                        "notebook": "tiny.ipynb", "html": "tiny.html"})
    assert report._done_before(folder / "report.json", sha, {"k": 2}) is not None
    assert report._done_before(folder / "report.json", sha, {"k": 3}) is None
    assert report._done_before(folder / "report.json", "edited", {"k": 2}) is None
    (folder / "tiny.html").unlink()
    assert report._done_before(folder / "report.json", sha, {"k": 2}) is None


def test_export_needs_no_network(tmp_path):
    plain = write_notebook(tmp_path / "plain.ipynb", "x = 1", "pass")
    page = report.export_html(plain).read_text()
    assert not re.findall(r'<script[^>]*src="http', page)  # neither require.js nor MathJax
    maths = write_notebook(tmp_path / "maths.ipynb", "x = 1", "pass", markdown="Euler: $e^{i\\pi} = -1$")
    page = report.export_html(maths).read_text()
    assert re.findall(r'<script[^>]*src="http[^"]*', page) == [
        '<script src="https://cdnjs.cloudflare.com/ajax/libs/mathjax/2.7.7/latest.js?config=TeX-AMS_CHTML-full,Safe'
    ]  # MathJax kept where it draws the maths
