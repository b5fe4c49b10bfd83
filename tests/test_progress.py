"""workbench.progress: plain tqdm outside a kernel; in a kernel, one display updated in place."""

from __future__ import annotations

import pytest
from tqdm.std import tqdm

from workbench import progress
from workbench.progress import progress_bar


class Handle:
    """Stands in for IPython's DisplayHandle: remembers every bundle shown."""

    def __init__(self, shown: list[dict]):
        self.shown = shown

    def update(self, bundle: dict, raw: bool = False) -> None:
        assert raw
        self.shown.append(bundle)


@pytest.fixture
def kernel(monkeypatch) -> list[dict]:
    """Pretend to run in a kernel; returns the list of bundles drawn (one display)."""
    import IPython.display

    shown: list[dict] = []
    displays = []

    def display(bundle, raw=False, display_id=None):
        assert raw and display_id is True
        displays.append(bundle)
        shown.append(bundle)
        return Handle(shown)

    monkeypatch.setattr(progress, "_in_kernel", lambda: True)
    monkeypatch.setattr(IPython.display, "display", display)
    yield shown
    assert len(displays) <= 1, "a bar is displayed once and then updated in place"


def test_outside_a_kernel_it_is_plain_tqdm_on_stderr(capsys):
    assert not progress._in_kernel()
    bar = progress_bar(range(3), desc="plain", disable=False)
    assert type(bar) is tqdm
    assert list(bar) == [0, 1, 2]
    err = capsys.readouterr().err
    assert "plain: 100%" in err and "3/3" in err


def test_in_a_kernel_the_display_ends_in_the_final_state(kernel):
    with progress_bar(total=3000, desc="capture", unit="tok", unit_scale=True, mininterval=0) as bar:
        for _ in range(3):
            bar.update(1000)
    final = kernel[-1]
    assert final["text/plain"].startswith("capture: 100% 3.00k/3.00k [")
    assert "tok/s]" in final["text/plain"]
    assert "width: 100.0%" in final["text/html"] and "#3c9a5f" in final["text/html"]  # green: done
    assert kernel[0]["text/plain"].startswith("capture: 0% 0.00/3.00k [")  # drawn at once, then updated
    assert len(kernel) >= 4


def test_iterating_closes_the_bar_and_keeps_postfix(kernel):
    bar = progress_bar(range(4), desc="train", unit="step")
    for _ in bar:
        bar.set_postfix_str("loss=0.5", refresh=False)
    assert kernel[-1]["text/plain"].startswith("train: 100% 4/4 [")
    assert kernel[-1]["text/plain"].endswith("step/s, loss=0.5]")


def test_an_exception_leaves_the_bar_red_at_its_last_count(kernel):
    with pytest.raises(RuntimeError):
        with progress_bar(total=10, desc="eval") as bar:
            bar.update(4)
            raise RuntimeError("boom")
    assert kernel[-1]["text/plain"].startswith("eval: 40% 4/10 [")
    assert "#d9534f" in kernel[-1]["text/html"] and "width: 40.0%" in kernel[-1]["text/html"]


def test_leave_false_clears_and_disable_draws_nothing(kernel):
    for _ in progress_bar(range(2), leave=False):
        pass
    assert kernel[-1] == {"text/plain": ""}
    drawn = len(kernel)
    with progress_bar(total=5, disable=True) as bar:
        bar.update(5)
    assert len(kernel) == drawn


def test_html_escapes_the_description(kernel):
    with progress_bar(total=1, desc="<b>&") as bar:
        bar.update(1)
    assert "&lt;b&gt;&amp;" in kernel[-1]["text/html"] and "<b>" not in kernel[-1]["text/html"]


def test_unknown_total_shows_count_and_rate(kernel):
    for _ in progress_bar(iter(range(5)), desc="rows"):
        pass
    assert kernel[-1]["text/plain"].startswith("rows: 5/? [")
