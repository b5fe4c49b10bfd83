"""Charts for notebooks and their exports: small SVG drawn by matplotlib, no JavaScript.

A :class:`Chart` is finished SVG markup (text kept as text, a few kB to a few tens of kB)
that shows the same in a live notebook, in the executed copy papermill writes and in its
``jupyter nbconvert --to html`` export, offline. Charts draw numbers computed elsewhere:
:func:`histogram` takes counts and bin edges (bin in Python first, e.g. with
``torch.histogram`` or :func:`workbench.metrics.density_histogram`), never raw values.

:class:`LiveChart` follows a training run: it is a :func:`workbench.train.train` callback
that shows one chart under the cell and redraws it in place as history rows arrive, so the
executed notebook holds it once, in its final state.

Example::

    counts, edges = torch.histogram(stats.norms, bins=100)
    display(histogram(counts, edges, title="Activation norms", xlabel="L2 norm", log_y=True))

    chart = LiveChart(["loss", "l0", "dead_fraction"]).show()
    train(sae, batches, cfg, callbacks=[chart])

    display(zf_plot(evaluation.afa))  # the ZF pairs and epsilon-LBO that workbench.afa computed
"""

from __future__ import annotations

import io
import math
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from jaxtyping import Float
from torch import Tensor

if TYPE_CHECKING:
    from matplotlib.figure import Figure

    from workbench.afa import AFAMetrics
    from workbench.train import TrainState

__all__ = ["Chart", "LiveChart", "Table", "histogram", "interval_chart", "line_chart", "table", "zf_plot"]

_STYLE = {
    "svg.fonttype": "none",  # text stays text: smaller, selectable, drawn in the page's font
    "font.size": 9,
    "axes.titlesize": 10,
    "axes.spines.top": False,
    "axes.spines.right": False,
    "axes.grid": True,
    "grid.alpha": 0.3,
    "figure.dpi": 100,
    "axes.formatter.useoffset": False,
}
_COLOUR = "#1f77b4"
_WIDTH = 7.5  # inches: 540 pt, i.e. 720 CSS px, about a notebook output area's width


@dataclass(frozen=True)
class Chart:
    """A finished chart: SVG markup shown in notebooks and HTML exports without JavaScript."""

    svg: str
    """The chart as a standalone SVG document."""
    title: str = ""
    """What the chart shows, in words (its text/plain form)."""

    def _repr_mimebundle_(self, include: Any = None, exclude: Any = None) -> dict[str, str]:
        return {"image/svg+xml": self.svg, "text/plain": f"Chart({self.title!r})"}

    def __repr__(self) -> str:
        return f"Chart({self.title!r}, {len(self.svg):,} bytes of SVG)"


def _figure(width: float, height: float, panels: int = 1) -> tuple[Figure, list]:
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width, height), layout="constrained")
    axes = fig.subplots(1, panels, squeeze=False)[0]
    return fig, list(axes)


def _to_chart(fig: Figure, title: str) -> Chart:
    buffer = io.StringIO()
    fig.savefig(buffer, format="svg", metadata={"Date": None})
    return Chart(buffer.getvalue(), title)


def histogram(
    counts: Float[Tensor, " bins"] | Sequence[float],
    edges: Float[Tensor, " bins_plus_1"] | Sequence[float],
    *,
    title: str = "",
    xlabel: str = "",
    ylabel: str = "count",
    log_y: bool = False,
    height: float = 2.8,
) -> Chart:
    """Bars of already-binned ``counts`` between consecutive ``edges`` (one more edge than counts).

    ``log_y`` puts the counts on a log scale (empty bins are left blank).
    """
    import matplotlib

    counts, edges = _floats(counts), _floats(edges)
    if len(edges) != len(counts) + 1:
        raise ValueError(f"need one more edge than counts; got {len(counts)} counts and {len(edges)} edges")
    with matplotlib.rc_context(_STYLE):
        fig, (ax,) = _figure(_WIDTH, height)
        floor = 0.0
        if log_y:
            ax.set_yscale("log")
            floor = 0.5  # empty bins sit on the baseline, invisible on a log axis
            counts = [max(c, floor) for c in counts]
        ax.stairs(counts, edges, baseline=floor, fill=True, color=_COLOUR, alpha=0.85)
        ax.set(title=title, xlabel=xlabel, ylabel=ylabel)
        ax.set_xlim(edges[0], edges[-1])
        if log_y:
            ax.set_ylim(bottom=floor)
        return _to_chart(fig, title)


