"""Tests for workbench.sae: exact small-weight checks, training losses, constraints, folding,
the saved-folder format and its round trip through SAELens (a test dependency), and recovery
of known sparse features from synthetic data."""

from __future__ import annotations

import json
import math
import pickle

import pytest
import torch
from safetensors.torch import save_file

import workbench.sae
from conftest import SPECS
from workbench.sae import (
    ARCHITECTURES,
    SAE,
    BatchTopKSAE,
    GatedSAE,
    JumpReLUSAE,
    ReLUSAE,
    SAEConfig,
    SAEFormatError,
    TopAFASAE,
    TopKSAE,
)

D_IN, D_SAE = 8, 24

SAELENS_SPECS = [name for name in SPECS if name != "topafa"]  # SAELens has no top-AFA


def make(name: str, dtype: str = "float32", **overrides) -> SAE:
    cfg = SAEConfig(**{"d_in": D_IN, "d_sae": D_SAE, "dtype": dtype, **SPECS[name], **overrides})
    return SAE.from_config(cfg)


@torch.no_grad()
def randomized(sae: SAE, x: torch.Tensor | None = None) -> SAE:
    """Non-trivial biases, gates and thresholds (and a batchtopk threshold from one step)."""
    if sae.b_enc is not None:
        sae.b_enc.normal_(0, 0.3)
    sae.b_dec.normal_(0, 0.5)
    if isinstance(sae, GatedSAE):
        sae.b_gate.normal_(0, 0.3)
        sae.b_mag.normal_(0, 0.3)
        sae.r_mag.normal_(0, 0.3)
    if isinstance(sae, JumpReLUSAE):
        sae.log_threshold.copy_(torch.empty_like(sae.log_threshold).uniform_(-3, -0.5))
    if isinstance(sae, BatchTopKSAE):
        with torch.enable_grad():
            sae.training_forward(torch.randn(64, sae.cfg.d_in) if x is None else x)
    return sae


def set_weights(sae: SAE, **tensors) -> None:
    with torch.no_grad():
        for name, value in tensors.items():
            getattr(sae, name).copy_(torch.as_tensor(value, dtype=getattr(sae, name).dtype))


def t(*rows) -> torch.Tensor:
    return torch.tensor(rows, dtype=torch.float32)


# ---- config ---------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"architecture": "sparse"}, "unknown architecture 'sparse'; known: relu, topk, batchtopk"),
        ({"d_in": 0}, "d_in must be a positive int"),
        ({"d_sae": 2.5}, "d_sae must be a positive int"),
        ({"architecture": "topk", "k": 100}, "k=100 is larger than d_sae=24"),
        ({"relu_variant": "anthropic"}, "unknown relu_variant"),
        ({"l1_coefficient": -1.0}, "l1_coefficient must be a finite number >= 0"),
        ({"aux_k": 0}, "aux_k must be None or a positive int"),
        ({"jumprelu_bandwidth": 0.0}, "jumprelu_bandwidth must be a finite number > 0"),
        ({"batchtopk_threshold_lr": 2.0}, "batchtopk_threshold_lr must be in"),
        ({"dtype": "int8"}, "unknown dtype 'int8'"),
    ],
)
def test_config_validation(overrides, message):
    with pytest.raises(ValueError, match=message):
        SAEConfig(**{"architecture": "relu", "d_in": D_IN, "d_sae": D_SAE, **overrides})


def test_from_config_picks_the_class_and_sae_lens_orientation():
    classes = {"relu": ReLUSAE, "topk": TopKSAE, "batchtopk": BatchTopKSAE, "jumprelu": JumpReLUSAE,
               "gated": GatedSAE, "topafa": TopAFASAE}  # fmt: skip
    assert set(classes) == set(ARCHITECTURES)
    for arch, cls in classes.items():
        sae = SAE.from_config(SAEConfig(arch, d_in=D_IN, d_sae=D_SAE, k=3))
        assert type(sae) is cls
        assert sae.W_enc.shape == (D_IN, D_SAE) and sae.W_dec.shape == (D_SAE, D_IN)
        assert sae.b_dec.shape == (D_IN,)
        assert (sae.b_enc is None) == (arch in ("gated", "topafa"))  # as SAELens gated and the top-AFA reference
    with pytest.raises(ValueError, match="needs architecture 'topk'"):
        TopKSAE(SAEConfig("relu", d_in=D_IN, d_sae=D_SAE))


def test_initialisation():
    for name in SPECS:
        sae = make(name)
        norms = sae.W_dec.norm(dim=1)
        expected = 0.1 if name == "relu_april" else 1.0
        torch.testing.assert_close(norms, torch.full_like(norms, expected))
        torch.testing.assert_close(sae.W_enc, sae.W_dec.T)
        assert sae.unit_norm_decoder == (name != "relu_april")
    assert make("relu").apply_b_dec_to_input and not make("relu_april").apply_b_dec_to_input
    assert not make("jumprelu").apply_b_dec_to_input and make("gated").apply_b_dec_to_input
    assert make("jumprelu", apply_b_dec_to_input=True).apply_b_dec_to_input
    torch.testing.assert_close(make("jumprelu").threshold, torch.full((D_SAE,), 0.04 * math.sqrt(D_IN)))  # DeepMind units


# ---- exact small-weight checks --------------------------------------------------------------
def test_relu_towards_monosemanticity_exact():
    sae = SAE.from_config(SAEConfig("relu", d_in=2, d_sae=2, l1_coefficient=0.5))
    set_weights(sae, W_enc=torch.eye(2), b_enc=[0.0, -1.0], W_dec=torch.eye(2), b_dec=[1.0, 1.0])
    x = t([3.0, 1.0], [0.0, 4.0])
    enc = sae.encode(x)
    torch.testing.assert_close(enc.pre_acts, t([2.0, -1.0], [-1.0, 2.0]))  # encodes x - b_dec
    torch.testing.assert_close(enc.feature_acts, t([2.0, 0.0], [0.0, 2.0]))
    out = sae.training_forward(x)
    torch.testing.assert_close(out.x_hat, t([3.0, 1.0], [1.0, 3.0]))
    torch.testing.assert_close(out.losses["mse"], torch.tensor(1.0))  # (1 + 1) / 2 tokens
    torch.testing.assert_close(out.losses["l1"], torch.tensor(1.0))  # 0.5 * mean(2, 2)
    torch.testing.assert_close(out.loss, torch.tensor(2.0))
    torch.testing.assert_close(out.losses["l0"], torch.tensor(1.0))
    half = sae.training_forward(x, sparsity_scale=0.5)
    torch.testing.assert_close(half.losses["l1"], torch.tensor(0.5))


