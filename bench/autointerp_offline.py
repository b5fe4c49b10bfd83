"""Explaining and scoring 100 features with the offline token-pattern explainer and rule scorer.

Issue 12's acceptance: at most 5 minutes on this machine for 100 features. Two figures:

1. ``precomputed``: the SAE's feature statistics already saved (``SAE/feature_stats``, as
   ``workbench features RUN`` or notebook 02 leave them): :func:`workbench.autointerp.run_autointerp`
   alone, i.e. choosing the features, drawing their examples (the pool of contexts re-encoded for the
   non-activating ones, hard negatives included), explaining on the training split and scoring on
   the held-out one;
2. ``with_stats``: the same after computing the statistics from the store (no model, so no logit
   effects, which the comparison does not use).

Each runs in a fresh process, single-threaded unless ``--threads`` says otherwise; no checkpoints
(a cold run). Prints one JSON line per figure.

    python bench/autointerp_offline.py --sae build/01_quickstart/sae_0 --store build/01_quickstart/store
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path


def run(args: argparse.Namespace) -> dict:
    import torch

    torch.set_num_threads(args.threads)

    from workbench.autointerp import ExampleConfig, RuleScorer, TokenPatternExplainer, run_autointerp
    from workbench.dictionaries import SAEDictionary
    from workbench.features import FeatureStats, feature_stats
    from workbench.sae import SAE
    from workbench.store import ActivationStore

    sae = SAEDictionary(SAE.load(args.sae))
    store = ActivationStore.open(args.store)
    tokenizer = _tokenizer(args.model)
    start = time.perf_counter()
    if args.phase == "with_stats":
        stats = feature_stats(sae, store, progress=False)
        if args.save_stats:
            stats.save(Path(args.sae) / "feature_stats")
            return {}
    else:
        stats = FeatureStats.load(Path(args.sae) / "feature_stats")
    stats_seconds = time.perf_counter() - start
    result = run_autointerp({"SAE": stats}, dictionaries={"SAE": sae}, store=store, explainer=TokenPatternExplainer(),
                            scorers=[RuleScorer()], n_features=args.n_features, seed=args.seed,
                            example_config=ExampleConfig(seed=args.seed), tokenizer=tokenizer, progress=False)
    seconds = time.perf_counter() - start
    summary = result.summary["dictionaries"]["SAE"]
    rule = summary["scores"]["rule"]
    return {"phase": args.phase, "seconds": round(seconds, 2), "stats_seconds": round(stats_seconds, 2),
            "autointerp_seconds": round(seconds - stats_seconds, 2), "features": summary["eligible"],
            "checked": summary["checked"], "store_rows": store.n_rows, "threads": args.threads,
            "rule_mean": round(rule["mean"], 4), "rule_ci": [round(x, 4) for x in rule["ci"]]}


def _tokenizer(model: str):
    import workbench

    return workbench.load_model(model).tokenizer


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sae", default="build/01_quickstart/sae_0", help="SAE folder (its feature_stats/ is used)")
    parser.add_argument("--store", default="build/01_quickstart/store", help="the store its statistics were computed on")
    parser.add_argument("--model", default="smollm2-135m", help="whose tokenizer decodes the examples")
    parser.add_argument("--n-features", type=int, default=100)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--phase", choices=["precomputed", "with_stats"], help="run one phase in this process")
    parser.add_argument("--save-stats", action="store_true", help="with_stats: save them under SAE/feature_stats")
    args = parser.parse_args()
    if args.phase:
        print(json.dumps(run(args)), flush=True)
        return
    if not (Path(args.sae) / "feature_stats" / "feature_stats.json").exists():
        # the quickstart does not save them (notebook 02 and `workbench features` do): compute them once,
        # untimed, so that the first figure has its precomputed statistics
        print(f"no {args.sae}/feature_stats yet: computing them once (not timed)", flush=True)
        subprocess.run([sys.executable, __file__, "--phase", "with_stats", "--save-stats", *sys.argv[1:]],
                       check=True, stdout=subprocess.DEVNULL)
    for phase in ("precomputed", "with_stats"):
        command = [sys.executable, __file__, "--phase", phase, *sys.argv[1:]]
        subprocess.run(command, check=True)


if __name__ == "__main__":
    main()
