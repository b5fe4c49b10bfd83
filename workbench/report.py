"""Run a notebook as a report: papermill with parameters, into an executed copy and its HTML.

The executed copy is meant to be read, there and in its HTML export, with no kernel and no
network. So the run stores no widget state: nbconvert draws a widget's live view (JavaScript
from a CDN) only for widgets whose state the notebook stores, and otherwise the static
``text/html`` every workbench widget carries. (papermill's command line cannot say so; it passes
the option on to nbclient when called from Python.) :func:`export_html` writes that export with
images inlined and without the CDN scripts nothing in it needs (require.js always; MathJax when
no markdown cell has math), so it opens offline from disk.

``workbench report NOTEBOOK`` (see :func:`run_report`) runs one of the project's notebooks by
short name or any notebook by path, a single run or a grid of parameter values::

    workbench report quickstart --params                           # parameters, defaults, comments
    workbench report quickstart -p tokens 20000 --out /tmp/r       # /tmp/r/01_quickstart.{ipynb,html}
    workbench report quickstart -p k 16,32 -p d_sae 2304,4608 --out /tmp/grid   # 4 runs + index.html

Short names are the notebooks' file names under ``notebooks/`` and ``notebooks/learn/`` without
their numeric prefix (``01_quickstart.ipynb`` -> ``quickstart``), found when the command runs; a
unique leading part of a name works too (``ioi`` for ``ioi_attribution``).

The older form, as papermill's ``-p`` (``make run`` uses it)::

    python -m workbench.report notebooks/01_quickstart.ipynb build/notebooks/01_quickstart.ipynb \\
        -p out_dir build/01_quickstart -p tokens 3000
"""

from __future__ import annotations

import argparse
import ast
import hashlib
import html
import itertools
import json
import math
import re
import sys
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

__all__ = [
    "Run",
    "execute_notebook",
    "export_html",
    "find_notebook",
    "headline",
    "notebook_names",
    "notebook_parameters",
    "run_report",
]

REPO_NOTEBOOKS = Path(__file__).resolve().parent.parent / "notebooks"
"""The project's notebooks (a source checkout, as ``pip install -e .`` and binder leave it)."""

SET_BY_REPORT = ("out_dir", "results_path")
"""Parameters ``workbench report`` sets itself, inside ``--out``, when the notebook has them."""

HEADLINE_MAX_STRING = 300
"""Longer top-level strings of a results JSON (lists of texts, logs) are not headline figures."""


class ReportError(ValueError):
    """A report that cannot start: an unknown notebook, a bad parameter name or value."""


def execute_notebook(
    input_path: str | Path,
    output_path: str | Path,
    parameters: dict[str, Any] | None = None,
    *,
    cwd: str | Path | None = None,
    kernel_name: str = "python3",
    progress_bar: bool = False,
    log_output: bool = False,
) -> Any:
    """Execute ``input_path`` with papermill into ``output_path`` and return the executed
    notebook (an ``nbformat.NotebookNode``), storing no widget state (see the module docstring).

    ``parameters`` replace the notebook's ``parameters`` cell; ``cwd`` is the kernel's working
    directory (default: this process's). A failing cell raises papermill's
    ``PapermillExecutionError`` after writing the executed copy up to that cell.
    """
    import papermill

    Path(output_path).parent.mkdir(parents=True, exist_ok=True)
    return papermill.execute_notebook(
        str(input_path),
        str(output_path),
        parameters=parameters or {},
        kernel_name=kernel_name,
        cwd=None if cwd is None else str(cwd),
        progress_bar=progress_bar,
        log_output=log_output,
        store_widget_state=False,
    )


# ---- HTML export


_CDN_SCRIPT = re.compile(r'<script[^>]*\ssrc="https?://[^"]*(?P<what>require|mathjax)[^"]*"[^>]*>\s*</script>\s*', re.I)
_MATH = re.compile(r"\$|\\\(|\\\[|\\begin\{")


