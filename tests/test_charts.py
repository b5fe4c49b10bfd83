"""workbench.charts: small SVG from binned data; the live chart redraws one display in place."""

from __future__ import annotations

import pytest
import torch

from workbench.charts import Chart, LiveChart, histogram, line_chart


def test_histogram_draws_binned_counts_as_one_small_svg():
    counts, edges = torch.histogram(torch.randn(100_000).abs(), bins=100)
    chart = histogram(counts, edges, title="norms", xlabel="L2 norm", log_y=True)
    assert chart.svg.lstrip().startswith("<?xml") and "</svg>" in chart.svg
    assert len(chart.svg) < 60_000
    assert ">norms<" in chart.svg and ">L2 norm<" in chart.svg  # text stays text
    bundle = chart._repr_mimebundle_()
    assert bundle == {"image/svg+xml": chart.svg, "text/plain": "Chart('norms')"}


def test_histogram_needs_one_more_edge_than_counts():
    with pytest.raises(ValueError, match="one more edge than counts"):
        histogram([1, 2, 3], [0.0, 1.0, 2.0])


def test_line_chart_has_a_panel_per_key_and_a_line_per_sae():
    rows = [{"step": s, "sae": i, "loss": 1 / s + i, "l0": 8.0} for s in range(1, 6) for i in (0, 1)]
    chart = line_chart(rows, ["loss", "l0"], titles=["loss", "L0"])
    assert chart.title == "loss, L0"
    assert ">sae 0<" in chart.svg and ">sae 1<" in chart.svg  # the legend
    with pytest.raises(ValueError, match="one title per key"):
        line_chart(rows, ["loss", "l0"], titles=["loss"])


class Handle:
    def __init__(self):
        self.updates: list[Chart] = []

    def update(self, obj):
        self.updates.append(obj)


def test_live_chart_shows_once_and_updates_in_place(monkeypatch):
    import IPython.display

    shown, handle = [], Handle()

    def display(obj, display_id=None):
        assert display_id is True
        shown.append(obj)
        return handle

    monkeypatch.setattr(IPython.display, "display", display)
    live = LiveChart(["loss"], min_interval=3600).show()
    history = []
    for step in range(1, 4):
        history.append({"step": step, "sae": 0, "loss": 1 / step})
        live.on_log(type("State", (), {"history": history})())
    assert len(shown) == 1 and handle.updates == []  # drawn less than min_interval ago
    live.on_train_end(type("State", (), {"history": history})())
    assert len(shown) == 1 and len(handle.updates) == 1  # the final state, in the same display
    assert handle.updates[0].title == "loss" and live.rows == history


def test_a_live_chart_never_shown_draws_nothing():
    live = LiveChart(["loss"])
    live.update([{"step": 1, "loss": 0.5}], force=True)
    assert live.rows == [{"step": 1, "loss": 0.5}]
    assert "image/svg+xml" in live._repr_mimebundle_()


def test_importing_charts_does_not_import_matplotlib():
    import subprocess
    import sys

    code = "import sys, workbench.charts; print('matplotlib' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "False"


def test_table_escapes_and_aligns():
    from workbench.charts import table

    t = table([("a <b>", "1.0", "0.9 to 1.1")], header=("figure", "value", "95% interval"))
    bundle = t._repr_mimebundle_()
    assert "a &lt;b&gt;" in bundle["text/html"] and "<th style='text-align:left'>figure</th>" in bundle["text/html"]
    assert bundle["text/plain"].splitlines()[1].startswith("a <b>")
