"""AFA figures (Lee et al. 2025): exact values on hand-made SAEs, the orthogonal-decoder property,
agreement with a plain re-implementation of the reference code on every architecture and on
SAELens folders, streaming, bootstrap units, errors, the ZF chart and the evaluation's use of them."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from workbench.afa import AFAAccumulator, AFAMetrics, afa_metrics, eps_lbo, zf_points
from workbench.charts import ZF_SCATTER_MAX, zf_plot
from conftest import SPECS
from workbench.sae import SAE, SAEConfig
from workbench.stats import Interval, intervals



def relu_sae(W_enc, W_dec, b_dec, dtype="float64") -> SAE:
    """A ReLU SAE (encodes x - b_dec) with the given weights and b_enc = 0."""
    W_dec = torch.as_tensor(W_dec, dtype=torch.float64)
    sae = SAE.from_config(SAEConfig("relu", d_in=W_dec.shape[1], d_sae=W_dec.shape[0], dtype=dtype))
    with torch.no_grad():
        sae.W_enc.copy_(torch.as_tensor(W_enc))
        sae.b_enc.zero_()
        sae.W_dec.copy_(W_dec)
        sae.b_dec.copy_(torch.as_tensor(b_dec))
    return sae


def reference(x: np.ndarray, f: np.ndarray, W_dec: np.ndarray, b_dec: np.ndarray) -> tuple[np.ndarray, ...]:
    """Per token, line by line as SewoongLee/top-afa-sae visualization/zf-plot.ipynb: ztz, f_tilde,
    norm_z, norm_f, then df['elbo'] = |norm_z^2 - norm_f^2| / ((h - 1) norm_f^2)."""
    h = W_dec.shape[0]
    norm_z, norm_f, elbo = [], [], []
    for z_t, f_t in zip(x.reshape(-1, x.shape[-1]), f.reshape(-1, f.shape[-1])):
        ztz = z_t @ z_t
        f_norm = f_t * np.linalg.norm(W_dec, axis=1)
        f_tilde = np.append(f_norm, np.linalg.norm(b_dec))
        norm_z.append(np.sqrt(ztz))
        norm_f.append(np.sqrt(f_tilde @ f_tilde))
        elbo.append(abs(norm_z[-1] ** 2 - norm_f[-1] ** 2) / ((h - 1) * norm_f[-1] ** 2))
    return np.array(norm_z), np.array(norm_f), np.array(elbo)


def randomized(name: str, d_in=8, d_sae=24, dtype="float64", seed=0) -> SAE:
    """An SAE of every kind with random biases and decoder rows of unequal norms."""
    g = torch.Generator().manual_seed(seed)
    sae = SAE.from_config(SAEConfig(d_in=d_in, d_sae=d_sae, dtype=dtype, **SPECS[name]))
    with torch.no_grad():
        sae.W_dec.mul_(torch.rand(d_sae, 1, generator=g, dtype=torch.float64).to(sae.W_dec) * 2 + 0.2)
        sae.b_dec.copy_(0.5 * torch.randn(d_in, generator=g, dtype=torch.float64))
        if sae.b_enc is not None:
            sae.b_enc.copy_(0.2 * torch.randn(d_sae, generator=g, dtype=torch.float64))
        if name == "gated":
            sae.b_gate.copy_(0.2 * torch.randn(d_sae, generator=g, dtype=torch.float64))
        if name == "jumprelu":
            sae.log_threshold.copy_(torch.empty(d_sae, dtype=torch.float64).uniform_(-3, -1, generator=g))
    if name == "batchtopk":  # one training step sets the inference threshold
        sae.training_forward(torch.randn(64, d_in, generator=g, dtype=torch.float64))
    return sae


# ---- exact values ---------------------------------------------------------------------------
def test_hand_made_sae_exact_values():
    # W_dec rows of norms 2, 1, 3; b_dec = (1, 0). For x = (4, 4): x - b_dec = (3, 4), f = (3, 4, 0),
    # f~ = (6, 4, 0, 1): ||f~||^2 = 53, ||z||^2 = 32, eps = |32 - 53| / ((3 - 1) 53) = 21 / 106.
    # For x = (1, 2): f = (0, 2, 0), f~ = (0, 2, 0, 1): ||f~||^2 = 5, ||z||^2 = 5, eps = 0.
    sae = relu_sae(W_enc=[[1.0, 0.0, 0.0], [0.0, 1.0, 0.0]], W_dec=[[2.0, 0.0], [0.0, 1.0], [0.0, 3.0]],
                   b_dec=[1.0, 0.0])
    x = torch.tensor([[4.0, 4.0], [1.0, 2.0]], dtype=torch.float64)
    points = zf_points(sae, x)
    torch.testing.assert_close(points.norm_z, torch.tensor([32.0, 5.0], dtype=torch.float64).sqrt())
    torch.testing.assert_close(points.norm_f, torch.tensor([53.0, 5.0], dtype=torch.float64).sqrt())
    torch.testing.assert_close(eps_lbo(points.norm_z, points.norm_f, 3), torch.tensor([21 / 106, 0.0],
                                                                                       dtype=torch.float64))
    m = afa_metrics(sae, [x])
    assert m.eps_lbo == pytest.approx(21 / 212, rel=1e-12) and m.eps_lbo_median == pytest.approx(21 / 212)
    assert (m.n_tokens, m.n_contexts, m.n_undefined, m.d_sae, m.n_points) == (2, None, 0, 3, 2)


def test_orthogonal_decoder_afa_equals_the_norm():
    """With orthonormal decoder rows and b_dec orthogonal to them, ||f~|| = ||x_hat|| for every
    input, and inputs the SAE reconstructs exactly have ||f~|| = ||z||: epsilon-LBO 0."""
    q, _ = torch.linalg.qr(torch.randn(6, 6, dtype=torch.float64))
    W_dec, b_dec = q[:4], 0.7 * q[4]
    sae = relu_sae(W_enc=W_dec.T, W_dec=W_dec, b_dec=b_dec)
    any_x = 2 * torch.randn(50, 6, dtype=torch.float64)
    with torch.no_grad():
        x_hat = sae(any_x).x_hat
    torch.testing.assert_close(zf_points(sae, any_x).norm_f, x_hat.norm(dim=-1), rtol=1e-12, atol=1e-12)
    in_span = torch.rand(50, 4, dtype=torch.float64) @ W_dec + b_dec  # f = rand >= 0 exactly
    points = zf_points(sae, in_span)
    torch.testing.assert_close(points.norm_f, points.norm_z, rtol=1e-12, atol=1e-12)
    m = afa_metrics(sae, [in_span.view(5, 10, 6)])
    assert m.eps_lbo == pytest.approx(0, abs=1e-12) and m.eps_lbo_ci.high == pytest.approx(0, abs=1e-12)


def test_tokens_without_active_features_or_b_dec_are_counted_apart():
    sae = relu_sae(W_enc=torch.eye(2), W_dec=[[1.0, 0.0], [0.0, 2.0]], b_dec=[0.0, 0.0])
    x = torch.tensor([[-1.0, -1.0], [1.0, 0.0], [3.0, 0.0], [0.0, 0.0]], dtype=torch.float64)
    points = zf_points(sae, x)
    assert points.norm_f.tolist() == [0.0, 1.0, 3.0, 0.0]
    per_token = eps_lbo(points.norm_z, points.norm_f, 2)
    assert math.isinf(per_token[0]) and math.isnan(per_token[3])  # as the reference's division
    m = afa_metrics(sae, [x])
    assert m.n_undefined == 2 and m.eps_lbo == 0.0 and m.n_points == 4


# ---- against a plain re-implementation of the reference -------------------------------------
@pytest.mark.parametrize("name", list(SPECS))
def test_every_architecture_matches_the_reference_formula(name):
    sae = randomized(name)
    g = torch.Generator().manual_seed(1)
    x = 2 * torch.randn(30, 7, 8, generator=g, dtype=torch.float64)
    with torch.no_grad():
        f = sae.encode(x).feature_acts
    norm_z, norm_f, elbo = reference(x.numpy(), f.numpy(), sae.W_dec.detach().numpy(), sae.b_dec.detach().numpy())
    assert (norm_f > 0).all()
    m = afa_metrics(sae, x.split(4))  # [contexts, seq, d_in] batches of 4, 4, ..., 2 contexts
    assert m.eps_lbo == pytest.approx(elbo.mean(), rel=1e-10)
    assert m.eps_lbo_median == pytest.approx(np.median(elbo), rel=1e-10)
    assert (m.n_tokens, m.n_contexts, m.n_undefined, m.d_sae) == (210, 30, 0, 24)
    np.testing.assert_allclose(np.sort(m.norm_z.numpy()), np.sort(norm_z), rtol=1e-12)
    np.testing.assert_allclose(np.sort(m.norm_f.numpy()), np.sort(norm_f), rtol=1e-12)
    per_context = torch.tensor(np.stack([np.full(30, 7.0), elbo.reshape(30, 7).sum(1)], 1))
    expected = intervals(per_context, {"e": lambda t: t[:, 1] / t[:, 0]})["e"]
    assert m.eps_lbo_ci == pytest.approx(expected, rel=1e-9)
    assert m.eps_lbo_ci.low < m.eps_lbo < m.eps_lbo_ci.high


@pytest.mark.parametrize("name", list(SPECS))
def test_every_architecture_in_float32_with_its_chart(name):
    sae = randomized(name, dtype="float32")
    x = 2 * torch.randn(12, 5, 8)
    m = afa_metrics(sae, [x])
    with torch.no_grad():
        f = sae.encode(x).feature_acts
    elbo = reference(x.double().numpy(), f.double().numpy(), sae.W_dec.detach().double().numpy(),
                     sae.b_dec.detach().double().numpy())[2]
    assert m.eps_lbo == pytest.approx(elbo.mean(), rel=1e-5) and m.n_contexts == 12
    assert "y_equals_x" in zf_plot(m).svg


@pytest.mark.parametrize("kind", ["standard", "topk", "topk_training_rescaled"])
def test_saelens_folders(tmp_path, kind):
    """A folder SAELens wrote, loaded with SAE.load, against the reference formula on SAELens's own
    encoder and decoder (one trained with rescale_acts_by_decoder_norm decodes with unit rows)."""
    import sae_lens as sl

    g = torch.Generator().manual_seed(7)
    common = {"d_in": 8, "d_sae": 24}
    if kind == "standard":
        theirs = sl.StandardSAE(sl.StandardSAEConfig(**common))
    elif kind == "topk":
        theirs = sl.TopKSAE(sl.TopKSAEConfig(**common, k=3))
    else:
        theirs = sl.TopKTrainingSAE(sl.TopKTrainingSAEConfig(**common, k=3, rescale_acts_by_decoder_norm=True))
    with torch.no_grad():
        for p in theirs.parameters():  # decoder rows of unequal norms, O(1) biases
            p.copy_(torch.randn(p.shape, generator=g) * (0.3 if p.ndim == 1 else 0.5))
    theirs.save_model(tmp_path / "sl")
    ours = SAE.load(tmp_path / "sl")
    x = 3 * torch.randn(16, 6, 8, generator=g)
    with torch.no_grad():
        f = theirs.encode(x.reshape(-1, 8)).double().numpy()
    W_dec = theirs.W_dec.detach().double()
    if kind == "topk_training_rescaled":
        W_dec = W_dec / W_dec.norm(dim=1, keepdim=True)
    elbo = reference(x.double().numpy(), f, W_dec.numpy(), theirs.b_dec.detach().double().numpy())[2]
    m = afa_metrics(ours, x.split(5))
    assert m.eps_lbo == pytest.approx(elbo.mean(), rel=1e-5)
    assert m.eps_lbo_median == pytest.approx(np.median(elbo), rel=1e-5)
    assert m.n_tokens == 96 and m.n_contexts == 16


# ---- streaming and bootstrap units ----------------------------------------------------------
def test_streaming_does_not_change_the_figures():
    sae = randomized("topk")
    x = torch.randn(20, 9, 8, dtype=torch.float64)
    whole = afa_metrics(sae, [x])
    pieces = afa_metrics(sae, [x[:3], x[3:3], x[3:11], x[11:]])
    assert pieces.eps_lbo == pytest.approx(whole.eps_lbo, rel=1e-12)
    assert pieces.eps_lbo_ci == pytest.approx(whole.eps_lbo_ci, rel=1e-12)
    flat = afa_metrics(sae, [x.reshape(-1, 8)[:50], x.reshape(-1, 8)[50:]])  # tokens: no contexts
    assert flat.eps_lbo == pytest.approx(whole.eps_lbo, rel=1e-12) and flat.n_contexts is None
    mixed = afa_metrics(sae, [x[:10], x[10:].reshape(-1, 8)])
    assert mixed.n_contexts is None and mixed.n_tokens == 180


def test_token_units_are_merged_into_consecutive_blocks():
    """Past 2 * max_units units, neighbouring units are summed into blocks of a power of two."""
    sae = randomized("relu")
    x = torch.randn(100, 8, dtype=torch.float64)
    acc = AFAAccumulator(sae, max_units=4)
    for batch in x.split(7):
        acc.add(batch, sae.encode(batch).feature_acts)
    m = acc.result()
    per_token = eps_lbo(*zf_points(sae, x), sae.cfg.d_sae)
    # 100 tokens: blocks of 8 would make 12 full rows (> 8), blocks of 16 make 6 and a partial one.
    blocks = torch.stack([torch.ones(100, dtype=torch.float64), per_token], 1).split(16)
    expected = intervals(torch.stack([b.sum(0) for b in blocks]), {"e": lambda t: t[:, 1] / t[:, 0]})["e"]
    assert m.eps_lbo_ci == pytest.approx(expected, rel=1e-9)
    assert m.eps_lbo == pytest.approx(float(per_token.mean()), rel=1e-12) and m.n_tokens == 100


def test_the_zf_sample_is_bounded_uniform_and_seeded():
    sae = randomized("topk")
    x = torch.randn(40, 25, 8, dtype=torch.float64)
    everything = zf_points(sae, x)
    a = afa_metrics(sae, x.split(3), max_points=100, seed=1)
    b = afa_metrics(sae, x.split(3), max_points=100, seed=1)
    c = afa_metrics(sae, x.split(3), max_points=100, seed=2)
    assert a.n_points == 100 and a.n_tokens == 1000
    assert torch.equal(a.norm_z, b.norm_z) and not torch.equal(a.norm_z, c.norm_z)
    assert set(a.norm_z.tolist()) <= set(everything.norm_z.flatten().tolist())
    assert afa_metrics(sae, [x], max_points=0).n_points == 0
    assert a.eps_lbo == pytest.approx(float(eps_lbo(*everything, 24).mean()), rel=1e-12)  # the mean uses all


# ---- errors ---------------------------------------------------------------------------------
def test_bad_input_is_a_clear_error():
    sae = randomized("topk")
    with pytest.raises(ValueError, match="d_in=8, got shape \\(4, 9\\)"):
        afa_metrics(sae, [torch.randn(4, 9)])
    with pytest.raises(ValueError, match="\\[tokens, d_in\\] or \\[contexts, seq, d_in\\]"):
        afa_metrics(sae, [torch.randn(8)])
    with pytest.raises(ValueError, match="no tokens"):
        afa_metrics(sae, [])
    with pytest.raises(ValueError, match="no tokens"):
        afa_metrics(sae, [torch.empty(0, 8), torch.empty(3, 0, 8)])
    for bad in (float("nan"), float("inf")):
        x = torch.randn(5, 8)
        x[2, 3] = bad
        with pytest.raises(ValueError, match="non-finite"):
            afa_metrics(sae, [x])
    with pytest.raises(ValueError, match="max_points"):
        afa_metrics(sae, [torch.randn(5, 8)], max_points=-1)
    with pytest.raises(ValueError, match="d_sae >= 2"):
        afa_metrics(SAE.from_config(SAEConfig("relu", d_in=8, d_sae=1)), [torch.randn(5, 8)])
    with pytest.raises(ValueError, match="feature_acts must have shape"):
        AFAAccumulator(sae).add(torch.randn(5, 8), torch.randn(5, 23))
    broken = randomized("relu")
    with torch.no_grad():
        broken.W_dec[0, 0] = float("nan")
    with pytest.raises(ValueError, match="feature activations are not finite"):
        afa_metrics(broken, [torch.randn(5, 8)])


# ---- the chart ------------------------------------------------------------------------------
def _metrics(norm_z, norm_f, ci=Interval(0.01, 0.03)) -> AFAMetrics:
    norm_z, norm_f = torch.as_tensor(norm_z, dtype=torch.float64), torch.as_tensor(norm_f, dtype=torch.float64)
    return AFAMetrics(eps_lbo=0.02, eps_lbo_ci=ci, eps_lbo_median=0.015, n_tokens=len(norm_z), n_contexts=None,
                      n_undefined=0, d_sae=16, norm_z=norm_z, norm_f=norm_f)


def test_zf_plot_draws_the_points_and_the_y_equals_x_line():
    chart = zf_plot(_metrics([1.0, 2.0, 3.0], [1.5, 1.0, 3.2]))
    assert chart.title == "ZF plot: εLBO 0.02 (95% 0.01 to 0.03), 3 tokens"
    svg = chart.svg
    assert svg.startswith("<?xml") and "</svg>" in svg
    assert 'id="y_equals_x"' in svg and "εLBO 0.02" in svg and "‖z‖" in svg
    assert zf_plot(_metrics([1.0], [1.0], ci=None), title="mine").title == "mine"
    g = torch.Generator().manual_seed(0)
    z = torch.rand(20_000, generator=g, dtype=torch.float64) * 50
    many = zf_plot(_metrics(z, z * (0.8 + 0.4 * torch.rand(20_000, generator=g, dtype=torch.float64))))
    assert len(many.svg) < 60_000 and 'id="y_equals_x"' in many.svg  # a density image, not 20k markers
    assert ZF_SCATTER_MAX < 20_000
    with pytest.raises(ValueError, match="as many norm_z as norm_f"):
        zf_plot(_metrics([1.0, 2.0], [1.0]))


# ---- in the evaluation ----------------------------------------------------------------------
def test_faithfulness_reports_afa_from_the_same_activations(llama_tiny):
    from workbench.capture import run_to
    from workbench.evaluate import faithfulness

    hookpoint = "blocks.1.hook_mlp_out"
    ids = torch.randint(3, 60, (6, 10))
    ids[:, 0] = 0
    sae = randomized("topk", d_in=32, d_sae=64, dtype="float32")
    recon, _, afa = faithfulness(llama_tiny, sae, hookpoint, ids, batch_size=4)
    acts = run_to(llama_tiny, [hookpoint], ids)[hookpoint][:, 1:]  # BOS left out, as the evaluation does
    direct = afa_metrics(sae, [acts])
    assert afa.n_tokens == recon.n_tokens == 54 and afa.n_contexts == recon.n_contexts == 6
    assert afa.eps_lbo == pytest.approx(direct.eps_lbo, rel=1e-4)
    assert afa.eps_lbo_ci.low <= afa.eps_lbo <= afa.eps_lbo_ci.high