def test_relu_april_update_exact():
    sae = SAE.from_config(SAEConfig("relu", d_in=2, d_sae=2, l1_coefficient=0.5, relu_variant="april_update"))
    set_weights(sae, W_enc=torch.eye(2), b_enc=[0.0, -1.0], W_dec=[[2.0, 0.0], [0.0, 0.5]], b_dec=[1.0, 1.0])
    x = t([3.0, 1.0])
    enc = sae.encode(x)
    torch.testing.assert_close(enc.pre_acts, t([3.0, 0.0]))  # no b_dec subtraction
    out = sae.training_forward(x)
    torch.testing.assert_close(out.x_hat, t([7.0, 1.0]))
    torch.testing.assert_close(out.losses["mse"], torch.tensor(16.0))
    torch.testing.assert_close(out.losses["l1"], torch.tensor(0.5 * 3.0 * 2.0))  # f * ||W_dec_i||


def test_topk_exact():
    sae = SAE.from_config(SAEConfig("topk", d_in=2, d_sae=3, k=2))
    set_weights(sae, W_enc=[[1.0, 0.0, -1.0], [0.0, 1.0, -1.0]], b_enc=[0.0, 0.0, 0.0],
                W_dec=[[1.0, 0.0], [0.0, 1.0], [0.6, 0.8]], b_dec=[0.0, 0.0])  # fmt: skip
    x = t([3.0, -1.0], [2.0, 5.0])
    enc = sae.encode(x)
    # token 0: pre (3, -1, -2): top 2 are 3 and -1, ReLU zeroes the -1
    torch.testing.assert_close(enc.feature_acts, t([3.0, 0.0, 0.0], [2.0, 5.0, 0.0]))
    out = sae(x)
    torch.testing.assert_close(out.x_hat, t([3.0, 0.0], [2.0, 5.0]))
    train = sae.training_forward(x)
    torch.testing.assert_close(train.x_hat, out.x_hat)
    torch.testing.assert_close(train.losses["mse"], torch.tensor(0.5))  # token 0 misses the -1
    torch.testing.assert_close(train.losses["l0"], torch.tensor(1.5))
    assert train.fire_counts.tolist() == [2, 1, 0]  # counted from the indices, ReLU-zeroed excluded
    assert train.losses["auxk"] == 0


def test_batchtopk_exact_and_threshold():
    cfg = SAEConfig("batchtopk", d_in=2, d_sae=2, k=1, batchtopk_threshold_lr=0.5)
    sae = SAE.from_config(cfg)
    set_weights(sae, W_enc=torch.eye(2), b_enc=[0.0, 0.0], W_dec=torch.eye(2), b_dec=[0.0, 0.0])
    x = t([5.0, 4.0], [1.0, 0.5])
    out = sae.training_forward(x)
    # the batch keeps k * B = 2 activations, both from token 0 (W_dec = I: x_hat shows them)
    torch.testing.assert_close(out.x_hat, t([5.0, 4.0], [0.0, 0.0]))
    torch.testing.assert_close(out.losses["l0"], torch.tensor(1.0))
    torch.testing.assert_close(out.losses["l0_std"], torch.tensor(1.0))
    assert out.fire_counts.tolist() == [1, 1]
    assert sae.threshold.item() == 4.0  # the first step sets it to the smallest kept
    sae.training_forward(t([2.0, 0.0], [0.0, 3.0]))
    assert sae.threshold.item() == pytest.approx(0.5 * 4.0 + 0.5 * 2.0)  # then a running mean
    # Inference: a fixed threshold, so a single token encodes on its own.
    torch.testing.assert_close(sae.encode(t([3.5, 2.0])).feature_acts, t([3.5, 0.0]))


def test_jumprelu_exact_and_straight_through_gradients():
    # DeepMind's units, scaled inside by d_in (the coefficient) and sqrt(d_in) (the bandwidth): 0.5 and 0.5
    cfg = SAEConfig("jumprelu", d_in=2, d_sae=2, l1_coefficient=0.25, jumprelu_bandwidth=0.5 / math.sqrt(2))
    sae = SAE.from_config(cfg)
    set_weights(sae, W_enc=torch.eye(2), b_enc=[0.0, 0.0], W_dec=2 * torch.eye(2), b_dec=[0.0, 0.0],
                log_threshold=[0.0, 0.0])  # fmt: skip
    x = t([1.1, 3.0])
    torch.testing.assert_close(sae.encode(t([0.9, 3.0])).feature_acts, t([0.0, 3.0]))
    out = sae.training_forward(x)
    torch.testing.assert_close(out.x_hat, 2 * t([1.1, 3.0]))  # f = (1.1, 3.0) through W_dec = 2I
    torch.testing.assert_close(out.losses["mse"], torch.tensor(1.1**2 + 3.0**2))
    torch.testing.assert_close(out.losses["l0_penalty"], torch.tensor(0.5 * 2))
    out.loss.backward()
    # d mse / d f = 2 * (x_hat - x) * 2 = (4.4, 12). JumpReLU STE: -(t / bw) K((z - t) / bw) * g
    # = -2 * 4.4 for feature 0 (z - t = 0.1 inside the kernel), 0 for feature 1. Step STE for the
    # L0: -(1 / bw) K(.) = -2, times the coefficient 0.5. Through exp: times t = 1.
    torch.testing.assert_close(sae.log_threshold.grad, torch.tensor([-8.8 - 1.0, 0.0]))


