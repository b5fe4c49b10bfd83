"""Where the widgets' front-end files (ES modules and CSS) are: one folder for every widget."""

from __future__ import annotations

from pathlib import Path


def frontend_dir() -> Path:
    """The folder holding the front-end files: `workbench/_widgets` in a wheel,
    the top-level `widgets/` in a source checkout."""
    package = Path(__file__).resolve().parents[1]  # workbench/
    candidates = (package / "_widgets", package.parent / "widgets")
    for folder in candidates:
        if (folder / "token_heatmap.js").is_file():
            return folder
    raise FileNotFoundError(
        "workbench.widgets cannot find its front-end files (token_heatmap.js); looked in "
        + " and ".join(str(c) for c in candidates)
        + ". Reinstall workbench, or run from a checkout that has the top-level widgets/ folder."
    )


FRONTEND = frontend_dir()
"""The front-end folder of this installation."""
