"""Model-free SAE metrics, checked against values worked out by hand."""

from __future__ import annotations

import json
import math
from typing import NamedTuple

import pytest
import torch
from torch import nn

from workbench.metrics import DensityHistogram, density_histogram, reconstruction_metrics
from workbench.sae import SAE, SAEConfig


class Forward(NamedTuple):
    x_hat: torch.Tensor
    feature_acts: torch.Tensor


class HandSAE(nn.Module):
    """f = relu(x @ W_enc), x_hat = f @ W_dec: feature 0 copies x0, feature 1 copies x1 but
    decodes at half size, feature 2 never fires."""

    def __init__(self):
        super().__init__()
        self.W_enc = nn.Parameter(torch.tensor([[1.0, 0.0, 0.0], [0.0, 1.0, 0.0]]))
        self.W_dec = nn.Parameter(torch.tensor([[1.0, 0.0], [0.0, 0.5], [7.0, 7.0]]))

    def forward(self, x):
        f = torch.relu(x @ self.W_enc)
        return Forward(f @ self.W_dec, f)


X = torch.tensor([[1.0, 0.0], [0.0, 2.0], [0.0, 0.0], [3.0, 0.0]])


def test_hand_built_case_exact_values():
    m = reconstruction_metrics(HandSAE(), [X], dense_threshold=0.3)
    # Only token 1 is off: x=(0,2), x_hat=(0,1). Deviations from the mean (1, .5) total 9.
    assert m.n_tokens == 4
    assert m.mse_per_token == pytest.approx(1 / 4) and m.mse_per_element == pytest.approx(1 / 8)
    assert m.fvu == pytest.approx(1 / 9) and m.explained_variance == pytest.approx(8 / 9)
    # Per-token L0 is [1, 1, 0, 1].
    assert m.l0_mean == pytest.approx(0.75) and m.l0_std == pytest.approx(math.sqrt(0.1875))
    assert m.l0_quantiles == {"q05": 0.0, "q25": 0.0, "q50": 1.0, "q75": 1.0, "q95": 1.0}
    assert m.feature_density.tolist() == [0.5, 0.25, 0.0]
    assert m.dead_fraction == pytest.approx(1 / 3) and m.dense_fraction == pytest.approx(1 / 3)
    assert m.dense_threshold == 0.3


def test_streaming_matches_one_batch():
    whole = reconstruction_metrics(HandSAE(), [X])
    pieces = reconstruction_metrics(HandSAE(), [X[:1], X[1:1], X[1:3].reshape(1, 2, 2), X[3:]])
    a, b = pieces.to_dict(), whole.to_dict()
    assert a.pop("l0_quantiles") == b.pop("l0_quantiles") and a.pop("ci") == b.pop("ci") == {}
    assert a.pop("n_contexts") is b.pop("n_contexts") is None  # mixed shapes: no per-context sums
    assert a == pytest.approx(b, rel=1e-12)
    assert torch.equal(pieces.feature_density, whole.feature_density)
    # Variance merging stays exact far from the origin.
    offset = reconstruction_metrics(HandSAE(), [X[:2] + 1e4, X[2:] + 1e4])
    direct = reconstruction_metrics(HandSAE(), [X + 1e4])
    assert offset.fvu == pytest.approx(direct.fvu, rel=1e-9)
    assert reconstruction_metrics(HandSAE(), iter([X[:2], X[2:]]), max_batches=1).n_tokens == 2


def test_to_dict_is_json_and_leaves_out_the_density():
    m = reconstruction_metrics(HandSAE(), [X])
    d = json.loads(json.dumps(m.to_dict()))
    assert "feature_density" not in d and d["d_sae"] == 3 and d["n_tokens"] == 4
    assert json.loads(json.dumps(m.feature_density_list())) == [0.5, 0.25, 0.0]


def test_no_tokens_and_bad_threshold_raise():
    with pytest.raises(ValueError, match="no tokens"):
        reconstruction_metrics(HandSAE(), [])
    with pytest.raises(ValueError, match="dense_threshold"):
        reconstruction_metrics(HandSAE(), [X], dense_threshold=2.0)


def test_perfect_real_sae_has_zero_fvu():
    d_in = 4
    sae = SAE.from_config(SAEConfig(architecture="relu", d_in=d_in, d_sae=2 * d_in + 1, l1_coefficient=1e-3))
    eye = torch.eye(d_in)
    with torch.no_grad():  # features 0..3 carry x+, 4..7 carry x-, feature 8 never fires
        for p in sae.parameters():
            p.zero_()
        sae.W_enc[:, : 2 * d_in] = torch.cat([eye, -eye], dim=1)
        sae.W_dec[: 2 * d_in] = torch.cat([eye, -eye], dim=0)
        sae.W_dec[2 * d_in] = torch.ones(d_in) / 2
    x = torch.randn(64, d_in)
    x[:, 0] = x[:, 0].abs() + 0.1  # feature 0 fires on every token, feature 4 never
    m = reconstruction_metrics(sae, [x[:40], x[40:]], dense_threshold=0.9)
    assert m.fvu == pytest.approx(0.0, abs=1e-10) and m.mse_per_token == pytest.approx(0.0, abs=1e-10)
    assert m.n_tokens == 64 and m.dead_fraction == pytest.approx(2 / 9)
    assert m.feature_density[0] == 1.0 and m.dense_fraction == pytest.approx(1 / 9)
    assert m.l0_mean == pytest.approx(4.0)  # every coordinate is nonzero: one of each pair fires


def test_density_histogram():
    density = torch.tensor([0.0, 0.0, 1e-3, 1e-2, 0.5, 1.0])
    h = density_histogram(density, bins=3, range=(-3.0, 0.0))
    assert isinstance(h, DensityHistogram)
    assert h.edges.tolist() == [-3.0, -2.0, -1.0, 0.0]
    assert h.counts.tolist() == [1, 1, 2] and h.n_dead == 2
    default = density_histogram(density)
    assert default.edges[0] == -3.0 and default.edges[-1] == 0.0 and len(default.counts) == 50
    assert int(default.counts.sum()) == 4 and default.n_dead == 2
    clipped = density_histogram(density, bins=[-2.0, -1.0, 0.0])  # 1e-3 clips into the first bin
    assert clipped.counts.tolist() == [2, 2]
    everyone_dead = density_histogram(torch.zeros(5), bins=4)
    assert everyone_dead.counts.tolist() == [0, 0, 0, 0] and everyone_dead.n_dead == 5
    with pytest.raises(ValueError):
        density_histogram(density, bins=[0.0])
