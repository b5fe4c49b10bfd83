"""SAE splices with the error term: no edit is the clean model, each edit changes exactly its features'
share, StopFiring stops a feature with the least move, and gradients match finite differences."""

from __future__ import annotations

import pytest
import torch
from conftest import SPECS, tiny_model

from workbench.capture import run_to
from workbench.hookpoints import KINDS
from workbench.intervene import (
    Ablate,
    Clamp,
    Patch,
    Scale,
    Splice,
    Steer,
    StopFiring,
    logits_with,
    run_with_saes,
    splice_edit,
    stop_firing_step,
)
from workbench.sae import SAE, SAEConfig


def _ids(batch=2, seq=10):
    ids = torch.randint(3, 60, (batch, seq))
    ids[:, 0] = 0
    return ids


def _sae(model, hookpoint, architecture="relu", d_sae=64, **cfg) -> SAE:
    """A random SAE for ``hookpoint`` whose activations are of the order of the hook point's norm
    (tiny random models' activations are small), so edits move the logits visibly."""
    width = model.hookpoint(hookpoint).width
    sae = SAE.from_config(SAEConfig(architecture, d_in=width, d_sae=d_sae, hook_name=hookpoint, **cfg))
    x = run_to(model, [hookpoint], _ids(4))[hookpoint]
    with torch.no_grad():
        sae.W_enc.mul_(4 / x.norm(dim=-1).mean())
    return sae


@pytest.mark.parametrize("kind", KINDS)
def test_no_edit_gives_the_clean_logits(any_tiny_model, kind):
    model, hookpoint = any_tiny_model, f"blocks.1.{kind}"
    sae, ids = _sae(model, hookpoint), _ids()
    clean = model.hf(ids).logits.detach()
    run = run_with_saes(model, ids, [Splice(sae)])
    assert torch.equal(run.logits, clean)  # x + 0 @ W_dec is x itself
    assert run.acts[hookpoint].shape == (2, 10, 64) and (run.acts[hookpoint] > 0).any()
    assert run.edited[hookpoint] is run.acts[hookpoint]
    with_grad = run_with_saes(model, ids, [Splice(sae)], grad=True)  # decode(a) + detached error: rounding only
    assert with_grad.logits.requires_grad
    assert (with_grad.logits.detach() - clean).abs().max() <= 1e-4


@pytest.mark.parametrize("kind", KINDS)
def test_ablating_removes_exactly_a_f_d_f_where_it_fired(any_tiny_model, kind):
    model, hookpoint = any_tiny_model, f"blocks.1.{kind}"
    sae, ids = _sae(model, hookpoint), _ids()
    x = run_to(model, [hookpoint], ids)[hookpoint]
    acts = sae.encode(x).feature_acts
    f = int((acts > 0).float().mean((0, 1)).sub(0.5).abs().argmin())  # fires at about half the positions
    fired = acts[..., f] > 0
    assert fired.any() and (~fired).any()
    x_new = splice_edit(Splice(sae, [Ablate(f)]))(x)
    expected = -acts[..., f, None] * sae.W_dec[f]
    assert torch.allclose((x_new - x)[fired], expected[fired], atol=1e-6, rtol=1e-5)
    assert torch.equal(x_new[~fired], x[~fired])
    # in the model: the rest of the forward pass sees exactly that
    ablated = run_with_saes(model, ids, [Splice(sae, [Ablate(f)])]).logits
    by_hand = logits_with(model, ids, {hookpoint: lambda v: v - sae.encode(v).feature_acts[..., f, None] * sae.W_dec[f]})
    assert torch.allclose(ablated, by_hand, atol=1e-6)
    assert (ablated - model.hf(ids).logits).abs().max() > 1e-4  # the edit does something