def export_html(notebook: str | Path, html_path: str | Path | None = None) -> Path:
    """Write ``notebook``'s HTML export (nbconvert's lab template, images inlined) to ``html_path``
    (default: next to it, ``.html``) and return its path.

    The page needs no network: require.js (only for widget state and JavaScript outputs, neither
    of which a report stores) is dropped, and so is MathJax when no markdown cell has math.
    """
    import nbformat
    from nbconvert import HTMLExporter

    from workbench.files import write_atomic

    notebook = Path(notebook)
    html_path = Path(html_path) if html_path is not None else notebook.with_suffix(".html")
    node = nbformat.read(notebook, as_version=4)
    body, _ = HTMLExporter(embed_images=True).from_notebook_node(node)
    has_math = any(cell.cell_type == "markdown" and _MATH.search(cell.source) for cell in node.cells)
    body = _CDN_SCRIPT.sub(lambda m: m.group(0) if has_math and m["what"].lower() == "mathjax" else "", body)
    html_path.parent.mkdir(parents=True, exist_ok=True)
    write_atomic(html_path, lambda tmp: tmp.write_text(body, encoding="utf-8"))
    return html_path


# ---- notebooks by short name


def notebook_names(roots: Iterable[Path] | None = None) -> dict[str, Path]:
    """Every notebook under ``roots`` (default: ``./notebooks`` and the project's) by its names:
    the file name without its numeric prefix (``quickstart``), the file name (``01_quickstart``),
    and both under a subfolder (``learn/what_is_an_sae``). Where a name is shared, a notebook
    in ``notebooks/`` itself wins over one in a subfolder (which keeps its ``folder/name``), and
    two in the same folder level share it with neither."""
    roots = [Path.cwd() / "notebooks", REPO_NOTEBOOKS] if roots is None else list(roots)
    names: dict[str, dict[Path, int]] = {}  # name -> {notebook: depth}
    seen: set[Path] = set()
    for root in roots:
        if not root.is_dir() or root.resolve() in seen:
            continue
        seen.add(root.resolve())
        for path in sorted(root.rglob("*.ipynb")):
            relative = path.relative_to(root)
            if ".ipynb_checkpoints" in relative.parts or relative.parts[0] in ("build",):
                continue
            folder = "/".join(relative.parts[:-1])
            short = re.sub(r"^\d+[_-]", "", path.stem)
            for name in {short, path.stem} | ({f"{folder}/{short}", f"{folder}/{path.stem}"} if folder else set()):
                names.setdefault(name, {})[path.resolve()] = len(relative.parts)
    found = {}
    for name, paths in sorted(names.items()):
        shallowest = [p for p, depth in paths.items() if depth == min(paths.values())]
        if len(shallowest) == 1:
            found[name] = shallowest[0]
    return found


def find_notebook(name: str, roots: Iterable[Path] | None = None) -> Path:
    """The notebook ``name`` means: a path to an ``.ipynb`` file, a short name (see
    :func:`notebook_names`), or a unique leading part of one at an underscore (``ioi`` for
    ``ioi_attribution``). Raises :class:`ReportError` listing the short names otherwise."""
    path = Path(name)
    if path.suffix == ".ipynb" or path.is_file():
        if not path.is_file():
            raise ReportError(f"no notebook at {path}")
        return path
    names = notebook_names(roots)
    if name in names:
        return names[name]
    matches = {p for n, p in names.items() if n.startswith(name + "_")}
    if len(matches) == 1:
        return matches.pop()
    shorts = sorted({n for n in names if not re.match(r"^(.*/)?\d+[_-]", n)})
    if len(matches) > 1:
        raise ReportError(f"{name!r} could mean any of {', '.join(sorted(str(p.name) for p in matches))}; "
                          f"pick one of: {', '.join(shorts)}")
    raise ReportError(f"no notebook named {name!r}; the notebooks are: {', '.join(shorts) or '(none found)'} "
                      "(or pass a path to an .ipynb file)")


# ---- parameters


_UNKNOWN = object()
"""The default of a parameter whose value is not a Python literal (an expression): any value goes."""


@dataclass(frozen=True)
class Parameter:
    """One assignment of a notebook's ``parameters`` cell."""

    name: str
    source: str
    """The default as written (one line)."""
    default: Any
    """The default's value, or ``_UNKNOWN`` when it is not a literal."""
    help: str = ""
    """The comment after it (papermill's inspection)."""

    @property
    def kind(self) -> str:
        return "any" if self.default is _UNKNOWN or self.default is None else type(self.default).__name__


