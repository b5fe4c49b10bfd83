"""Workbench's feature statistics against SAEDashboard's, on the same SAE and the same tokens.

Runs SAEDashboard (``SaeVisRunner`` over a TransformerLens model, the engine behind its
``NeuronpediaRunner``) and workbench (``capture`` into a store, then ``feature_stats``) on one SAE
and one ``[n_prompts, ctx_len]`` tensor of token ids, and prints how well they agree on

* density: each feature's number of firing tokens (exact counts; SAEDashboard's are the sums of
  its activation-histogram bars);
* top activations: the same top (context, position) examples with the same values;
* logit effects: overlap of the 10 most promoted / suppressed tokens and the largest difference
  between their values.

It also writes workbench's Neuronpedia export of the SAE (``OUT/neuronpedia``) next to
SAEDashboard's own (``OUT/saedashboard_neuronpedia/batch-0.json``, from its
``NeuronpediaConverter``) and checks that their keys match and that the fields both compute
(neuron alignment, top logits, the top activation) agree.

Usage (a few minutes on a 2-core CPU with the defaults)::

    python bench/saedashboard_compare.py --out build/saedashboard_compare
    python bench/saedashboard_compare.py --out DIR --only saedashboard   # SAEDashboard's half alone
    python bench/saedashboard_compare.py --out DIR --only workbench      # workbench's half alone
    python bench/saedashboard_compare.py --out DIR --only compare        # compare the two dumps

Each half dumps its numbers (``OUT/saedashboard.json``, ``OUT/workbench.json``), so either can run
first and the comparison can be finished later. Without ``--sae`` a small TopK SAE is trained
with workbench (``workbench.pipeline.train_run``: 512 features, k 16, 32,768 tokens x 4 epochs) and
saved in SAELens' format (``OUT/train/sae_0``), which SAELens' ``SAE.load_from_disk`` reads for
SAEDashboard. The tokens are the embedded corpus' held-out split (``workbench.data.token_contexts``,
BOS first), saved as ``OUT/tokens.safetensors``.

Measured with the defaults (64 prompts x 128 tokens, 8,128 tokens after BOS; 512 features; 2 min
end to end on a 2-core CPU: training 57 s, workbench 8 s, SAEDashboard 34 s): the hook point's
activations from TransformerLens and from Hugging Face differ by at most 4.2e-5; all 512 features
have identical fire counts; all 512 have the same top-20 (context, position) set, values within
1.1e-4 (SAEDashboard stores them to 4 decimals); the 10 most promoted and the 10 most suppressed
tokens are the same for all 512, values within 1.3e-6; the two Neuronpedia exports have the same
keys, and the same neuron-alignment indices and top-logit tokens for every feature, values within
0.001 (their 3-decimal rounding).

Model: the embedded SmolLM2-135M-Instruct. TransformerLens 3.9 has no SmolLM2 in its model list,
but builds a Llama-architecture ``HookedTransformer`` from workbench's de-quantised folder
(``~/.cache/workbench/models/smollm2-135m``); its logits match the Hugging Face model's to about
6e-5. ``--model`` takes another workbench model name or a Hugging Face id that TransformerLens
knows (e.g. ``gpt2``, which needs the network once).

Where the two set-ups differ on purpose, and how the comparison copes:

* BOS: workbench's capture drops position 0 (the BOS token) from the store; SAEDashboard is told
  to ignore position 0 (``ignore_positions=[0]``). Both densities are then counted over
  ``n_prompts * (ctx_len - 1)`` tokens; SAEDashboard's own ``frac_nonzero`` divides by
  ``n_prompts * ctx_len`` (ignored positions count as zeros), reported alongside.
  NeuronpediaRunner also ignores every pad/BOS/EOS token; this script does not (workbench keeps
  the documents' EOS tokens).
* Logit effects: TransformerLens folds the final RMSNorm's weight into ``W_U`` (``fold_ln``), which
  is workbench's ``W_U (gamma * d)``. NeuronpediaRunner also centres ``W_U`` over the vocabulary
  (``center_unembed``), which shifts every effect of a feature by the same constant (rankings are
  unchanged); this script loads the model without centring so the values are comparable.
* Decoder norms: SAEDashboard calls ``fold_W_dec_norm()`` first, so its activations are
  ``f * ||W_dec_i||`` and its logit effects use unit decoder rows. Workbench's numbers are
  rescaled the same way before comparing. SAELens refuses ``fold_W_dec_norm`` for TopK SAEs saved
  with ``rescale_acts_by_decoder_norm: false`` (folding unequal norms would change which features
  win the top k), so SAEDashboard cannot run on them as is. Workbench's TopK decoder rows all have
  one norm (unit norm in training, times the input scale folded in when saved: 1.61 here), for
  which folding only multiplies every activation by that norm; the script checks the norms are
  equal (to 1e-4) and then applies SAELens' generic ``SAE.fold_W_dec_norm``.
* The forward passes differ (TransformerLens vs Hugging Face through nnsight, float32): the
  script reports the largest difference of the hook point's activations; near-ties at the TopK
  boundary or in a top-20 can flip with differences of that size.

Installing SAEDashboard without breaking the environment: ``sae-dashboard==0.8.0`` pins
``transformer-lens<3``, ``transformers<4.57``, ``datasets<4``, ``safetensors<0.5`` and (through
``decode-clt``) torchvision/torchaudio, so a plain ``pip install sae-dashboard`` replaces this venv's
torch 2.13 CPU build and downgrades transformers and TransformerLens. Install it without its
dependencies, plus the two packages it imports that the venv lacks::

    .venv/bin/pip install -e ".[bench]"                     # sae-lens, eindex-callum, dataclasses-json
    .venv/bin/pip install --no-deps sae-dashboard==0.8.0
    # dataclasses-json brings marshmallow and typing-inspect; wandb, which SAEDashboard's
    # NeuronpediaRunner imports, comes with TransformerLens.

It then runs on TransformerLens 3.9 and SAELens 6.54 (with the TopK caveat above).
"""

