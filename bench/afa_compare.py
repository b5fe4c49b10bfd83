"""Epsilon-LBO (Lee et al. 2025) of several SAEs on the same stored activations, one JSON line per SAE.

Reads the activation store of a run folder (``RUN/store``, the store its metrics.json names, or
RUN itself when it is a store) at each SAE's hook point, grouped by context, and prints for each
SAE folder the mean epsilon-LBO with its 95% interval (bootstrap over contexts), the median, the
number of tokens and contexts, and the fraction of tokens whose ``||f~||`` falls below ``||z||``
(under-activated, over a seeded sample of up to 20,000 tokens; see :mod:`workbench.afa`). An SAE folder is anything ``SAE.load`` reads: a
workbench run folder or ``sae_0`` folder, or a folder SAELens wrote (``save_model`` /
``save_inference_model``). Compare, for example, the default TopK, a top-AFA SAE and a SAELens
folder on one store::

    workbench train --out runs/topk
    workbench train --out runs/topafa --arch topafa --store runs/topk/store
    python bench/afa_compare.py runs/topk runs/topk runs/topafa path/to/saelens_folder --contexts 512

The store holds the runs' training tokens (``workbench eval`` reports the same figure on held-out
text); ``--contexts`` takes that many contexts from the end of the store. A few seconds per SAE
on a 2-core CPU for 512 contexts of 127 tokens.
"""

from __future__ import annotations

import argparse
import json
import time
from collections.abc import Iterator
from pathlib import Path

import torch

from workbench.afa import afa_metrics
from workbench.pipeline import load_run_sae, run_config
from workbench.store import ActivationStore


def open_store(run: Path) -> ActivationStore:
    """The activation store of a run folder, or the store folder itself."""
    if (run / "manifest.json").is_file():
        return ActivationStore.open(run)
    return ActivationStore.open(run_config(run).get("store") or run / "store")


def context_batches(store: ActivationStore, hookpoint: str, contexts: int | None,
                    batch_contexts: int) -> Iterator[torch.Tensor]:
    """The last ``contexts`` contexts of the store as ``[contexts, seq, d]`` float32 batches (every
    context holding the same number of rows, as a capture of fixed-length contexts does), else
    ``[tokens, d]`` batches of the same rows."""
    context = store.locations()[:, 0]
    counts = torch.bincount(context, minlength=store.n_contexts)
    first = 0 if contexts is None else max(store.n_contexts - contexts, 0)
    start = int(counts[:first].sum())
    grouped = bool((counts[first:] == counts[first]).all()) and bool((context[1:] >= context[:-1]).all())
    per_context = int(counts[first]) if grouped else 0
    step = batch_contexts * per_context if grouped else 4096
    for at in range(start, store.n_rows, step):
        rows = store.rows(hookpoint, at, min(at + step, store.n_rows)).float()
        yield rows.view(-1, per_context, rows.shape[-1]) if grouped else rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("run", help="run folder of `workbench train` (its store is read), or a store folder")
    parser.add_argument("sae", nargs="+", help="SAE folders: run folder, sae_0 folder or a SAELens folder")
    parser.add_argument("--hookpoint", default=None, help="hook point (default: each SAE's cfg.json hook_name)")
    parser.add_argument("--contexts", type=int, default=None, help="use the last N contexts (default: all)")
    parser.add_argument("--batch-contexts", type=int, default=64, help="contexts per batch")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--seed", type=int, default=0, help="seed of the sample behind the median")
    args = parser.parse_args()

    store = open_store(Path(args.run))
    for folder in args.sae:
        sae = load_run_sae(folder).to(args.device)
        hookpoint = args.hookpoint or sae.cfg.hook_name
        if hookpoint not in store.hookpoints:
            raise SystemExit(f"{folder}: hook point {hookpoint!r} is not in the store {store.path} "
                             f"(it holds {', '.join(store.hookpoints)}); pass --hookpoint")
        started = time.perf_counter()
        m = afa_metrics(sae, context_batches(store, hookpoint, args.contexts, args.batch_contexts), seed=args.seed)
        under = float((m.norm_f < m.norm_z).double().mean()) if m.n_points else float("nan")
        print(json.dumps({
            "sae": str(folder), "architecture": sae.cfg.architecture, "d_sae": m.d_sae, "hookpoint": hookpoint,
            "eps_lbo": m.eps_lbo, "eps_lbo_ci": None if m.eps_lbo_ci is None else list(m.eps_lbo_ci),
            "eps_lbo_median": m.eps_lbo_median, "n_tokens": m.n_tokens, "n_contexts": m.n_contexts,
            "n_undefined": m.n_undefined, "under_activated_fraction": under,
            "seconds": round(time.perf_counter() - started, 2),
        }), flush=True)


if __name__ == "__main__":
    main()
