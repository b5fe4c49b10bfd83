"""Counterfactual patching over a dictionary (workbench.attribute): patching every direction of
any dictionary gives the counterfactual run, patching none leaves the clean one."""

from __future__ import annotations

import pytest
import torch

from workbench.attribute import (
    attribution_scores,
    counterfactual_patch,
    counterfactual_patches,
    dictionary_basis,
    dictionary_directions,
    first_below,
    flat_acdc,
    kl_gradient,
    log_grid,
    measure_steps,
    prepare_counterfactual,
    prepare_counterfactuals,
    single_direction_effects,
    top_n_curves,
    top_n_patches,
)
from workbench.capture import capture
from workbench.dictionaries import ICADictionary, NeuronDictionary, PCADictionary, RandomDictionary, SAEDictionary
from workbench.intervene import activations_and_logits, logits_with
from workbench.sae import SAE, SAEConfig

RESID = "blocks.1.hook_resid_post"
NEURONS = "blocks.1.mlp.hook_post"
MLP_OUT = "blocks.1.hook_mlp_out"
KINDS = ["sae", "pca", "ica", "random", "random_overcomplete", "neurons", "standard"]


def reference_logits(model, hookpoint: str, clean: torch.Tensor, cf: torch.Tensor) -> torch.Tensor:
    """Final-position logits of the clean run with the whole hook point taken from the counterfactual.

    In the residual stream that is the counterfactual run itself. At ``mlp.hook_post`` only that
    MLP's contribution changes (the stream beside it, attention's output included, stays clean),
    so patching every neuron reproduces this run, not the counterfactual."""
    saved, cf_logits = activations_and_logits(model, cf, [hookpoint])
    if "hook_resid" in hookpoint:
        return cf_logits[:, -1]
    return logits_with(model, clean, {hookpoint: lambda x: saved[hookpoint].to(x.dtype)})[:, -1]


def prompts(n: int = 4, seq: int = 8) -> tuple[torch.Tensor, torch.Tensor]:
    """Random prompts after BOS, and counterfactuals differing in one token (position 3)."""
    generator = torch.Generator().manual_seed(7)
    clean = torch.randint(3, 60, (n, seq), generator=generator)
    clean[:, 0] = 0
    cf = clean.clone()
    cf[:, 3] = (clean[:, 3] - 3 + 17) % 57 + 3
    return clean, cf


@pytest.fixture(scope="module")
def model_and_dictionaries(tmp_path_factory):
    from tests.conftest import tiny_model

    torch.manual_seed(0)
    model = tiny_model("llama")
    contexts = torch.randint(3, 60, (24, 10), generator=torch.Generator().manual_seed(3))
    contexts[:, 0] = 0
    store = capture(model, [RESID], contexts, tmp_path_factory.mktemp("store"), batch_size=8, progress=False)
    sae = SAE.from_config(SAEConfig("relu", d_in=32, d_sae=64, hook_name=RESID))
    dictionaries = {
        "sae": (SAEDictionary(sae), RESID),
        "pca": (PCADictionary.fit(store, n_components=8, progress=False), RESID),
        "ica": (ICADictionary.fit(store, n_components=6, progress=False), RESID),
        "random": (RandomDictionary(32, 10, seed=1, hookpoint=RESID).fit_mean(store, progress=False), RESID),
        "random_overcomplete": (RandomDictionary(32, 50, seed=2, hookpoint=RESID), RESID),
        "neurons": (NeuronDictionary.from_model(model, 1), NEURONS),
        "standard": (None, RESID),
    }
    return model, dictionaries


