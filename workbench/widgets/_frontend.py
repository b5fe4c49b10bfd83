"""Where the widgets' front-end files (ES modules and CSS) are: one folder for every widget."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import anywidget


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


class StaticHTMLWidget(anywidget.AnyWidget):
    """An anywidget whose display data also carries ``to_html()`` as ``text/html``: the static
    rendering an executed notebook and its HTML export show without a kernel."""

    def to_html(self) -> str:
        raise NotImplementedError

    def _repr_mimebundle_(self, **kwargs: Any) -> tuple[dict, dict] | None:
        bundle = super()._repr_mimebundle_(**kwargs)
        if bundle is None:
            return None
        data, metadata = bundle
        return {**data, "text/html": self.to_html()}, metadata