from __future__ import annotations

import argparse
import json
import re
import statistics
import sys
import time
from pathlib import Path

import torch

HOOKPOINT = "blocks.15.hook_mlp_out"


# ---- shared inputs: tokens and the SAE -----------------------------------------------------------
def prepare(args: argparse.Namespace) -> tuple[torch.Tensor, Path]:
    """The token ids (saved once, so both halves read the same) and the SAE folder (trained once)."""
    from safetensors.torch import load_file, save_file

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    tokens_file = out / "tokens.safetensors"
    sae_path = Path(args.sae) if args.sae else out / "train" / "sae_0"
    need_tokens = not tokens_file.is_file()
    need_sae = not (sae_path / "cfg.json").is_file()
    if need_tokens or need_sae:
        from workbench.models import load_model

        model = load_model(args.model)
        if need_tokens:
            from workbench.data import EMBEDDED_CORPUS, token_contexts

            tokens = token_contexts(model.tokenizer, args.corpus or EMBEDDED_CORPUS, n_contexts=args.n_prompts,
                                    ctx_len=args.ctx_len, seed=1, split="test", bos_token_id=model.bos_token_id)
            save_file({"tokens": tokens}, str(tokens_file))
        if need_sae:
            if args.sae:
                sys.exit(f"no SAE at {sae_path} (expected cfg.json there)")
            from workbench.pipeline import TrainRunConfig, train_run

            started = time.perf_counter()
            train_run(TrainRunConfig(out=str(out / "train"), model=args.model, hookpoint=args.hookpoint, arch="topk",
                                     d_sae=args.d_sae, k=args.k, tokens=args.train_tokens, epochs=4, eval_tokens=0,
                                     ctx_len=args.ctx_len, seed=0), model=model, progress=False)
            print(f"trained a TopK SAE ({args.d_sae} features, k {args.k}) in {time.perf_counter() - started:.0f} s")
    tokens = load_file(str(tokens_file))["tokens"]
    return tokens, sae_path