def line_chart(
    rows: Iterable[dict[str, Any]],
    keys: Sequence[str],
    *,
    x: str = "step",
    titles: Sequence[str] | None = None,
    series: str | None = "sae",
    title: str = "",
    height: float = 2.4,
) -> Chart:
    """One panel per key in ``keys``: ``row[key]`` against ``row[x]`` over ``rows``.

    Rows are history rows such as :attr:`workbench.train.TrainResult.history`; with several
    values of ``row[series]`` (several SAEs trained together) each gets its own line.
    """
    import matplotlib

    rows = list(rows)
    titles = list(titles) if titles is not None else list(keys)
    if len(titles) != len(keys):
        raise ValueError(f"need one title per key; got {len(keys)} keys and {len(titles)} titles")
    groups: dict[Any, list[dict[str, Any]]] = {}
    for row in rows:
        groups.setdefault(row.get(series) if series else None, []).append(row)
    with matplotlib.rc_context(_STYLE):
        fig, axes = _figure(_WIDTH + 1.5, height, panels=len(keys))
        for ax, key, panel_title in zip(axes, keys, titles):
            drawn = []
            for name, group in groups.items():
                points = [(r[x], r[key]) for r in group if _finite(r.get(key))]
                label = f"{series} {name}" if len(groups) > 1 else None
                ax.plot([p[0] for p in points], [p[1] for p in points], linewidth=1.2, label=label)
                drawn += [p[1] for p in points]
            ax.set(title=panel_title, xlabel=x)
            if drawn and min(drawn) >= 0:  # from 0: a steady L0 of 32 reads as steady, not as noise
                ax.set_ylim(0, max(drawn) * 1.05 or 1)
        if len(groups) > 1:
            axes[-1].legend(fontsize=8, frameon=False)
        if title:
            fig.suptitle(title)
        return _to_chart(fig, title or ", ".join(titles))


def interval_chart(
    groups: Sequence[str],
    series: dict[str, Sequence[tuple[float, float, float]]],
    *,
    title: str = "",
    ylabel: str = "",
    reference: float | None = None,
    height: float = 2.8,
) -> Chart:
    """Points with 95% intervals: for each name in ``series``, one ``(value, low, high)`` per group
    (e.g. the mean score of each dictionary per scorer), side by side. ``reference`` draws a dashed
    horizontal line (e.g. chance). NaN values are left out."""
    import matplotlib

    groups = list(groups)
    for name, values in series.items():
        if len(values) != len(groups):
            raise ValueError(f"series {name!r} has {len(values)} values for {len(groups)} groups")
    with matplotlib.rc_context(_STYLE):
        fig, (ax,) = _figure(_WIDTH, height)
        width = 0.7 / max(len(series), 1)
        for j, (name, values) in enumerate(series.items()):
            shift = (j - (len(series) - 1) / 2) * width
            points = [(i + shift, v, lo, hi) for i, (v, lo, hi) in enumerate(values) if _finite(v)]
            xs = [p[0] for p in points]
            ys = [p[1] for p in points]
            errors = [[max(p[1] - p[2], 0) if _finite(p[2]) else 0 for p in points],
                      [max(p[3] - p[1], 0) if _finite(p[3]) else 0 for p in points]]
            ax.errorbar(xs, ys, yerr=errors, fmt="o", capsize=3, markersize=4, label=name if len(series) > 1 else None)
        if reference is not None:
            ax.axhline(reference, color="grey", linestyle="--", linewidth=0.8)
        ax.set_xticks(range(len(groups)), groups)
        ax.set_xlim(-0.6, len(groups) - 0.4)
        ax.set(title=title, ylabel=ylabel)
        if len(series) > 1:
            ax.legend(fontsize=8, frameon=False)
        return _to_chart(fig, title)