def notebook_parameters(notebook: str | Path) -> dict[str, Parameter]:
    """The parameters of ``notebook``'s cell tagged ``parameters``, in order, with their defaults
    (read with ``ast``: multi-line values too) and comments (papermill's ``inspect_notebook``)."""
    import nbformat
    import papermill

    node = nbformat.read(Path(notebook), as_version=4)
    cells = [c for c in node.cells if c.cell_type == "code" and "parameters" in c.metadata.get("tags", [])]
    if not cells:
        return {}
    source = cells[0].source
    comments = {name: info.get("help", "") for name, info in papermill.inspect_notebook(str(notebook)).items()}
    found = {}
    for statement in ast.parse(source).body:
        if isinstance(statement, ast.Assign) and len(statement.targets) == 1:
            target, value = statement.targets[0], statement.value
        elif isinstance(statement, ast.AnnAssign) and statement.value is not None:
            target, value = statement.target, statement.value
        else:
            continue
        if not isinstance(target, ast.Name):
            continue
        text = " ".join(ast.get_source_segment(source, value).split())
        try:
            default = ast.literal_eval(value)
        except ValueError:
            default = _UNKNOWN
        found[target.id] = Parameter(target.id, text, default, comments.get(target.id, ""))
    return found


def _value(text: str) -> Any:
    """A ``-p`` value as papermill reads it: a Python literal (int, float, bool, None) or a string."""
    try:
        return ast.literal_eval(text)
    except (ValueError, SyntaxError):
        return text


def grid_values(text: str) -> list[Any]:
    """The values of one ``-p NAME VALUE``: a comma-separated list makes a grid axis.

    The text is read as a Python list's contents when it is one (``16,32,64``, ``[1, 2], [3]``,
    ``'a, b'`` -- a quoted string is one value, commas and all), else split at commas, each piece
    a literal or a string (``relu,topk``). One value is a list of one."""
    try:
        values = ast.literal_eval(f"[{text}]")
    except (ValueError, SyntaxError):
        values = [_value(piece.strip()) for piece in text.split(",")]
    return values or [text]


def _fits(value: Any, default: Any) -> bool:
    """Whether ``value`` may replace ``default``: the same type (an int where a float is expected
    too), anything for an unknown or None default, and None anywhere (for "off" / "automatic")."""
    if value is None or default is None or default is _UNKNOWN:
        return True
    if isinstance(default, bool) or isinstance(value, bool):
        return isinstance(value, bool) and isinstance(default, bool)
    if isinstance(default, float):
        return isinstance(value, (int, float))
    if isinstance(default, (list, tuple)):
        return isinstance(value, (list, tuple))
    return isinstance(value, type(default))


def check_parameters(notebook: Path, given: dict[str, list[Any]], parameters: dict[str, Parameter]) -> None:
    """Refuse (:class:`ReportError`) names that are not parameters of ``notebook``, those that
    ``workbench report`` sets itself, and values whose type differs from the default's."""
    valid = ", ".join(n for n in parameters if n not in SET_BY_REPORT) or "(none: it has no cell tagged 'parameters')"
    unknown = [n for n in given if n not in parameters]
    if unknown:
        raise ReportError(f"{notebook.name} has no parameter {', '.join(map(repr, unknown))}; "
                          f"its parameters are: {valid}")
    reserved = [n for n in given if n in SET_BY_REPORT]
    if reserved:
        raise ReportError(f"{', '.join(reserved)} is set by `workbench report` inside --out; pass --out instead")
    for name, values in given.items():
        default = parameters[name].default
        for value in values:
            if not _fits(value, default):
                hint = (f"; for the string, quote it: -p {name} \"'{value}'\"" if isinstance(default, str) else "")
                raise ReportError(
                    f"parameter {name} of {notebook.name} takes {_article(parameters[name].kind)} "
                    f"(default {parameters[name].source}); got {value!r}, {_article(type(value).__name__)}{hint}")


def _article(kind: str) -> str:
    return ("an " if kind[0] in "aeiou" else "a ") + kind