def _decoder_norms(sae_path: Path) -> torch.Tensor:
    from workbench.sae import SAE

    return SAE.load(sae_path).W_dec.detach().norm(dim=1)


# ---- workbench's half ---------------------------------------------------------------------------
def run_workbench(args: argparse.Namespace, tokens: torch.Tensor, sae_path: Path) -> dict:
    from workbench.capture import capture
    from workbench.dictionaries import SAEDictionary
    from workbench.features import feature_stats
    from workbench.models import load_model
    from workbench.neuronpedia import write_neuronpedia

    out = Path(args.out)
    started = time.perf_counter()
    model = load_model(args.model)
    dictionary = SAEDictionary.from_path(sae_path)
    store = capture(model, [dictionary.hookpoint], tokens, out / "store", drop_bos=True, progress=False)
    stats = feature_stats(dictionary, store, model=model, out=out / "workbench_stats", progress=False)
    seconds = time.perf_counter() - started
    features = {}
    for f in range(stats.n_features):
        card = stats.card(f)
        top = next((g["examples"] for g in card["groups"] if g["kind"] == "top"), [])
        logits = card["logits"] or {"top": [], "bottom": []}
        features[f] = {
            "count": card["fire_count"],
            "max": card["max"],
            "top": [[e["context"], e["position"], e["activation"]] for e in top],
            "logits_top": [[e["token"], e["value"]] for e in logits["top"]],
            "logits_bottom": [[e["token"], e["value"]] for e in logits["bottom"]],
        }
    layer = int(re.search(r"blocks\.(\d+)\.", dictionary.hookpoint).group(1))
    write_neuronpedia(stats, out / "neuronpedia", model_id=args.model, layer=layer, sae_set="workbench-compare",
                      dataset=args.corpus or "embedded", n_prompts_total=len(tokens),
                      n_tokens_in_prompt=tokens.shape[1], decoder=dictionary.sae.W_dec)
    return {"seconds": seconds, "n_tokens": stats.n_tokens, "features": features,
            "hook_rows": store.rows(dictionary.hookpoint, 0, tokens.shape[1] - 1).tolist()}


# ---- SAEDashboard's half --------------------------------------------------------------------------
def load_transformer_lens(name: str):
    """A HookedSAETransformer with the final norm folded into W_U and nothing centred."""
    from sae_lens import HookedSAETransformer

    from workbench.models import EMBEDDED, cache_home

    if name not in EMBEDDED:
        return HookedSAETransformer.from_pretrained(name, device="cpu", fold_ln=True, center_writing_weights=False,
                                                    center_unembed=False)
    from transformer_lens import loading_from_pretrained as loading
    from transformers import AutoModelForCausalLM, AutoTokenizer

    folder = cache_home() / "models" / name
    if not (folder / "config.json").is_file():
        sys.exit(f"{folder} is missing: run `workbench prepare` (or any workbench command that loads {name}) first")
    hf = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32)
    tokenizer = AutoTokenizer.from_pretrained(folder)
    # HookedTransformer.from_pretrained only takes names from TransformerLens' list; these are the
    # steps it runs, from the local folder (TransformerLens reads the Llama config from it).
    cfg = loading.get_pretrained_model_config(str(folder), fold_ln=True, device="cpu", dtype=torch.float32)
    state = loading.get_pretrained_state_dict(str(folder), cfg, hf, dtype=torch.float32)
    model = HookedSAETransformer(cfg, tokenizer=tokenizer)
    model.load_and_process_state_dict(state, fold_ln=True, center_writing_weights=False, center_unembed=False)
    return model.eval()