class LiveChart:
    """A :func:`line_chart` of training history that redraws in place while training runs.

    Pass it to :func:`workbench.train.train` as a callback. :meth:`show` displays it once
    under the cell (with a display id); every ``on_log`` redraws that display, at most once
    per ``min_interval`` seconds and never so often that drawing takes more than 5% of the
    time, and ``on_train_end`` draws the final state. In a kernel you watch it grow;
    papermill's executed copy holds the chart once, finished.
    """

    def __init__(
        self,
        keys: Sequence[str] = ("loss", "l0", "dead_fraction"),
        *,
        titles: Sequence[str] | None = None,
        x: str = "step",
        title: str = "",
        min_interval: float = 1.0,
    ) -> None:
        self.keys, self.titles, self.x, self.title = list(keys), titles, x, title
        self.min_interval = min_interval
        self.rows: list[dict[str, Any]] = []
        self._display = None
        self._drawn_at = -math.inf
        self._draw_seconds = 0.0  # how long the last redraw took

    def chart(self) -> Chart:
        """The chart of the rows seen so far."""
        return line_chart(self.rows, self.keys, x=self.x, titles=self.titles, title=self.title)

    def show(self) -> LiveChart:
        """Display the chart under the current cell (once; later updates replace it)."""
        from IPython.display import display

        self._display = display(self.chart(), display_id=True)
        self._drawn_at = time.monotonic()
        return self

    def update(self, rows: Iterable[dict[str, Any]], *, force: bool = False) -> None:
        """Take ``rows`` as the whole history and redraw the shown chart (if shown), unless
        it was drawn too recently and ``force`` is false."""
        self.rows = list(rows)
        wait = max(self.min_interval, 20 * self._draw_seconds)
        if self._display is None or not (force or time.monotonic() - self._drawn_at >= wait):
            return
        started = time.monotonic()
        self._display.update(self.chart())
        self._drawn_at = time.monotonic()
        self._draw_seconds = self._drawn_at - started

    def on_log(self, state: TrainState) -> None:
        self.update(state.history)

    def on_train_end(self, state: TrainState) -> None:
        self.update(state.history, force=True)

    def _repr_mimebundle_(self, include: Any = None, exclude: Any = None) -> dict[str, str]:
        return self.chart()._repr_mimebundle_()


def _floats(values: Any) -> list[float]:
    if hasattr(values, "tolist"):
        values = values.tolist()
    return [float(v) for v in values]


def _finite(value: Any) -> bool:
    return isinstance(value, (int, float)) and math.isfinite(value)


@dataclass(frozen=True)
class Table:
    """A small HTML table (with a plain-text twin) of figures computed elsewhere."""

    html: str
    text: str

    def _repr_mimebundle_(self, include: Any = None, exclude: Any = None) -> dict[str, str]:
        return {"text/html": self.html, "text/plain": self.text}


def table(rows: Sequence[Sequence[str]], header: Sequence[str]) -> Table:
    """A table of already formatted strings, first column left-aligned, the others right-aligned."""
    from html import escape

    def cells(row, tag):
        return "".join(f"<{tag} style='text-align:{'left' if i == 0 else 'right'}'>{escape(str(v))}</{tag}>"
                       for i, v in enumerate(row))

    html = ("<table class='wb-table'><thead><tr>" + cells(header, "th") + "</tr></thead><tbody>"
            + "".join(f"<tr>{cells(row, 'td')}</tr>" for row in rows) + "</tbody></table>")
    widths = [max(len(str(row[i])) for row in [header, *rows]) for i in range(len(header))]
    text = "\n".join("  ".join(str(v).ljust(w) for v, w in zip(row, widths)) for row in [header, *rows])
    return Table(html, text)


ZF_SCATTER_MAX = 2000
"""Up to this many points :func:`zf_plot` draws each one; beyond, their 2-D density."""