def describe_parameters(notebook: Path, parameters: dict[str, Parameter]) -> str:
    """The parameters as ``--params`` prints them: name, default as written, comment."""
    if not parameters:
        return f"{notebook}: no cell tagged 'parameters', so nothing to set"
    width = max(len(n) for n in parameters)
    shown = {n: p.source if len(p.source) <= 48 else p.source[:45] + "..." for n, p in parameters.items()}
    value_width = max(len(v) for v in shown.values())
    lines = [f"{notebook}: {len(parameters)} parameters (-p NAME VALUE; VALUE,VALUE,... runs a grid)"]
    for p in parameters.values():
        note = "set by workbench report inside --out" if p.name in SET_BY_REPORT else p.help
        lines.append(f"  {p.name:<{width}} = {shown[p.name]:<{value_width}}  {note}".rstrip())
    return "\n".join(lines)


# ---- headline figures


def _scalar(value: Any) -> bool:
    if isinstance(value, bool) or value is None:
        return value is not None
    if isinstance(value, (int, float)):
        return math.isfinite(value)
    return isinstance(value, str) and len(value) <= HEADLINE_MAX_STRING


def _lookup(results: dict, dotted: str) -> Any:
    value: Any = results
    for part in dotted.split("."):
        if not isinstance(value, dict) or part not in value:
            return None
        value = value[part]
    return value


def headline(results: dict, keys: Sequence[str] = ()) -> dict[str, Any]:
    """The headline figures of a notebook's results JSON, by the first rule that applies:

    1. ``keys`` (``--headline``), dotted paths into the JSON (``reconstruction.fvu``);
    2. its ``headline`` entry, a dict of name -> number or short string, if it has one;
    3. its top-level numbers, booleans and strings of up to :data:`HEADLINE_MAX_STRING` characters.
    """
    if keys:
        return {key: _lookup(results, key) for key in keys}
    chosen = results.get("headline") if isinstance(results.get("headline"), dict) else results
    return {key: value for key, value in chosen.items() if _scalar(value)}


def _format(value: Any) -> str:
    if isinstance(value, bool) or value is None:
        return str(value)
    if isinstance(value, int):
        return f"{value:,}"
    if isinstance(value, float):
        return f"{value:.4g}"
    return str(value)


# ---- runs


@dataclass
class Run:
    """One execution of a notebook with one set of parameters, in its own folder."""

    parameters: dict[str, Any]
    """What was passed (``out_dir`` and ``results_path`` not included)."""
    folder: Path
    status: str = "pending"
    """pending, done (now or before: skipped), or failed."""
    skipped: bool = False
    """Done before, with the same notebook and parameters: not run again."""
    error: str | None = None
    seconds: float | None = None
    headline: dict[str, Any] = field(default_factory=dict)
    notebook: Path | None = None
    """The executed copy."""
    html: Path | None = None
    """Its HTML export."""

    def record(self) -> dict[str, Any]:
        return {"parameters": self.parameters, "status": self.status, "error": self.error, "seconds": self.seconds,
                "headline": self.headline, "folder": self.folder.name,
                "notebook": self.notebook and self.notebook.name, "html": self.html and self.html.name}


def expand_grid(given: dict[str, list[Any]]) -> list[dict[str, Any]]:
    """Every combination of the values, the first axis varying slowest (``itertools.product``)."""
    names = list(given)
    return [dict(zip(names, combination)) for combination in itertools.product(*given.values())]


def run_folder_name(parameters: dict[str, Any]) -> str:
    """A folder name from a grid run's varying parameters (``k=16_d_sae=2304``); when a value needs
    other characters or the name grows long, a hash of the parameters keeps it unique."""
    pieces = []
    for name, value in parameters.items():
        shown = value if isinstance(value, str) else json.dumps(value)
        pieces.append(f"{name}={shown}")
    plain = "_".join(pieces)
    safe = re.sub(r"[^A-Za-z0-9._+=-]", "-", plain)[:60]
    if safe == plain:
        return safe or "run"
    return f"{safe}-{hashlib.sha1(json.dumps(parameters, sort_keys=True).encode()).hexdigest()[:8]}"


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _done_before(record_path: Path, notebook_sha: str, parameters: dict[str, Any]) -> dict | None:
    try:
        record = json.loads(record_path.read_text())
    except (FileNotFoundError, json.JSONDecodeError):
        return None
    same = (record.get("status") == "done" and record.get("notebook_sha256") == notebook_sha
            and record.get("parameters") == json.loads(json.dumps(parameters)))
    if same and all(record.get(key) and (record_path.parent / record[key]).is_file() for key in ("notebook", "html")):
        return record
    return None


