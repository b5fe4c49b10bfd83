"""Bootstrap intervals: right width on data with a known answer, deterministic, paired."""

from __future__ import annotations

import math

import pytest
import torch

from workbench.metrics import reconstruction_metrics
from workbench.stats import bootstrap_sums, intervals, percentile_interval


def test_interval_of_a_mean_matches_the_normal_theory():
    x = torch.randn(2000, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    per_item = torch.stack([torch.ones_like(x), x], 1)  # (n, 2): count, value
    ci = intervals(per_item, {"mean": lambda t: t[:, 1] / t[:, 0]})["mean"]
    half = 1.96 * float(x.std()) / math.sqrt(len(x))
    assert ci.low < float(x.mean()) < ci.high
    assert (ci.high - ci.low) / 2 == pytest.approx(half, rel=0.1)


def test_resamples_are_seeded_and_keep_the_number_of_items():
    per_item = torch.arange(10, dtype=torch.float64)[:, None].expand(10, 2)
    a, b = bootstrap_sums(per_item, n_resamples=50, seed=3), bootstrap_sums(per_item, n_resamples=50, seed=3)
    assert torch.equal(a, b) and not torch.equal(a, bootstrap_sums(per_item, n_resamples=50, seed=4))
    ones = bootstrap_sums(torch.ones(10, 1), n_resamples=50)
    assert torch.all(ones == 10)


def test_a_paired_difference_is_tighter_than_either_side():
    g = torch.Generator().manual_seed(0)
    hardness = 3 * torch.randn(500, generator=g, dtype=torch.float64)  # shared by both variants
    a, b = hardness + 0.1 * torch.randn(500, generator=g, dtype=torch.float64), hardness + 0.2
    ci = intervals(torch.stack([a, b], 1), {"a": lambda t: t[:, 0] / 500, "diff": lambda t: (t[:, 1] - t[:, 0]) / 500})
    assert ci["diff"].low < 0.2 < ci["diff"].high
    assert ci["diff"].high - ci["diff"].low < 0.1 * (ci["a"].high - ci["a"].low)


def test_nans_are_left_out():
    assert percentile_interval(torch.tensor([float("nan"), 1.0, 2.0, 3.0])).low >= 1.0
    assert math.isnan(percentile_interval(torch.tensor([float("nan")])).low)


class _Half(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.W_dec = torch.nn.Parameter(torch.zeros(4, 8))

    def forward(self, x):
        return type("Out", (), {"x_hat": 0.5 * x, "feature_acts": torch.ones(x.shape[0], 4)})()


def test_fvu_interval_over_contexts():
    """x_hat = x / 2 leaves a quarter of the energy; contexts are the bootstrap's unit."""
    g = torch.Generator().manual_seed(0)
    contexts = torch.randn(64, 16, 8, generator=g)  # mean ~0, so FVU ~0.25
    by_context = reconstruction_metrics(_Half(), contexts.split(8))
    flat = reconstruction_metrics(_Half(), (c.flatten(0, 1) for c in contexts.split(8)))
    assert by_context.fvu == pytest.approx(flat.fvu) and flat.fvu_ci is None
    assert by_context.n_contexts == 64 and by_context.fvu_ci.low < by_context.fvu < by_context.fvu_ci.high
    assert by_context.to_dict()["ci"]["fvu"] == list(by_context.fvu_ci)
