"""Resident memory of training from a large activation store: it must not grow with the store.

Writes a store of ``--rows`` random float32 activations (default 2M x 576, about 4.6 GB on disk)
in the capture's layout, then, in a fresh process, trains a TopK SAE from it for ``--epochs``
through ``ActivationStore.batches`` and reports the reader process's peak resident memory
(``ru_maxrss``) as the last line of JSON, next to the store's size.

    python bench/store_memory.py --out /tmp/store-2m
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
from tqdm.auto import tqdm

from workbench.store import ActivationStore, ActivationWriter

HOOKPOINT = "blocks.15.hook_mlp_out"


def write(out: Path, rows: int, d: int, ctx_len: int) -> None:
    """A store of ``rows`` random rows (``ctx_len - 1`` per context: BOS dropped, as capture does)."""
    per_context = ctx_len - 1
    n_contexts = -(-rows // per_context)
    batch = 64
    generator = torch.Generator().manual_seed(0)
    writer = ActivationWriter(out, hookpoints={HOOKPOINT: d}, dtype=torch.float32, ctx_len=ctx_len,
                              meta={"bench": "store_memory"}, contexts_per_shard=256)
    with writer:
        for first in tqdm(range(writer.contexts_done, n_contexts, batch), desc="write", unit="batch"):
            c = min(batch, n_contexts - first)
            context = torch.arange(first, first + c).repeat_interleave(per_context)
            position = torch.arange(1, ctx_len).repeat(c)
            context_tokens = torch.randint(3, 1000, (c, ctx_len), generator=generator)
            tokens = context_tokens[:, 1:].flatten()
            acts = torch.randn(c * per_context, d, generator=generator)
            writer.add({HOOKPOINT: acts}, tokens, context, position, context_tokens, first)


def read_and_train(out: Path, epochs: int, batch_size: int) -> dict:
    """Train a TopK SAE from the store; the figures of this process."""
    from workbench.sae import SAE, SAEConfig
    from workbench.train import TrainConfig, train

    store = ActivationStore.open(out)
    sae = SAE.from_config(SAEConfig("topk", d_in=store.d(HOOKPOINT), d_sae=4608, k=32))
    steps = epochs * (store.n_rows // batch_size)
    started = time.perf_counter()
    train(sae, store.batches(HOOKPOINT, batch_size=batch_size, epochs=epochs, drop_last=True),
          TrainConfig(steps=steps, lr=1e-3, log_every=100), progress=True)
    seconds = time.perf_counter() - started
    store_bytes = sum(p.stat().st_size for p in out.iterdir())
    return {"rows": store.n_rows, "store_gib": round(store_bytes / 2**30, 2), "steps": steps,
            "rows_per_s": round(steps * batch_size / seconds),
            "peak_rss_mib": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", required=True, help="store folder (written if missing or incomplete)")
    parser.add_argument("--rows", type=int, default=2_000_000)
    parser.add_argument("--d", type=int, default=576)
    parser.add_argument("--ctx-len", type=int, default=128)
    parser.add_argument("--epochs", type=int, default=1)
    parser.add_argument("--batch-size", type=int, default=4096)
    parser.add_argument("--read-only", action="store_true", help=argparse.SUPPRESS)  # the child process
    args = parser.parse_args()
    out = Path(args.out)
    if args.read_only:
        print(json.dumps(read_and_train(out, args.epochs, args.batch_size)))
        return
    write(out, args.rows, args.d, args.ctx_len)
    # A fresh process, so the writer's memory does not count.
    subprocess.run([sys.executable, __file__, "--out", str(out), "--epochs", str(args.epochs),
                    "--batch-size", str(args.batch_size), "--read-only"], check=True)


if __name__ == "__main__":
    main()