def _error_text(error: BaseException) -> str:
    ename, evalue = getattr(error, "ename", None), getattr(error, "evalue", None)
    text = f"{ename}: {evalue}" if ename else f"{type(error).__name__}: {error}"
    return " ".join(text.split())[:500]


def execute_run(notebook: Path, run: Run, defaults: dict[str, Parameter], *, headline_keys: Sequence[str] = (),
                force: bool = False, kernel_name: str = "python3", cwd: Path | None = None) -> Run:
    """Run ``notebook`` with ``run.parameters`` into ``run.folder`` (executed copy, HTML, results,
    ``out/`` for ``out_dir``, ``report.json``), unless ``report.json`` says it finished before with
    the same notebook (sha256) and parameters and ``force`` is off. A failure is recorded there
    (status ``failed``, the error), not raised; the executed copy up to the failing cell and its
    HTML are kept."""
    from workbench.files import write_json

    folder = run.folder
    record_path = folder / "report.json"
    notebook_sha = _sha256(notebook)
    previous = None if force else _done_before(record_path, notebook_sha, run.parameters)
    if previous is not None:
        run.status, run.skipped, run.seconds = "done", True, previous.get("seconds")
        run.notebook, run.html = folder / previous["notebook"], folder / previous["html"]
        results = folder / "results.json"
        run.headline = (headline(json.loads(results.read_text()), headline_keys) if results.is_file()
                        else previous.get("headline", {}))
        return run

    folder.mkdir(parents=True, exist_ok=True)
    executed, results = folder / notebook.name, folder / "results.json"
    results.unlink(missing_ok=True)
    passed = dict(run.parameters)
    if "out_dir" in defaults:
        passed["out_dir"] = str((folder / "out").resolve())
    if "results_path" in defaults:
        passed["results_path"] = str(results.resolve())
    record = {"notebook_path": str(notebook), "notebook_sha256": notebook_sha, "parameters": run.parameters,
              "status": "running", "started": time.strftime("%Y-%m-%dT%H:%M:%S%z")}
    write_json(record_path, record)
    start = time.perf_counter()
    try:
        execute_notebook(notebook, executed, passed, cwd=cwd, kernel_name=kernel_name, progress_bar=True)
        run.status = "done"
    except Exception as error:  # a failing cell, a dead kernel: recorded, and the grid goes on
        run.status, run.error = "failed", _error_text(error)
    run.seconds = round(time.perf_counter() - start, 1)
    if executed.is_file():
        run.notebook = executed
        try:
            run.html = export_html(executed)
        except Exception as error:  # noqa: BLE001 -- a broken export fails the run, with the reason
            run.status, run.error = "failed", run.error or f"HTML export: {_error_text(error)}"
    elif run.status == "done":
        run.status, run.error = "failed", "papermill wrote no executed notebook"
    if results.is_file():
        try:
            run.headline = headline(json.loads(results.read_text()), headline_keys)
        except json.JSONDecodeError as error:
            run.status, run.error = "failed", run.error or f"results.json is not JSON: {error}"
    write_json(record_path, {**record, **run.record(), "notebook_path": str(notebook)}, default=str)
    return run


def _given(parameters: Sequence[tuple[str, str]]) -> dict[str, list[Any]]:
    given: dict[str, list[Any]] = {}
    for name, text in parameters:
        if name in given:
            raise ReportError(f"-p {name} given twice; for several values, separate them with commas: "
                              f"-p {name} A,B")
        given[name] = grid_values(text)
    return given