def test_gated_exact():
    sae = SAE.from_config(SAEConfig("gated", d_in=2, d_sae=2, l1_coefficient=0.5))
    set_weights(sae, W_enc=torch.eye(2), W_dec=torch.eye(2), b_dec=[0.0, 0.0],
                b_gate=[-1.0, 0.0], r_mag=[math.log(2.0), 0.0], b_mag=[0.0, 1.0])  # fmt: skip
    x = t([3.0, 1.0], [0.5, -2.0])
    enc = sae.encode(x)
    torch.testing.assert_close(enc.pre_acts, t([2.0, 1.0], [-0.5, -2.0]))  # pi_gate
    torch.testing.assert_close(enc.feature_acts, t([6.0, 2.0], [0.0, 0.0]))  # gate * ReLU(pi_mag)
    out = sae.training_forward(x)
    torch.testing.assert_close(out.losses["mse"], torch.tensor((9.0 + 1.0 + 0.25 + 4.0) / 2))
    torch.testing.assert_close(out.losses["l1"], torch.tensor(0.5 * 3.0 / 2))
    # frozen-decoder reconstruction from ReLU(pi_gate): (2, 1) for (3, 1); (0, 0) for (0.5, -2)
    torch.testing.assert_close(out.losses["aux_recon"], torch.tensor((1.0 + 0.0 + 0.25 + 4.0) / 2))
    # The auxiliary reconstruction goes through a frozen decoder: W_dec learns from mse and l1 only.
    out.loss.backward()
    full = sae.W_dec.grad.clone()
    sae.zero_grad()
    pi_gate, f = enc.pre_acts, enc.feature_acts.detach()
    mse = (f @ sae.W_dec + sae.b_dec - x).pow(2).sum(-1).mean()
    l1 = 0.5 * (torch.relu(pi_gate) * sae.W_dec.norm(dim=1)).sum(-1).mean()
    (mse + l1).backward()
    torch.testing.assert_close(full, sae.W_dec.grad)


def test_topafa_exact_selection():
    sae = SAE.from_config(SAEConfig("topafa", d_in=2, d_sae=3))
    # no encoder bias (as the reference): pre = x @ W_enc = [3, 4, 0.5] for every x = [1, a]
    set_weights(sae, W_enc=[[3.0, 4.0, 0.5], [0.0, 0.0, 0.0]], b_dec=[0.0, 0.0],
                W_dec=[[1.0, 0.0], [0.0, 1.0], [0.6, 0.8]])  # fmt: skip
    norm_5, norm_41 = t([1.0, 24**0.5]), t([1.0, (4.1**2 - 1) ** 0.5])
    # scores 16, 9, 0.25 -> cumulative norms 4, 5, ...: ||x|| = 5 keeps two, ||x|| = 4.1 keeps one
    enc = sae.encode(torch.cat([norm_5, norm_41, t([1.0, 100.0])]))
    torch.testing.assert_close(enc.feature_acts, t([3.0, 4.0, 0.0], [0.0, 4.0, 0.0], [3.0, 4.0, 0.0]))
    # decoder norms weight the scores: row 0 at norm 2 scores 36 and is kept alone for ||x|| = 5
    set_weights(sae, W_dec=[[2.0, 0.0], [0.0, 1.0], [0.6, 0.8]])
    torch.testing.assert_close(sae.encode(norm_5).feature_acts, t([3.0, 0.0, 0.0]))
    out = sae.training_forward(torch.cat([norm_5, norm_41]))
    torch.testing.assert_close(out.losses["l0"], torch.tensor(1.0))
    torch.testing.assert_close(out.losses["l0_std"], torch.tensor(0.0))
    gap = torch.tensor([3.0 - 5.0, 3.0 - 4.1])  # ||f|| - ||x||: feature 0 kept alone for both
    torch.testing.assert_close(out.losses["afa"], (1 / 32) * 2 * gap.pow(2).mean())


# ---- shapes and training outputs ------------------------------------------------------------
@pytest.mark.parametrize("name", list(SPECS))
def test_shapes_and_training_outputs(name):
    sae = randomized(make(name))
    x = torch.randn(2, 5, D_IN)
    enc = sae.encode(x)
    assert enc.feature_acts.shape == enc.pre_acts.shape == (2, 5, D_SAE)
    assert sae.decode(enc.feature_acts).shape == (2, 5, D_IN)
    out = sae(x)
    assert out.x_hat.shape == (2, 5, D_IN) and out.feature_acts.shape == (2, 5, D_SAE)
    torch.testing.assert_close(out.x_hat, sae.decode(enc.feature_acts), rtol=1e-5, atol=1e-5)

    dead = torch.zeros(D_SAE, dtype=torch.bool)
    dead[::3] = True
    acts = training_acts(sae, x.reshape(10, D_IN))
    train = sae.training_forward(x.reshape(10, D_IN), dead_mask=dead)
    assert train.loss.ndim == 0 and train.loss.requires_grad
    assert not train.x_hat.requires_grad and train.x_hat.shape == (10, D_IN)
    torch.testing.assert_close(train.x_hat, sae.decode(acts), rtol=1e-5, atol=1e-5)
    assert set(type(sae).loss_terms) <= set(train.losses) and "mse" in train.losses
    assert {"l0", "l0_std"} <= set(train.losses)
    assert all(v.ndim == 0 and not v.requires_grad for v in train.losses.values())
    torch.testing.assert_close(sum(train.losses[k] for k in type(sae).loss_terms), train.loss.detach())
    l0 = (acts != 0).sum(-1).float()
    torch.testing.assert_close(train.losses["l0"], l0.mean())
    torch.testing.assert_close(train.losses["l0_std"], l0.std(correction=0))
    assert train.fire_counts.dtype == torch.int64
    torch.testing.assert_close(train.fire_counts, (acts != 0).sum(0))
    mse = (train.x_hat - x.reshape(10, D_IN)).pow(2).sum(-1).mean()
    torch.testing.assert_close(train.losses["mse"], mse, rtol=1e-5, atol=1e-6)
    train.loss.backward()
    assert all(torch.isfinite(p.grad).all() for p in sae.parameters() if p.grad is not None)
    with pytest.raises(ValueError, match="dead_mask must have shape"):
        sae.training_forward(x.reshape(10, D_IN), dead_mask=dead[:-1])
    with pytest.raises(ValueError, match="expected inputs of width d_in=8"):
        sae.encode(torch.randn(3, D_IN + 1))


def training_acts(sae: SAE, x: torch.Tensor) -> torch.Tensor:
    """The dense activations a training step uses, computed apart from ``training_forward``:
    ``encode``'s, except for batchtopk, which keeps the batch's top ``k * B`` ReLU activations."""
    with torch.no_grad():
        if not isinstance(sae, BatchTopKSAE):
            return sae.encode(x).feature_acts
        relu = torch.relu(sae.encode(x).pre_acts).flatten()
        top = relu.topk(sae.cfg.k * x.shape[0])
        return torch.zeros_like(relu).scatter(0, top.indices, top.values).view(x.shape[0], -1)


