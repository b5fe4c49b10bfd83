"""The feature-ablation view: "full" equals one plain-transformers forward per feature (no nnsight),
"direct" equals the direct path computed by hand."""

from __future__ import annotations

import json

import pytest
import torch
from conftest import tiny_model

from workbench.ablation import feature_ablation
from workbench.capture import run_to
from workbench.hookpoints import KINDS
from workbench.sae import SAE, SAEConfig


def _ids(seq=12):
    ids = torch.randint(3, 60, (seq,))
    ids[0] = 0
    return ids


def _model(family):
    """A tiny model whose unembedding is scaled up, so its next-token distributions are far from uniform and
    ablations move log-likelihoods by 1e-2..1 rather than 1e-4."""
    model = tiny_model(family)
    with torch.no_grad():
        model.hf.get_output_embeddings().weight.mul_(20)
    return model


def _sae(model, hookpoint, architecture="topk", **cfg) -> SAE:
    """A random SAE whose activations are of the order of the hook point's norm."""
    width = model.hookpoint(hookpoint).width
    sae = SAE.from_config(SAEConfig(architecture, d_in=width, d_sae=64, hook_name=hookpoint, **cfg))
    x = run_to(model, [hookpoint], _ids()[None])[hookpoint]
    with torch.no_grad():
        sae.W_enc.mul_(4 / x.norm(dim=-1).mean())
    return sae


def _brute_force(model, sae, hookpoint, ids, feature) -> torch.Tensor:
    """delta[t] for one feature from two plain forward passes of the Hugging Face module, the ablation a
    transformers forward (pre-)hook: x -> x - a_f(x) d_f at every position but the BOS."""
    point = model.hookpoint(hookpoint)
    module = model.hf.get_submodule(point.module)

    def ablate(x):
        a = sae.encode(x).feature_acts[..., feature].clone()
        a[:, 0] = 0  # position 0 holds the BOS token
        return x - a[..., None] * sae.W_dec[feature]

    def pre_hook(mod, args, kwargs):
        if args:
            return (ablate(args[0]), *args[1:]), kwargs
        return args, {**kwargs, "hidden_states": ablate(kwargs["hidden_states"])}

    def hook(mod, args, out):
        return (ablate(out[0]), *out[1:]) if isinstance(out, tuple) else ablate(out)

    with torch.no_grad():
        clean = torch.log_softmax(model.hf(ids[None]).logits[0], -1)
        if point.io == "input":
            handle = module.register_forward_pre_hook(pre_hook, with_kwargs=True)
        else:
            handle = module.register_forward_hook(hook)
        try:
            ablated = torch.log_softmax(model.hf(ids[None]).logits[0], -1)
        finally:
            handle.remove()
    rows, targets = torch.arange(len(ids) - 1), ids[1:]
    delta = torch.zeros(len(ids))
    delta[1:] = ablated[rows, targets] - clean[rows, targets]
    return delta


@pytest.mark.parametrize("family", ["llama", "gpt2", "gpt_neox"])
@pytest.mark.parametrize("kind", KINDS)
def test_full_equals_one_plain_forward_per_feature(family, kind):
    model = _model(family)
    hookpoint = f"blocks.1.{kind}"
    sae, ids = _sae(model, hookpoint), _ids()
    acts = sae.encode(run_to(model, [hookpoint], ids[None])[hookpoint][0]).feature_acts
    acts[0] = 0
    firing = acts.gt(0).sum(0).argsort(descending=True)
    features = [*firing[:3].tolist(), int(firing[-1])]  # the last one may fire nowhere: its delta is exactly 0
    effects = feature_ablation(model, sae, ids, features, batch_size=2)
    brute = torch.stack([_brute_force(model, sae, hookpoint, ids, f) for f in features], 1)
    assert (effects.delta - brute).abs().max() <= 1e-4
    assert brute.abs().max() > 1e-2  # the test is not vacuous
    assert torch.equal(effects.acts, acts[:, features])
    assert (effects.delta[0] == 0).all()
    quiet = effects.acts.sum(0) == 0
    assert (effects.delta[:, quiet] == 0).all()
    # causal: no change before the first position where the feature fired
    first = int(acts[:, features[0]].gt(0).float().argmax())
    assert effects.delta[: first + 1, 0].abs().max() <= 1e-6