@pytest.mark.parametrize("kind", KINDS)
def test_patching_everything_gives_the_counterfactual_and_nothing_the_clean_run(model_and_dictionaries, kind):
    model, dictionaries = model_and_dictionaries
    dictionary, hookpoint = dictionaries[kind]
    clean, cf = prompts()
    cf_logits = logits_with(model, cf)[:, -1]
    clean_logits = logits_with(model, clean)[:, -1]
    reference = reference_logits(model, hookpoint, clean, cf)
    counterfactual = prepare_counterfactual(model, dictionary, hookpoint, clean, cf)
    everything = torch.ones(counterfactual.n_directions, dtype=torch.bool)

    full = counterfactual_patch(model, dictionary, hookpoint, clean, cf, everything)
    assert full.kl.shape == full.edit_size.shape == (4,)
    kl_to_reference = torch.nn.functional.kl_div(full.patched_logits.log_softmax(-1), reference.log_softmax(-1),
                                                 log_target=True, reduction="none").sum(-1)
    assert kl_to_reference.max() <= 1e-5
    torch.testing.assert_close(full.patched_logits, reference, atol=1e-4, rtol=1e-4)
    if "hook_resid" in hookpoint:
        assert full.kl.max() <= 1e-5

    none = counterfactual_patch(model, dictionary, hookpoint, clean, cf, [])
    expected = torch.nn.functional.kl_div(clean_logits.log_softmax(-1), cf_logits.log_softmax(-1), log_target=True,
                                          reduction="none").sum(-1)
    torch.testing.assert_close(none.kl, expected, atol=1e-6, rtol=1e-5)
    torch.testing.assert_close(none.kl, counterfactual.clean_kl, atol=1e-6, rtol=1e-5)
    assert none.edit_size.abs().max() == 0
    assert expected.min() > 1e-4  # the counterfactual differs, so the two checks mean something


@pytest.mark.parametrize("kind", ["sae", "pca", "neurons"])
def test_batched_masks_equal_single_patches(model_and_dictionaries, kind):
    model, dictionaries = model_and_dictionaries
    dictionary, hookpoint = dictionaries[kind]
    clean, cf = prompts()
    counterfactual = prepare_counterfactual(model, dictionary, hookpoint, clean, cf)
    active = counterfactual.active()
    lists = [active[:1].tolist(), active[::2].tolist(), active.tolist(), []]
    many = counterfactual_patches(counterfactual, lists, batch_size=8)  # two masks per batch of 4 prompts
    assert many.kl.shape == (4, 4)
    for row, index in enumerate(lists):
        one = counterfactual_patch(model, dictionary, hookpoint, clean, cf, index)
        torch.testing.assert_close(many.kl[row], one.kl, atol=1e-6, rtol=1e-4)
        torch.testing.assert_close(many.edit_size[row], one.edit_size)
    masks = counterfactual.masks(lists)
    torch.testing.assert_close(counterfactual_patches(counterfactual, masks).kl, many.kl)


def test_edit_size_and_the_rest_node(model_and_dictionaries):
    model, dictionaries = model_and_dictionaries
    dictionary, hookpoint = dictionaries["pca"]
    clean, cf = prompts()
    counterfactual = prepare_counterfactual(model, dictionary, hookpoint, clean, cf)
    n = counterfactual.n_directions
    # positions before the changed token see the same prefix, so nothing moves there
    assert counterfactual.delta_c[:, :3].abs().max() < 1e-4
    features_only = torch.ones(n, dtype=torch.bool)
    features_only[-1] = False
    rest_only = ~features_only
    everything = torch.ones(n, dtype=torch.bool)
    a, b, both = counterfactual_patches(counterfactual, torch.stack([features_only, rest_only, everything])).edit_size
    # the rest node is orthogonal to the PCA span: the edits add in quadrature per position
    delta = counterfactual.delta(torch.stack([features_only, rest_only]))
    torch.testing.assert_close(delta[0].mul(delta[1]).sum(-1), torch.zeros(4, 8), atol=1e-4, rtol=0)
    assert (both <= a + b + 1e-4).all() and (both >= a - 1e-4).all()
    x = dictionary_basis(dictionary, torch.randn(2, 3, 32), dictionary_directions(dictionary, 32))
    assert x.coefficients.shape == (2, 3, 8) and x.rest.shape == (2, 3, 32)


def test_pseudo_inverse_directions_of_pca_and_ica_are_their_decoders(model_and_dictionaries):
    _, dictionaries = model_and_dictionaries
    for kind in ("pca", "ica"):
        dictionary = dictionaries[kind][0]
        torch.testing.assert_close(dictionary_directions(dictionary, 32), dictionary.decoder, atol=1e-4, rtol=1e-4)


def test_signed_coefficients_are_required(model_and_dictionaries):
    model, _ = model_and_dictionaries
    with pytest.raises(ValueError, match="both_signs=False"):
        dictionary_directions(NeuronDictionary.from_model(model, 1, both_signs=True), 48)
    with pytest.raises(ValueError, match="both_signs=False"):
        dictionary_directions(RandomDictionary(32, 4, both_signs=True), 32)


def spearman(a: torch.Tensor, b: torch.Tensor) -> float:
    ra, rb = a.argsort().argsort().double(), b.argsort().argsort().double()
    return float(torch.corrcoef(torch.stack([ra, rb]))[0, 1])


