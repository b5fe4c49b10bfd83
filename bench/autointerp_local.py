"""The local-model backend end to end: a random sample of the quickstart SAE's features explained
and scored (detection) by a chat model run with transformers, the embedded SmolLM2-135M-Instruct by
default. Issue 12's acceptance: "the local-model backend explains and scores features end to end on
the embedded model".

Prints each feature's explanation and detection score, then one JSON line: how many explanations
parsed, how many features were scored, the mean balanced accuracy and AUC with bootstrap 95%
intervals, the backend's usage and the seconds. Answers are cached under ``--cache`` (a second run
makes no requests); ``--fresh`` uses an empty temporary cache.

    python bench/autointerp_local.py --sae build/01_quickstart/sae_0 --store build/01_quickstart/store
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sae", default="build/01_quickstart/sae_0")
    parser.add_argument("--store", default="build/01_quickstart/store", help="the store the SAE was trained on")
    parser.add_argument("--model", default="smollm2-135m", help="the explainer and scorer: embedded name, HF id or folder")
    parser.add_argument("--n-features", type=int, default=8)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--cache", default=None, help="answer cache (default: the workbench cache)")
    parser.add_argument("--fresh", action="store_true", help="start from an empty temporary cache")
    args = parser.parse_args()

    import torch

    torch.set_num_threads(args.threads)

    import workbench
    from workbench.autointerp import DetectionScorer, ExampleConfig, LLMExplainer, make_backend, run_autointerp
    from workbench.dictionaries import SAEDictionary
    from workbench.features import FeatureStats, feature_stats
    from workbench.sae import SAE
    from workbench.store import ActivationStore

    sae = SAEDictionary(SAE.load(args.sae))
    store = ActivationStore.open(args.store)
    saved = Path(args.sae) / "feature_stats"
    stats = FeatureStats.load(saved) if (saved / "feature_stats.json").exists() else feature_stats(sae, store, progress=True)
    tokenizer = workbench.load_model("smollm2-135m").tokenizer  # the explained model's
    cache = tempfile.mkdtemp(prefix="autointerp-local-") if args.fresh else args.cache
    backend = make_backend("local", args.model, cache_dir=cache)
    start = time.perf_counter()
    result = run_autointerp({"SAE": stats}, dictionaries={"SAE": sae}, store=store, explainer=LLMExplainer(backend),
                            scorers=[DetectionScorer(backend)], n_features=args.n_features, seed=args.seed,
                            example_config=ExampleConfig(seed=args.seed), tokenizer=tokenizer,
                            write_explanations=False, progress=True)
    seconds = time.perf_counter() - start
    records = result.records["SAE"]
    for record in records:
        explanation, score = record["explanation"], record["scores"]["detection"]
        text = "(failed: no parsable answer)" if explanation["failed"] else repr(explanation["text"])
        print(f"feature {record['feature']}: {text} | detection {score['value']:.3f} "
              f"({score['n']} texts, {score['failures']} unparsed)")
    detection = result.summary["dictionaries"]["SAE"]["scores"]["detection"]
    print(json.dumps({
        "model": backend.name, "features": len(records),
        "explained": sum(not r["explanation"]["failed"] for r in records),
        "scored": sum(not r["scores"]["detection"]["failed"] for r in records),
        "balanced_accuracy": {"mean": detection["mean"], "ci": detection["ci"]},
        "auc": detection["metrics"].get("auc"), "usage": result.summary["usage"], "seconds": round(seconds, 1)}))


if __name__ == "__main__":
    main()