def test_each_edit_sets_the_activations_it_names(llama_tiny):
    hookpoint = "blocks.1.hook_resid_post"
    sae, ids = _sae(llama_tiny, hookpoint), _ids()
    x = run_to(llama_tiny, [hookpoint], ids)[hookpoint]
    acts = sae.encode(x).feature_acts
    other = sae.encode(x.flip(1)).feature_acts  # "another run"

    def edited(*edits):
        record = {}
        x_new = splice_edit(Splice(sae, list(edits)), record=record)(x)
        assert torch.allclose(x_new, x + (record["edited"] - record["acts"]) @ sae.W_dec, atol=1e-6)
        assert torch.equal(record["acts"], acts)
        return record["edited"]

    out = edited(Clamp([3, 5], 2.0, positions=[1, -1]))
    assert (out[:, [1, 9]][..., [3, 5]] == 2).all()
    keep = torch.ones_like(acts, dtype=torch.bool)
    keep[:, [1, 9], 3] = keep[:, [1, 9], 5] = False
    assert torch.equal(out[keep], acts[keep])
    assert torch.equal(edited(Scale(4, 3.0))[..., 4], 3 * acts[..., 4])
    mask = torch.zeros(2, 10, dtype=torch.bool)
    mask[1, 2:5] = True  # a per-row mask: batched edits
    out = edited(Steer([0, 1], [1.0, -2.0], positions=mask))
    assert torch.equal(out[mask][:, :2], acts[mask][:, :2] + torch.tensor([1.0, -2.0]))
    assert torch.equal(out[~mask], acts[~mask])
    out = edited(Patch(other[:1], features=[7], positions=torch.arange(10) >= 5))
    assert torch.equal(out[:, 5:, 7], other[:1, 5:, 7].expand(2, -1)) and torch.equal(out[:, :5], acts[:, :5])
    assert torch.equal(edited(Patch(other)), other)
    out = edited(Ablate(4, positions=[True] * 5 + [False] * 5))  # a list of bools is a mask
    assert (out[:, :5, 4] == 0).all() and torch.equal(out[:, 5:], acts[:, 5:])
    out = edited(Ablate([2, 6]), Steer(2, 1.5))  # edits compose in order
    assert (out[..., 2] == 1.5).all() and (out[..., 6] == 0).all()


def test_patch_from_another_run_moves_the_logits_to_it(llama_tiny):
    hookpoint = "blocks.0.hook_resid_post"
    sae = _sae(llama_tiny, hookpoint)
    a, b = _ids(1), _ids(1)
    source = run_with_saes(llama_tiny, b, [Splice(sae)])
    patched = run_with_saes(llama_tiny, a, [Splice(sae, [Patch(source.acts[hookpoint])])])
    # every feature patched: the activation is decode(acts_b) + error_a, not b's own activation
    x_a, x_b = (run_to(llama_tiny, [hookpoint], ids)[hookpoint] for ids in (a, b))
    expected = logits_with(llama_tiny, a, {hookpoint: lambda v: x_a + (source.acts[hookpoint] - sae.encode(x_a).feature_acts) @ sae.W_dec})
    assert torch.allclose(patched.logits, expected, atol=1e-6)
    assert torch.equal(patched.edited[hookpoint], source.acts[hookpoint])


def test_splices_at_two_hook_points_see_each_others_edits(llama_tiny):
    up, down = "blocks.0.hook_mlp_out", "blocks.2.hook_resid_pre"
    s_up, s_down, ids = _sae(llama_tiny, up), _sae(llama_tiny, down), _ids()
    clean = run_with_saes(llama_tiny, ids, [Splice(s_up), Splice(s_down)])
    assert torch.equal(clean.logits, llama_tiny.hf(ids).logits)
    edited = run_with_saes(llama_tiny, ids, [Splice(s_down, [Scale(3, 0.0)]), Splice(s_up, [Steer(0, 5.0)])])
    assert torch.equal(edited.acts[up], clean.acts[up])
    assert not torch.allclose(edited.acts[down], clean.acts[down])  # the steer upstream reached it


def _random_sae(name: str, d_in: int = 16, d_sae: int = 48) -> SAE:
    """An SAE of architecture ``name`` with every parameter perturbed, so biases and thresholds matter."""
    sae = SAE.from_config(SAEConfig(d_in=d_in, d_sae=d_sae, **SPECS[name]))
    with torch.no_grad():
        sae.W_enc.add_(0.3 * sae.W_enc.std() * torch.randn_like(sae.W_enc))
        sae.b_dec.normal_(0, 0.1)
        for param in ("b_enc", "b_gate", "b_mag"):
            if getattr(sae, param, None) is not None:
                getattr(sae, param).normal_(-0.2, 0.2)
        if name == "gated":
            sae.r_mag.normal_(0, 0.3)
        if name == "jumprelu":
            sae.log_threshold.copy_(torch.empty(d_sae).uniform_(0.05, 0.5).log())
        if name == "batchtopk":
            sae.threshold.fill_(0.3)
    return sae