def run_saedashboard(args: argparse.Namespace, tokens: torch.Tensor, sae_path: Path) -> dict:
    from sae_dashboard.components_config import (ActsHistogramConfig, Column, FeatureTablesConfig,
                                                 LogitsHistogramConfig, LogitsTableConfig, SequencesConfig)
    from sae_dashboard.layout import SaeVisLayoutConfig
    from sae_dashboard.neuronpedia.neuronpedia_converter import NeuronpediaConverter
    from sae_dashboard.neuronpedia.neuronpedia_runner_config import NeuronpediaRunnerConfig
    from sae_dashboard.sae_vis_data import SaeVisConfig
    from sae_dashboard.sae_vis_runner import SaeVisRunner
    from sae_lens import SAE

    out = Path(args.out)
    started = time.perf_counter()
    model = load_transformer_lens(args.model)
    sae = SAE.load_from_disk(str(sae_path), device="cpu")
    hookpoint = sae.cfg.metadata.hook_name
    arch = sae.cfg.architecture() if callable(sae.cfg.architecture) else sae.cfg.architecture
    if arch == "topk" and not getattr(sae.cfg, "rescale_acts_by_decoder_norm", False):
        norms = sae.W_dec.detach().norm(dim=1)
        if norms.max() / norms.min() - 1 > 1e-4:
            sys.exit("this TopK SAE's decoder rows have unequal norms: SAELens will not fold them for SAEDashboard, "
                     "and folding them would change the top k")
        # equal norms: folding scales every activation alike, so the top k stays; SAELens' TopKSAE refuses anyway
        sae.fold_W_dec_norm = lambda: SAE.fold_W_dec_norm(sae)
    layout = SaeVisLayoutConfig(columns=[Column(  # NeuronpediaRunner.run's layout
        SequencesConfig(stack_mode="stack-all", buffer=None, compute_buffer=True, n_quantiles=5,
                        top_acts_group_size=20, quantile_group_size=5),
        ActsHistogramConfig(), LogitsHistogramConfig(), LogitsTableConfig(), FeatureTablesConfig(n_rows=3),
    )])
    cfg = SaeVisConfig(hook_point=hookpoint, features=list(range(sae.cfg.d_sae)), minibatch_size_features=sae.cfg.d_sae,
                       minibatch_size_tokens=16, feature_centric_layout=layout, device="cpu", dtype="float32",
                       ignore_positions=[0])
    data = SaeVisRunner(cfg).run(encoder=sae, model=model, tokens=tokens)
    seconds = time.perf_counter() - started

    decode = {}

    def token(i: int) -> str:
        if i not in decode:
            decode[i] = model.tokenizer.decode([i])
        return decode[i]

    features = {}
    n, t = tokens.shape
    for f, fd in data.feature_data_dict.items():
        count = int(sum(fd.acts_histogram_data.bar_heights))
        top_group = fd.sequence_data.seq_group_data[0]
        top = [[s.original_index, s.qualifying_token_index, s.feat_acts[s.qualifying_token_index - 1]]
               for s in top_group.seq_data if s.feat_acts[s.qualifying_token_index - 1] > 0]
        lt = fd.logits_table_data
        features[f] = {
            "count": count,
            "frac_nonzero": count / (n * t),
            "max": max((a for _, _, a in top), default=0.0),
            "top": top,
            "logits_top": [[token(i), v] for i, v in zip(lt.top_token_ids, lt.top_logits)],
            "logits_bottom": [[token(i), v] for i, v in zip(lt.bottom_token_ids, lt.bottom_logits)],
            "logits_top_ids": lt.top_token_ids,
        }
    # SAEDashboard's own Neuronpedia batch file, for the key comparison
    vocab = {i: token(i) for i in range(model.cfg.d_vocab)}
    np_cfg = NeuronpediaRunnerConfig(sae_set="saedashboard-compare", sae_path=str(sae_path), outputs_dir=str(out),
                                     model_id=args.model, layer=int(hookpoint.split(".")[1]), n_prompts_total=n,
                                     n_tokens_in_prompt=t, huggingface_dataset_path=args.corpus or "embedded")
    np_dir = out / "saedashboard_neuronpedia"
    np_dir.mkdir(exist_ok=True)
    (np_dir / "batch-0.json").write_text(NeuronpediaConverter.convert_to_np_json(model, data, np_cfg, vocab))
    with torch.no_grad():
        _, cache = model.run_with_cache(tokens[:1], names_filter=[hookpoint], stop_at_layer=int(hookpoint.split(".")[1]) + 1)
    return {"seconds": seconds, "features": features,
            "hook_rows": cache[hookpoint][0, 1:].tolist()}