def test_auxk_trains_dead_latents_only_when_asked():
    sae = randomized(make("topk", k=1))
    x = torch.randn(32, D_IN)
    fired = sae.training_forward(x).fire_counts > 0
    dead = ~fired
    assert dead.any()
    plain = sae.training_forward(x)
    assert plain.losses["auxk"] == 0
    plain.loss.backward()
    assert torch.all(sae.W_enc.grad[:, dead] == 0) and torch.all(sae.W_dec.grad[dead] == 0)
    sae.zero_grad()
    aux = sae.training_forward(x, dead_mask=dead)
    assert aux.losses["auxk"] > 0
    aux.loss.backward()
    assert sae.W_enc.grad[:, dead].abs().sum() > 0 and sae.W_dec.grad[dead].abs().sum() > 0
    none_dead = sae.training_forward(x, dead_mask=torch.zeros(D_SAE, dtype=torch.bool))
    assert none_dead.losses["auxk"] == 0


AUXK_SPECS = [name for name in SPECS if name in ("topk", "batchtopk", "topafa")]


@pytest.mark.parametrize("sync_free", [False, True])
@pytest.mark.parametrize("n_dead", [2, 8])
@pytest.mark.parametrize("name", AUXK_SPECS)
def test_auxk_keeps_the_reference_balance(name, n_dead, sync_free, monkeypatch):
    """AuxK relative to the MSE as in OpenAI's sparse_autoencoder (Gao et al.): the main loss is
    ``mse_scale * mse`` (mse_scale = 1 / x's variance), AuxK ``auxk_coef * normalized_mse``
    (over the residual's variance), both means over elements; ours adds sparsify's
    ``min(n_dead / aux_k, 1)``. Written out here from the reference's definitions."""
    monkeypatch.setattr(workbench.sae, "_SYNC_FREE", sync_free)
    torch.manual_seed(3)
    sae = randomized(make(name))
    x = torch.randn(64, D_IN)
    dead = torch.zeros(D_SAE, dtype=torch.bool)
    dead[torch.randperm(D_SAE)[:n_dead]] = True
    pre = sae.encode(x).pre_acts.detach()
    out = sae.training_forward(x, dead_mask=dead)

    def mse(a, b):  # the reference's: a mean over tokens and dimensions
        return (a - b).pow(2).mean()

    aux_k = D_IN // 2
    dead_idx = dead.nonzero().squeeze(1)
    vals, local = pre[:, dead_idx].topk(min(aux_k, n_dead), dim=1)
    f_aux = torch.zeros_like(pre).scatter(1, dead_idx[local], vals.clamp_min(0))
    e = x - out.x_hat
    main_ref = mse(out.x_hat, x) / mse(x.mean(0).expand_as(x), x)
    aux_ref = (1 / 32) * mse(f_aux @ sae.W_dec.detach(), e) / mse(e.mean(0).expand_as(e), e)
    scale = min(n_dead / aux_k, 1.0)
    assert out.losses["auxk"] > 0
    torch.testing.assert_close(out.losses["auxk"] / out.losses["mse"], scale * aux_ref / main_ref)


@pytest.mark.parametrize("name", list(SPECS))
def test_sync_free_training_step_matches(name, monkeypatch):
    """The sync-free step (CUDA's) gives the losses, counts and gradients of the CPU one."""
    results = []
    for sync_free in (False, True):
        monkeypatch.setattr(workbench.sae, "_SYNC_FREE", sync_free)
        torch.manual_seed(4)
        sae = randomized(make(name))
        x = torch.randn(32, D_IN)
        for dead in (torch.arange(D_SAE) % 3 == 0, torch.arange(D_SAE) == 5, torch.zeros(D_SAE, dtype=torch.bool)):
            out = sae.training_forward(x, dead_mask=dead)
            out.loss.backward()
            grads = {n: p.grad.clone() for n, p in sae.named_parameters()}
            sae.zero_grad()
            results.append((out.losses, out.fire_counts, out.x_hat, grads, dict(sae.named_buffers())))
    half = len(results) // 2
    for plain, free in zip(results[:half], results[half:]):
        for a, b in zip(plain, free):
            torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)


def test_batchtopk_threshold_ignores_a_batch_with_nothing_kept():
    sae = SAE.from_config(SAEConfig("batchtopk", d_in=2, d_sae=2, k=1))
    set_weights(sae, W_enc=torch.eye(2), b_enc=[-10.0, -10.0], W_dec=torch.eye(2), b_dec=[0.0, 0.0])
    sae.training_forward(t([1.0, 2.0], [0.5, 0.0]))  # no positive activation: not estimated yet
    assert sae.threshold.item() == -1.0
    set_weights(sae, b_enc=[0.0, 0.0])
    sae.training_forward(t([1.0, 2.0], [0.5, 0.0]))
    assert sae.threshold.item() == 1.0


@pytest.mark.parametrize("subtract_b_dec", [True, False])
@pytest.mark.parametrize("with_aux", [True, False])
def test_topk_sparse_backward_matches_dense_autograd(subtract_b_dec, with_aux):
    torch.manual_seed(1)
    cfg = SAEConfig("topk", d_in=16, d_sae=64, k=4, aux_k=8, dtype="float64", apply_b_dec_to_input=subtract_b_dec)
    sae = randomized(SAE.from_config(cfg))
    with torch.no_grad():
        sae.W_dec.mul_(torch.rand(64, 1, dtype=torch.float64) + 0.5)
    x = torch.randn(32, 16, dtype=torch.float64, requires_grad=True)
    dead = torch.rand(64) < 0.5 if with_aux else None
    out = sae.training_forward(x, dead_mask=dead)
    out.loss.backward()
    sparse = {n: p.grad.clone() for n, p in sae.named_parameters()} | {"x": x.grad.clone()}
    sae.zero_grad()
    x.grad = None

    sae_in = x - sae.b_dec if subtract_b_dec else x
    pre = sae_in @ sae.W_enc + sae.b_enc
    vals, idx = pre.topk(4, dim=1)
    f = torch.zeros_like(pre).scatter(1, idx, vals.clamp_min(0))
    x_hat = f @ sae.W_dec + sae.b_dec
    loss = (x_hat - x).pow(2).sum(-1).mean()
    if with_aux:
        dead_idx = dead.nonzero().squeeze(1)
        aux_vals, local = pre[:, dead_idx].topk(min(8, len(dead_idx)), dim=1)
        f_aux = torch.zeros_like(pre).scatter(1, dead_idx[local], aux_vals.clamp_min(0))
        residual = (x - x_hat).detach()
        variance_ratio = (x - x.mean(0)).detach().pow(2).sum() / (residual - residual.mean(0)).pow(2).sum()
        aux_mse = (f_aux @ sae.W_dec - residual).pow(2).sum(-1).mean()
        loss = loss + (1 / 32) * min(len(dead_idx) / 8, 1.0) * variance_ratio * aux_mse
    loss.backward()
    torch.testing.assert_close(out.loss, loss)
    dense = {n: p.grad for n, p in sae.named_parameters()} | {"x": x.grad}
    for name in dense:
        torch.testing.assert_close(sparse[name], dense[name], rtol=1e-10, atol=1e-12, msg=name)