@pytest.mark.parametrize("name", list(SPECS))
def test_stop_firing_is_the_least_move_along_d_f_that_turns_the_feature_off(name):
    sae = _random_sae(name)
    x = torch.randn(3, 20, 16)
    acts = sae.encode(x).feature_acts
    f = int((acts > 0).sum((0, 1)).argmax())
    fired = acts[..., f] > 0
    assert fired.sum() >= 5
    record = {}
    x_new = splice_edit(Splice(sae, [StopFiring(f)], hookpoint="blocks.0.hook_resid_pre"), record=record)(x)
    steps = record["acts"][..., f] - record["edited"][..., f]
    assert (sae.encode(x_new).feature_acts[..., f] == 0).all()  # off where it fired, still off elsewhere
    assert torch.equal(steps[~fired], torch.zeros_like(steps[~fired])) and torch.equal(x_new[~fired], x[~fired])
    assert (steps[fired] > 0).all()
    moved = x_new - x  # along -d_f only
    assert torch.allclose(moved[fired], -steps[fired, None] * sae.W_dec[f], atol=1e-5)
    # minimal: a step 0.1% shorter leaves it on
    shorter = x + (0.999 * moved)
    assert (sae.encode(shorter).feature_acts[..., f][fired] > 0).all()
    others = [g for g in range(48) if g != f]
    assert torch.equal(record["edited"][..., others], record["acts"][..., others])


def test_stop_firing_is_less_than_ablation_when_a_bias_holds_the_feature_down():
    sae = _random_sae("relu")
    with torch.no_grad():
        sae.W_enc.copy_(sae.W_dec.T)  # w_f . d_f = 1: the step is pre_f itself
        sae.b_dec.zero_()
        sae.b_enc.fill_(-0.5)
    x = torch.randn(50, 16)
    acts = sae.encode(x).feature_acts
    f = int((acts > 0).sum(0).argmax())
    fired = acts[:, f] > 0
    steps = stop_firing_step(sae, x, acts[:, f], f)
    # pre = x . d_f - 0.5 = a_f: the feature stops at t = a_f, exactly the ablation
    assert torch.allclose(steps[fired], acts[fired, f], rtol=1e-5)
    with torch.no_grad():
        sae.W_enc.mul_(2)  # now pre falls twice as fast as a_f d_f comes out: half the ablation
    acts = sae.encode(x).feature_acts
    fired = acts[:, f] > 0
    assert torch.allclose(stop_firing_step(sae, x, acts[:, f], f)[fired], acts[fired, f] / 2, rtol=1e-5)


def test_gradients_match_finite_differences():
    # float64 throughout (Llama's RMSNorm computes in float32 whatever the model's dtype, so not Llama)
    model = tiny_model("gpt_neox")
    hookpoint = "blocks.1.hook_resid_post"
    sae = _sae(model, hookpoint)
    model.hf.double()
    sae.double()
    ids = _ids(1)
    position, f, other, token = 4, 5, 9, 17
    edits = [Ablate(other)]
    run = run_with_saes(model, ids, [Splice(sae, edits)], grad=True)
    metric = run.logits[0, -1, token]
    grad_edited, grad_acts = torch.autograd.grad(metric, [run.edited[hookpoint], run.acts[hookpoint]])
    eps = 1e-5

    def at(coefficient):
        steered = run_with_saes(model, ids, [Splice(sae, [*edits, Steer(f, coefficient, positions=[position])])])
        return steered.logits[0, -1, token].item()

    finite = (at(eps) - at(-eps)) / (2 * eps)
    assert abs(grad_edited[0, position, f].item()) > 1e-3
    assert grad_edited[0, position, f].item() == pytest.approx(finite, rel=1e-6)
    # through the ablation, the ablated feature gets no gradient; the others the same as the edited ones
    assert grad_acts[0, :, other].abs().max() == 0
    assert torch.allclose(grad_acts[..., f], grad_edited[..., f])


def test_mistakes_are_clear_errors(llama_tiny):
    sae = _sae(llama_tiny, "blocks.1.hook_mlp_out")
    with pytest.raises(ValueError, match="one splice per hook point"):
        run_with_saes(llama_tiny, _ids(), [Splice(sae), Splice(sae)])
    with pytest.raises(ValueError, match="d_in=32 but blocks.1.mlp.hook_post"):
        run_with_saes(llama_tiny, _ids(), [Splice(sae, hookpoint="blocks.1.mlp.hook_post")])
    with pytest.raises(ValueError, match="features must be one or more indices"):
        run_with_saes(llama_tiny, _ids(), [Splice(sae, [Ablate(64)])])
    with pytest.raises(ValueError, match="positions must lie in"):
        run_with_saes(llama_tiny, _ids(), [Splice(sae, [Ablate(1, positions=[10])])])
    with pytest.raises(ValueError, match="give the splice a hookpoint"):
        Splice(SAE.from_config(SAEConfig("relu", d_in=32, d_sae=8)))
    run = run_with_saes(llama_tiny, _ids(1)[0], [Splice(sae, Ablate(1))])  # one text [seq], one edit
    assert run.logits.shape == (1, 10, 64)