def run_report(
    notebook: str | Path,
    parameters: Sequence[tuple[str, str]] = (),
    out: str | Path | None = None,
    *,
    headline_keys: Sequence[str] = (),
    force: bool = False,
    kernel_name: str = "python3",
    log=None,
) -> list[Run]:
    """``workbench report``: run ``notebook`` (a short name or a path) with ``parameters``
    (``(name, text)`` pairs as typed after ``-p``) into ``out`` (default ``build/reports/NAME``).

    Everything is checked before anything runs or any folder is made. One combination of values
    runs in ``out`` itself; several (a grid) each in ``out/<name=value_...>/``, then
    ``out/index.html`` and ``out/grid.json`` compare them. Returns the runs; ``log`` gets the
    progress lines.
    """
    log = log or _say
    path = find_notebook(str(notebook))
    defaults = notebook_parameters(path)
    given = _given(parameters)
    check_parameters(path, given, defaults)
    for name, values in given.items():  # an int where the default is a float: the float (`-p lr 1` -> 1.0)
        if isinstance(defaults[name].default, float):
            given[name] = [float(v) if isinstance(v, int) and not isinstance(v, bool) else v for v in values]
    out = Path(out) if out is not None else Path("build") / "reports" / re.sub(r"^\d+[_-]", "", path.stem)
    combinations = expand_grid(given)
    axes = [name for name, values in given.items() if len(values) > 1]
    runs = [Run(c, out / run_folder_name({a: c[a] for a in axes}) if axes else out) for c in combinations]
    for i, run in enumerate(runs, 1):
        varying = " ".join(f"{a}={run.parameters[a]!r}" for a in axes)
        prefix = f"[{i}/{len(runs)}] {path.name}" + (f" {varying}" if varying else "")
        log(f"{prefix}: running in {run.folder}")
        execute_run(path, run, defaults, headline_keys=headline_keys, force=force, kernel_name=kernel_name)
        if run.skipped:
            log(f"{prefix}: done before with the same notebook and parameters, skipped (--force runs it again)")
        elif run.status == "failed":
            log(f"{prefix}: FAILED after {run.seconds:.0f} s: {run.error}")
        else:
            log(f"{prefix}: done in {run.seconds:.0f} s")
        if run.notebook:
            log(f"  executed notebook: {run.notebook}")
        if run.html:
            log(f"  HTML:              {run.html}")
        if (run.folder / "results.json").is_file():
            log(f"  results:           {run.folder / 'results.json'}")
        for key, value in run.headline.items():
            log(f"  {key}: {_format(value)}")
        if axes:  # after every run, so that the page shows a long grid's progress
            page = write_grid(out, path, axes, runs)
    if axes:
        log(f"index of {len(runs)} runs: {page}")
    return runs


def write_grid(out: Path, notebook: Path, axes: list[str], runs: list[Run]) -> Path:
    """``out/grid.json`` (every run's parameters, status, headline figures) and ``out/index.html``."""
    from workbench.files import write_json

    write_json(out / "grid.json", {"notebook": str(notebook), "axes": axes, "runs": [r.record() for r in runs]},
               default=str)
    return write_index(out, notebook, axes, runs)


def _say(line: str) -> None:
    print(line, flush=True)


# ---- the grid's index page


_INDEX_STYLE = """
body { font-family: system-ui, sans-serif; margin: 2em; color: #222; }
table { border-collapse: collapse; margin: 1em 0; font-size: 14px; }
th, td { border: 1px solid #ccc; padding: 4px 10px; text-align: right; vertical-align: top; }
th:first-child, td:first-child, td.text { text-align: left; }
td.text { max-width: 28em; }
tr.failed td { background: #fdecea; }
.charts svg { max-width: 100%; height: auto; }
"""


def _chart_svgs(axes: list[str], runs: list[Run]) -> list[str]:
    """Line charts of each numeric headline figure against the first numeric axis, one line per
    value of the other axes, up to three panels a chart, as evenly as they go (:func:`workbench.charts.line_chart`)."""
    from workbench.charts import line_chart

    done = [r for r in runs if r.status == "done"]
    keys = list(dict.fromkeys(k for r in done for k, v in r.headline.items()
                              if isinstance(v, (int, float)) and not isinstance(v, bool)))
    if not done or not keys:
        return []
    numeric = [a for a in axes if all(isinstance(r.parameters[a], (int, float)) for r in done)]
    x = (numeric or axes)[0]
    others = [a for a in axes if a != x]
    rows = []
    for r in done:
        row = {x: r.parameters[x], **{k: v for k, v in r.headline.items() if k in keys}}
        if len(others) == 1:
            row[others[0]] = r.parameters[others[0]]
        elif others:
            row["with"] = ", ".join(f"{a}={r.parameters[a]}" for a in others)
        rows.append(row)
    series = others[0] if len(others) == 1 else ("with" if others else None)
    per_chart = math.ceil(len(keys) / math.ceil(len(keys) / 3))  # 4 figures: 2 + 2, not 3 + 1
    return [line_chart(rows, keys[i:i + per_chart], x=x, series=series).svg for i in range(0, len(keys), per_chart)]


