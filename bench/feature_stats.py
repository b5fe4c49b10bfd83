"""Feature statistics against only encoding the store, and peak memory at two store sizes.

Issue 9's acceptance: statistics of all features of the default SAE over the 150k-token store in
at most 1.5x the time of only encoding the store with the SAE, and peak RSS flat in store size.
Each measurement runs in a fresh process (so ``ru_maxrss`` is that phase's own peak):

1. ``encode``: one pass over the store in batches, ``sae.encode`` on each, nothing kept;
2. ``stats``: :func:`workbench.features.feature_stats` on the same store (no model, so no logit
   effects: they depend on the dictionary, not on the store, and are timed on their own);
3. ``logits``: :func:`workbench.logit_effects.logit_effects` of every feature (needs the model);

and with ``--repeat N`` the same two passes over a store of N copies of the first (written once,
rows and contexts renumbered): the store is N times larger, the dictionary the same.

    python bench/feature_stats.py --store /tmp/exp/store --sae build/01_quickstart/sae_0 --repeat 4
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time
from pathlib import Path

import torch


def encode_only(store_path: str, sae_path: str, batch_size: int) -> dict:
    from workbench.sae import SAE
    from workbench.store import ActivationStore

    store, sae = ActivationStore.open(store_path), SAE.load(sae_path)
    start = time.perf_counter()
    with torch.no_grad():
        for batch in store.batches(sae.cfg.hook_name, batch_size=batch_size, shuffle=False):
            sae.encode(batch.float())
    return {"seconds": time.perf_counter() - start, "rows": store.n_rows}


def stats(store_path: str, sae_path: str, batch_size: int) -> dict:
    from workbench.features import FeatureStatsConfig, feature_stats
    from workbench.sae import SAE
    from workbench.store import ActivationStore

    store, sae = ActivationStore.open(store_path), SAE.load(sae_path)
    start = time.perf_counter()
    result = feature_stats(sae, store, config=FeatureStatsConfig(batch_size=batch_size), progress=False)
    seconds = time.perf_counter() - start
    return {"seconds": seconds, "rows": store.n_rows, "dead": int((result.tensors["fire_count"] == 0).sum()),
            "mean_l0": float(result.tensors["fire_count"].sum()) / store.n_rows}


def logits(sae_path: str) -> dict:
    from workbench.dictionaries import SAEDictionary
    from workbench.logit_effects import logit_effects
    from workbench.models import load_model
    from workbench.sae import SAE

    sae = SAE.load(sae_path)
    model = load_model(sae.cfg.model_name)
    directions = SAEDictionary(sae).residual_directions(model)
    start = time.perf_counter()
    logit_effects(model, directions)
    return {"seconds": time.perf_counter() - start, "features": sae.cfg.d_sae}


def repeat_store(source: str, out: Path, copies: int) -> str:
    """A store holding ``copies`` copies of ``source``'s contexts and rows, renumbered."""
    from workbench.store import ActivationStore, ActivationWriter

    if (out / "manifest.json").is_file():
        return str(out)
    store = ActivationStore.open(source)
    (hookpoint, d), = store.hookpoints.items()
    locations = store.locations()
    tokens = store.tokens()
    writer = ActivationWriter(out, hookpoints={hookpoint: d}, dtype=torch.float32, ctx_len=store.ctx_len,
                              meta={"bench": "feature_stats", "copies_of": source, "copies": copies}, contexts_per_shard=256)
    step = 64
    with writer:
        for copy in range(copies):
            for first in range(0, store.n_contexts, step):
                last = min(first + step, store.n_contexts)
                rows = torch.nonzero((locations[:, 0] >= first) & (locations[:, 0] < last)).flatten()
                a, b = int(rows[0]), int(rows[-1]) + 1
                writer.add({hookpoint: store.rows(hookpoint, a, b)}, tokens[a:b], locations[a:b, 0] + copy * store.n_contexts,
                           locations[a:b, 1], store.context_tokens(list(range(first, last))), copy * store.n_contexts + first)
    return str(out)


def in_child(phase: str, store: str, sae: str, batch_size: int) -> dict:
    """Run one phase in a fresh Python (this script with --phase); its JSON result with its peak RSS."""
    command = [sys.executable, __file__, "--phase", phase, "--store", store, "--sae", sae, "--batch-size", str(batch_size)]
    done = subprocess.run(command, check=True, capture_output=True, text=True)
    return json.loads(done.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--store", required=True)
    parser.add_argument("--sae", required=True, help="SAE folder (cfg.json + sae_weights.safetensors)")
    parser.add_argument("--batch-size", type=int, default=4096)
    parser.add_argument("--repeat", type=int, default=0, help="also measure on a store of this many copies (0: skip)")
    parser.add_argument("--repeat-out", default="/tmp/workbench-bench-repeated-store")
    parser.add_argument("--logits", action="store_true", help="also time the logit effects (loads the model)")
    parser.add_argument("--phase", choices=["encode_only", "stats", "logits"], help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.phase:
        result = logits(args.sae) if args.phase == "logits" else globals()[args.phase](args.store, args.sae, args.batch_size)
        result["peak_rss_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
        print(json.dumps(result))
        return

    stores = [args.store]
    if args.repeat > 1:
        stores.append(repeat_store(args.store, Path(args.repeat_out), args.repeat))
    results = []
    for store in stores:
        encode = in_child("encode_only", store, args.sae, args.batch_size)
        stat = in_child("stats", store, args.sae, args.batch_size)
        row = {"store": store, "rows": encode["rows"], "encode_s": round(encode["seconds"], 2),
               "stats_s": round(stat["seconds"], 2), "ratio": round(stat["seconds"] / encode["seconds"], 3),
               "encode_peak_rss_mb": round(encode["peak_rss_mb"]), "stats_peak_rss_mb": round(stat["peak_rss_mb"]),
               "dead": stat["dead"], "mean_l0": round(stat["mean_l0"], 2)}
        print(json.dumps(row), flush=True)
        results.append(row)
    if args.logits:
        print(json.dumps({"logit_effects": in_child("logits", args.store, args.sae, args.batch_size)}), flush=True)
    if len(results) == 2:
        a, b = results
        print(f"stats/encode: {a['ratio']:.2f}x at {a['rows']:,} rows, {b['ratio']:.2f}x at {b['rows']:,}; "
              f"stats peak RSS {a['stats_peak_rss_mb']} MB -> {b['stats_peak_rss_mb']} MB "
              f"({b['rows'] / a['rows']:.1f}x the rows)")


if __name__ == "__main__":
    main()
