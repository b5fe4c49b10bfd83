"""Do attribution scores predict the measured effect of patching one direction? (issue 11, bullet 3)

On SmolLM2-135M, IOI prompts of one (template, order) group that the model gets right (so they
stack without padding), Cunningham et al.'s counterfactual (IO replaced by a third name). For each
dictionary at its hook point:

* ``sae``: the quickstart SAE (``--sae``, blocks.15.hook_mlp_out);
* ``pca``: all components, fitted on the SAE's store (``--store``);
* ``ica``: ``--ica-components`` FastICA components on the first ``--max-rows`` rows of the store;
* ``random``: 4608 random directions, mean fitted on the store;
* ``neurons``: the standard basis of blocks.15.mlp.hook_post (its own hook point).

:func:`workbench.attribute.prepare_counterfactual` once; the candidate directions are the active
ones (:meth:`Counterfactual.active`, the rest node left out) and of those the ``--directions``
(K) with the largest edit, ``sum over prompts and positions of |c-bar_j - c_j| * ||d_j||`` (the
size of what patching j alone adds to x; for unit directions, and for neurons where ``d_j`` is
the standard basis of the hook point, this is plain ``sum |c-bar - c|``; the norm makes it
comparable for the random dictionary's pinv directions, which are not unit). On those K
directions: the measured effect (:func:`single_direction_effects`, mean KL(cf || patched) -
mean KL(cf || clean)) and :func:`attribution_scores` with ``steps=1`` (attribution patching) and
``steps=10`` (integrated gradients). Spearman between score and measured effect per dictionary
and method (:func:`workbench.stats.correlation`: tied values share their mean rank). The
rest node's score and effect are printed too, outside the correlation.

``kl_all_patched``: the mean KL with every active direction and the rest node patched. At an MLP
output or ``mlp.hook_post`` this is *not* zero: only that one activation is moved to its
counterfactual value, while the residual stream (and every attention layer reading the changed
name token) stays clean, so KL(cf || clean) is mostly out of reach at these hook points; the
single-direction effects are small against ``clean_kl``, and the integrated-gradients scores sum
to about ``kl_all_patched - clean_kl`` rather than ``-clean_kl``. For the same reason the
``--acdc`` target (KL <= 10% of KL(cf || clean)) is unreachable here: use a residual-stream hook.

With ``--acdc``, :func:`flat_acdc` per dictionary (default taus) and the smallest number of
patched directions (and its edit size) with KL <= 10% of KL(cf || clean); the search visits every
active direction, so on dense dictionaries (PCA, random, neurons) it is slow.

Prints one JSON line per dictionary (and per method), then a summary line. A figure, never a test.

    .venv/bin/python bench/ioi_attribution.py [--n 8] [--directions 48] [--acdc] \
        [--sae /tmp/freshD/build/01_quickstart/sae_0] [--store /tmp/exp/store]
"""

from __future__ import annotations

import argparse
import json
import sys
import time

import torch

from workbench.attribute import (attribution_scores, counterfactual_patches, flat_acdc,
                                 prepare_counterfactual, single_direction_effects)
from workbench.dictionaries import ICADictionary, NeuronDictionary, PCADictionary, RandomDictionary, SAEDictionary
from workbench.ioi import TEMPLATES, batches, evaluate_ioi, filter_correct, ioi_prompts, stack_ids
from workbench.models import load_model
from workbench.stats import correlation
from workbench.store import ActivationStore