# ---- the comparison --------------------------------------------------------------------------------
def compare(wb: dict, sd: dict, norms: torch.Tensor, n_tokens: int) -> dict:
    """Agreement figures; workbench's activations are multiplied by the decoder norms, as
    SAEDashboard's fold_W_dec_norm does, and its logit effects divided by them."""
    scale = norms.tolist()
    act_diff = (torch.tensor(wb["hook_rows"]) - torch.tensor(sd["hook_rows"])).abs().max().item()
    count_diffs, max_diffs, top_overlap, top_value_diffs, top_same = [], [], [], [], 0
    pos_overlap, neg_overlap, logit_value_diffs = [], [], []
    live = 0
    for key, w in wb["features"].items():
        s = sd["features"][key]  # both keyed by str(feature) after JSON
        f = int(key)
        count_diffs.append(abs(w["count"] - s["count"]))
        if w["count"] and s["count"]:
            live += 1
            max_diffs.append(abs(w["max"] * scale[f] - s["max"]))
            k = min(len(w["top"]), len(s["top"]))
            wt = {(c, p) for c, p, _ in w["top"][:k]}
            st = {(c, p) for c, p, _ in s["top"][:k]}
            top_overlap.append(len(wt & st) / max(k, 1))
            top_same += wt == st
            wv = sorted((a * scale[f] for _, _, a in w["top"][:k]), reverse=True)
            sv = sorted((a for _, _, a in s["top"][:k]), reverse=True)
            top_value_diffs.append(max((abs(a - b) for a, b in zip(wv, sv)), default=0.0))
        if w["logits_top"] and s["logits_top"]:
            for mine, theirs, sink in ((w["logits_top"], s["logits_top"], pos_overlap),
                                       (w["logits_bottom"], s["logits_bottom"], neg_overlap)):
                a, b = [t for t, _ in mine[:10]], [t for t, _ in theirs[:10]]
                sink.append(sum(min(a.count(x), b.count(x)) for x in set(a)) / max(len(b), 1))
                logit_value_diffs.append(max(abs(va / scale[f] - vb) for (_, va), (_, vb) in zip(mine, theirs)))
    n_feat = len(count_diffs)
    return {
        "features": n_feat,
        "live_in_both": live,
        "tokens": n_tokens,
        "hook_activation_max_abs_diff": act_diff,
        "density": {
            "features_with_identical_counts": sum(d == 0 for d in count_diffs),
            "count_max_abs_diff": max(count_diffs),
            "density_max_abs_diff": max(count_diffs) / n_tokens,
            "count_total_abs_diff": sum(count_diffs),
        },
        "top_activations": {
            "max_activation_max_abs_diff": max(max_diffs, default=0.0),
            "features_with_identical_top_sets": top_same,
            "top_location_overlap_mean": statistics.fmean(top_overlap) if top_overlap else None,
            "top_location_overlap_min": min(top_overlap, default=None),
            "top_values_max_abs_diff": max(top_value_diffs, default=0.0),
        },
        "logit_effects": {
            "features_compared": len(pos_overlap),
            "top10_promoted_overlap_mean": statistics.fmean(pos_overlap) if pos_overlap else None,
            "top10_promoted_overlap_min": min(pos_overlap, default=None),
            "top10_suppressed_overlap_mean": statistics.fmean(neg_overlap) if neg_overlap else None,
            "top10_suppressed_overlap_min": min(neg_overlap, default=None),
            "values_max_abs_diff": max(logit_value_diffs, default=0.0),
        },
    }


