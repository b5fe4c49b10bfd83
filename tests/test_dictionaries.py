"""Dictionaries: SAE features, neurons, PCA, ICA and random directions behind one protocol.

PCA is checked against an in-memory eigendecomposition, ICA against a known mixture of
Laplace and skewed sources (scikit-learn is not a dependency), residual directions against the
models' own down projections, and the saved folders against truncation and mixed saves.
"""

from __future__ import annotations

import shutil

import pytest
import torch

from workbench import hookpoints
from workbench.capture import capture
from workbench.dictionaries import (
    Dictionary,
    DictionaryError,
    ICADictionary,
    NeuronDictionary,
    PCADictionary,
    RandomDictionary,
    SAEDictionary,
    best_matches,
    down_projection,
    load_dictionary,
)
from workbench.sae import SAE, SAEConfig
from workbench.store import ActivationStore, ActivationWriter

HOOK = "blocks.0.hook_resid_post"


def make_store(path, X: torch.Tensor, hookpoint: str = HOOK, ctx_len: int = 50) -> ActivationStore:
    """A store holding the rows of ``X`` (no model: token ids are zeros)."""
    n, d = X.shape
    rows = torch.arange(n)
    with ActivationWriter(path, hookpoints={hookpoint: d}, dtype=torch.float32, ctx_len=ctx_len, meta={},
                          contexts_per_shard=16) as writer:
        writer.add({hookpoint: X}, torch.zeros(n, dtype=torch.int32), rows // ctx_len, rows % ctx_len,
                   torch.zeros(n // ctx_len, ctx_len, dtype=torch.int32), 0)
    return ActivationStore.open(path)


def captured(model, names: list[str], path) -> ActivationStore:
    contexts = torch.randint(3, 60, (6, 10), generator=torch.Generator().manual_seed(3))
    contexts[:, 0] = 0
    return capture(model, names, contexts, path, batch_size=2, contexts_per_shard=4, progress=False)


def skew(p: torch.Tensor) -> torch.Tensor:
    p = p.double() - p.double().mean(0)
    return p.pow(3).mean(0) / p.square().mean(0).pow(1.5)


def down_proj(model, layer: int) -> torch.nn.Module:
    layout = hookpoints.layout_for(model.hf)
    return model.hf.get_submodule(f"{layout.blocks}.{layer}.{layout.down_proj}")


# ---- SAE and neurons --------------------------------------------------------------------------
def test_sae_dictionary_encodes_and_maps_through_the_down_projection(any_tiny_model):
    model = any_tiny_model
    post = model.hookpoint("blocks.1.mlp.hook_post")
    sae = SAE.from_config(SAEConfig("topk", d_in=post.width, d_sae=12, k=3, hook_name=post.name))
    dictionary = SAEDictionary(sae)
    assert isinstance(dictionary, Dictionary)
    assert (dictionary.kind, dictionary.hookpoint, dictionary.d_in, dictionary.n_features) == ("sae", post.name, post.width, 12)
    x = torch.randn(5, post.width)
    assert torch.equal(dictionary.encode(x), sae.encode(x).feature_acts)

    proj = down_proj(model, 1)
    with torch.no_grad():  # the module itself, applied to each decoder row, minus its bias
        expected = proj(sae.W_dec) - proj(torch.zeros(post.width))
    assert torch.allclose(dictionary.residual_directions(model), expected, atol=1e-5)
    with pytest.raises(DictionaryError, match="pass model="):
        dictionary.residual_directions()

    resid = SAEDictionary(SAE.from_config(SAEConfig("relu", d_in=32, d_sae=8, hook_name="blocks.1.hook_mlp_out")))
    assert torch.equal(resid.residual_directions(), resid.sae.W_dec.detach())
    assert SAEDictionary(resid.sae, hookpoint="").residual_directions() is None
    assert resid.describe()["label"] == "relu SAE, blocks.1.hook_mlp_out, 8 features"


def test_neurons_rebuild_the_mlp_output(any_tiny_model, tmp_path):
    model = any_tiny_model
    store = captured(model, ["blocks.1.mlp.hook_post", "blocks.1.hook_mlp_out"], tmp_path / "s")
    post = store.rows("blocks.1.mlp.hook_post", 0, store.n_rows)
    out = store.rows("blocks.1.hook_mlp_out", 0, store.n_rows)
    neurons = NeuronDictionary.from_model(model, 1)
    assert isinstance(neurons, Dictionary)
    assert neurons.hookpoint == "blocks.1.mlp.hook_post" and neurons.d_in == post.shape[1] == neurons.n_features
    with torch.no_grad():
        bias = down_proj(model, 1)(torch.zeros(post.shape[1]))
    # Every neuron's activation times its direction, summed, is what the MLP wrote.
    assert torch.allclose(post @ neurons.residual_directions() + bias, out, atol=1e-4)
    assert torch.equal(neurons.encode(post), post.clamp_min(0))

    both = NeuronDictionary.from_model(model, 1, both_signs=True)
    acts = both.encode(post)
    assert both.n_features == 2 * post.shape[1]
    assert torch.equal(acts[:, post.shape[1]:], (-post).clamp_min(0))
    assert torch.allclose(acts @ both.residual_directions() + bias, out, atol=1e-4)
    assert both.title(post.shape[1] + 2) == "neuron 2 (negative part)"
    with pytest.raises(KeyError, match="unknown hook point"):
        NeuronDictionary.from_model(model, 7)


def test_down_projection_of_gemma2_includes_the_post_mlp_norm_weight():
    from test_logit_effects import tiny_gemma2

    model = tiny_gemma2()
    block = model.hf.model.layers[1]
    with torch.no_grad():
        block.post_feedforward_layernorm.weight.uniform_(-0.5, 1.0)
        y = block.mlp.down_proj(torch.eye(48))  # each neuron's column of W_out
        norm = block.post_feedforward_layernorm
        expected = norm(y) * (y.square().mean(dim=1, keepdim=True) + norm.eps).sqrt()  # the norm without its 1/rms
    assert torch.allclose(down_projection(model, 1), expected, atol=1e-5)
    with pytest.raises(DictionaryError, match="out of range"):
        down_projection(model, 2)


# ---- PCA ----------------------------------------------------------------------------------------
def pca_data(n: int = 3000) -> torch.Tensor:
    """Six dimensions of distinct variances, one of them a negatively skewed (heavy left tail) source."""
    g = torch.Generator().manual_seed(0)
    Q, _ = torch.linalg.qr(torch.randn(6, 6, generator=g))
    sources = torch.randn(n, 6, generator=g) * torch.tensor([5.0, 3.0, 2.0, 1.0, 0.5, 0.2])
    sources[:, 1] = -3.0 * (torch.empty(n).exponential_(generator=g) - 1)  # skew -2
    return sources @ Q.T + torch.tensor([1.0, -2.0, 3.0, 0.0, 10.0, 5.0])


def test_pca_matches_an_in_memory_eigendecomposition(tmp_path):
    X = pca_data()
    store = make_store(tmp_path / "s", X)
    pca = PCADictionary.fit(store, n_components=4, batch_size=311, progress=False)
    assert isinstance(pca, Dictionary) and (pca.kind, pca.hookpoint, pca.d_in, pca.n_features) == ("pca", HOOK, 6, 4)

    X64 = X.double()
    cov = torch.cov(X64.T, correction=0)
    variance, vectors = torch.linalg.eigh(cov)
    variance, vectors = variance.flip(0), vectors.flip(1)
    assert torch.allclose(pca.mean.double(), X64.mean(0), atol=1e-5)
    assert torch.allclose(pca.explained_variance.double(), variance[:4], rtol=1e-5)
    assert torch.allclose(pca.explained_variance_ratio.double(), variance[:4] / variance.sum(), rtol=1e-5)
    assert torch.allclose((pca.components.double() @ vectors[:, :4]).abs(), torch.eye(4, dtype=torch.float64), atol=1e-5)

    projected = (X - pca.mean) @ pca.components.T
    assert (skew(projected) > 0).all()  # each component oriented to its heavy tail
    assert torch.allclose(pca.skew.double(), skew(projected), atol=1e-3)
    assert float(skew(projected)[1]) > 1.5  # the skewed source, flipped to its positive side
    assert torch.allclose(pca.encode(X), projected.clamp_min(0), atol=1e-5)
    assert torch.equal(pca.residual_directions(), pca.components)

    again = PCADictionary.fit(store, n_components=4, batch_size=4096, both_signs=True, progress=False)
    assert torch.allclose(again.components, pca.components, atol=1e-5)  # batch size does not matter
    assert again.n_features == 8 and again.title(5) == "PCA 1 (negated)"
    assert torch.allclose(again.encode(X)[:, 4:], (-projected).clamp_min(0), atol=1e-5)
    assert torch.allclose(again.residual_directions()[4:], -pca.components)

    whole = PCADictionary.fit(store, progress=False)
    assert whole.n_features == 6 and abs(float(whole.explained_variance_ratio.sum()) - 1) < 1e-5
    half = PCADictionary.fit(store, max_rows=1000, progress=False)
    assert half.info["n_rows"] == 1000 and torch.allclose(half.mean.double(), X64[:1000].mean(0), atol=1e-5)
    with pytest.raises(DictionaryError, match="n_components"):
        PCADictionary.fit(store, n_components=7, progress=False)


def test_pca_at_the_mlp_neurons_maps_through_the_down_projection(llama_tiny, tmp_path):
    store = captured(llama_tiny, ["blocks.2.mlp.hook_post"], tmp_path / "s")
    pca = PCADictionary.fit(store, n_components=5, progress=False)
    assert pca.hookpoint == "blocks.2.mlp.hook_post"
    with torch.no_grad():
        expected = down_proj(llama_tiny, 2)(pca.components)
    assert torch.allclose(pca.residual_directions(llama_tiny), expected, atol=1e-5)
    assert torch.allclose(down_projection(llama_tiny, 2), down_proj(llama_tiny, 2).weight.T)
    with pytest.raises(DictionaryError, match="pass model="):
        pca.residual_directions()


# ---- ICA ----------------------------------------------------------------------------------------
def ica_mixture(n: int = 6000):
    """Four unit-variance sources (two Laplace, one positively and one negatively skewed) mixed
    into six dimensions with a little noise and an offset."""
    g = torch.Generator().manual_seed(1)
    laplace = torch.distributions.Laplace(0.0, 1.0)
    torch.manual_seed(1)
    S = torch.stack([laplace.sample((n,)), laplace.sample((n,)),
                     torch.empty(n).exponential_(generator=g) - 1, 1 - torch.empty(n).exponential_(generator=g)], 1)
    S = (S - S.mean(0)) / S.std(0)
    A = torch.randn(6, 4, generator=g)
    X = S @ A.T + 0.01 * torch.randn(n, 6, generator=g) + torch.tensor([3.0, 0, 0, -1, 0, 2])
    return X, S, A


def test_ica_recovers_a_known_mixture(tmp_path):
    X, S, A = ica_mixture()
    store = make_store(tmp_path / "s", X)
    ica = ICADictionary.fit(store, n_components=4, batch_size=1000, progress=False)
    assert isinstance(ica, Dictionary) and (ica.kind, ica.n_features, ica.d_in) == ("ica", 4, 6)
    assert ica.info["converged"] and ica.info["iterations"] < 50

    sources = (X - ica.mean) @ ica.encoder.T
    corr = torch.corrcoef(torch.cat([sources, S], dim=1).T)[:4, 4:]  # recovered x true
    match = corr.abs().argmax(dim=1)
    assert sorted(match.tolist()) == [0, 1, 2, 3]  # a permutation
    assert (corr.abs().max(dim=1).values > 0.999).all()
    # Amari index of (unmixing @ mixing): 0 for a scaled permutation.
    P = ((ica.encoder / ica.scale[:, None]) @ A).abs()
    amari = ((P / P.max(1, keepdim=True).values).sum(1) - 1).sum() + ((P / P.max(0, keepdim=True).values).sum(0) - 1).sum()
    assert amari / (2 * 4 * 3) < 0.02

    columns = A / A.norm(dim=0)
    cos = ica.decoder @ columns  # recovered directions x true mixing columns
    assert (cos.abs().max(dim=1).values > 0.999).all()
    assert torch.allclose(ica.decoder.norm(dim=1), torch.ones(4), atol=1e-5)
    # The skewed sources come out on their heavy side: source 2 as is, source 3 (negatively skewed) flipped.
    assert float(cos[match.tolist().index(2), 2]) > 0.999
    assert float(cos[match.tolist().index(3), 3]) < -0.999
    assert (ica.skew >= 0).all() and (ica.scale.diff() <= 0).all()
    # activation * direction is the source's contribution; encoder and decoder are biorthogonal.
    assert torch.allclose(ica.encoder @ ica.decoder.T, torch.eye(4), atol=1e-4)
    assert torch.allclose(ica.encode(X), sources.clamp_min(0), atol=1e-5)

    again = ICADictionary.fit(store, n_components=4, batch_size=257, progress=False)
    assert torch.allclose(again.encoder, ica.encoder, atol=1e-4)  # streaming: batch size does not matter
    with pytest.raises(DictionaryError, match="rank"):
        ICADictionary.fit(make_store(tmp_path / "flat", torch.cat([X[:, :3], X[:, :3]], dim=1)), n_components=5,
                          progress=False)


def test_ica_stops_at_max_iter(tmp_path):
    X, _, _ = ica_mixture(1000)
    store = make_store(tmp_path / "s", X)
    ica = ICADictionary.fit(store, max_iter=2, tol=1e-12, max_rows=600)  # with progress bars, as by default
    assert ica.info["iterations"] == 2 and not ica.info["converged"] and ica.info["n_rows"] == 600
    assert ica.n_features == 6  # all directions: the noise makes the data full rank


# ---- random -------------------------------------------------------------------------------------
def test_random_dictionary(tmp_path):
    random = RandomDictionary(6, 10, seed=3, hookpoint=HOOK)
    assert isinstance(random, Dictionary) and random.n_features == 10
    assert torch.allclose(random.decoder.norm(dim=1), torch.ones(10))
    assert torch.equal(random.decoder, RandomDictionary(6, 10, seed=3).decoder)
    assert not torch.equal(random.decoder, RandomDictionary(6, 10, seed=4).decoder)
    X = pca_data(500)
    assert torch.allclose(random.encode(X), (X @ random.decoder.T).clamp_min(0))
    random.fit_mean(make_store(tmp_path / "s", X), progress=False)
    assert torch.allclose(random.mean, X.mean(0), atol=1e-5)
    assert torch.allclose(random.encode(X), ((X - X.mean(0)) @ random.decoder.T).clamp_min(0), atol=1e-5)


# ---- saving and loading -------------------------------------------------------------------------
def _same(a, b, x: torch.Tensor, model=None) -> None:
    assert type(a) is type(b)
    assert (a.kind, a.hookpoint, a.d_in, a.n_features) == (b.kind, b.hookpoint, b.d_in, b.n_features)
    assert torch.equal(a.encode(x), b.encode(x))
    assert torch.equal(a.residual_directions(model), b.residual_directions(model))
    described = {k: v for k, v in b.describe().items() if k != "source"}
    assert described == {k: v for k, v in a.describe().items() if k != "source"}


def test_save_and_load_every_kind(llama_tiny, tmp_path):
    X = pca_data(1000)
    store = make_store(tmp_path / "s", X)
    sae = SAE.from_config(SAEConfig("jumprelu", d_in=6, d_sae=9, hook_name=HOOK))
    dictionaries = {
        "pca": PCADictionary.fit(store, n_components=3, both_signs=True, progress=False),
        "ica": ICADictionary.fit(store, n_components=3, progress=False),
        "random": RandomDictionary(6, 5, seed=1, hookpoint=HOOK).fit_mean(store, progress=False),
        "sae": SAEDictionary(sae),
    }
    for name, dictionary in dictionaries.items():
        dictionary.save(tmp_path / name)
        loaded = load_dictionary(tmp_path / name)
        _same(dictionary, loaded, X)
        assert loaded.describe()["source"] == str(tmp_path / name)
    assert torch.equal(load_dictionary(tmp_path / "pca").skew, dictionaries["pca"].skew)
    assert load_dictionary(tmp_path / "ica").info["converged"] == dictionaries["ica"].info["converged"]

    neurons = NeuronDictionary.from_model(llama_tiny, 0, both_signs=True)
    neurons.save(tmp_path / "neurons")
    _same(neurons, load_dictionary(tmp_path / "neurons"), torch.randn(4, neurons.d_in))

    sae_mlp = SAEDictionary(SAE.from_config(SAEConfig("relu", d_in=48, d_sae=4)), hookpoint="blocks.0.mlp.hook_post")
    sae_mlp.save(tmp_path / "sae_mlp")  # the hook point given goes into the SAE's cfg.json
    assert sae_mlp.sae.cfg.hook_name == ""
    _same(sae_mlp, load_dictionary(tmp_path / "sae_mlp"), torch.randn(4, 48), model=llama_tiny)
    assert isinstance(SAEDictionary.from_path(tmp_path / "sae"), SAEDictionary)

    dictionaries["pca"].save(tmp_path / "pca")  # saving over a saved dictionary replaces it
    assert sorted(p.name for p in (tmp_path / "pca").iterdir()) == ["dictionary.json", "dictionary.safetensors"]


def test_damaged_folders_give_clear_errors(tmp_path):
    X = pca_data(500)
    pca = PCADictionary.fit(make_store(tmp_path / "s", X), n_components=2, progress=False)
    pca.save(tmp_path / "a")
    RandomDictionary(6, 2, hookpoint=HOOK).save(tmp_path / "b")

    with pytest.raises(DictionaryError, match="does not exist"):
        load_dictionary(tmp_path / "missing")
    (tmp_path / "empty").mkdir()
    with pytest.raises(DictionaryError, match="neither dictionary.json"):
        load_dictionary(tmp_path / "empty")

    truncated = tmp_path / "truncated"
    shutil.copytree(tmp_path / "a", truncated)
    data = (truncated / "dictionary.safetensors").read_bytes()
    (truncated / "dictionary.safetensors").write_bytes(data[: len(data) - 10])
    with pytest.raises(DictionaryError, match="truncated or damaged.*fit and save the dictionary again"):
        load_dictionary(truncated)

    mixed = tmp_path / "mixed"
    shutil.copytree(tmp_path / "a", mixed)
    shutil.copy(tmp_path / "b" / "dictionary.json", mixed / "dictionary.json")
    with pytest.raises(DictionaryError, match="different saves"):
        load_dictionary(mixed)

    broken = tmp_path / "broken"
    shutil.copytree(tmp_path / "a", broken)
    (broken / "dictionary.json").write_text("{not json")
    with pytest.raises(DictionaryError, match="not valid JSON"):
        load_dictionary(broken)

    lonely = tmp_path / "lonely"
    shutil.copytree(tmp_path / "a", lonely)
    (lonely / "dictionary.safetensors").unlink()
    with pytest.raises(DictionaryError, match="missing"):
        load_dictionary(lonely)


# ---- matching -----------------------------------------------------------------------------------
def test_best_matches_finds_the_neuron_behind_an_sae_feature(llama_tiny):
    neurons = NeuronDictionary.from_model(llama_tiny, 1)
    W_out = neurons.residual_directions()
    sae = SAE.from_config(SAEConfig("relu", d_in=32, d_sae=6, hook_name="blocks.1.hook_mlp_out"))
    picked = torch.tensor([7, 0, 30, 12, 47, 3])
    with torch.no_grad():
        sae.W_dec.copy_(-W_out[picked] / W_out[picked].norm(dim=1, keepdim=True))
    matches = best_matches(SAEDictionary(sae), neurons, [4, 1, 2], k=3)
    assert matches.features.tolist() == [4, 1, 2]
    assert matches.ids[:, 0].tolist() == [47, 0, 30]
    assert torch.allclose(matches.cosines[:, 0], -torch.ones(3), atol=1e-5)
    assert (matches.cosines.abs().diff(dim=1) <= 1e-6).all()  # best first

    back = best_matches(neurons, SAEDictionary(sae), k=1)
    assert back.features.tolist() == list(range(neurons.n_features)) and back.ids[47, 0] == 4

    mlp_sae = SAEDictionary(SAE.from_config(SAEConfig("relu", d_in=48, d_sae=4, hook_name="blocks.1.mlp.hook_post")))
    with pytest.raises(DictionaryError, match="pass model="):
        best_matches(mlp_sae, neurons)
    assert best_matches(mlp_sae, neurons, model=llama_tiny).ids.shape == (4, 1)
    with pytest.raises(DictionaryError, match="no residual directions"):
        best_matches(SAEDictionary(sae, hookpoint=""), neurons)