def test_topk_matches_sparsify():
    """The same weights in EleutherAI's sparsify give the same reconstruction and gradients
    (sparsify's loss is the FVU, ours the summed MSE: the gradients differ by that factor)."""
    import sparsify
    torch.manual_seed(2)
    ours = randomized(make("topk", k=4))
    theirs = sparsify.SparseCoder(D_IN, sparsify.SparseCoderConfig(num_latents=D_SAE, k=4))
    with torch.no_grad():
        theirs.encoder.weight.copy_(ours.W_enc.T)
        theirs.encoder.bias.copy_(ours.b_enc)
        theirs.W_dec.copy_(ours.W_dec)
        theirs.b_dec.copy_(ours.b_dec)
    x = torch.randn(64, D_IN)
    out, ref = ours.training_forward(x), theirs(x)
    torch.testing.assert_close(out.x_hat, ref.sae_out.detach(), rtol=0, atol=1e-5)
    torch.testing.assert_close(ours.encode(x).feature_acts.gather(1, ref.latent_indices), ref.latent_acts.detach())
    out.loss.backward()
    ref.fvu.backward()
    ratio = (x - x.mean(0)).pow(2).sum() / x.shape[0]  # d mse = d fvu * total variance / batch
    for name, a, b in [("W_enc", ours.W_enc.grad, theirs.encoder.weight.grad.T), ("b_enc", ours.b_enc.grad,
                       theirs.encoder.bias.grad), ("W_dec", ours.W_dec.grad, theirs.W_dec.grad),
                       ("b_dec", ours.b_dec.grad, theirs.b_dec.grad)]:  # fmt: skip
        torch.testing.assert_close(a, b * ratio, rtol=1e-4, atol=1e-5, msg=name)
    # AuxK picks the same latents, but sparsify weighs it like its FVU (both over Var(x)); ours,
    # as Gao et al.'s reference, over the residual's variance: heavier by Var(x) / Var(e).
    dead = torch.arange(D_SAE) % 3 == 0
    out, ref = ours.training_forward(x, dead_mask=dead), theirs(x, dead_mask=dead)
    e = x - out.x_hat
    boost = (x - x.mean(0)).pow(2).sum() / (e - e.mean(0)).pow(2).sum()
    torch.testing.assert_close(
        out.losses["auxk"] / out.losses["mse"], (1 / 32) * ref.auxk_loss.detach() / ref.fvu.detach() * boost
    )


# ---- constraints ----------------------------------------------------------------------------
@pytest.mark.parametrize("name", list(SPECS))
def test_constrain_gradients_and_weights(name):
    sae = randomized(make(name))
    with torch.no_grad():
        sae.W_dec.mul_(torch.rand(D_SAE, 1) + 0.5)  # rows off unit norm
    before = sae.W_dec.detach().clone()
    sae.training_forward(torch.randn(16, D_IN), dead_mask=torch.ones(D_SAE, dtype=torch.bool)).loss.backward()
    grad = sae.W_dec.grad.clone()
    sae.constrain_gradients()
    sae.constrain_weights()
    if sae.unit_norm_decoder:
        parallel = (sae.W_dec.grad * before).sum(1)
        torch.testing.assert_close(parallel, torch.zeros(D_SAE), atol=1e-5, rtol=0)
        torch.testing.assert_close(sae.W_dec.norm(dim=1), torch.ones(D_SAE))
        torch.testing.assert_close(sae.W_dec, before / before.norm(dim=1, keepdim=True))
    else:
        assert torch.equal(sae.W_dec.grad, grad) and torch.equal(sae.W_dec, before)
    sae.zero_grad(set_to_none=True)
    sae.constrain_gradients()  # no gradient yet: nothing to do


# ---- folding an activation scale ------------------------------------------------------------
@pytest.mark.parametrize("name", list(SPECS))
@pytest.mark.parametrize("scale", [4.0, 0.37])
def test_fold_activation_scale(name, scale):
    sae = randomized(make(name))
    x = 2 * torch.randn(64, D_IN)
    with torch.no_grad():
        ref = sae(x * scale)
        ref_pre = sae.encode(x * scale).pre_acts
        sae.fold_activation_scale(scale)
        out = sae(x)
    torch.testing.assert_close(out.feature_acts, ref.feature_acts, rtol=0, atol=1e-5)
    torch.testing.assert_close(out.x_hat, ref.x_hat / scale, rtol=0, atol=1e-5)
    torch.testing.assert_close(sae.encode(x).pre_acts, ref_pre, rtol=0, atol=1e-5)
    for bad in (0.0, -1.0, math.inf):
        with pytest.raises(ValueError, match="scale must be"):
            sae.fold_activation_scale(bad)


# ---- saving and loading ---------------------------------------------------------------------
def assert_same_sae(a: SAE, b: SAE, x: torch.Tensor, atol: float = 1e-6) -> None:
    assert type(a) is type(b) and a.cfg == b.cfg
    sa, sb = a.state_dict(), b.state_dict()
    assert sa.keys() == sb.keys()
    for key in sa:
        torch.testing.assert_close(sa[key], sb[key], rtol=0, atol=atol, msg=key)
    with torch.no_grad():
        torch.testing.assert_close(a(x).x_hat, b(x).x_hat, rtol=0, atol=1e-5)


@pytest.mark.parametrize("name", list(SPECS))
def test_save_load_round_trip(tmp_path, name):
    sae = randomized(make(name, hook_name="blocks.3.hook_resid_post", model_name="tiny"))
    path = tmp_path / "sae"
    sae.save(path)
    assert sorted(p.name for p in path.iterdir()) == ["cfg.json", "sae_weights.safetensors"]
    loaded = SAE.load(path)
    assert_same_sae(sae, loaded, torch.randn(16, D_IN))
    cfg = json.loads((path / "cfg.json").read_text())
    saelens_arch = {"relu": "standard", "relu_april": "standard", "batchtopk": "jumprelu"}.get(
        name, SPECS[name]["architecture"]
    )
    assert cfg["architecture"] == saelens_arch
    assert cfg["workbench"]["architecture"] == SPECS[name]["architecture"]
    assert cfg["normalize_activations"] == "none" and cfg["apply_b_dec_to_input"] == sae.apply_b_dec_to_input
    assert cfg["metadata"]["hook_name"] == "blocks.3.hook_resid_post" and cfg["metadata"]["model_name"] == "tiny"
    assert type(sae).load(path).cfg == sae.cfg