def write_index(out: Path, notebook: Path, axes: list[str], runs: list[Run]) -> Path:
    """``out/index.html``: one self-contained page (inline SVG, no script) with a table of every
    run's varying parameters, status and headline figures, each linked to its HTML report, and
    charts of the numeric figures."""
    from workbench.files import write_atomic

    keys = list(dict.fromkeys(k for r in runs for k in r.headline))
    fixed = {k: v for k, v in runs[0].parameters.items() if k not in axes} if runs else {}
    header = ["run", *axes, "status", *keys, "seconds"]
    rows = []
    for i, r in enumerate(runs, 1):
        link = f"{r.folder.name}/{r.html.name}" if r.html else None
        cells = [f'<td><a href="{html.escape(link)}">run {i}</a></td>' if link else f"<td>run {i}</td>"]
        cells += [f"<td>{html.escape(_format(r.parameters[a]))}</td>" for a in axes]
        status = r.status + (" (before)" if r.skipped else "") + (f": {r.error}" if r.error else "")
        cells.append(f'<td class="text">{html.escape(status)}</td>')
        for k in keys:
            value = r.headline.get(k)
            kind = ' class="text"' if isinstance(value, str) else ""
            cells.append(f"<td{kind}>{'' if value is None else html.escape(_format(value))}</td>")
        cells.append(f"<td>{'' if r.seconds is None else f'{r.seconds:.0f}'}</td>")
        rows.append(f'<tr class="{r.status}">' + "".join(cells) + "</tr>")
    charts = "".join(f"<div class='chart'>{svg[svg.find('<svg'):]}</div>" for svg in _chart_svgs(axes, runs))
    done, failed = sum(r.status == "done" for r in runs), sum(r.status == "failed" for r in runs)
    same = ("; the same in every run: " + html.escape(", ".join(f"{k}={_format(v)}" for k, v in fixed.items()))) if fixed else ""
    page = f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><title>{html.escape(notebook.name)}: {len(runs)} runs</title>
<style>{_INDEX_STYLE}</style></head>
<body>
<h1>{html.escape(notebook.name)}: {len(runs)} runs</h1>
<p>{done} done, {failed} failed, {len(runs) - done - failed} to run. Grid over {html.escape(", ".join(axes))}{same}.
Each run's report is linked from its row.</p>
<table class="wb-grid"><thead><tr>{"".join(f"<th>{html.escape(h)}</th>" for h in header)}</tr></thead>
<tbody>{"".join(rows)}</tbody></table>
<div class="charts">{charts}</div>
</body></html>
"""
    out.mkdir(parents=True, exist_ok=True)
    path = out / "index.html"
    write_atomic(path, lambda tmp: tmp.write_text(page, encoding="utf-8"))
    return path


# ---- python -m workbench.report IN OUT (make run)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m workbench.report", description=__doc__.split("\n\n")[0]
    )
    parser.add_argument("input", help="the notebook to run")
    parser.add_argument("output", help="where to write the executed copy")
    parser.add_argument("-p", "--parameter", nargs=2, action="append", default=[], metavar=("NAME", "VALUE"),
                        help="set a parameter (repeat for several); VALUE is a Python literal or a string")
    parser.add_argument("--cwd", help="working directory of the kernel (default: the current one)")
    parser.add_argument("--kernel", default="python3", help="Jupyter kernel name (default: python3)")
    args = parser.parse_args(argv)
    parameters = {name: _value(value) for name, value in args.parameter}
    execute_notebook(args.input, args.output, parameters, cwd=args.cwd, kernel_name=args.kernel,
                     progress_bar=True, log_output=False)
    print(f"executed notebook: {args.output}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
