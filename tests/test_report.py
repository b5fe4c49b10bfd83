"""workbench.report: the notebook runner's command line reads parameters as papermill's -p does."""

from __future__ import annotations

from workbench import report


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