def compare_neuronpedia(out: Path) -> dict:
    """Workbench's Neuronpedia export against SAEDashboard's own batch file of the same SAE: the
    keys, and the fields both compute (neuron alignment, top logits, the top activation)."""
    theirs = json.loads((out / "saedashboard_neuronpedia" / "batch-0.json").read_text())
    ours = {f["feature_index"]: f for path in sorted((out / "neuronpedia").glob("batch-*.json"))
            for f in json.loads(path.read_text())["features"]}
    first = json.loads((out / "neuronpedia" / "batch-0.json").read_text())
    a_ours = next((f["activations"][0] for f in first["features"] if f["activations"]), {})
    a_theirs = next((f["activations"][0] for f in theirs["features"] if f["activations"]), {})
    same_alignment = same_pos = 0
    pos_diff = max_diff = 0.0
    for t in theirs["features"]:
        o = ours[t["feature_index"]]
        same_alignment += o["neuron_alignment_indices"] == t["neuron_alignment_indices"]
        same_pos += o["pos_str"] == t["pos_str"]
        pos_diff = max(pos_diff, *(abs(a - b) for a, b in zip(o["pos_values"], t["pos_values"])))
        top_o = [a["bin_max"] for a in o["activations"] if a["bin_min"] == -1]
        top_t = [a["bin_max"] for a in t["activations"] if a["bin_min"] == -1]
        if top_o and top_t:
            max_diff = max(max_diff, abs(top_o[0] - top_t[0]))
    return {"batch_keys_equal": list(first) == list(theirs),
            "feature_keys_equal": list(first["features"][0]) == list(theirs["features"][0]),
            "activation_keys_equal": list(a_ours) == list(a_theirs),
            "features": len(theirs["features"]),
            "same_neuron_alignment_indices": same_alignment,
            "same_pos_str": same_pos,
            "pos_values_max_abs_diff": pos_diff,
            "top_bin_max_max_abs_diff": max_diff}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", default="build/saedashboard_compare", help="Working folder (reused by re-runs).")
    parser.add_argument("--only", choices=["both", "saedashboard", "workbench", "compare"], default="both")
    parser.add_argument("--model", default="smollm2-135m", help="Workbench model name or a Hugging Face id TransformerLens knows.")
    parser.add_argument("--hookpoint", default=HOOKPOINT, help="Hook point of the SAE trained when --sae is not given.")
    parser.add_argument("--sae", default=None, help="An SAE folder in SAELens' format (default: train one into OUT/train).")
    parser.add_argument("--corpus", default=None, help="Text source of the tokens (default: the embedded corpus).")
    parser.add_argument("--n-prompts", type=int, default=64)
    parser.add_argument("--ctx-len", type=int, default=128)
    parser.add_argument("--d-sae", type=int, default=512)
    parser.add_argument("--k", type=int, default=16)
    parser.add_argument("--train-tokens", type=int, default=32_768)
    args = parser.parse_args(argv)

    out = Path(args.out)
    if args.only != "compare":
        tokens, sae_path = prepare(args)
        halves = {"workbench": run_workbench, "saedashboard": run_saedashboard}
        for name, run in halves.items():
            if args.only in ("both", name):
                result = run(args, tokens, sae_path)
                result["sae"] = str(sae_path)
                (out / f"{name}.json").write_text(json.dumps(result))
                print(f"{name}: {result['seconds']:.0f} s, numbers in {out / f'{name}.json'}")
    if not ((out / "workbench.json").is_file() and (out / "saedashboard.json").is_file()):
        print("run the other half too (--only workbench / --only saedashboard) to compare")
        return
    wb = json.loads((out / "workbench.json").read_text())
    sd = json.loads((out / "saedashboard.json").read_text())
    report = compare(wb, sd, _decoder_norms(Path(wb["sae"])), wb["n_tokens"])
    if (out / "neuronpedia").is_dir() and (out / "saedashboard_neuronpedia").is_dir():
        report["neuronpedia_export"] = compare_neuronpedia(out)
    (out / "comparison.json").write_text(json.dumps(report, indent=2))
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