def zf_plot(afa: AFAMetrics, *, title: str | None = None, size: float = 4.2, bins: int = 80) -> Chart:
    """The ZF plot of Lee et al. 2025: ``||z||`` (x) against ``||f~||`` (y) per token, with y = x.

    Draws the ZF pairs that :func:`workbench.afa.afa_metrics` kept (``afa.norm_z``,
    ``afa.norm_f``): each point up to :data:`ZF_SCATTER_MAX` of them, else their density over a
    ``bins`` x ``bins`` grid (log colour scale), so the SVG stays small; both raster, the axes,
    text and the dashed y = x line (SVG group id ``y_equals_x``) vector. Points under the line
    are tokens the SAE under-activates, points over it over-activated ones. The title gives the
    epsilon-LBO with its 95% interval and the number of tokens, unless ``title`` is given.
    """
    import matplotlib
    import numpy as np

    z, f = afa.norm_z.double().cpu(), afa.norm_f.double().cpu()
    if z.shape != f.shape or z.dim() != 1:
        raise ValueError(f"need as many norm_z as norm_f values, got shapes {tuple(z.shape)} and {tuple(f.shape)}")
    if title is None:
        ci = afa.eps_lbo_ci
        interval = "" if ci is None else f" (95% {ci.low:.3g} to {ci.high:.3g})"
        title = f"ZF plot: εLBO {afa.eps_lbo:.3g}{interval}, {afa.n_tokens:,} tokens"
    top = max(float(z.max()) if len(z) else 0.0, float(f.max()) if len(f) else 0.0) * 1.05 or 1.0
    with matplotlib.rc_context(_STYLE):
        fig, (ax,) = _figure(size + 1.6, size)  # room for the title and the density's colour bar
        if len(z) <= ZF_SCATTER_MAX:
            ax.scatter(z.numpy(), f.numpy(), s=6, color=_COLOUR, alpha=0.5, linewidths=0, rasterized=True)
        else:
            counts, _ = np.histogramdd((z.numpy(), f.numpy()), bins=bins, range=[(0, top), (0, top)])
            shown = np.ma.masked_equal(counts.T, 0)
            image = ax.imshow(shown, origin="lower", extent=(0, top, 0, top), aspect="auto", cmap="Blues",
                              norm=matplotlib.colors.LogNorm(vmin=1, vmax=max(counts.max(), 1)),
                              interpolation="nearest", rasterized=True)
            fig.colorbar(image, ax=ax, label="tokens", shrink=0.8)
        ax.plot([0, top], [0, top], linestyle="--", color="#d62728", linewidth=1.2, gid="y_equals_x", label="y = x")
        ax.set(xlim=(0, top), ylim=(0, top), title=title, xlabel="‖z‖  (norm of the SAE's input: the AFA)",
               ylabel="‖f̃‖  (decoder-weighted feature activations)")
        ax.set_aspect("equal")
        ax.legend(loc="upper left", fontsize=8, frameon=False)
        return _to_chart(fig, title)


def curve_panels(
    panels: dict[str, dict[str, Sequence[tuple[float, float]]]],
    *,
    xlabel: str = "",
    ylabel: str = "",
    log_x: bool = False,
    log_y: bool = False,
    references: dict[str, float] | None = None,
    title: str = "",
    height: float = 2.8,
) -> Chart:
    """One panel per key of ``panels`` (e.g. a layer), each with one line per series (e.g. a
    dictionary) through its ``(x, y)`` points, sorted by x. ``references`` draws a dashed
    horizontal line in the panels it names (e.g. a target). Points that are not finite, or not
    positive on a log axis, are left out."""
    import matplotlib

    references = references or {}
    with matplotlib.rc_context(_STYLE):
        fig, axes = _figure(_WIDTH + 1.5, height, panels=max(len(panels), 1))
        for ax, (panel, series) in zip(axes, panels.items()):
            for name, points in series.items():
                kept = sorted((float(a), float(b)) for a, b in points if _finite(a) and _finite(b)
                              and (not log_x or a > 0) and (not log_y or b > 0))
                ax.plot([p[0] for p in kept], [p[1] for p in kept], marker="o", markersize=2.5, linewidth=1.1,
                        label=name)
            if panel in references:
                ax.axhline(references[panel], color="grey", linestyle="--", linewidth=0.8)
            if log_x:
                ax.set_xscale("log")
            if log_y:
                ax.set_yscale("log")
            ax.set(title=panel, xlabel=xlabel)
        axes[0].set_ylabel(ylabel)
        if panels:
            axes[-1].legend(fontsize=7, frameon=False)
        if title:
            fig.suptitle(title)
        return _to_chart(fig, title or ylabel)