@pytest.mark.parametrize("kind", ["pca", "sae", "neurons"])
def test_attribution_scores_follow_single_direction_effects(model_and_dictionaries, kind):
    model, dictionaries = model_and_dictionaries
    dictionary, hookpoint = dictionaries[kind]
    clean, cf = prompts()
    counterfactual = prepare_counterfactual(model, dictionary, hookpoint, clean, cf)
    active = counterfactual.active()
    effects = single_direction_effects(counterfactual, active)
    atp = attribution_scores(counterfactual)[active]
    ig = attribution_scores(counterfactual, steps=10)[active]
    # on this easy case (a one-token counterfactual on a tiny model, small KLs) both estimates rank the
    # measured effects well and get almost every sign right
    for scores in (atp, ig):
        assert spearman(scores, effects) >= 0.8
        assert (scores.sign() == effects.sign()).float().mean() >= 0.85
    # integrated gradients add up to the effect of patching everything (completeness)
    full = counterfactual_patches(counterfactual, torch.ones(1, counterfactual.n_directions, dtype=torch.bool)).kl
    total = float(full.mean() - counterfactual.clean_kl.mean())
    assert float(attribution_scores(counterfactual, steps=10).sum()) == pytest.approx(total, rel=0.05)


def test_one_forward_pass_prepares_every_dictionary_and_first_k_is_a_slice(model_and_dictionaries):
    model, dictionaries = model_and_dictionaries
    clean, cf = prompts()
    kinds = ["sae", "pca", "standard"]
    together = prepare_counterfactuals(model, {k: dictionaries[k][0] for k in kinds}, RESID, clean, cf)
    for kind in kinds:
        alone = prepare_counterfactual(model, dictionaries[kind][0], RESID, clean, cf)
        first = prepare_counterfactual(model, dictionaries[kind][0], RESID, clean[:2], cf[:2])
        for field in ("residual", "delta_c", "delta_rest", "cf_logprobs", "clean_kl"):
            torch.testing.assert_close(getattr(together[kind], field), getattr(alone, field))
            torch.testing.assert_close(getattr(together[kind].first(2), field), getattr(first, field))
    with pytest.raises(ValueError, match="k must be in 1..4"):
        together["sae"].first(5)


def test_one_gradient_serves_every_dictionary_and_any_first_prompts(model_and_dictionaries):
    """KL's gradient along the patching path is the hook point's, not the dictionary's: computed once
    (here with the standard basis), it gives every dictionary's scores, and its first rows the scores
    on the first prompts."""
    model, dictionaries = model_and_dictionaries
    clean, cf = prompts()
    for steps in (1, 4):
        shared = kl_gradient(prepare_counterfactual(model, None, RESID, clean, cf), steps=steps)
        for kind in ("sae", "pca", "ica", "random_overcomplete"):
            dictionary, hookpoint = dictionaries[kind]
            counterfactual = prepare_counterfactual(model, dictionary, hookpoint, clean, cf)
            own = attribution_scores(counterfactual, steps=steps)
            torch.testing.assert_close(attribution_scores(counterfactual, gradient=shared), own, atol=1e-5, rtol=1e-4)
            first = prepare_counterfactual(model, dictionary, hookpoint, clean[:2], cf[:2])
            torch.testing.assert_close(attribution_scores(first, gradient=shared[:2]),
                                       attribution_scores(first, steps=steps), atol=1e-5, rtol=1e-4)
    with pytest.raises(ValueError, match="does not fit these prompts"):
        attribution_scores(first, gradient=shared)