def test_save_overwrites_an_sae_folder_atomically_and_nothing_else(tmp_path):
    path = tmp_path / "sae"
    make("topk").save(path)
    second = randomized(make("relu"))
    second.save(path)
    assert type(SAE.load(path)) is ReLUSAE
    assert sorted(p.name for p in tmp_path.iterdir()) == ["sae"]  # no temporary folders left
    other = tmp_path / "notes"
    other.mkdir()
    (other / "todo.txt").write_text("keep me")
    with pytest.raises(FileExistsError, match="todo.txt"):
        second.save(other)
    assert (other / "todo.txt").read_text() == "keep me"
    with pytest.raises(SAEFormatError, match="not a TopKSAE"):
        TopKSAE.load(path)


def test_load_float64_and_device_argument(tmp_path):
    sae = randomized(make("jumprelu", dtype="float64"))
    sae.save(tmp_path / "s")
    loaded = SAE.load(tmp_path / "s", device="cpu")
    assert loaded.W_enc.dtype == torch.float64 and loaded.cfg.device == "cpu"
    assert_same_sae(sae, loaded, torch.randn(4, D_IN, dtype=torch.float64), atol=1e-12)


def test_load_errors(tmp_path, monkeypatch):
    good = tmp_path / "good"
    randomized(make("topk")).save(good)
    weights = (good / "sae_weights.safetensors").read_bytes()
    cfg = json.loads((good / "cfg.json").read_text())

    def folder(name, cfg_text=None, weights_bytes=None):
        path = tmp_path / name
        path.mkdir()
        if cfg_text is not None:
            (path / "cfg.json").write_text(cfg_text)
        if weights_bytes is not None:
            (path / "sae_weights.safetensors").write_bytes(weights_bytes)
        return path

    with pytest.raises(SAEFormatError, match="cfg.json is missing"):
        SAE.load(folder("no_cfg", weights_bytes=weights))
    with pytest.raises(SAEFormatError, match="sae_weights.safetensors is missing"):
        SAE.load(folder("no_weights", json.dumps(cfg)))
    with pytest.raises(SAEFormatError, match="is missing"):
        SAE.load(tmp_path / "nowhere")
    with pytest.raises(SAEFormatError, match="not valid JSON"):
        SAE.load(folder("bad_json", "{", weights))
    with pytest.raises(SAEFormatError, match="truncated"):
        SAE.load(folder("truncated", json.dumps(cfg), weights[:-100]))
    with pytest.raises(SAEFormatError, match="truncated"):
        SAE.load(folder("tiny", json.dumps(cfg), weights[:5]))
    with pytest.raises(SAEFormatError, match="does not parse"):
        SAE.load(folder("garbage", json.dumps(cfg), (20).to_bytes(8, "little") + b"\xff" * 40))

    wrong = {**cfg, "workbench": {**cfg["workbench"], "d_sae": D_SAE - 4}}
    with pytest.raises(
        SAEFormatError, match=r"W_enc has shape \(8, 24\) but the cfg \(d_in=8, d_sae=20\) needs \(8, 20\)"
    ):
        SAE.load(folder("shapes", json.dumps(wrong), weights))
    with pytest.raises(SAEFormatError, match="unknown architecture 'sparse'; known: .*relu, topk, batchtopk"):
        SAE.load(
            folder("arch_wb", json.dumps({**cfg, "workbench": {**cfg["workbench"], "architecture": "sparse"}}), weights)
        )
    plain = {k: v for k, v in cfg.items() if k != "workbench"}
    with pytest.raises(
        SAEFormatError, match="unknown architecture 'matryoshka'; known: standard, topk, jumprelu, gated"
    ):
        SAE.load(folder("arch_sl", json.dumps({**plain, "architecture": "matryoshka"}), weights))
    with pytest.raises(SAEFormatError, match="unknown workbench config keys"):
        SAE.load(folder("keys", json.dumps({**cfg, "workbench": {**cfg["workbench"], "colour": 1}}), weights))
    with pytest.raises(SAEFormatError, match="normalize_activations='layer_norm' is not supported"):
        SAE.load(folder("norm", json.dumps({**plain, "normalize_activations": "layer_norm"}), weights))

    partial = tmp_path / "partial.safetensors"
    tensors = {"W_enc": torch.zeros(D_IN, D_SAE), "W_dec": torch.zeros(D_SAE, D_IN), "b_enc": torch.zeros(D_SAE)}
    save_file(tensors, str(partial))
    with pytest.raises(SAEFormatError, match=r"missing tensors \['b_dec'\]"):
        SAE.load(folder("missing_tensor", json.dumps(cfg), partial.read_bytes()))
    save_file({**tensors, "b_dec": torch.zeros(D_IN), "extra": torch.zeros(2)}, str(partial))
    with pytest.raises(SAEFormatError, match=r"unexpected tensors \['extra'\]"):
        SAE.load(folder("extra_tensor", json.dumps(cfg), partial.read_bytes()))

    # A pickle (what torch.save writes) under the weights name: refused, never unpickled.
    pickled = tmp_path / "pickled.pt"
    torch.save(make("topk").state_dict(), pickled)

    def no_unpickling(*args, **kwargs):
        raise AssertionError("SAE.load tried to unpickle")

    monkeypatch.setattr(torch, "load", no_unpickling)
    monkeypatch.setattr(pickle, "load", no_unpickling)
    monkeypatch.setattr(pickle, "loads", no_unpickling)
    monkeypatch.setattr(pickle, "Unpickler", no_unpickling)
    with pytest.raises(SAEFormatError):
        SAE.load(folder("pickle", json.dumps(cfg), pickled.read_bytes()))


def write_saelens_folder(path, cfg: dict, tensors: dict) -> None:
    path.mkdir()
    (path / "cfg.json").write_text(json.dumps(cfg))
    save_file({k: v.contiguous() for k, v in tensors.items()}, str(path / "sae_weights.safetensors"))


