"""Run a notebook as a report: papermill with parameters, into an executed copy.

The executed copy is meant to be read, there and in its plain ``jupyter nbconvert --to html``
export, with no kernel and no network. So the run stores no widget state: nbconvert draws a
widget's live view (JavaScript from a CDN) only for widgets whose state the notebook stores,
and otherwise the static ``text/html`` every workbench widget carries. (papermill's command
line cannot say so; it passes the option on to nbclient when called from Python.)

Command line, as papermill's ``-p``::

    python -m workbench.report notebooks/01_quickstart.ipynb build/notebooks/01_quickstart.ipynb \\
        -p out_dir build/01_quickstart -p tokens 3000
"""

from __future__ import annotations

import argparse
import ast
from pathlib import Path
from typing import Any

__all__ = ["execute_notebook"]


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


def _value(text: str) -> Any:
    """A ``-p`` value as papermill reads it: a Python literal (int, float, bool, None) or a string."""
    try:
        return ast.literal_eval(text)
    except (ValueError, SyntaxError):
        return text


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
    raise SystemExit(main())