@pytest.mark.parametrize("kind", ["pca", "sae"])
def test_flat_acdc(model_and_dictionaries, kind):
    model, dictionaries = model_and_dictionaries
    dictionary, hookpoint = dictionaries[kind]
    clean, cf = prompts()
    counterfactual = prepare_counterfactual(model, dictionary, hookpoint, clean, cf)
    clean_kl = float(counterfactual.clean_kl.mean())
    taus = [clean_kl * t for t in (1e-3, 1e-2, 1e-1, 1.0)] + [float("inf")]
    steps = flat_acdc(counterfactual, taus, seed=1, batch_size=64)
    assert [s.tau for s in steps] == taus
    assert all(a.n_patched >= b.n_patched for a, b in zip(steps, steps[1:]))
    assert steps[0].n_patched <= len(counterfactual.active())
    assert steps[-1].n_patched == 0 and steps[-1].kl == pytest.approx(clean_kl, rel=1e-5)
    for step in steps:  # what each step reports is what its patch does
        again = counterfactual_patches(counterfactual, [step.patched])
        assert step.kl == pytest.approx(float(again.kl.mean()), rel=1e-5, abs=1e-9)
        assert step.edit_size == pytest.approx(float(again.edit_size.mean()), rel=1e-5, abs=1e-9)
        assert len(step.patched) == step.n_patched
    # speculative batches give the one-at-a-time search's answer
    one_at_a_time = flat_acdc(counterfactual, taus, seed=1, batch_size=1)
    assert [s.patched for s in one_at_a_time] == [s.patched for s in steps]


def test_flat_acdc_does_not_repeat_a_trial_in_an_unchanged_state(model_and_dictionaries, monkeypatch):
    import workbench.attribute as attribute

    model, dictionaries = model_and_dictionaries
    clean, cf = prompts()
    counterfactual = prepare_counterfactual(model, dictionaries["pca"][0], RESID, clean, cf)
    n_active = len(counterfactual.active())
    masks = []
    real = attribute.counterfactual_patches
    monkeypatch.setattr(attribute, "counterfactual_patches",
                        lambda c, patched, **kw: masks.append(len(c.masks(patched))) or real(c, patched, **kw))
    steps = flat_acdc(counterfactual, [-1e9, -1e9], seed=3)  # thresholds that un-patch nothing
    assert [s.n_patched for s in steps] == [n_active, n_active]
    # the start, a trial per direction, the first step; the second threshold's trials are all known
    assert sum(masks) == 1 + n_active + 1 + 1


def test_flat_acdc_without_the_rest_node(model_and_dictionaries):
    model, dictionaries = model_and_dictionaries
    dictionary, hookpoint = dictionaries["sae"]
    clean, cf = prompts()
    counterfactual = prepare_counterfactual(model, dictionary, hookpoint, clean, cf)
    rest = counterfactual.n_directions - 1
    assert rest in counterfactual.active().tolist() and rest not in counterfactual.active(rest=False).tolist()
    steps = flat_acdc(counterfactual, [1e-9], seed=0, rest=False)
    assert rest not in steps[0].patched  # C24: the SAE's error term stays that of the clean run


@pytest.mark.parametrize("kind", ["sae", "pca", "standard"])
def test_top_n_patches_by_attribution(model_and_dictionaries, kind):
    model, dictionaries = model_and_dictionaries
    dictionary, hookpoint = dictionaries[kind]
    clean, cf = prompts()
    counterfactual = prepare_counterfactual(model, dictionary, hookpoint, clean, cf)
    scores = attribution_scores(counterfactual)
    for rest in (True, False):
        active = counterfactual.active(rest)
        steps = top_n_patches(counterfactual, scores, rest=rest)
        assert [s.n_patched for s in steps] == log_grid(len(active))
        assert steps[0].kl == pytest.approx(float(counterfactual.clean_kl.mean()), rel=1e-5)
        ranked = active[torch.argsort(scores[active], stable=True)].tolist()
        for step in steps:
            assert step.patched == ranked[:step.n_patched]  # most negative score first
            again = counterfactual_patches(counterfactual, [step.patched])
            assert step.kl == pytest.approx(float(again.kl.mean()), rel=1e-5, abs=1e-9)
        if rest:  # everything patched, the rest node included: the counterfactual run
            assert steps[-1].kl < 1e-5
    # steps found on two prompts, measured again on all four
    few = prepare_counterfactual(model, dictionary, hookpoint, clean[:2], cf[:2])
    found = top_n_patches(few, attribution_scores(few), [0, 3])
    again = measure_steps(counterfactual, found)
    assert [s.patched for s in again] == [s.patched for s in found]
    expected = counterfactual_patches(counterfactual, [s.patched for s in found])
    assert [s.kl for s in again] == pytest.approx(expected.kl.mean(1).tolist(), rel=1e-6)
    target = again[0].kl * 0.5
    hit = first_below(again, target)
    assert hit is None or (hit.kl <= target and hit.n_patched == min(s.n_patched for s in again if s.kl <= target))


def test_log_grid():
    assert log_grid(0) == [0]
    assert log_grid(1) == [0, 1]
    assert log_grid(20) == [0, 1, 2, 3, 4, 6, 8, 11, 16, 20]