def _direct_by_hand(model, sae, hookpoint, ids, feature) -> torch.Tensor:
    """The direct path written out for Llama (RMSNorm) and GPT-2 (LayerNorm)."""
    hf = model.hf
    point = model.hookpoint(hookpoint)
    final = f"blocks.{model.n_layers - 1}.hook_resid_post"
    saved = run_to(model, [hookpoint, final], ids[None])
    x, r = saved[hookpoint], saved[final]
    a = sae.encode(x[0]).feature_acts[:, feature].clone()
    a[0] = 0
    d = sae.W_dec[feature]
    if point.kind == "mlp.hook_post":
        proj = hf.get_submodule(f"{model.hookpoint(hookpoint).module}")
        d = proj.weight @ d if isinstance(proj, torch.nn.Linear) else d @ proj.weight  # Conv1D: [in, out]
    r = r[0]
    if model.hf.config.model_type == "llama":
        norm = hf.model.norm
        scale = torch.rsqrt(r.pow(2).mean(-1) + norm.variance_epsilon)  # (T,)
        direction = norm.weight * d
    else:
        norm = hf.transformer.ln_f
        scale = torch.rsqrt(r.var(-1, unbiased=False) + norm.eps)
        direction = norm.weight * (d - d.mean())
    W_U = hf.lm_head.weight
    logits = hf(ids[None]).logits[0]
    edited = logits - (a * scale)[:, None] * (W_U @ direction)[None, :]
    rows, targets = torch.arange(len(ids) - 1), ids[1:]
    delta = torch.zeros(len(ids))
    delta[1:] = torch.log_softmax(edited, -1)[rows, targets] - torch.log_softmax(logits, -1)[rows, targets]
    return delta


@pytest.mark.parametrize("family", ["llama", "gpt2"])
@pytest.mark.parametrize("kind", ["mlp.hook_post", "hook_resid_post"])
def test_direct_equals_the_direct_path_by_hand(family, kind):
    model = _model(family)
    hookpoint = f"blocks.2.{kind}"
    sae, ids = _sae(model, hookpoint, "relu"), _ids()
    features = [0, 5, 11]
    effects = feature_ablation(model, sae, ids, features, method="direct")
    with torch.no_grad():
        by_hand = torch.stack([_direct_by_hand(model, sae, hookpoint, ids, f) for f in features], 1)
    assert by_hand.abs().max() > 1e-2
    assert torch.allclose(effects.delta, by_hand, atol=1e-5)
    assert effects.method == "direct"


def test_to_dict_is_plain_json(llama_tiny):
    hookpoint = "blocks.1.hook_mlp_out"
    sae, ids = _sae(llama_tiny, hookpoint), _ids(6)
    effects = feature_ablation(llama_tiny, sae, ids[None], 3, titles=["three"])
    data = json.loads(json.dumps(effects.to_dict()))
    assert set(data) == {"tokens", "features", "acts", "delta", "method", "titles"}
    assert data["tokens"][:2] == ["<bos>", llama_tiny.tokenizer.decode([int(ids[1])])]
    assert data["features"] == [3] and data["titles"] == ["three"] and data["method"] == "full"
    assert len(data["acts"]) == len(data["delta"]) == 6 and len(data["acts"][0]) == 1
    assert effects.token_ids.tolist() == ids.tolist()
    with pytest.raises(ValueError, match="unknown method"):
        feature_ablation(llama_tiny, sae, ids, 3, method="both")
    with pytest.raises(ValueError, match="features must lie in"):
        feature_ablation(llama_tiny, sae, ids, 64)


@pytest.mark.slow
def test_full_on_the_embedded_model_equals_plain_forwards():
    from workbench import load_model

    model = load_model("smollm2-135m")
    hookpoint = "blocks.15.hook_mlp_out"
    sae = SAE.from_config(SAEConfig("topk", d_in=576, d_sae=512, k=16, hook_name=hookpoint))
    text = "The Django ORM maps each model class to a database table, and each attribute to a column."
    ids = torch.tensor([model.bos_token_id, *model.tokenizer(text)["input_ids"]])
    acts = sae.encode(run_to(model, [hookpoint], ids[None])[hookpoint][0, 1:]).feature_acts
    features = acts.sum(0).topk(3).indices.tolist()
    effects = feature_ablation(model, sae, ids, features)
    brute = torch.stack([_brute_force(model, sae, hookpoint, ids, f) for f in features], 1)
    assert brute.abs().max() > 1e-3
    assert (effects.delta - brute).abs().max() <= 1e-4