def test_load_pre_6_saelens_cfg(tmp_path):
    """A cfg.json of the gpt2-small res-jb kind: no architecture, hook_point, torch dtype string."""
    g = torch.Generator().manual_seed(0)
    tensors = {"W_enc": torch.randn(D_IN, D_SAE, generator=g), "b_enc": torch.randn(D_SAE, generator=g),
               "W_dec": torch.randn(D_SAE, D_IN, generator=g), "b_dec": torch.randn(D_IN, generator=g),
               "scaling_factor": torch.ones(D_SAE)}  # fmt: skip
    cfg = {"model_name": "gpt2-small", "hook_point": "blocks.8.hook_resid_pre", "hook_point_layer": 8,
           "hook_point_head_index": None, "d_in": D_IN, "d_sae": D_SAE, "dtype": "torch.float32", "device": "mps",
           "b_dec_init_method": "geometric_median", "expansion_factor": 3, "activation_fn": "relu",
           "normalize_activations": False, "l1_coefficient": 8e-05, "lr": 4e-4, "context_size": 128}  # fmt: skip
    write_saelens_folder(tmp_path / "old", cfg, tensors)
    sae = SAE.load(tmp_path / "old")
    assert type(sae) is ReLUSAE and sae.cfg.relu_variant == "towards_monosemanticity"
    assert sae.cfg.hook_name == "blocks.8.hook_resid_pre" and sae.cfg.model_name == "gpt2-small"
    assert sae.cfg.device == "cpu" and sae.cfg.l1_coefficient == 8e-05
    x = torch.randn(5, D_IN)
    expected = (
        torch.relu((x - tensors["b_dec"]) @ tensors["W_enc"] + tensors["b_enc"]) @ tensors["W_dec"] + tensors["b_dec"]
    )
    torch.testing.assert_close(sae(x).x_hat, expected)
    write_saelens_folder(tmp_path / "scaled", cfg, {**tensors, "scaling_factor": torch.full((D_SAE,), 2.0)})
    with pytest.raises(SAEFormatError, match="scaling_factor"):
        SAE.load(tmp_path / "scaled")


# ---- SAELens, both ways ---------------------------------------------------------------------
SAELENS_MAX_DIFFS: dict[str, float] = {}


def _max_diff(a: torch.Tensor, b: torch.Tensor) -> float:
    return (a - b).abs().max().item()


@pytest.mark.parametrize("name", SAELENS_SPECS)
def test_sae_lens_loads_workbench_folders(tmp_path, name):
    import sae_lens
    sae = randomized(make(name, hook_name="blocks.1.hook_resid_post", model_name="tiny"))
    sae.save(tmp_path / "wb")
    theirs = sae_lens.SAE.load_from_disk(str(tmp_path / "wb"))
    x = 2 * torch.randn(64, D_IN)
    with torch.no_grad():
        ours = sae(x)
        diff = max(_max_diff(theirs(x), ours.x_hat), _max_diff(theirs.encode(x), ours.feature_acts))
    SAELENS_MAX_DIFFS[f"workbench {name} -> sae_lens"] = diff
    print(f"workbench {name} -> sae_lens.SAE.load_from_disk: max |diff| {diff:.2e}")
    assert diff < 1e-5
    assert theirs.cfg.metadata.hook_name == "blocks.1.hook_resid_post"
    assert theirs.cfg.metadata.model_name == "tiny"


def _random_saelens(module, generator):
    with torch.no_grad():
        for name, p in module.named_parameters():
            # unit-scale rows and columns, O(1) biases: an SAE of realistic magnitudes
            p.copy_(torch.randn(p.shape, generator=generator) * (0.3 if p.ndim == 1 else D_IN**-0.5))
            if name == "threshold":
                p.copy_(torch.rand(p.shape, generator=generator) * 0.5)
    return module


@pytest.mark.parametrize("kind", ["standard", "standard_no_b_dec", "topk", "topk_training_rescaled", "jumprelu",
                                  "jumprelu_training", "gated", "batchtopk_training"])  # fmt: skip
def test_workbench_loads_sae_lens_folders(tmp_path, kind):
    import sae_lens as sl
    g = torch.Generator().manual_seed(7)
    common = {"d_in": D_IN, "d_sae": D_SAE}
    if kind == "standard":
        theirs = sl.StandardSAE(sl.StandardSAEConfig(**common))
    elif kind == "standard_no_b_dec":
        theirs = sl.StandardSAE(sl.StandardSAEConfig(**common, apply_b_dec_to_input=False))
    elif kind == "topk":
        theirs = sl.TopKSAE(sl.TopKSAEConfig(**common, k=3))
    elif kind == "topk_training_rescaled":
        theirs = sl.TopKTrainingSAE(sl.TopKTrainingSAEConfig(**common, k=3, rescale_acts_by_decoder_norm=True))
    elif kind == "jumprelu":
        theirs = sl.JumpReLUSAE(sl.JumpReLUSAEConfig(**common, apply_b_dec_to_input=False))
    elif kind == "jumprelu_training":
        theirs = sl.JumpReLUTrainingSAE(sl.JumpReLUTrainingSAEConfig(**common))
    elif kind == "gated":
        theirs = sl.GatedSAE(sl.GatedSAEConfig(**common))
    else:
        theirs = sl.BatchTopKTrainingSAE(sl.BatchTopKTrainingSAEConfig(**common, k=3))
    _random_saelens(theirs, g)
    x = 3 * torch.randn(64, D_IN, generator=g)
    path = tmp_path / "sl"
    if kind == "batchtopk_training":
        from sae_lens.saes.sae import TrainStepInput

        theirs.training_forward_pass(TrainStepInput(x, {}, None, 0, False))  # sets topk_threshold
        theirs.save_model(path)
        theirs.save_inference_model(tmp_path / "sl_inference")
        theirs = sl.SAE.load_from_disk(str(tmp_path / "sl_inference"))
    else:
        theirs.save_model(path)
    ours = SAE.load(path)
    expected_arch = {"standard": "relu", "standard_no_b_dec": "relu", "topk_training_rescaled": "topk",
                     "jumprelu_training": "jumprelu", "batchtopk_training": "batchtopk"}.get(kind, kind)  # fmt: skip
    assert ours.cfg.architecture == expected_arch
    with torch.no_grad():
        diff = max(_max_diff(ours(x).x_hat, theirs(x)), _max_diff(ours.encode(x).feature_acts, theirs.encode(x)))
    SAELENS_MAX_DIFFS[f"sae_lens {kind} -> workbench"] = diff
    print(f"sae_lens {kind} -> workbench SAE.load: max |diff| {diff:.2e}")
    assert diff < 1e-5


