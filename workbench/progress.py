"""Progress bars that read well in a terminal, a live notebook and an executed notebook.

:func:`progress_bar` is a drop-in for ``tqdm(...)``. Outside a Jupyter kernel it *is* plain
tqdm, writing to stderr. Inside a kernel it draws the bar as a small piece of HTML (with a
text/plain twin) in one display that is updated in place, instead of tqdm.notebook's
ipywidgets: a widget's saved output is its initial state (an executed notebook showed every
bar frozen at 0%) and needs a widget manager to show at all, whereas this display's last
update is what papermill and nbconvert keep, e.g. ``capture: 100% 150k/150k [00:41<00:00]``.

Example::

    with progress_bar(total=n, desc="capture", unit="tok", unit_scale=True) as bar:
        for batch in batches:
            ...
            bar.update(len(batch))

    for ids in progress_bar(batches, desc="loss recovered", disable=not progress):
        ...
"""

from __future__ import annotations

import html
import re
import sys
from collections.abc import Iterable
from typing import Any

from tqdm.std import tqdm

__all__ = ["progress_bar"]


def progress_bar(
    iterable: Iterable | None = None,
    *,
    total: float | None = None,
    desc: str | None = None,
    unit: str = "it",
    unit_scale: bool | float = False,
    disable: bool | None = False,
    initial: float = 0,
    leave: bool | None = True,
    **kwargs: Any,
) -> tqdm:
    """A tqdm bar: HTML updated in place in a Jupyter kernel, plain tqdm on stderr elsewhere.

    Takes tqdm's arguments (any other keyword goes to tqdm as is) and returns a ``tqdm``:
    iterate over it, or use it as a context manager and call ``.update(n)``,
    ``.set_postfix_str(...)``, ``.close()``. In a kernel, ``leave=False`` removes the bar
    when it closes, and a bar closed before reaching its total (an exception, a break) is
    drawn red with its last count.
    """
    kwargs.update(total=total, desc=desc, unit=unit, unit_scale=unit_scale, disable=disable,
                  initial=initial, leave=leave)
    if _in_kernel():
        return _KernelBar(iterable, **kwargs)
    return tqdm(iterable, **kwargs)


def _in_kernel() -> bool:
    """Whether this process is a Jupyter kernel (an IPython shell with a kernel attached)."""
    ipython = sys.modules.get("IPython")  # a kernel has imported it; nothing else needs to
    if ipython is None:
        return False
    shell = ipython.get_ipython()
    return shell is not None and getattr(shell, "kernel", None) is not None


_COLOURS = {"running": "#4a90d9", "done": "#3c9a5f", "stopped": "#d9534f", "unknown": "#9bb8d9"}


class _KernelBar(tqdm):
    """tqdm drawing into one IPython display (HTML + plain text), created on the first draw.

    tqdm's ``gui=True`` mode keeps the counting, rate and throttling (``mininterval``) and
    leaves all drawing to :meth:`display`; nothing is written to stderr.
    """

    monitor_interval = 0  # no monitor thread: a draw from another thread could land in another cell

    def __init__(self, iterable: Iterable | None = None, **kwargs: Any) -> None:
        kwargs["gui"] = True
        kwargs["disable"] = bool(kwargs.get("disable"))  # tqdm's None means "no TTY": a kernel has none
        kwargs.setdefault("mininterval", 0.5)  # each draw is a message to the front end
        self._handle = None
        self._state = "running"
        super().__init__(iterable, **kwargs)
        if not self.disable and self.delay <= 0:
            self.display()

    def display(self, msg: str | None = None, pos: int | None = None) -> bool:
        """Draw the current state; ``msg=""`` clears the display (tqdm's signal)."""
        from IPython.display import display

        bundle = {"text/plain": ""} if msg == "" else self._bundle()
        if self._handle is None:
            if msg == "":
                return True
            self._handle = display(bundle, raw=True, display_id=True)
        else:
            self._handle.update(bundle, raw=True)
        return True

    def _bundle(self) -> dict[str, str]:
        """The bar as HTML (inline styles, no script) and as tqdm's own text line."""
        meter = dict(self.format_dict)
        meter["bar_format"] = "{l_bar}\0{r_bar}"
        left, _, right = self.format_meter(**meter).partition("\0")
        left, right = (re.sub(r"\s+", " ", part.strip("|")).strip() for part in (left, right))
        fraction = min(max(self.n / self.total, 0.0), 1.0) if self.total else 1.0
        state = self._state if self.total or self._state == "stopped" else "unknown"
        colour = _COLOURS[state]
        text = f"{left} {right}".strip()
        markup = (
            '<div class="wb-progress" style="display: flex; align-items: center; gap: 8px; '
            'font-family: ui-monospace, SFMono-Regular, Menlo, Consolas, monospace; font-size: 12px">'
            f'<span style="white-space: nowrap">{html.escape(left)}</span>'
            '<span style="flex: 0 0 16em; height: 10px; background: #e6e6e6; border-radius: 3px; '
            f'overflow: hidden"><span style="display: block; height: 100%; width: {fraction:.1%}; '
            f'background: {colour}"></span></span>'
            f'<span style="white-space: nowrap">{html.escape(right)}</span></div>'
        )
        return {"text/html": markup, "text/plain": text}

    def __iter__(self):
        try:
            yield from super().__iter__()
        except BaseException:
            self._state = "stopped"
            raise

    def __exit__(self, exc_type, exc_value, traceback) -> None:
        if exc_type is not None:
            self._state = "stopped"
        return super().__exit__(exc_type, exc_value, traceback)

    def close(self) -> None:
        if self.disable:
            return
        super().close()  # marks it closed; draws nothing in gui mode
        if self.total and self.n < self.total:
            self._state = "stopped"
        if self.leave is not False or self._state == "stopped":
            if self._state == "running":
                self._state = "done"
            self._ema_dt = lambda: None  # the final line shows the overall rate
            self.display()
        else:
            self.display(msg="")

    def clear(self, *args: Any, **kwargs: Any) -> None:
        pass