@pytest.mark.parametrize("family", ["gpt2", "gpt_neox"])
def test_other_families_and_an_sae_at_the_mlp_output(family):
    from tests.conftest import tiny_model

    model = tiny_model(family)
    clean, cf = prompts()
    d_mlp = model.hookpoint(NEURONS).width
    cases = [(None, RESID), (NeuronDictionary.from_model(model, 1), NEURONS),
             (SAEDictionary(SAE.from_config(SAEConfig("topk", d_in=32, d_sae=40, k=4, hook_name=MLP_OUT))), MLP_OUT),
             (RandomDictionary(d_mlp, 12, seed=3, hookpoint=NEURONS), NEURONS)]
    for dictionary, hookpoint in cases:
        reference = reference_logits(model, hookpoint, clean, cf)
        counterfactual = prepare_counterfactual(model, dictionary, hookpoint, clean, cf)
        full = counterfactual_patches(counterfactual, torch.ones(1, counterfactual.n_directions, dtype=torch.bool))
        torch.testing.assert_close(full.patched_logits[0], reference, atol=1e-4, rtol=1e-4)
        none = counterfactual_patches(counterfactual, [[]])
        torch.testing.assert_close(none.kl[0], counterfactual.clean_kl.cpu(), atol=1e-6, rtol=1e-5)


def test_top_n_curves_measure_a_shared_patch_once(model_and_dictionaries, monkeypatch):
    import workbench.attribute as attribute

    model, dictionaries = model_and_dictionaries
    clean, cf = prompts()
    counterfactual = prepare_counterfactual(model, dictionaries["pca"][0], RESID, clean, cf)
    atp, ig = attribution_scores(counterfactual), attribution_scores(counterfactual, steps=4)
    measured = []
    real = attribute.counterfactual_patches
    monkeypatch.setattr(attribute, "counterfactual_patches",
                        lambda c, masks, **kw: measured.append(len(masks)) or real(c, masks, **kw))
    curves = top_n_curves(counterfactual, {"atp": atp, "ig": ig, "again": atp})
    ns = log_grid(len(counterfactual.active()))
    assert sum(measured) <= len(ns) * 2 - 2  # "again" repeats "atp"; none is the clean run; all is shared
    assert [s[1:] for s in curves["again"]] == [s[1:] for s in curves["atp"]]  # (tau is NaN at n = 0)
    monkeypatch.undo()
    for name, scores in (("atp", atp), ("ig", ig)):
        alone = top_n_patches(counterfactual, scores)
        assert [s.patched for s in alone] == [s.patched for s in curves[name]]
        for a, b in zip(alone, curves[name]):
            assert a.kl == pytest.approx(b.kl, rel=1e-5) and a.edit_size == pytest.approx(b.edit_size, rel=1e-5)
    assert curves["atp"][0].kl == pytest.approx(float(counterfactual.clean_kl.mean()))
    assert curves["atp"][0].edit_size == 0


def test_top_n_curves_bisect_to_the_target(model_and_dictionaries):
    model, dictionaries = model_and_dictionaries
    clean, cf = prompts()
    counterfactual = prepare_counterfactual(model, dictionaries["random_overcomplete"][0], RESID, clean, cf)
    scores = attribution_scores(counterfactual)
    n_active = len(counterfactual.active())
    coarse = log_grid(n_active, per_octave=1)
    target = 0.5 * float(counterfactual.clean_kl.mean())
    plain = top_n_curves(counterfactual, {"atp": scores}, coarse)["atp"]
    refined = top_n_curves(counterfactual, {"atp": scores}, coarse, target=target, resolution=0.0)["atp"]
    assert {s.n_patched for s in plain} <= {s.n_patched for s in refined}
    assert [s.n_patched for s in refined] == sorted(s.n_patched for s in refined)
    best = first_below(refined, target)
    assert best is not None
    before = [s for s in refined if s.n_patched < best.n_patched]
    # resolution 0: bisected down to neighbours, so the step just before the first one at the target is above it
    assert before[-1].n_patched == best.n_patched - 1 and before[-1].kl > target
    assert best.n_patched <= first_below(plain, target).n_patched
    for step in refined:  # what each step reports is what its patch does
        assert step.kl == pytest.approx(float(counterfactual_patches(counterfactual, [step.patched]).kl.mean()),
                                        rel=1e-4, abs=1e-7)