def emit(record: dict) -> None:
    print(json.dumps(record), flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--n", type=int, default=8, help="prompts (after filtering)")
    parser.add_argument("--template", type=int, default=0)
    parser.add_argument("--order", default="BABA", choices=["ABBA", "BABA"])
    parser.add_argument("--directions", type=int, default=48, help="K: directions per dictionary")
    parser.add_argument("--sae", default="/tmp/freshD/build/01_quickstart/sae_0")
    parser.add_argument("--store", default="/tmp/exp/store")
    parser.add_argument("--ica-components", type=int, default=64)
    parser.add_argument("--max-rows", type=int, default=32768, help="store rows for PCA, ICA and the random mean")
    parser.add_argument("--dictionaries", default="sae,pca,ica,random,neurons")
    parser.add_argument("--acdc", action="store_true", help="also run flat_acdc per dictionary")
    parser.add_argument("--acdc-max-active", type=int, default=4096,
                        help="skip flat_acdc where more directions are active than this")
    parser.add_argument("--threads", type=int, default=None)
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    t_all = time.perf_counter()

    model = load_model("smollm2-135m")
    drawn = ioi_prompts(model, 3 * args.n, templates=[TEMPLATES[args.template]], orders=(args.order,))
    ev = evaluate_ioi(model, drawn)
    correct = filter_correct(drawn, ev)
    group = max(batches(correct, batch_size=10 ** 9), key=len)  # one token length (all, for one template)
    prompts = [correct[i] for i in group][:args.n]
    clean, cf_ids = stack_ids(prompts, "clean"), stack_ids(prompts, "counterfactual")
    emit({"what": "prompts", "template": args.template, "order": args.order, "drawn": len(drawn),
          "accuracy_before_filter": ev.accuracy, "mean_logit_diff_before_filter": ev.mean_logit_diff,
          "used": len(prompts), "seq": clean.shape[1], "example": prompts[0].text,
          "example_cf": prompts[0].counterfactual.text})

    sae = SAEDictionary.from_path(args.sae)
    hook = sae.hookpoint
    layer = int(hook.split(".")[1])
    store = ActivationStore.open(args.store)
    wanted = args.dictionaries.split(",")
    builders = {
        "sae": lambda: (sae, hook),
        "pca": lambda: (PCADictionary.fit(store, hook, max_rows=args.max_rows, progress=False), hook),
        "ica": lambda: (ICADictionary.fit(store, hook, args.ica_components, max_rows=args.max_rows, progress=False),
                        hook),
        "random": lambda: (RandomDictionary(sae.d_in, 4608, seed=0, hookpoint=hook).fit_mean(
            store, max_rows=args.max_rows, progress=False), hook),
        "neurons": lambda: (NeuronDictionary.from_model(model, layer), f"blocks.{layer}.mlp.hook_post"),
    }
    summary = {}
    for name in wanted:
        t0 = time.perf_counter()
        try:
            dictionary, hookpoint = builders[name]()
        except Exception as error:  # report, go on with the others
            emit({"what": "error", "dictionary": name, "stage": "fit", "error": repr(error)})
            continue
        t_fit = time.perf_counter() - t0
        t1 = time.perf_counter()
        cf = prepare_counterfactual(model, dictionary, hookpoint, clean, cf_ids)
        active = cf.active()
        rest_index = cf.n_directions - 1
        features = active[active != rest_index]
        norms = (torch.ones(cf.delta_c.shape[-1]) if cf.directions is None
                 else cf.directions.float().norm(dim=-1).cpu())
        edit = cf.delta_c.abs().sum((0, 1)).cpu() * norms
        chosen = features[torch.argsort(edit[features], descending=True)[:args.directions]]
        everything = torch.zeros(cf.n_directions, dtype=torch.bool)
        everything[active] = True
        full = counterfactual_patches(cf, everything[None])
        t_prep = time.perf_counter() - t1

        t2 = time.perf_counter()
        measured_all = single_direction_effects(cf, torch.cat([chosen, torch.tensor([rest_index])]))
        measured, measured_rest = measured_all[:-1], float(measured_all[-1])
        t_measure = time.perf_counter() - t2
        record = {"what": "dictionary", "dictionary": name, "hookpoint": hookpoint,
                  "n_features": cf.delta_c.shape[-1], "n_active": len(features), "k": len(chosen),
                  "clean_kl": float(cf.clean_kl.mean()),
                  "kl_all_patched": float(full.kl.mean()), "edit_all_patched": float(full.edit_size.mean()),
                  "rest_effect": measured_rest,
                  "effect_min": float(measured.min()), "effect_median": float(measured.median()),
                  "fit_s": round(t_fit, 2), "prepare_s": round(t_prep, 2), "measure_s": round(t_measure, 2)}
        emit(record)
        summary[name] = {"k": len(chosen), "n_active": len(features), "clean_kl": record["clean_kl"]}
        for steps in (1, 10):
            t3 = time.perf_counter()
            scores = attribution_scores(cf, steps=steps)
            seconds = time.perf_counter() - t3
            rho = correlation(scores[chosen].tolist(), measured.tolist())["spearman"]
            emit({"what": "spearman", "dictionary": name, "method": "attribution" if steps == 1 else "ig10",
                  "steps": steps, "spearman": round(rho, 4), "k": len(chosen),
                  "clean_kl": record["clean_kl"], "rest_score": float(scores[-1]), "rest_effect": measured_rest,
                  "sum_scores_all": float(scores.sum()), "seconds": round(seconds, 2)})
            summary[name]["spearman_" + ("attribution" if steps == 1 else "ig10")] = round(rho, 4)
        summary[name]["seconds"] = round(time.perf_counter() - t0, 1)

        if args.acdc:
            if len(active) > args.acdc_max_active:
                emit({"what": "acdc", "dictionary": name, "skipped": f"{len(active)} active directions"})
                continue
            t4 = time.perf_counter()
            steps_ = flat_acdc(cf)
            target = 0.1 * float(cf.clean_kl.mean())
            ok = [s for s in steps_ if s.kl <= target]
            best = min(ok, key=lambda s: s.n_patched) if ok else None
            emit({"what": "acdc", "dictionary": name, "target_kl": target,
                  "steps": [{"tau": s.tau, "n": s.n_patched, "kl": s.kl, "edit": s.edit_size} for s in steps_],
                  "smallest_n": None if best is None else best.n_patched,
                  "edit_size": None if best is None else best.edit_size,
                  "seconds": round(time.perf_counter() - t4, 1)})
            summary[name]["acdc_n"] = None if best is None else best.n_patched
    emit({"what": "summary", "n_prompts": len(prompts), "per_dictionary": summary,
          "seconds": round(time.perf_counter() - t_all, 1)})


if __name__ == "__main__":
    sys.exit(main())