def test_sae_lens_reads_the_pre_6_cfg_as_workbench_does(tmp_path):
    import sae_lens as sl
    g = torch.Generator().manual_seed(3)
    tensors = {"W_enc": torch.randn(D_IN, D_SAE, generator=g), "b_enc": torch.randn(D_SAE, generator=g),
               "W_dec": torch.randn(D_SAE, D_IN, generator=g), "b_dec": torch.randn(D_IN, generator=g)}  # fmt: skip
    cfg = {"model_name": "gpt2-small", "hook_point": "blocks.8.hook_resid_pre", "d_in": D_IN, "d_sae": D_SAE,
           "dtype": "torch.float32", "device": "cpu", "activation_fn": "relu",
           "normalize_activations": False}  # fmt: skip
    write_saelens_folder(tmp_path / "old", cfg, tensors)
    x = torch.randn(16, D_IN, generator=g)
    with torch.no_grad():
        diff = _max_diff(SAE.load(tmp_path / "old")(x).x_hat, sl.SAE.load_from_disk(str(tmp_path / "old"))(x))
    print(f"pre-6 cfg: max |diff| {diff:.2e}")
    assert diff < 1e-5


# ---- recovering known features --------------------------------------------------------------
RECOVERY = {  # name: (config overrides, learning rate)
    "relu": ({"architecture": "relu", "l1_coefficient": 0.3}, 1e-2),
    "relu_april": ({"architecture": "relu", "relu_variant": "april_update", "l1_coefficient": 0.3}, 1e-2),
    "topk": ({"architecture": "topk", "k": 3}, 1e-2),
    "batchtopk": ({"architecture": "batchtopk", "k": 3}, 1e-2),
    "jumprelu": (
        {
            "architecture": "jumprelu",
            # 0.05 each in the units of these unnormalised inputs; the config is in DeepMind's (d_in = 32)
            "l1_coefficient": 0.05 / 32,
            "jumprelu_bandwidth": 0.05 / math.sqrt(32),
            "jumprelu_init_threshold": 0.05 / math.sqrt(32),
        },
        1e-2,
    ),  # fmt: skip
    "gated": ({"architecture": "gated", "l1_coefficient": 1.0}, 1e-2),
    "topafa": ({"architecture": "topafa"}, 1e-2),
}
# The share of the 64 true features each must recover: a bit below its figure here (in the
# comment, with the range over six initialisation seeds after it); a broken trainer recovers
# none (a JumpReLU without its threshold gradient or its L0 penalty: 0%).
MIN_RECOVERED = {
    "relu": 0.95,  # 100% (100-100%)
    "relu_april": 0.95,  # 100% (100-100%)
    "topk": 0.95,  # 100% (100-100%)
    "gated": 0.9,  # 100% (97-100%)
    "jumprelu": 0.7,  # 92% (73-95%)
    "batchtopk": 0.6,  # 70% (70-83%)
    # top-AFA keeps, per token, its largest features until their norm adds up to ||x - b_dec||,
    # and nothing else asks for sparsity. A dense code meets that norm as well as the true sparse
    # one and reconstructs better, so the MSE wins: L0 30 where the data has 3, the best decoder
    # row per true feature at a median cosine of 0.5, held-out FVU 0.013 (topk: 0.17). Not a
    # workbench bug: the same without b_enc, as in the reference code (SewoongLee/top-afa-sae),
    # and at d_in 256, d_sae 1024 (L0 145). The test checks it as a faithful SAE instead.
    "topafa": 0.0,  # 0% (0-0%)
}
RECOVERED: dict[str, float] = {}


@pytest.fixture
def one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def synthetic_features(d_in: int = 32, n_true: int = 64, seed: int = 0):
    """Unit ground-truth directions (2x overcomplete) and a sampler of sparse mixtures of them
    (each feature on with probability 3/64, magnitude uniform in [0.5, 1.5])."""
    g = torch.Generator().manual_seed(seed)
    directions = torch.randn(n_true, d_in, generator=g)
    directions /= directions.norm(dim=1, keepdim=True)

    def sample(n: int) -> torch.Tensor:
        on = torch.rand(n, n_true, generator=g) < 3 / n_true
        return (on * (0.5 + torch.rand(n, n_true, generator=g))) @ directions

    return directions, sample


def fraction_recovered(sae: SAE, directions: torch.Tensor, threshold: float = 0.9) -> float:
    rows = sae.W_dec.detach() / sae.W_dec.detach().norm(dim=1, keepdim=True)
    return ((directions @ rows.T).max(dim=1).values >= threshold).float().mean().item()


@pytest.mark.parametrize("name", list(RECOVERY))
def test_recovers_known_sparse_features(name, one_thread):
    directions, sample = synthetic_features()
    overrides, lr = RECOVERY[name]
    sae = SAE.from_config(SAEConfig(d_in=32, d_sae=128, **overrides))
    opt = torch.optim.Adam(sae.parameters(), lr=lr)
    steps, batch, dead_window = 500, 256, 256 * 50
    tokens_since_fired = torch.zeros(128)
    first_mse = None
    for step in range(steps):  # the tiny loop a trainer runs, with a short L1 warmup
        out = sae.training_forward(
            sample(batch), sparsity_scale=min(1.0, step / 50), dead_mask=tokens_since_fired >= dead_window
        )
        opt.zero_grad(set_to_none=True)
        out.loss.backward()
        sae.constrain_gradients()
        opt.step()
        sae.constrain_weights()
        tokens_since_fired += batch
        tokens_since_fired[out.fire_counts > 0] = 0
        first_mse = out.losses["mse"].item() if first_mse is None else first_mse
    RECOVERED[name] = fraction = fraction_recovered(sae, directions)
    print(f"{name}: {fraction:.1%} of true features matched at cosine >= 0.9 "
          f"(l0 {out.losses['l0'].item():.1f}, mse {out.losses['mse'].item():.3f})")  # fmt: skip
    assert math.isfinite(out.loss.item()) and out.losses["mse"].item() < first_mse
    assert fraction >= MIN_RECOVERED[name]
    if name == "topafa":  # it reconstructs held-out data, with ||f|| within a few % of ||x||
        x = sample(4096)
        with torch.no_grad():
            f = sae.encode(x).feature_acts
            fvu = (sae.decode(f) - x).pow(2).sum() / (x - x.mean(0)).pow(2).sum()
            gap = (f.norm(dim=1) - x.norm(dim=1)).abs().mean() / x.norm(dim=1).mean()
        print(f"topafa: held-out FVU {fvu:.4f}, mean | ||f|| - ||x|| | / ||x|| {gap:.4f}")
        assert fvu < 0.03 and gap < 0.03
